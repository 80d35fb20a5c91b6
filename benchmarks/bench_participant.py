#!/usr/bin/env python3
"""Per-stage wall time, overhead, precision, throughput and peak memory on this machine.

    python benchmarks/bench_participant.py [--model NAME|PATH] [--threads N] [--e2e]
        [--precisions fp32 bf16 ...] [--throughput-images N] [--group-cts N]

1. Stages in this process, in pipeline order, on one real head CT (the GE head,
   gantry-tilted): clamp, brain extraction, rigid registration (with the thread
   count the workflow gives it) and nearest-neighbour resampling to the template
   grid, model loading, VNet forward at 128^3, back to native space. Their sum is
   the work a run cannot avoid. QC and the report are timed too (not in the sum).
   Wall and CPU seconds per stage (CPU time of this process and its finished children:
   unlike wall time it does not grow when others load the machine). CPU targets on a
   2-core CPU: rigid registration <= 25 CPU s, each resampling <= 5 CPU s.
2. Precision: the VNet forward in every precision this machine runs (fp32, and
   bf16 / fp16 where model.device.plan_precision allows them), and the agreement
   with fp32 of the bundled synthetic-demo model on synthetic hematomas inserted
   (deepbleed_bids.synth) into the real head registered to the 128^3 grid: Dice
   and volume difference of the >= 0.5 masks.
3. ``--e2e``: ``run.py ... participant`` on the same image as a user runs it (one
   image, fresh work folder, --nprocs 1): wall time, its ratio to the stage sum
   (target <= 1.3) and peak memory (target <= 3 GB); then cohort throughput
   (``--throughput-images`` copies of the head with --nprocs 1 and --nprocs 2, one
   thread per process: images/hour, target >= 1.7x) and the group level on
   ``--group-cts`` participants made by copying the participant outputs (target
   <= 60 s).

Default model: a published-size VNet with random weights (the published weights
are a download); its masks are meaningless but its cost is the real one.
Wall-clock numbers are only comparable within one run: the script prints the CPU
model and the load average, and a JSON copy of everything.
"""
import argparse
import json
import os
import re
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

# the stages: the work a run cannot avoid (QC and report are listed apart)
SUM_STAGES = ("load+check", "clamp", "brain extraction", "registration", "to template (NN)",
              "load model", "VNet forward 128^3", "to native (linear)")
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
                        help="also run run.py end to end: overhead, throughput, group level")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"],
                        help="precisions to try (those the machine cannot run are skipped)")
    parser.add_argument("--throughput-images", type=int, default=4, metavar="N",
                        help="images for the --nprocs 1 vs 2 comparison (0: skip; the issue's figure is 8)")
    parser.add_argument("--group-cts", type=int, default=1000, metavar="N",
                        help="participants for the group-level timing (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
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
    template_path = data_dir / "templates/deepbleed/scct_unsmooth_SS_0.01_128x128x128.nii.gz"
    template = nib.load(str(template_path))
    reg_threads = workflow_registration_threads(head, template_path, args.threads)
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
              "load_before": load_average()}
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
        model = stage("load model", lambda: build_vnet(input_shape=(128, 128, 128, 1)))
    vol = np.asanyarray(net_in.dataobj).astype(np.float32)
    prob = stage("VNet forward 128^3", lambda: predict_volume(model, vol, device=plan["device"]))
    if not args.model:
        prob = calibrate(model, vol, tmp / "random.weights.h5")
    prob_img = like(prob, template, dtype=np.float32)
    native = stage("to native (linear)", lambda: to_native(prob_img, img, reg["transform"], "linear"))
    stage("QC", lambda: _qc(data, mask, native, img, reg, net_in, template))
    model = None  # free it before the precision runs

    print(f"\nCPU {report['cpu']} ({report['cores']} cores), load average before "
          f"{report['load_before'][0]:.1f}; one real head CT {img.shape} ({head.name}); "
          f"{args.threads} thread(s), registration {reg_threads}; "
          f"model {args.model or 'published-size VNet (random weights)'}")
    print(f"{'stage':<22}{'seconds':>10}{'CPU s':>10}{'peak GB':>10}")
    for name, secs, cpu, peak in rows:
        print(f"{name:<22}{secs:>10.2f}{cpu:>10.2f}{peak:>10.2f}" + ("" if name in SUM_STAGES else "   (not in the sum)"))
    total = sum(s for n, s, *_ in rows if n in SUM_STAGES)
    print(f"{'sum of stages':<22}{total:>10.2f}{'':>10}{max(p for *_, p in rows):>10.2f}")
    report["stages"] = {n: {"seconds": round(s, 3), "cpu_seconds": round(c, 3), "peak_gb": round(p, 3)}
                        for n, s, c, p in rows}
    report["stage_sum_s"] = round(total, 2)

    report["precision"] = precision_table(args, net_in, template, vol)

    if args.e2e:
        e2e = run_e2e(head, data_dir, tmp, args)
        report["e2e"] = e2e
        ratio = e2e["wall_s"] / total
        report["e2e"]["ratio"] = round(ratio, 2)
        report["report_s"] = time_report(tmp)
        for key, enabled, func in (("throughput", args.throughput_images,
                                    lambda: throughput(head, tmp, args, e2e["model"])),
                                   ("group", args.group_cts, lambda: group_level(tmp, args.group_cts))):
            if enabled:
                try:
                    report[key] = func()
                except Exception as err:  # noqa: BLE001  print what the other parts measured
                    print(f"\n{key} benchmark failed: {err!r}")
        report["load_after"] = load_average()
        summary(report)
    (tmp / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {tmp / 'bench.json'}")
    if not args.keep:
        kept = tmp.parent / f"{tmp.name}.json"
        shutil.copy(tmp / "bench.json", kept)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"(folder removed; JSON copied to {kept})")


