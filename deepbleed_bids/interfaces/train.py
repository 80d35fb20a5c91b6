"""Nipype interfaces for training: the reference mask on the template grid, one packed case."""
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from ..template import SPACE


class _MaskToTemplateInputSpec(BaseInterfaceInputSpec):
    in_mask = File(exists=True, mandatory=True, desc="reference hemorrhage mask, native grid of the CT")
    reference = File(exists=True, mandatory=True, desc="the CT the mask belongs to (same grid)")
    transform = File(exists=True, mandatory=True, desc="rigid transform native -> template (ITK .mat)")
    template = File(exists=True, mandatory=True, desc="template on the 128^3 1.5 mm DeepBleed grid")


class _MaskToTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="binary mask on the template grid (uint8)")
    native_volume_ml = traits.Float()
    template_volume_ml = traits.Float()


class MaskToTemplate(SimpleInterface):
    """Carry a native reference mask to the template grid: linear interpolation, then >= 0.5.

    Native voxels (about 0.5 x 0.5 x 1-5 mm) are finer than the 1.5 mm grid in-plane:
    nearest neighbour would pick one native voxel per template voxel (aliasing, jagged
    edges). The linearly interpolated mask estimates the lesion fraction near each
    template voxel; keeping >= 0.5 puts the edge where inference puts it (the 0.5
    level of the probability map) and keeps the volume unbiased.
    """

    input_spec = _MaskToTemplateInputSpec
    output_spec = _MaskToTemplateOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..metrics import as_mask, check_same_grid, volume_ml
        from ..nifti import like
        from ..registration import to_template
        from ..utils import out_path

        mask = nib.load(self.inputs.in_mask)
        ref = nib.load(self.inputs.reference)
        check_same_grid(mask, ref, self.inputs.in_mask, f"its CT {self.inputs.reference}")
        binary = like(as_mask(np.asanyarray(mask.dataobj)), ref, dtype=np.float32)
        template = nib.load(self.inputs.template)
        warped = to_template(binary, template, self.inputs.transform, interpolation="linear")
        out_mask = np.asanyarray(warped.dataobj) >= 0.5
        out = out_path(runtime.cwd, self.inputs.in_mask, f"space-{SPACE}")
        nib.save(like(out_mask, template, dtype=np.uint8), out)
        self._results.update(out_file=out, native_volume_ml=volume_ml(binary.dataobj, ref.affine),
                             template_volume_ml=volume_ml(out_mask, template.affine))
        return runtime


class _ExportCaseInputSpec(BaseInterfaceInputSpec):
    template_ct = File(exists=True, mandatory=True, desc="network input on the template grid")
    template_mask = File(exists=True, mandatory=True, desc="reference mask on the template grid")
    # A folder and a name, not a file path: nipype hashes a string naming an existing
    # file by its content, so a path would change the hash once the case is written.
    out_dir = traits.Str(mandatory=True, desc="folder of the case files")
    out_name = traits.Str(mandatory=True, desc="file name of this case (.npz)")
    meta = traits.Dict(desc="what to record with the case (source, subject, volumes...)")
    native_volume_ml = traits.Float()
    template_volume_ml = traits.Float()
    similarity = traits.Float()


class _ExportCaseOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ExportCase(SimpleInterface):
    """Pack one preprocessed case (image int16/float32 + mask uint8 + metadata) atomically."""

    input_spec = _ExportCaseInputSpec
    output_spec = _ExportCaseOutputSpec

    def _run_interface(self, runtime):
        import json
        from pathlib import Path

        import nibabel as nib
        import numpy as np

        from ..utils import atomic_path

        image = np.asanyarray(nib.load(self.inputs.template_ct).dataobj)
        if not np.issubdtype(image.dtype, np.integer):
            image = image.astype(np.float32)
        mask = np.asanyarray(nib.load(self.inputs.template_mask).dataobj).astype(np.uint8)
        meta = {**self.inputs.meta, "native_volume_ml": self.inputs.native_volume_ml,
                "template_volume_ml": self.inputs.template_volume_ml,
                "similarity": self.inputs.similarity}
        out = Path(self.inputs.out_dir) / self.inputs.out_name
        with atomic_path(out) as tmp:
            np.savez_compressed(tmp, image=image, mask=mask, meta=json.dumps(meta))
        self._results["out_file"] = str(out)
        return runtime
