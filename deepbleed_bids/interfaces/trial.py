"""Nipype interface: location, perihematomal edema, midline shift, ICH score (deepbleed_bids.trial)."""
import time

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _TrialInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="native CT in HU (clamped)")
    brain_mask = File(exists=True, mandatory=True, desc="native brain mask")
    hemorrhage_mask = File(exists=True, mandatory=True, desc="native hemorrhage mask")
    transform = File(exists=True, mandatory=True, desc="rigid transform native -> template")
    hemorrhage_dseg = File(exists=True, desc="native dseg of the IVH split: 1 ICH, 2 IVH")
    split = traits.Dict(desc="the split's volumes (IntraventricularVolume)")
    bids_dir = traits.Str("", usedefault=True, desc="for the gcs / age columns")
    entities = traits.Dict(desc="the source image's BIDS entities (subject, session)")


class _TrialOutputSpec(TraitedSpec):
    out_edema = File(exists=True, desc="native perihematomal edema mask (estimate)")
    out_atlas = File(exists=True, desc="the BLAST-CT atlas on the native grid (dseg)")
    measures = traits.Dict(desc="the record of deepbleed_bids.trial.trial_measures")
    elapsed = traits.Float()


class TrialMeasures(SimpleInterface):
    """Location, edema, midline shift and ICH score of one scan (all estimates)."""

    input_spec = _TrialInputSpec
    output_spec = _TrialOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..atlas import atlas_image, atlas_labels, carry_labels
        from ..ichscore import clinical_inputs
        from ..nifti import like
        from ..trial import trial_measures
        from ..utils import out_path

        start = time.perf_counter()
        ref = nib.load(self.inputs.reference)
        brain = np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0
        # only the brain's voxels are resampled (genericLabel is slow on a whole head CT grid)
        labels = np.asanyarray(carry_labels(atlas_image(), ref, self.inputs.transform,
                                            within=brain).dataobj).astype(np.int16)
        hem = np.asanyarray(nib.load(self.inputs.hemorrhage_mask).dataobj) > 0
        ivh, ivh_ml = None, None
        if isdefined(self.inputs.hemorrhage_dseg):
            ivh = np.asanyarray(nib.load(self.inputs.hemorrhage_dseg).dataobj) == 2
        if isdefined(self.inputs.split) and self.inputs.split.get("IntraventricularVolume") is not None:
            ivh_ml = float(self.inputs.split["IntraventricularVolume"])
        ents = dict(self.inputs.entities) if isdefined(self.inputs.entities) else {}
        clinical = clinical_inputs(self.inputs.bids_dir, ents.get("subject"), ents.get("session"))
        edema, record = trial_measures(np.asanyarray(ref.dataobj).astype(np.float32), ref.affine, brain, hem,
                                       labels, atlas_labels(), ivh=ivh, transform=self.inputs.transform,
                                       clinical=clinical, ivh_ml=ivh_ml)
        out_edema = out_path(runtime.cwd, self.inputs.hemorrhage_mask, "edema")
        out_atlas = out_path(runtime.cwd, self.inputs.hemorrhage_mask, "atlas")
        nib.save(like(edema.astype(np.uint8), ref, dtype=np.uint8), out_edema)
        nib.save(like(labels, ref, dtype=np.int16), out_atlas)
        self._results.update(out_edema=out_edema, out_atlas=out_atlas, measures=record,
                             elapsed=time.perf_counter() - start)
        return runtime
