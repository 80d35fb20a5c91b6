"""Nipype interfaces: CT brain extraction and brain masking on the input's own grid."""
import time

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


class _MaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="brain mask, uint8 0/1, input geometry")
    out_file = File(exists=True, desc="CT with every voxel outside the brain set to 0")
    brain_volume_ml = traits.Float(desc="brain volume from the native voxel size")
    elapsed = traits.Float(desc="seconds spent in this step (FSL's own steps not included)")
    info = traits.Dict(desc="how the mask was made: method, skull_stripped, reason")


class _NativeBrainExtractionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="head CT in HU, clamped to [-1024, 3071]")
    hu_stats = traits.Dict(desc="check_hounsfield's result: skull_stripped says whether the CT "
                                "is already brain-extracted or windowed")


class NativeBrainExtraction(SimpleInterface):
    """Skull stripping with :func:`deepbleed_bids.brain.extract_brain` (no FSL)."""

    input_spec = _NativeBrainExtractionInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..brain import extract_brain, mask_from_background
        from ..errors import InputError

        start = time.perf_counter()
        img = nib.load(self.inputs.in_file)
        stats = self.inputs.hu_stats or {}
        stripped = bool(stats.get("skull_stripped"))
        try:
            # skull-stripped or windowed input: the mask is what is left, not an extraction
            mask = (mask_from_background if stripped else extract_brain)(
                np.asanyarray(img.dataobj), img.affine)
        except InputError as err:
            raise InputError(f"{self.inputs.in_file}: {err}") from err
        info = {"method": "non-background voxels (skull-stripped input)" if stripped else "native",
                "skull_stripped": stripped, "reason": stats.get("skull_stripped_reason")}
        self._results.update(_write_outputs(img, mask, self.inputs.in_file, runtime.cwd),
                             info=info, elapsed=time.perf_counter() - start)
        return runtime


class _ApplyBrainMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="head CT in HU")
    in_mask = File(exists=True, mandatory=True, desc="brain mask on the same voxel grid (> 0 is brain)")


class ApplyBrainMask(SimpleInterface):
    """Write a brain mask made elsewhere (e.g. FSL) and the masked CT with the CT's header."""

    input_spec = _ApplyBrainMaskInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..errors import InputError

        start = time.perf_counter()
        img = nib.load(self.inputs.in_file)
        mask_img = nib.load(self.inputs.in_mask)
        if mask_img.shape[:3] != img.shape[:3] or not np.allclose(mask_img.affine, img.affine, atol=1e-3):
            raise InputError(
                f"{self.inputs.in_mask}: brain mask grid {mask_img.shape} does not match the CT "
                f"{self.inputs.in_file} {img.shape}; the mask must be computed on the CT itself."
            )
        mask = np.asanyarray(mask_img.dataobj).reshape(img.shape) > 0
        self._results.update(_write_outputs(img, mask, self.inputs.in_file, runtime.cwd),
                             elapsed=time.perf_counter() - start)
        return runtime


def _write_outputs(img, mask, in_file, cwd):
    """Mask and masked CT with the input header (only the dtype may change)."""
    import nibabel as nib
    import numpy as np

    from ..brain import brain_volume_ml
    from ..nifti import like
    from ..utils import out_path

    data = np.asanyarray(img.dataobj)
    if np.issubdtype(data.dtype, np.integer):
        dtype = data.dtype  # unscaled integers: keep the stored type
    else:
        dtype = np.float32
    out_mask = out_path(cwd, in_file, "brainmask")
    out_file = out_path(cwd, in_file, "brain", ext=".nii")  # a work file only: uncompressed
    nib.save(like(mask, img, dtype=np.uint8), out_mask)
    nib.save(like(np.where(mask, data, 0), img, dtype=dtype), out_file)
    return {"out_mask": out_mask, "out_file": out_file,
            "brain_volume_ml": brain_volume_ml(mask, img.affine)}
