#!/usr/bin/env python3
"""Per-stage wall time, overhead, precision, throughput, report, group and peak memory.

    python benchmarks/bench_participant.py --e2e            # everything (issue #13's table)
    python benchmarks/bench_participant.py --e2e --quick    # a check in a few minutes
    python benchmarks/bench_participant.py --e2e --skip throughput group
    options: [--model NAME|PATH] [--threads N] [--precisions fp32 bf16 ...]
             [--throughput-images N] [--group-cts N] [--skip PART ...] [--keep]

1. Stages in this process, in pipeline order, on one real head CT (the GE head,
   gantry-tilted): clamp, brain extraction, rigid registration (with the thread
   count the workflow gives it) and nearest-neighbour resampling to the template
   grid, model loading, VNet forward at 128^3, back to native space (the issue's
   "core" stages), then the per-CT analyses the workflow runs after them, each as its
   nipype interface run in this process with its own file I/O: IVH split, trial
   measures (location, edema, midline shift, ICH score) and QC. The stage sum is all of
   them: the work a run cannot avoid. Wall and CPU seconds per stage (CPU time of this
   process and its finished children: it does not grow when others load the machine).
2. Precision (part ``precision``): the VNet forward in every precision this machine
   runs (fp32, and bf16 / fp16 where model.device.plan_precision allows them), and the
   agreement with fp32 of the bundled synthetic-demo model on synthetic hematomas
   inserted (deepbleed_bids.synth) into the real head registered to the 128^3 grid:
   Dice and volume difference of the >= 0.5 masks.
3. ``--e2e``: ``run.py ... participant`` on the same image as a user runs it (one
   image, fresh work folder, --nprocs 1 --omp-nthreads THREADS; the median of
   ``--e2e-runs`` runs, default 3): wall time, its ratio
   to the stage sum (target <= 1.3) and peak memory (target <= 3 GB); the participant
   report rebuilt from its outputs (part ``report``, seconds per CT, target <= 2 s; the
   first build also pays the imports of matplotlib and Pillow, once per run); cohort
   throughput (part ``throughput``, see THROUGHPUT below); the group level on
   ``--group-cts`` participants made by copying the participant outputs (part
   ``group``, target <= 60 s).

THROUGHPUT: ``--throughput-images`` copies of the head, three runs, images per hour:
  A  --nprocs 1 --omp-nthreads 1   one image at a time on one core
  B  --nprocs 2 --omp-nthreads 1   two images at a time, one thread each
  C  --nprocs 1 --omp-nthreads 2   one image at a time with both cores
  "scaling" = B / A: what a second process adds at the same threads per process;
  issue #13's target (>= 1.7x) is this one: it fails when processes oversubscribe
  the cores or serialise on something. "core lab" = B / C: on the same machine, two
  images at a time vs one image using every core, which is the choice a core lab
  makes; it is > 1 because several steps (brain extraction, most of the analyses) run
  on one thread whatever --omp-nthreads says.

``--quick``: the synthetic-demo model instead of the published-size one, 2 throughput
images, 100 group CTs (checks that every part works; the numbers are not the README's).
Default model: a published-size VNet with random weights, seed 0 (the published weights
are a download); its masks are meaningless but its cost is the real one.
Wall-clock numbers are only comparable within one run: the script prints the CPU
model and the load average, a markdown table to paste into the README, and a JSON copy.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))
from deepbleed_bids.testing import cpu_model  # noqa: E402

# the stages, and the per-CT analyses added since (all in the stage sum)
CORE_STAGES = ("load+check", "clamp", "brain extraction", "registration", "to template (NN)",
               "load model", "VNet forward 128^3", "to native (linear)")
ANALYSIS_STAGES = ("IVH split", "trial measures", "QC")
SUM_STAGES = CORE_STAGES + ANALYSIS_STAGES
PARTS = ("precision", "report", "throughput", "group")
HEMATOMAS = ((5.0, "deep"), (20.0, "lobar"), (60.0, "deep"), (35.0, "superficial"))


def cpu_seconds():
    """CPU time of this process and its finished children (ANTs may run in a child)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_gb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024 ** 2



