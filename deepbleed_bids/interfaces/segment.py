"""Nipype interface: the VNet forward pass on the template grid."""
import time

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


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
    tta = traits.Enum("auto", "none", "flip", "flip+mc", usedefault=True,
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
        import nibabel as nib
        import numpy as np

        from ..model.device import configure
        from ..model.predict import predict_passes
        from ..model.zoo import ModelSpec, load_model
        from ..nifti import like
        from ..utils import out_path

        start = time.perf_counter()
        from nipype.interfaces.base import isdefined

        precision = self.inputs.precision if isdefined(self.inputs.precision) else None
        plan = configure(self.inputs.device, self.inputs.mixed_precision, self.inputs.num_threads,
                         precision=precision)
        spec = ModelSpec(**self.inputs.model_spec)
        img = nib.load(self.inputs.in_file)
        volume = np.asanyarray(img.dataobj).astype(np.float32)
        patch = spec.patch_size or 0
        model = load_model(spec, input_shape=(*((patch,) * 3 if patch else volume.shape), 1))
        t0 = time.perf_counter()
        from ..model.predict import dropout_twin, resolve_tta

        mc_model = dropout_twin(model, spec) if resolve_tta(self.inputs.tta, plan["device"]) == "flip+mc" else None
        passes, tta = predict_passes(model, volume, self.inputs.tta, patch_size=patch,
                                     device=plan["device"], seed=self.inputs.seed, mc_model=mc_model)
        prob = np.mean(passes, axis=0, dtype=np.float32) if len(passes) > 1 else passes[0]
        forward = time.perf_counter() - t0
        from ..nifti import voxel_volume_ml
        from ..uncertainty import pass_agreement

        agreement = {**tta, **pass_agreement(passes, voxel_volume_ml(img),
                                             self.inputs.threshold)}
        out = out_path(runtime.cwd, self.inputs.in_file, "probseg")
        nib.save(like(prob, img, dtype=np.float32), out)
        self._results.update(out_probseg=out, device_plan=plan, forward_s=forward, agreement=agreement,
                             elapsed=time.perf_counter() - start)
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
