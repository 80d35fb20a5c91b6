#!/usr/bin/env python3
"""Training throughput and inference time of the VNet sizes on this machine.

    python benchmarks/bench_training.py [--steps 3] [--threads N] [--configs w16k5,w4k3,w4k3p64]

The network input is real: the GE head with a synthetic 30 mL hematoma,
brain-extracted and registered onto the template grid exactly as in training.
Each configuration runs the project's own training step (deepbleed_bids.training.loop:
Dice loss, Adam, augmentation in the input pipeline) for ``--steps`` mini-batches
after one warm-up step, then times one inference of a whole 128^3 volume
(predict_volume with the configuration's patch size) and a lesion-free one.
Configurations: wWkK[pP][bB] = width W, kernel K, patch P (default 128^3), batch B (default 1).
"""
import argparse
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def real_case(tmp):
    """The GE head with a synthetic hematoma, preprocessed onto the template grid."""
    import nibabel as nib
    import numpy as np

    from deepbleed_bids import synth
    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.ct import clamp_hu
    from deepbleed_bids.nifti import like
    from deepbleed_bids.registration import register_rigid, to_template
    from deepbleed_bids.testing import convert_ge_head, shared_data_dir

    data_dir = shared_data_dir()
    if data_dir is None:
        sys.exit("shared test data not found: set DEEPBLEED_TEST_DATA")
    head, _ = convert_ge_head(tmp / "head", data_dir)
    img = nib.load(head)
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    brain = extract_brain(np.asanyarray(img.dataobj), img.affine)
    img, truth, _ = synth.insert_hematoma(img, brain, 30.0, rng=0, location="deep")
    data = clamp_hu(np.asanyarray(img.dataobj)).astype(np.float32)
    brain = extract_brain(data, img.affine)
    stripped = like(np.where(brain, data, 0), img, dtype=np.float32)
    template = nib.load(str(data_dir / "templates/deepbleed/scct_unsmooth_SS_0.01_128x128x128.nii.gz"))
    reg = register_rigid(stripped, template, tmp / "reg_", threads=2)
    image = np.asanyarray(to_template(stripped, template, reg["transform"]).dataobj).astype(np.float32)
    mask = np.asanyarray(to_template(like(truth, img, dtype=np.float32), template, reg["transform"],
                                     "linear").dataobj) >= 0.5
    return {"image": image, "mask": mask.astype(np.uint8), "meta": {}}


def parse(config):
    m = re.fullmatch(r"w(\d+)k(\d+)(?:p(\d+))?(?:b(\d+))?", config)
    if not m:
        sys.exit(f"bad configuration {config!r}: use e.g. w16k5, w4k3p64b4")
    return int(m[1]), int(m[2]), int(m[3] or 0), int(m[4] or 1)


def bench(case, config, steps, threads):
    from deepbleed_bids.model.device import configure
    from deepbleed_bids.model.predict import predict_volume
    from deepbleed_bids.training.loop import TrainParams, _dataset, _step_fn, build
    from deepbleed_bids.training.losses import get_loss

    width, kernel, patch, batch = parse(config)
    params = TrainParams(width=width, kernel_size=kernel, patch_size=patch, batch_size=batch,
                         samples_per_epoch=batch * (steps + 1), threads=threads)
    plan = configure("cpu", False, threads)
    strategy, model, optimizer = build(params, plan)
    step = _step_fn(strategy, model, optimizer, get_loss("dice"), False)
    batches = iter(_dataset([case], params, 1, strategy))
    step(*next(batches))  # warm-up: tracing
    start = time.perf_counter()
    for x, y in batches:
        float(step(x, y))
    train_s = time.perf_counter() - start
    predict_volume(model, case["image"][:32, :32, :32], patch_size=0)  # warm-up
    start = time.perf_counter()
    predict_volume(model, case["image"], patch_size=patch)
    infer_s = time.perf_counter() - start
    return {"config": config, "width": width, "kernel": kernel, "patch": patch or 128, "batch": batch,
            "params": model.count_params(), "MB": model.count_params() * 4 / 1e6,
            "samples_per_s": steps * batch / train_s, "s_per_step": train_s / steps,
            "inference_s": infer_s, "peak_GB": peak_gb()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="w16k5,w4k5,w4k3,w4k3p64b4",
                        help="comma-separated configurations (default: published size, demo sizes)")
    parser.add_argument("--steps", type=int, default=3, help="timed mini-batches per configuration")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="deepbleed-bench-") as tmp:
        case = real_case(Path(tmp))
    print(f"{'config':<12} {'params':>10} {'MB':>6} {'patch':>5} {'batch':>5} {'samples/s':>9} "
          f"{'s/step':>7} {'infer s':>7} {'peak GB':>7}")
    for config in args.configs.split(","):
        r = bench(case, config, args.steps, args.threads)
        print(f"{r['config']:<12} {r['params']:>10,} {r['MB']:>6.1f} {r['patch']:>5} {r['batch']:>5} "
              f"{r['samples_per_s']:>9.3f} {r['s_per_step']:>7.2f} {r['inference_s']:>7.2f} {r['peak_GB']:>7.2f}",
              flush=True)
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; peak memory is the process's "
          "high-water mark so far)")


if __name__ == "__main__":
    main()
