"""Nipype interfaces: rigid registration to the template grid and the way back."""
import time

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from ..template import SPACE


class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="brain-extracted CT (0 outside the brain)")
    template = File(exists=True, mandatory=True, desc="template on the 128^3 1.5 mm DeepBleed grid")
    seed = traits.Int(1, usedefault=True)
    num_threads = traits.Int(1, usedefault=True)


class _RegisterOutputSpec(TraitedSpec):
    out_transform = File(exists=True, desc="rigid transform native -> template (ITK .mat)")
    out_file = File(exists=True, desc="CT on the template grid, nearest-neighbour (network input)")
    similarity = traits.Float(desc="similarity to the template after alignment")
    coverage = traits.Float(desc="share of the template brain inside the scanned field of view")
    params = traits.Dict()
    elapsed = traits.Float()


class RigidRegistration(SimpleInterface):
    """Register the brain to the template (rigid) and resample it with nearest neighbour."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        from ..registration import register_rigid, to_template
        from ..utils import out_path

        start = time.perf_counter()
        moving = nib.load(self.inputs.in_file)
        template = nib.load(self.inputs.template)
        reg = register_rigid(moving, template, out_path(runtime.cwd, self.inputs.in_file, "", ext=""),
                             seed=self.inputs.seed, threads=self.inputs.num_threads)
        warped = to_template(moving, template, reg["transform"], interpolation="nearestNeighbor")
        out = out_path(runtime.cwd, self.inputs.in_file, f"space-{SPACE}")
        nib.save(warped, out)
        self._results.update(out_transform=reg["transform"], out_file=out,
                             similarity=float(reg["similarity"]), params=reg.get("params", {}),
                             coverage=float(reg.get("coverage", 1.0)),
                             elapsed=time.perf_counter() - start)
        return runtime


class _ToNativeInputSpec(BaseInterfaceInputSpec):
    in_probseg = File(exists=True, mandatory=True, desc="hemorrhage probability on the template grid")
    reference = File(exists=True, mandatory=True, desc="native CT (defines the output grid)")
    transform = File(exists=True, mandatory=True, desc="rigid transform native -> template")
    method = traits.Enum("probability", "deepbleed", usedefault=True,
                         desc="probability: warp the probability (linear) and threshold in native "
                              "space; deepbleed: threshold on the template grid, nearest neighbour")
    threshold = traits.Float(0.5, usedefault=True)


class _ToNativeOutputSpec(TraitedSpec):
    out_probseg = File(exists=True, desc="native-space probability map (linear interpolation)")
    out_mask = File(exists=True, desc="native-space binary hemorrhage mask")
    volume_ml = traits.Float()
    voxel_count = traits.Int()
    elapsed = traits.Float()


class ToNative(SimpleInterface):
    """Carry the network's output back onto the scan's own grid and measure the volume."""

    input_spec = _ToNativeInputSpec
    output_spec = _ToNativeOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..nifti import like, voxel_volume_ml
        from ..registration import to_native
        from ..utils import out_path

        start = time.perf_counter()
        prob_t = nib.load(self.inputs.in_probseg)
        ref = nib.load(self.inputs.reference)
        thr = self.inputs.threshold
        prob = np.clip(np.asanyarray(to_native(prob_t, ref, self.inputs.transform, "linear").dataobj), 0, 1)
        if self.inputs.method == "probability":
            mask = prob >= thr
        else:
            binary_t = like(np.asanyarray(prob_t.dataobj) >= thr, prob_t, dtype=np.uint8)
            mask = np.asanyarray(to_native(binary_t, ref, self.inputs.transform,
                                           "nearestNeighbor").dataobj) > 0.5
        stem = out_path(runtime.cwd, self.inputs.reference, "")[: -len("_.nii.gz")]
        self._results["out_probseg"] = f"{stem}_probseg.nii.gz"
        self._results["out_mask"] = f"{stem}_mask.nii.gz"
        nib.save(like(prob, ref, dtype=np.float32), self._results["out_probseg"])
        nib.save(like(mask, ref, dtype=np.uint8), self._results["out_mask"])
        count = int(mask.sum())
        self._results.update(voxel_count=count, volume_ml=count * voxel_volume_ml(ref),
                             elapsed=time.perf_counter() - start)
        return runtime