def load_average():
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def registration_threads_check(brain, template, reg, threads, tmp):
    """Issue 13 point 2: the registration again on 1 thread (and on ``threads`` if that is 1,
    on 2): its seconds and whether the transform is the same bits."""
    import numpy as np

    from deepbleed_bids.registration import _matrix, register_rigid

    other = 1 if threads > 1 else 2
    start = time.perf_counter()
    again = register_rigid(brain, template, str(tmp / f"reg{other}_"), threads=other)
    seconds = time.perf_counter() - start
    same = bool(np.array_equal(_matrix(again["transform"]), _matrix(reg["transform"])))
    out = {"threads": other, "seconds": round(seconds, 2), "identical_transform": same,
           "seconds_at_workflow_threads": reg["params"]["seconds"]}
    print(f"registration on {other} thread(s): {seconds:.2f} s (on {threads}: "
          f"{reg['params']['seconds']:.2f} s); same transform: {same}")
    return out


def workflow_registration_threads(head, template, omp_nthreads):
    """The thread count init_preproc_wf gives the registration for --omp-nthreads."""
    from deepbleed_bids.workflows.preproc import init_preproc_wf

    wf = init_preproc_wf(str(head), str(template), omp_nthreads=omp_nthreads)
    return int(wf.get_node("register").inputs.num_threads)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="weights (default: random published-size VNet)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--e2e", action="store_true",
                        help="also run run.py end to end: overhead, report, throughput, group level")
    parser.add_argument("--quick", action="store_true",
                        help="a quick check: synthetic-demo model, 2 throughput images, 100 group CTs")
    parser.add_argument("--skip", nargs="+", default=[], choices=PARTS, metavar="PART",
                        help=f"parts not to run, of: {', '.join(PARTS)}")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"],
                        help="precisions to try (those the machine cannot run are skipped)")
    parser.add_argument("--throughput-images", type=int, default=None, metavar="N",
                        help="images for the throughput runs (default 8, the issue's figure; quick: 2; 0: skip)")
    parser.add_argument("--group-cts", type=int, default=None, metavar="N",
                        help="participants for the group-level timing (default 1000; quick: 100; 0: skip)")
    parser.add_argument("--e2e-runs", type=int, default=3, metavar="N",
                        help="end-to-end runs; the median is reported (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.quick:
        args.model = args.model or "synthetic-demo"
    if args.throughput_images is None:
        args.throughput_images = 2 if args.quick else 8
    if args.group_cts is None:
        args.group_cts = 100 if args.quick else 1000
    for part, off in (("throughput", not args.throughput_images), ("group", not args.group_cts)):
        if off and part not in args.skip:
            args.skip.append(part)

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
    template_path = data_dir / "templates/deepbleed/scct_unsmooth_SS_0.01_128x128x128.nii.gz"
    template = nib.load(str(template_path))
    reg_threads = workflow_registration_threads(head, template_path, args.threads)
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
              "model": args.model or "published-size VNet (random weights)",
              "load_before": load_average(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(["python", "benchmarks/bench_participant.py", *sys.argv[1:]])}
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
    reg = stage("registration", lambda: register_rigid(brain, template, str(tmp / "reg_"), threads=reg_threads))
    net_in = stage("to template (NN)", lambda: to_template(brain, template, reg["transform"]))
    plan = configure("cpu", threads=args.threads, precision="fp32")
    if args.model:
        spec = resolve_model(args.model)
        model = stage("load model", lambda: load_model(spec, input_shape=(128, 128, 128, 1)))
    else:
        import keras

        # the same random weights on every run: the same mask, so the same analysis times
        keras.utils.set_random_seed(0)
        model = stage("load model", lambda: build_vnet(input_shape=(128, 128, 128, 1)))
    vol = np.asanyarray(net_in.dataobj).astype(np.float32)
    prob = stage("VNet forward 128^3", lambda: predict_volume(model, vol, device=plan["device"]))
    if not args.model:
        prob = calibrate(model, vol, tmp / "random.weights.h5")
    prob_img = like(prob, template, dtype=np.float32)
    native = stage("to native (linear)", lambda: to_native(prob_img, img, reg["transform"], "linear"))
    model = None  # free it before the analyses and the precision runs
    analyses(stage, tmp / "stages", img, data, mask, net_in, prob_img, native, reg, template_path)

    print(f"\nCPU {report['cpu']} ({report['cores']} cores), load average before "
          f"{report['load_before'][0]:.1f}; one real head CT {img.shape} ({head.name}); "
          f"{args.threads} thread(s), registration {reg_threads}; model {report['model']}")
    print(f"{'stage':<22}{'seconds':>10}{'CPU s':>10}{'peak GB':>10}")
    for name, secs, cpu, peak in rows:
        print(f"{name:<22}{secs:>10.2f}{cpu:>10.2f}{peak:>10.2f}" + ("" if name in SUM_STAGES else "   (not in the sum)"))
    core = sum(s for n, s, *_ in rows if n in CORE_STAGES)
    total = sum(s for n, s, *_ in rows if n in SUM_STAGES)
    print(f"{'sum: core stages':<22}{core:>10.2f}")
    print(f"{'sum of stages':<22}{total:>10.2f}{'':>10}{max(p for *_, p in rows):>10.2f}")
    report["stages"] = {n: {"seconds": round(s, 3), "cpu_seconds": round(c, 3), "peak_gb": round(p, 3)}
                        for n, s, c, p in rows}
    report["core_sum_s"] = round(core, 2)
    report["stage_sum_s"] = round(total, 2)
    report["stage_sum_cpu_s"] = round(sum(c for n, _, c, _ in rows if n in SUM_STAGES), 2)
    search = reg["params"].get("global_search") or {}
    print(f"registration: global search {search.get('grid_seconds', 0):.1f} s, MI stage "
          f"{search.get('mi_seconds', 0):.1f} s, on {reg_threads} thread(s)")
    report["registration_threads"] = reg_threads
    report["registration_threads_check"] = registration_threads_check(brain, template, reg, reg_threads, tmp)

    if "precision" not in args.skip:
        report["precision"] = precision_table(args, net_in, template, vol)

    if args.e2e:
        e2e = run_e2e(head, data_dir, tmp, args)
        report["e2e"] = e2e
        report["e2e"]["ratio"] = round(e2e["wall_s"] / total, 2)
        report["e2e"]["ratio_core"] = round(e2e["wall_s"] / core, 2)
        # on a shared machine wall time follows the load; CPU time does not
        report["e2e"]["ratio_cpu"] = round(e2e["cpu_s"] / report["stage_sum_cpu_s"], 2)
        for key, func in (("report", lambda: time_report(tmp, threads=args.threads)),
                          ("throughput", lambda: throughput(head, tmp, args, e2e["model"])),
                          ("group", lambda: group_level(tmp, args.group_cts))):
            if key in args.skip:
                continue
            try:
                report[key] = func()
            except Exception as err:  # noqa: BLE001  print what the other parts measured
                print(f"\n{key} benchmark failed: {err!r}")
    report["load_after"] = load_average()
    if args.e2e:
        summary(report)
    print("\nMarkdown for the README (paste as is):\n")
    print(markdown(report))
    (tmp / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {tmp / 'bench.json'}")
    if not args.keep:
        kept = tmp.parent / f"{tmp.name}.json"
        shutil.copy(tmp / "bench.json", kept)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"(folder removed; JSON copied to {kept})")


def analyses(stage, folder, img, data, mask, net_in, prob_img, native, reg, template_path):
    """The per-CT analyses after the network, each as the workflow runs it (its nipype
    interface, in this process, reading and writing its files): IVH split, trial
    measures, QC. Their inputs are written first (not timed)."""
    import nibabel as nib
    import numpy as np

    from deepbleed_bids.interfaces.qc import ComputeQC
    from deepbleed_bids.interfaces.trial import TrialMeasures
    from deepbleed_bids.interfaces.ventricles import HemorrhageSplit
    from deepbleed_bids.nifti import like, voxel_volume_ml

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    prob = np.clip(np.asanyarray(native.dataobj), 0, 1)
    hem = prob >= 0.5
    for name, image in (("clamped", like(data, img, dtype=np.int16)), ("brain", like(mask, img, dtype=np.uint8)),
                        ("template_ct", net_in), ("probseg_t", prob_img),
                        ("hemorrhage", like(hem, img, dtype=np.uint8))):
        files[name] = str(folder / f"{name}.nii.gz")
        nib.save(image, files[name])
    cwd = os.getcwd()
    os.chdir(folder)  # the interfaces write into the working folder, as nipype's nodes do
    try:
        split = stage("IVH split", lambda: HemorrhageSplit(
            template_ct=files["template_ct"], probseg_template=files["probseg_t"], reference=files["clamped"],
            transform=reg["transform"], brain_mask=files["brain"], hemorrhage_mask=files["hemorrhage"]).run())
        stage("trial measures", lambda: TrialMeasures(
            reference=files["clamped"], brain_mask=files["brain"], hemorrhage_mask=files["hemorrhage"],
            transform=reg["transform"], hemorrhage_dseg=split.outputs.out_dseg,
            split=split.outputs.split).run())
        stage("QC", lambda: ComputeQC(
            in_ct=files["clamped"], brain_mask=files["brain"], hemorrhage_mask=files["hemorrhage"],
            hemorrhage_volume_ml=float(hem.sum() * voxel_volume_ml(img)), similarity=float(reg["similarity"]),
            registered=files["template_ct"], template=str(template_path)).run())
    finally:
        os.chdir(cwd)


def calibrate(model, vol, path, fraction=0.003):
    """Shift the random model's output bias so that ``fraction`` of the grid is >= 0.5
    (0.3 %: ~20 mL) and save it for the end-to-end runs: its cost is the published
    model's, and QC, resampling and report get a hemorrhage-sized mask instead of a
    random network's whole head."""
    import numpy as np
    from scipy.special import expit

    from deepbleed_bids.model.predict import predict_volume

    layer = model.get_layer("outblock_binary")
    sigmoid, layer.activation = layer.activation, (lambda x: x)
    logits = predict_volume(model, vol)
    layer.activation = sigmoid
    kernel, bias = layer.get_weights()
    shift = np.quantile(logits, 1 - fraction)
    layer.set_weights([kernel, bias - shift])
    model.save_weights(str(path))
    return expit(logits - shift).astype(np.float32)  # no overflow warning on large logits


def precision_table(args, net_in, template, vol):
    """VNet forward time per precision (the benchmark's model) and demo-model agreement with fp32."""
    import keras
    import numpy as np

    from deepbleed_bids.metrics import dice
    from deepbleed_bids.model.device import configure, cpu_flags, plan_precision, visible_gpus
    from deepbleed_bids.model.predict import predict_volume
    from deepbleed_bids.model.vnet import build_vnet
    from deepbleed_bids.model.zoo import load_model, resolve_model
    from deepbleed_bids.synth import insert_hematoma

    gpus = visible_gpus()
    runnable = [p for p in args.precisions
                if plan_precision(p, bool(gpus), None, cpu_flags())[0] == p]
    skipped = [p for p in args.precisions if p not in runnable]
    # synthetic hematomas in the registered real head (the network's own grid)
    rng = np.random.default_rng(13)
    brain_t = np.asanyarray(net_in.dataobj) != 0
    cases = []
    for volume_ml, location in HEMATOMAS:
        case, truth, _ = insert_hematoma(net_in, brain_t, volume_ml, rng=rng, location=location)
        cases.append((f"{volume_ml:g} mL {location}", np.asanyarray(case.dataobj).astype(np.float32)))
    demo = resolve_model("synthetic-demo")
    rows, reference = [], {}
    for prec in runnable:
        plan = configure("gpu" if gpus else "cpu", threads=args.threads, precision=prec)
        model = (load_model(resolve_model(args.model), input_shape=(128, 128, 128, 1)) if args.model
                 else build_vnet(input_shape=(128, 128, 128, 1)))
        start = time.perf_counter()
        predict_volume(model, vol, device=plan["device"])
        forward = time.perf_counter() - start
        del model
        demo_model = load_model(demo, input_shape=(128, 128, 128, 1))
        agreement = []
        for name, x in cases:
            mask = predict_volume(demo_model, x, device=plan["device"]) >= 0.5
            if prec == runnable[0]:
                reference[name] = mask
            ref = reference[name]
            vref, v = ref.sum(), mask.sum()
            agreement.append({"case": name, "dice": float(dice(ref, mask)),
                              "volume_ml": float(v * 1.5 ** 3 / 1000),
                              "volume_diff_pct": float(100 * abs(int(v) - int(vref)) / max(int(vref), 1))})
        rows.append({"precision": prec, "forward_s": round(forward, 2), "agreement": agreement})
    keras.mixed_precision.set_global_policy("float32")
    print(f"\nPrecision ({'GPU ' + gpus[0] if gpus else 'CPU'}; not runnable here: "
          f"{', '.join(skipped) or 'none'}): VNet forward 128^3 of the benchmark model, and the "
          f"synthetic-demo model vs {runnable[0]} on {len(cases)} synthetic hematomas in the real head")
    print(f"{'precision':<10}{'forward s':>10}{'speed-up':>10}{'min Dice':>10}{'max vol diff %':>16}")
    base = rows[0]["forward_s"]
    for row in rows:
        dices = [a["dice"] for a in row["agreement"]]
        diffs = [a["volume_diff_pct"] for a in row["agreement"]]
        row["min_dice"], row["max_volume_diff_pct"] = round(min(dices), 4), round(max(diffs), 3)
        print(f"{row['precision']:<10}{row['forward_s']:>10.2f}{base / row['forward_s']:>9.2f}x"
              f"{min(dices):>10.4f}{max(diffs):>16.2f}")
    for a in rows[-1]["agreement"]:
        print(f"  {rows[-1]['precision']} {a['case']:<18} Dice {a['dice']:.4f}, "
              f"volume {a['volume_ml']:.2f} mL ({a['volume_diff_pct']:.2f}% from {runnable[0]})")
    return {"device": gpus[0] if gpus else "CPU", "skipped": skipped, "rows": rows}


def _env(tmp, data_dir):
    from deepbleed_bids.assets import prepopulate_cache

    home = tmp / "home"
    if not home.is_dir():
        prepopulate_cache(home, data_dir)
    return {**os.environ, "DEEPBLEED_HOME": str(home), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(TOP), os.environ.get("PYTHONPATH")]))}


