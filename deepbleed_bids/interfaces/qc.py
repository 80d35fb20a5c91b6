"""Nipype interface: quality control of one segmented image (see deepbleed_bids.qc)."""
import time

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


class _QCInputSpec(BaseInterfaceInputSpec):
    in_ct = File(exists=True, mandatory=True, desc="native CT in HU (clamped)")
    brain_mask = File(exists=True, mandatory=True, desc="native brain mask")
    hemorrhage_mask = File(exists=True, mandatory=True, desc="native hemorrhage mask")
    hemorrhage_volume_ml = traits.Float(desc="the network's volume (as written in the sidecar)")
    similarity = traits.Float(desc="registration similarity reported by the registration")
    coverage = traits.Float(desc="share of the template brain inside the scanned field of view")
    registered = File(exists=True, desc="network input on the template grid")
    template = File(exists=True, desc="the template")
    metadata = traits.Dict(desc="source sidecar (kernel and contrast checks)")
    thresholds = traits.Dict(desc="overrides of deepbleed_bids.qc.THRESHOLDS")
    uncertainty = traits.Dict(desc="the Uncertainty record (deepbleed_bids.uncertainty)")


class _QCOutputSpec(TraitedSpec):
    qc = traits.Dict(desc="the QC record: Pass, Flags, Metrics, Thresholds")
    elapsed = traits.Float()


class ComputeQC(SimpleInterface):
    """Image-based QC measures and flags of one segmented CT."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np
        from nipype.interfaces.base import isdefined

        from ..kernels import contrast_suspected, kernel_type
        from ..qc import quality

        start = time.perf_counter()
        ct = nib.load(self.inputs.in_ct)

        def load(path):
            return np.asanyarray(nib.load(path).dataobj) if isdefined(path) and path else None

        def value(name):
            v = getattr(self.inputs, name)
            return v if isdefined(v) else None

        meta = value("metadata") or {}
        try:
            qc = quality(
                np.asanyarray(ct.dataobj), load(self.inputs.brain_mask) > 0,
                load(self.inputs.hemorrhage_mask) > 0, ct.affine,
                hemorrhage_ml=value("hemorrhage_volume_ml"), similarity=value("similarity"),
                registered=load(self.inputs.registered), template=load(self.inputs.template),
                metadata={"kernel_type": kernel_type(meta), "contrast": contrast_suspected(meta)},
                thresholds=value("thresholds") or {}, uncertainty=value("uncertainty"),
                coverage=value("coverage"))
        except Exception as err:  # noqa: BLE001  QC must never cost the image its outputs
            qc = {"Pass": False, "Flags": {"qc_error": f"quality control failed: {err}"}, "Metrics": {}}
        self._results["qc"] = qc
        self._results["elapsed"] = time.perf_counter() - start
        return runtime
