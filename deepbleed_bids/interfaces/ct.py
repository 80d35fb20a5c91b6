"""Nipype interface: check a CT image and clamp it to the CT range."""
import time

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


class _ClampCTInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="CT image in HU")
    skull_stripped = traits.Bool(False, usedefault=True,
                                 desc="the user says the CT is already brain-extracted or windowed "
                                      "(else it is detected)")


class _ClampCTOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="CT clamped to [-1024, 3071] HU, same geometry")
    hu_stats = traits.Dict(desc="air/bone fractions and intensity range before clamping")
    elapsed = traits.Float()


class ClampCT(SimpleInterface):
    """Load, refuse non-CT intensities, clamp to [-1024, 3071] HU."""

    input_spec = _ClampCTInputSpec
    output_spec = _ClampCTOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..ct import check_hounsfield, clamp_hu, load_ct
        from ..nifti import like
        from ..utils import out_path

        start = time.perf_counter()
        img = load_ct(self.inputs.in_file)
        data = np.asanyarray(img.dataobj)
        self._results["hu_stats"] = check_hounsfield(
            data, self.inputs.in_file, skull_stripped=self.inputs.skull_stripped or None,
            zooms=img.header.get_zooms()[:3])
        clamped = clamp_hu(data)
        dtype = np.int16 if np.issubdtype(clamped.dtype, np.integer) or np.allclose(
            clamped, np.round(clamped)) else np.float32
        # uncompressed: a work file only, read by four later nodes (gzip cost ~0.2 s per write or read)
        out = out_path(runtime.cwd, self.inputs.in_file, "clamped", ext=".nii")
        nib.save(like(clamped, img, dtype=dtype), out)
        self._results["out_file"] = out
        self._results["elapsed"] = time.perf_counter() - start
        return runtime
