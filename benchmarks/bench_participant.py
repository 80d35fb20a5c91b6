#!/usr/bin/env python3
"""Per-stage wall time and peak memory for one real head CT on this machine.

    python benchmarks/bench_participant.py [--model NAME|PATH] [--threads N] [--e2e]

Stages run in this process in pipeline order (clamp, brain extraction, rigid
registration, resampling to the template grid, VNet forward at 128^3, back to
native space). Peak memory is the process's resident high-water mark after
each stage (it only grows). ``--e2e`` also times ``run.py ... participant`` as a
user runs it (nipype, one image), reporting that run's peak memory.
Targets on a 2-core CPU: forward <= 15 s, whole image <= 60 s, peak <= 4 GB;
rigid registration <= 25 CPU s and each resampling <= 5 CPU s (CPU time of this
process and its children: unlike wall time it does not grow when others load the machine).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))


def peak_gb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024 ** 2


def cpu_seconds():
    """CPU time of this process and its finished children (ANTs may run in a child)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="weights (default: random published-size VNet)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--e2e", action="store_true", help="also time run.py participant end to end")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np

    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.ct import check_hounsfield, clamp_hu, load_ct
    from deepbleed_bids.model.device import configure
    from deepbleed_bids.model.predict import predict_volume
    from deepbleed_bids.model.vnet import build_vnet
    from deepbleed_bids.model.zoo import load_model, resolve_model
    from deepbleed_bids.nifti import like
    from deepbleed_bids.registration import register_rigid, to_native, to_template
    from deepbleed_bids.testing import convert_ge_head, shared_data_dir

    data_dir = shared_data_dir()
    if data_dir is None:
        sys.exit("shared test data not found: set DEEPBLEED_TEST_DATA")
    tmp = Path(tempfile.mkdtemp(prefix="deepbleed-bench-"))
    head, _ = convert_ge_head(tmp / "head", data_dir)
    template = nib.load(str(data_dir / "templates/deepbleed/scct_unsmooth_SS_0.01_128x128x128.nii.gz"))
    rows = []

    def stage(name, func):
        start, cpu = time.perf_counter(), cpu_seconds()
        out = func()
        rows.append((name, time.perf_counter() - start, cpu_seconds() - cpu, peak_gb()))
        return out

    img = stage("load+check", lambda: load_ct(head))
    data = stage("clamp", lambda: clamp_hu(np.asanyarray(img.dataobj)))
    check_hounsfield(data, head)
    mask = stage("brain extraction", lambda: extract_brain(data, img.affine))
    brain = like(np.where(mask, data, 0), img, dtype=np.int16)
    reg = stage("registration", lambda: register_rigid(brain, template, str(tmp / "reg_"), threads=args.threads))
    net_in = stage("to template (NN)", lambda: to_template(brain, template, reg["transform"]))
    plan = configure("auto", threads=args.threads)
    if args.model:
        spec = resolve_model(args.model)
        model = stage("load model", lambda: load_model(spec, input_shape=(128, 128, 128, 1)))
    else:
        model = stage("build model", lambda: build_vnet(input_shape=(128, 128, 128, 1)))
    vol = np.asanyarray(net_in.dataobj).astype(np.float32)
    prob = stage("VNet forward 128^3", lambda: predict_volume(model, vol, device=plan["device"]))
    prob_img = like(prob, template, dtype=np.float32)
    stage("to native (linear)", lambda: to_native(prob_img, img, reg["transform"], "linear"))

    print(f"\nOne real head CT {img.shape} ({head.name}), {args.threads} thread(s), "
          f"device {plan['device']}, model {args.model or 'published-size VNet (random weights)'}")
    print(f"{'stage':<22}{'seconds':>10}{'CPU s':>10}{'peak GB':>10}")
    for name, secs, cpu, peak in rows:
        print(f"{name:<22}{secs:>10.2f}{cpu:>10.2f}{peak:>10.2f}")
    total = sum(s for n, s, *_ in rows if n not in ("build model", "load model"))
    print(f"{'sum of stages':<22}{total:>10.2f}{'':>10}{max(p for *_, p in rows):>10.2f}")
    report = {"stages": {n: {"seconds": round(s, 3), "cpu_seconds": round(c, 3), "peak_gb": round(p, 3)}
                         for n, s, c, p in rows}}

    if args.e2e:
        report["e2e"] = run_e2e(head, data_dir, tmp, args)
    (tmp / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {tmp / 'bench.json'}")


def run_e2e(head, data_dir, tmp, args):
    """``run.py bids out participant`` on the head, as a user runs it (fresh work dir)."""
    from deepbleed_bids.assets import prepopulate_cache
    from deepbleed_bids.model.vnet import build_vnet
    from deepbleed_bids.testing import write_bids_dataset

    bids = write_bids_dataset(tmp / "bids", {"sub-01/ct/sub-01_ct.nii.gz": head})
    model = args.model
    if not model:
        model = str(tmp / "random.weights.h5")
        build_vnet(input_shape=(128, 128, 128, 1)).save_weights(model)
    env = {**os.environ, "DEEPBLEED_HOME": str(prepopulate_cache(tmp / "home", data_dir))}
    cmd = [sys.executable, str(TOP / "run.py"), str(bids), str(tmp / "out"), "participant",
           "--model", model, "--nprocs", "1", "--omp-nthreads", str(args.threads),
           "--work-dir", str(tmp / "work")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = peak_gb(resource.RUSAGE_CHILDREN)
    sidecar = next((tmp / "out").rglob("*desc-hemorrhage_mask.json"), None)
    timings = json.loads(sidecar.read_text())["Timings"] if sidecar else {}
    print(f"\nrun.py participant (one image, fresh work dir): {wall:.1f} s wall, peak {peak:.2f} GB, "
          f"exit {proc.returncode}")
    for name, secs in timings.items():
        print(f"  {name:<20}{secs:>8.2f} s")
    if proc.returncode:
        print(proc.stderr[-3000:])
    return {"wall_s": round(wall, 2), "peak_gb": round(peak, 3), "exit": proc.returncode, "timings": timings}


if __name__ == "__main__":
    main()
