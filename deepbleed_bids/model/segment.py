"""The network step of one CT, as a plain function of files (no nipype): it runs in the
node's process or in the run's network worker (deepbleed_bids.worker)."""
import time


def segment(in_file, out_dir, model_spec, device="auto", mixed_precision=False, precision=None,
            num_threads=1, tta="auto", threshold=0.5, seed=1):
    """Probability map of ``in_file`` (template grid, raw HU, 0 outside the brain) written
    into ``out_dir``; returns the node's outputs (out_probseg, device_plan, forward_s,
    agreement, elapsed)."""
    import nibabel as nib
    import numpy as np

    from ..nifti import like, voxel_volume_ml
    from ..uncertainty import calibration_agreement, pass_agreement
    from ..utils import out_path
    from .device import configure
    from .predict import (
        CALIBRATION_HU,
        calibration_passes,
        dropout_twin,
        predict_passes,
        resolve_tta,
        tta_parts,
    )
    from .zoo import ModelSpec, load_model

    start = time.perf_counter()
    plan = configure(device, mixed_precision, num_threads, precision=precision)
    spec = ModelSpec(**model_spec)
    img = nib.load(in_file)
    volume = np.asanyarray(img.dataobj).astype(np.float32)
    patch = spec.patch_size or 0
    model = load_model(spec, input_shape=(*((patch,) * 3 if patch else volume.shape), 1))
    t0 = time.perf_counter()
    parts = tta_parts(resolve_tta(tta, plan["device"]))
    mc_model = dropout_twin(model, spec) if "mc" in parts else None
    passes, tta_info = predict_passes(model, volume, tta, patch_size=patch, device=plan["device"],
                                      seed=seed, mc_model=mc_model)
    prob = np.mean(passes, axis=0, dtype=np.float32) if len(passes) > 1 else passes[0]
    agreement = {**tta_info, **pass_agreement(passes, voxel_volume_ml(img), threshold)}
    if "hu" in parts:
        shifted = calibration_passes(model, volume, CALIBRATION_HU, patch_size=patch, device=plan["device"])
        agreement.update(calibration_agreement(passes[0], shifted, CALIBRATION_HU, voxel_volume_ml(img), threshold))
    forward = time.perf_counter() - t0
    out = out_path(out_dir, in_file, "probseg")
    nib.save(like(prob, img, dtype=np.float32), out)
    return {"out_probseg": out, "device_plan": plan, "forward_s": forward, "agreement": agreement,
            "elapsed": time.perf_counter() - start}
