"""Nipype interface: the ventricle map and the IVH / parenchymal split (see deepbleed_bids.ventricles)."""
import time

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


class _SplitInputSpec(BaseInterfaceInputSpec):
    template_ct = File(exists=True, mandatory=True, desc="network input on the template grid")
    probseg_template = File(exists=True, mandatory=True, desc="hemorrhage probability, template grid")
    reference = File(exists=True, mandatory=True, desc="native CT in HU (clamped)")
    transform = File(exists=True, mandatory=True, desc="rigid transform native -> template")
    brain_mask = File(exists=True, mandatory=True, desc="native brain mask")
    hemorrhage_mask = File(exists=True, mandatory=True, desc="native hemorrhage mask")
    threshold = traits.Float(0.5, usedefault=True)
    seed = traits.Int(1, usedefault=True)


class _SplitOutputSpec(TraitedSpec):
    out_dseg = File(exists=True, desc="native dseg: 1 ICH (parenchymal), 2 IVH")
    split = traits.Dict(desc="IntraventricularVolume, ParenchymalVolume, method (an estimate)")
    elapsed = traits.Float()


class HemorrhageSplit(SimpleInterface):
    """Split the hemorrhage mask into intraventricular and parenchymal parts (an estimate)."""

    input_spec = _SplitInputSpec
    output_spec = _SplitOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..nifti import like
        from ..utils import out_path
        from ..ventricles import split_hemorrhage

        start = time.perf_counter()
        ref = nib.load(self.inputs.reference)
        dseg, _, info = split_hemorrhage(
            nib.load(self.inputs.template_ct), np.asanyarray(nib.load(self.inputs.probseg_template).dataobj),
            ref, self.inputs.transform, np.asanyarray(ref.dataobj).astype(np.float32),
            np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0,
            np.asanyarray(nib.load(self.inputs.hemorrhage_mask).dataobj) > 0,
            threshold=self.inputs.threshold, seed=self.inputs.seed)
        out = out_path(runtime.cwd, self.inputs.hemorrhage_mask, "dseg")
        nib.save(like(dseg, ref, dtype=np.uint8), out)
        self._results.update(out_dseg=out, split=info, elapsed=time.perf_counter() - start)
        return runtime
