"""Nipype interface: write one image's derivatives atomically (see deepbleed_bids.derivatives)."""
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    isdefined, traits)


class _WriteInputSpec(BaseInterfaceInputSpec):
    # not hashed: it names the weights file (100+ MB to hash by content), and this
    # node always runs anyway
    config = traits.Dict(mandatory=True, nohash=True)
    source = traits.Dict(mandatory=True, desc="the source image: path, relpath, entities, metadata")
    brain_mask = File(exists=True, mandatory=True)
    hemorrhage_mask = File(exists=True, mandatory=True)
    hemorrhage_probseg = File(exists=True, mandatory=True)
    preproc_template = File(exists=True, mandatory=True)
    probseg_template = File(exists=True, mandatory=True)
    transform = File(exists=True, mandatory=True)
    hemorrhage_volume_ml = traits.Float(mandatory=True)
    hemorrhage_voxel_count = traits.Int(mandatory=True)
    brain_volume_ml = traits.Float(mandatory=True)
    similarity = traits.Float()
    registration = traits.Dict(desc="register_rigid's parameters and global-search result")
    brain_extraction = traits.Dict(desc="how the brain mask was made (skull-stripped input or not)")
    device_plan = traits.Dict()
    timings = traits.Dict()
    warnings = traits.List()
    qc = traits.Dict(desc="quality control record (deepbleed_bids.qc.quality)")
    hemorrhage_dseg = File(exists=True, desc="native dseg: 1 ICH (parenchymal), 2 IVH")
    split = traits.Dict(desc="IVH / parenchymal volumes (deepbleed_bids.ventricles)")
    uncertainty = traits.Dict(desc="the Uncertainty record (deepbleed_bids.uncertainty)")
    edema_mask = File(exists=True, desc="native perihematomal edema mask (estimate)")
    atlas_dseg = File(exists=True, desc="the BLAST-CT atlas on the native grid")
    trial = traits.Dict(desc="location, edema, midline shift, ICH score (deepbleed_bids.trial)")


class _WriteOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))


class WriteDerivatives(SimpleInterface):
    input_spec = _WriteInputSpec
    output_spec = _WriteOutputSpec
    always_run = True  # outputs may have been moved or deleted since the last run

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..derivatives import write_outputs
        from ..nifti import voxel_volume_ml

        keys = ("brain_mask", "hemorrhage_mask", "hemorrhage_probseg", "preproc_template",
                "probseg_template", "transform")
        files = {k: getattr(self.inputs, k) for k in keys}
        for key in ("hemorrhage_dseg", "edema_mask", "atlas_dseg"):
            if isdefined(getattr(self.inputs, key)):
                files[key] = getattr(self.inputs, key)
        brain = nib.load(files["brain_mask"])
        results = {
            "hemorrhage_volume_ml": self.inputs.hemorrhage_volume_ml,
            "hemorrhage_voxel_count": self.inputs.hemorrhage_voxel_count,
            "brain_volume_ml": self.inputs.brain_volume_ml,
            "brain_voxel_count": int(np.count_nonzero(np.asanyarray(brain.dataobj))),
            "voxel_volume_ml": voxel_volume_ml(brain),
            "similarity": self.inputs.similarity if self.inputs.similarity else None,
            "registration": dict(self.inputs.registration) if isdefined(self.inputs.registration) else {},
            "brain_extraction": (dict(self.inputs.brain_extraction)
                                 if isdefined(self.inputs.brain_extraction) else {}),
            "device_plan": self.inputs.device_plan,
            "timings": self.inputs.timings,
            "warnings": list(self.inputs.warnings),
            "qc": dict(self.inputs.qc),
            "split": dict(self.inputs.split) if isdefined(self.inputs.split) else {},
            "uncertainty": dict(self.inputs.uncertainty) if isdefined(self.inputs.uncertainty) else {},
            "trial": dict(self.inputs.trial) if isdefined(self.inputs.trial) else {},
        }
        self._results["out_files"] = write_outputs(self.inputs.config, self.inputs.source, files, results)
        return runtime