# Runs the command and reports the peak RSS of its largest process. It is measured from
# this small parent: a child started by the benchmark itself (GBs of TensorFlow and images
# by then) would report the benchmark's RSS as its own, as Linux keeps the high-water mark
# across the exec.
_PEAK = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
         "print(f'peak-rss-kb {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
         "sys.exit(code)")


def _run(cmd, env):
    """Run a command; (wall seconds, peak GB of its biggest process, CompletedProcess)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("peak-rss-kb ")]
    peak = int(peak_kb[-1]) / 1024 ** 2 if peak_kb else float("nan")
    # CPU seconds of the command and every process it waited for (nipype workers)
    proc.cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        print(proc.stderr[-3000:])
    return wall, peak, proc


def run_e2e(head, data_dir, tmp, args):
    """``run.py bids out participant`` on the head, as a user runs it (fresh work dir),
    ``--e2e-runs`` times: the median run is the one reported (wall time on a 2-core
    machine varies by ~2 s between identical runs); the report and group parts use the
    first run's outputs."""
    from deepbleed_bids.testing import write_bids_dataset

    bids = write_bids_dataset(tmp / "bids", {"sub-01/ct/sub-01_ct.nii.gz": head})
    model = args.model or str(tmp / "random.weights.h5")  # saved by calibrate()
    runs = []
    for i in range(args.e2e_runs):
        out, work = (tmp / "out", tmp / "work") if i == 0 else (tmp / f"out{i}", tmp / f"work{i}")
        cmd = [sys.executable, str(TOP / "run.py"), str(bids), str(out), "participant",
               "--model", model, "--nprocs", "1", "--omp-nthreads", str(args.threads),
               "--work-dir", str(work)]
        wall, peak, proc = _run(cmd, _env(tmp, data_dir))
        sidecar = next(out.rglob("*desc-hemorrhage_mask.json"), None)
        timings = json.loads(sidecar.read_text())["Timings"] if sidecar else {}
        runs.append({"wall_s": round(wall, 2), "cpu_s": round(proc.cpu_s, 2), "peak_gb": round(peak, 3),
                     "exit": proc.returncode, "timings": timings})
        print(f"\nrun.py participant, run {i + 1} of {args.e2e_runs} (one image, fresh work dir, "
              f"--nprocs 1 --omp-nthreads {args.threads}): {wall:.1f} s wall, {proc.cpu_s:.1f} CPU s, "
              f"peak {peak:.2f} GB, exit {proc.returncode}")
    median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    print(f"  median run: {median['wall_s']:.1f} s (all: {', '.join(str(r['wall_s']) for r in runs)} s); "
          "its nodes' own timings (sidecar Timings; segmentation includes vnet_forward):")
    for name, secs in median["timings"].items():
        print(f"  {name:<20}{secs:>8.2f} s")
    return {**median, "runs_wall_s": [r["wall_s"] for r in runs],
            "peak_gb": max(r["peak_gb"] for r in runs), "model": model}


