"""Nipype interface: the VNet forward pass on the template grid."""
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from ..model.predict import TTA_CHOICES


class _SegmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="CT on the template grid (raw HU, 0 outside brain)")
    # The spec names the weights file (often 100+ MB): hashing it by content on every
    # cache check costs seconds, and its sha256 (hashed below) already identifies it.
    model_spec = traits.Dict(mandatory=True, nohash=True,
                             desc="resolved model (deepbleed_bids.model.zoo.ModelSpec)")
    model_sha256 = traits.Str(desc="the weights' sha256: what the cache hashes for the model")
    device = traits.Enum("auto", "cpu", "gpu", usedefault=True)
    mixed_precision = traits.Bool(False, usedefault=True, desc="older switch: fp16 (see precision)")
    precision = traits.Enum("fp32", "bf16", "fp16", "auto", desc="compute precision (model.device)")
    num_threads = traits.Int(1, usedefault=True)
    tta = traits.Enum(*TTA_CHOICES, usedefault=True,
                      desc="test-time augmentation (deepbleed_bids.model.predict.predict_passes)")
    threshold = traits.Float(0.5, usedefault=True, desc="mask threshold for the pass agreement")
    seed = traits.Int(1, usedefault=True)


class _SegmentOutputSpec(TraitedSpec):
    out_probseg = File(exists=True, desc="hemorrhage probability on the template grid")
    device_plan = traits.Dict()
    elapsed = traits.Float()
    forward_s = traits.Float(desc="time of the forward pass alone")
    agreement = traits.Dict(desc="agreement between test-time passes (template grid)")


class VNetSegment(SimpleInterface):
    """Run the (published or project) VNet; the sigmoid output marks ICH + IVH."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        from nipype.interfaces.base import isdefined

        from .. import worker
        from ..model.segment import segment

        # in the run's network worker when there is one (TensorFlow imported there at start-up)
        self._results.update(worker.run(
            segment, in_file=self.inputs.in_file, out_dir=runtime.cwd, model_spec=dict(self.inputs.model_spec),
            device=self.inputs.device, mixed_precision=self.inputs.mixed_precision,
            precision=self.inputs.precision if isdefined(self.inputs.precision) else None,
            num_threads=self.inputs.num_threads, tta=self.inputs.tta, threshold=self.inputs.threshold,
            seed=self.inputs.seed))
        return runtime


class _UncertaintyInputSpec(BaseInterfaceInputSpec):
    agreement = traits.Dict(mandatory=True, desc="from VNetSegment")
    native_probseg = File(exists=True, mandatory=True, desc="native-space (averaged) probability")
    volume_ml = traits.Float(mandatory=True, desc="the reported native hemorrhage volume")


class _UncertaintyOutputSpec(TraitedSpec):
    uncertainty = traits.Dict(desc="the sidecar's Uncertainty record (deepbleed_bids.uncertainty)")


class Uncertainty(SimpleInterface):
    """Per-scan uncertainty: pass agreement, volume interval, uncertain volume (native grid)."""

    input_spec = _UncertaintyInputSpec
    output_spec = _UncertaintyOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..nifti import voxel_volume_ml
        from ..uncertainty import summarise

        img = nib.load(self.inputs.native_probseg)
        self._results["uncertainty"] = summarise(dict(self.inputs.agreement), self.inputs.volume_ml,
                                                 np.asanyarray(img.dataobj), voxel_volume_ml(img))
        return runtime