def calibrate(model, vol, path, fraction=0.003):
    """Shift the random model's output bias so that ``fraction`` of the grid is >= 0.5
    (0.3 %: ~20 mL) and save it for the end-to-end runs: its cost is the published
    model's, and QC, resampling and report get a hemorrhage-sized mask instead of a
    random network's whole head."""
    import numpy as np

    from deepbleed_bids.model.predict import predict_volume

    layer = model.get_layer("outblock_binary")
    sigmoid, layer.activation = layer.activation, (lambda x: x)
    logits = predict_volume(model, vol)
    layer.activation = sigmoid
    kernel, bias = layer.get_weights()
    shift = np.quantile(logits, 1 - fraction)
    layer.set_weights([kernel, bias - shift])
    model.save_weights(str(path))
    return (1.0 / (1.0 + np.exp(-(logits - shift)))).astype(np.float32)


def _qc(data, mask, native, img, reg, net_in, template):
    import numpy as np

    from deepbleed_bids.qc import quality

    bleed = np.asanyarray(native.dataobj) >= 0.5
    return quality(data, mask, bleed, img.affine, similarity=reg["similarity"],
                   registered=np.asanyarray(net_in.dataobj), template=np.asanyarray(template.dataobj))


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


def _run(cmd, env):
    """Run a command; (wall seconds, peak GB of its biggest process, CompletedProcess)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024 ** 2
    if proc.returncode:
        print(proc.stderr[-3000:])
    return wall, peak, proc


def run_e2e(head, data_dir, tmp, args):
    """``run.py bids out participant`` on the head, as a user runs it (fresh work dir)."""
    from deepbleed_bids.testing import write_bids_dataset

    bids = write_bids_dataset(tmp / "bids", {"sub-01/ct/sub-01_ct.nii.gz": head})
    model = args.model or str(tmp / "random.weights.h5")  # saved by calibrate()
    cmd = [sys.executable, str(TOP / "run.py"), str(bids), str(tmp / "out"), "participant",
           "--model", model, "--nprocs", "1", "--omp-nthreads", str(args.threads),
           "--work-dir", str(tmp / "work")]
    wall, peak, proc = _run(cmd, _env(tmp, data_dir))
    sidecar = next((tmp / "out").rglob("*desc-hemorrhage_mask.json"), None)
    timings = json.loads(sidecar.read_text())["Timings"] if sidecar else {}
    print(f"\nrun.py participant (one image, fresh work dir, --nprocs 1 --omp-nthreads {args.threads}): "
          f"{wall:.1f} s wall, peak {peak:.2f} GB, exit {proc.returncode}")
    for name, secs in timings.items():
        print(f"  {name:<20}{secs:>8.2f} s")
    return {"wall_s": round(wall, 2), "peak_gb": round(peak, 3), "exit": proc.returncode,
            "timings": timings, "model": model}


def time_report(tmp):
    """The participant report alone, rebuilt from the e2e outputs (seconds per CT)."""
    from deepbleed_bids.reports.participant import write_participant_report

    start = time.perf_counter()
    write_participant_report(tmp / "out", tmp / "bids", "01")
    return round(time.perf_counter() - start, 2)


def throughput(head, tmp, args, model):
    """N copies of the head, --nprocs 1 then 2 (one thread per process): images per hour."""
    from deepbleed_bids.testing import write_bids_dataset

    n = args.throughput_images
    bids = write_bids_dataset(tmp / "cohort", {f"sub-{i:02d}/ct/sub-{i:02d}_ct.nii.gz": head
                                              for i in range(1, n + 1)})
    out = {"images": n}
    for nprocs in (1, 2):
        cmd = [sys.executable, str(TOP / "run.py"), str(bids), str(tmp / f"cohort-out-{nprocs}"),
               "participant", "--model", model, "--nprocs", str(nprocs), "--omp-nthreads", "1",
               "--work-dir", str(tmp / f"cohort-work-{nprocs}")]
        wall, _, proc = _run(cmd, _env(tmp, None))
        out[f"nprocs{nprocs}"] = {"wall_s": round(wall, 1), "images_per_hour": round(3600 * n / wall, 1),
                                  "exit": proc.returncode}
    out["speedup"] = round(out["nprocs2"]["images_per_hour"] / out["nprocs1"]["images_per_hour"], 2)
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
    wall, _, proc = _run(cmd, _env(tmp, None))  # (RUSAGE_CHILDREN's peak spans every earlier run)
    rows = max(0, len((out / "group" / "volumes.tsv").read_text().splitlines()) - 1) \
        if (out / "group" / "volumes.tsv").is_file() else 0
    return {"participants": n, "wall_s": round(wall, 1), "rows": rows, "exit": proc.returncode}


def summary(report):
    e2e, tp, grp = report["e2e"], report.get("throughput"), report.get("group")
    print("\n==== summary (targets from issue #13) ====")
    print(f"CPU: {report['cpu']}, {report['cores']} cores; load average "
          f"{report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after")
    print(f"sum of stages            {report['stage_sum_s']:8.1f} s")
    print(f"run.py participant wall  {e2e['wall_s']:8.1f} s")
    print(f"ratio e2e / stages       {e2e['ratio']:8.2f}     (target <= 1.3)")
    print(f"report per CT            {report['report_s']:8.2f} s   (target <= 2)")
    print(f"peak memory, one image   {e2e['peak_gb']:8.2f} GB  (target <= 3)")
    for row in report["precision"]["rows"]:
        print(f"VNet forward {row['precision']:<5}       {row['forward_s']:8.2f} s   min Dice "
              f"{row['min_dice']:.4f}, max volume diff {row['max_volume_diff_pct']:.2f}% "
              "(target >= 0.99, <= 1%)")
    if tp:
        for k in ("nprocs1", "nprocs2"):
            print(f"throughput --{k[:-1]} {k[-1]}    {tp[k]['images_per_hour']:8.1f} images/hour "
                  f"({tp['images']} images in {tp[k]['wall_s']:.0f} s, exit {tp[k]['exit']})")
        print(f"throughput speed-up      {tp['speedup']:8.2f}x    (target >= 1.7)")
    if grp:
        print(f"group level, {grp['participants']} CTs  {grp['wall_s']:8.1f} s   ({grp['rows']} rows in "
              f"volumes.tsv, exit {grp['exit']}; target <= 60 s)")


if __name__ == "__main__":
    main()