def time_report(tmp, repeats=3, threads=1):
    """The participant report rebuilt from the e2e outputs, in this process: seconds per CT,
    on ``threads`` threads (the e2e run's: --nprocs 1 x --omp-nthreads THREADS).
    The first build also imports matplotlib and Pillow (once per run, not per CT); the
    figure is the median of the next ``repeats``."""
    from deepbleed_bids.reports.participant import write_participant_report

    times, cpu = [], []
    for _ in range(repeats + 1):
        start, c = time.perf_counter(), time.process_time()
        write_participant_report(tmp / "out", tmp / "bids", "01", threads=threads)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - c)
    warm = sorted(times[1:])[len(times[1:]) // 2]
    print(f"\nparticipant report: {warm:.2f} s per CT ({sorted(cpu[1:])[len(cpu) // 2 - 1]:.2f} CPU s; "
          f"first build with imports {times[0]:.2f} s)")
    return {"seconds": round(warm, 2), "cpu_seconds": round(sorted(cpu[1:])[len(cpu) // 2 - 1], 2),
            "first_s": round(times[0], 2)}


THROUGHPUT_RUNS = (("A", 1, 1), ("B", 2, 1), ("C", 1, 2))  # (name, --nprocs, --omp-nthreads)


def throughput(head, tmp, args, model):
    """N copies of the head, runs A, B, C (see THROUGHPUT in the module docstring): images per hour."""
    from deepbleed_bids.testing import write_bids_dataset

    n = args.throughput_images
    bids = write_bids_dataset(tmp / "cohort", {f"sub-{i:02d}/ct/sub-{i:02d}_ct.nii.gz": head
                                              for i in range(1, n + 1)})
    out = {"images": n, "runs": {}}
    for name, nprocs, omp in THROUGHPUT_RUNS:
        cmd = [sys.executable, str(TOP / "run.py"), str(bids), str(tmp / f"cohort-out-{name}"),
               "participant", "--model", model, "--nprocs", str(nprocs), "--omp-nthreads", str(omp),
               "--work-dir", str(tmp / f"cohort-work-{name}")]
        load = load_average()[0]
        wall, _, proc = _run(cmd, _env(tmp, None))
        # CPU s: the same work should cost the same CPU time in A, B and C (more in B or C
        # means threads or processes fight over cores); CPU s / wall s: cores actually used
        out["runs"][name] = {"nprocs": nprocs, "omp_nthreads": omp, "wall_s": round(wall, 1),
                             "images_per_hour": round(3600 * n / wall, 1), "exit": proc.returncode,
                             "cpu_s": round(proc.cpu_s, 1), "cores_used": round(proc.cpu_s / wall, 2),
                             "load_before": round(load, 1)}
        print(f"throughput {name}: --nprocs {nprocs} --omp-nthreads {omp}: {n} images in {wall:.0f} s "
              f"= {3600 * n / wall:.1f} images/hour; {proc.cpu_s:.0f} CPU s, {proc.cpu_s / wall:.2f} cores used "
              f"(exit {proc.returncode}, load before {load:.1f})")
    r = out["runs"]
    out["scaling"] = round(r["B"]["images_per_hour"] / r["A"]["images_per_hour"], 2)
    out["core_lab"] = round(r["B"]["images_per_hour"] / r["C"]["images_per_hour"], 2)
    return out


def group_level(tmp, n):
    """The group level over n participants whose outputs are copies of sub-01's (hard links)."""
    bids, out = tmp / "group-bids", tmp / "group-out"
    src_out, src_bids = tmp / "out" / "sub-01", tmp / "bids" / "sub-01"
    for root in (bids, out):
        root.mkdir()
    shutil.copy(tmp / "bids" / "dataset_description.json", bids)
    shutil.copy(tmp / "out" / "dataset_description.json", out)
    lines = ["participant_id"]
    for i in range(1, n + 1):
        sub = f"sub-{i:04d}"
        lines.append(sub)
        for src, dst_root in ((src_bids, bids), (src_out, out)):
            for path in src.rglob("*"):
                if path.is_dir() or path.parent.name == "log":
                    continue
                dst = dst_root / sub / path.relative_to(src).parent / path.name.replace("sub-01", sub)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".json":
                    dst.write_text(path.read_text().replace("sub-01", sub))
                else:
                    os.link(path, dst)
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, str(TOP / "run.py"), str(bids), str(out), "group"]
    wall, _, proc = _run(cmd, _env(tmp, None))
    rows = max(0, len((out / "group" / "volumes.tsv").read_text().splitlines()) - 1) \
        if (out / "group" / "volumes.tsv").is_file() else 0
    return {"participants": n, "wall_s": round(wall, 1), "rows": rows, "exit": proc.returncode}


def summary(report):
    e2e, tp, grp, rep = (report.get(k) for k in ("e2e", "throughput", "group", "report"))
    print("\n==== summary (targets from issue #13) ====")
    print(f"CPU: {report['cpu']}, {report['cores']} cores; load average "
          f"{report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after")
    print(f"sum of core stages       {report['core_sum_s']:8.1f} s")
    print(f"sum of stages            {report['stage_sum_s']:8.1f} s   (core + IVH split, trial measures, QC)")
    print(f"run.py participant wall  {e2e['wall_s']:8.1f} s   (median of {e2e['runs_wall_s']})")
    print(f"ratio e2e / stages       {e2e['ratio']:8.2f}     (target <= 1.3; e2e / core stages "
          f"{e2e['ratio_core']:.2f}; CPU time e2e / stages {e2e['ratio_cpu']:.2f})")
    if rep:
        print(f"report per CT            {rep['seconds']:8.2f} s   (target <= 2)")
    print(f"peak memory, one image   {e2e['peak_gb']:8.2f} GB  (target <= 3)")
    chk = report.get("registration_threads_check")
    if chk:
        print(f"registration {report['registration_threads']} vs {chk['threads']} thread(s) "
              f"{chk['seconds_at_workflow_threads']:.2f} vs {chk['seconds']:.2f} s; same transform: "
              f"{chk['identical_transform']}")
    for row in (report.get("precision") or {}).get("rows", []):
        print(f"VNet forward {row['precision']:<5}       {row['forward_s']:8.2f} s   min Dice "
              f"{row['min_dice']:.4f}, max volume diff {row['max_volume_diff_pct']:.2f}% "
              "(target >= 0.99, <= 1%)")
    if tp:
        for name, run in tp["runs"].items():
            print(f"throughput {name} (--nprocs {run['nprocs']} --omp-nthreads {run['omp_nthreads']}) "
                  f"{run['images_per_hour']:8.1f} images/hour ({tp['images']} images in {run['wall_s']:.0f} s, "
                  f"{run['cpu_s']:.0f} CPU s, {run['cores_used']:.2f} cores used, exit {run['exit']})")
        print(f"scaling B/A              {tp['scaling']:8.2f}x    (target >= 1.7)")
        print(f"core lab B/C             {tp['core_lab']:8.2f}x    (two images at once vs one with both cores)")
    if grp:
        print(f"group level, {grp['participants']} CTs  {grp['wall_s']:8.1f} s   ({grp['rows']} rows in "
              f"volumes.tsv, exit {grp['exit']}; target <= 60 s)")


def markdown(report):
    """The run as markdown tables, ready for the README's performance section."""
    lines = [f"Run: `{report['command']}`, {report['date']}; CPU **{report['cpu']}**, {report['cores']} cores; "
             f"load average {report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after; "
             f"model: {report['model']}.", "",
             f"| stage, in one process ({report['threads']} threads, registration "
             f"{report['registration_threads']}) | seconds | CPU s | peak GB |", "|---|---|---|---|"]
    for name, row in report["stages"].items():
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} | {row['peak_gb']:.2f} |")
    lines.append(f"| **sum of core stages** (issue #13's list) | **{report['core_sum_s']:.1f}** | | |")
    lines.append(f"| **sum of stages** (core + IVH split, trial measures, QC) | **{report['stage_sum_s']:.1f}** | | |")
    lines += ["", "| measure (same run) | result | target |", "|---|---|---|"]
    e2e, tp, grp, rep = (report.get(k) for k in ("e2e", "throughput", "group", "report"))
    if e2e:
        lines.append(f"| `run.py participant`, one image, fresh work dir, `--nprocs 1 --omp-nthreads "
                     f"{report['threads']}`, median of {len(e2e['runs_wall_s'])} runs | {e2e['wall_s']:.1f} s wall; **{e2e['ratio']:.2f} x the stage sum** "
                     f"({e2e['ratio_core']:.2f} x the core stages; CPU time {e2e['cpu_s']:.0f} s, "
                     f"{e2e['ratio_cpu']:.2f} x the stages' CPU time) | <= 1.3 x |")
        lines.append(f"| peak memory of those runs (largest process) | {e2e['peak_gb']:.2f} GB | <= 3 GB |")
    chk = report.get("registration_threads_check")
    if chk:
        lines.append(f"| registration on {report['registration_threads']} vs {chk['threads']} thread(s) | "
                     f"{chk['seconds_at_workflow_threads']:.2f} vs {chk['seconds']:.2f} s; same transform, "
                     f"bit for bit: {'yes' if chk['identical_transform'] else 'NO'} | same transform |")
    if rep:
        lines.append(f"| participant report, per CT | {rep['seconds']:.2f} s ({rep['cpu_seconds']:.2f} CPU s) | <= 2 s |")
    if grp:
        lines.append(f"| group level, {grp['participants']} CTs (outputs copied from the one run) | "
                     f"{grp['wall_s']:.1f} s ({grp['rows']} rows in volumes.tsv) | <= 60 s |")
    if tp:
        for name, run in tp["runs"].items():
            lines.append(f"| throughput {name}, {tp['images']} images, `--nprocs {run['nprocs']} --omp-nthreads "
                         f"{run['omp_nthreads']}` | {run['images_per_hour']:.1f} images/hour ({run['wall_s']:.0f} s; "
                         f"{run['cpu_s']:.0f} CPU s, {run['cores_used']:.2f} cores used) | |")
        lines.append(f"| scaling B / A (same threads per process) | **{tp['scaling']:.2f} x** | >= 1.7 x |")
        lines.append(f"| core lab B / C (two images at once vs one image on every core) | "
                     f"**{tp['core_lab']:.2f} x** | > 1 |")
    prec = report.get("precision")
    if prec:
        lines += ["", f"| precision ({prec['device']}) | VNet forward s | demo model vs "
                  f"{prec['rows'][0]['precision']}: min Dice | max volume difference |", "|---|---|---|---|"]
        for row in prec["rows"]:
            lines.append(f"| {row['precision']} | {row['forward_s']:.2f} | {row['min_dice']:.4f} | "
                         f"{row['max_volume_diff_pct']:.2f} % |")
        for p in prec["skipped"]:
            lines.append(f"| {p} | not runnable on this machine | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
