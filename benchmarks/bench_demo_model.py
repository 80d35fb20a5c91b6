#!/usr/bin/env python3
"""Every figure the README quotes for the bundled ``synthetic-demo`` model, measured.

    python benchmarks/bench_demo_model.py [--nprocs N] [--work-dir DIR] [--out JSON]

Two sets of scans go through ``run.py participant --model synthetic-demo`` (the
whole BIDS-App, native space) and ``deepbleed_bids.evaluation.evaluate`` (what
``deepbleed-bids evaluate`` runs):

- validation: the 20 participants of the model card's validation split, remade
  with ``deepbleed-bids synthesize --seed 0`` (case i depends only on (seed, i),
  so these are the very scans training held out);
- held-out: the lesions of tests/test_demo_model.py (shape seeds 7 and 13, 25 and
  40 mL, never seen in training) and the same head without hemorrhage.

Prints the figures and writes them, with the per-scan rows, the CPU model and
the wall time, to benchmarks/results/demo_model.json (the file the README's
figures are checked against by tests/test_readme_figures.py).
About 20-30 min on a 2-core CPU.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))
from deepbleed_bids.testing import cpu_model  # noqa: E402
RESULTS = TOP / "benchmarks" / "results" / "demo_model.json"
# name: (volume mL, location, shape seed); the lesions of tests/test_demo_model.py
HELD_OUT = {"deep": (25.0, "deep", 7), "lobar": (40.0, "lobar", 13)}



def r3(x):
    return None if x is None else round(float(x), 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", type=Path, help="keep intermediate files here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS.relative_to(TOP)})")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    import pandas as pd

    from deepbleed_bids import synth
    from deepbleed_bids.assets import prepopulate_cache
    from deepbleed_bids.derivatives import derivative_path
    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.ct import clamp_hu
    from deepbleed_bids.evaluation import evaluate
    from deepbleed_bids.model.zoo import resolve_model
    from deepbleed_bids.nifti import like
    from deepbleed_bids.synthdata import EXAMPLE_LABEL, example_source, synthesize
    from deepbleed_bids.testing import convert_ge_head, shared_data_dir
    from deepbleed_bids.utils import write_json_atomic

    data_dir = shared_data_dir()
    if data_dir is None:
        sys.exit("shared test data not found: set DEEPBLEED_TEST_DATA")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="deepbleed-bench-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    prepopulate_cache(home, data_dir)
    os.environ["DEEPBLEED_HOME"] = str(home)
    spec = resolve_model("synthetic-demo")
    card = spec.card
    bids, masks = work / "bids", work / "masks"
    start = time.time()

    # validation split: the same cases `deepbleed-bids synthesize --n 200 --seed 0` made
    validation = card["split"]["validation"]
    source = example_source(work / "source")
    for sub in validation:
        index = int(sub[len("sub-synth"):])
        synthesize(source, bids, masks, 1, seed=card["split"]["seed"], start=index,
                   source_label=EXAMPLE_LABEL, log=lambda msg: print(msg, flush=True))

    # held-out lesions, made exactly as tests/test_demo_model.py makes them
    head = nib.load(convert_ge_head(work / "gehead", data_dir)[0])
    head = like(np.asanyarray(head.dataobj), head)
    brain = extract_brain(clamp_hu(np.asanyarray(head.dataobj)), head.affine)
    truth_ml = {}
    cases = {"normal": (head, np.zeros(head.shape, bool))}
    for name, (volume, location, shape_seed) in HELD_OUT.items():
        img, truth, info = synth.insert_hematoma(head, brain, volume, rng=np.random.default_rng(1000 + shape_seed),
                                                 location=location, shape_seed=shape_seed)
        cases[name] = (img, truth)
        truth_ml[name] = info["volume_ml"]
    rows = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    for name, (img, truth) in cases.items():
        rel = f"sub-{name}/ct/sub-{name}_ct.nii.gz"
        (bids / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, bids / rel)
        mask_path = derivative_path(masks, rel, "mask", desc="hemorrhage")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(like(truth.astype(np.uint8), img, dtype=np.uint8), mask_path)
        rows = rows[rows["participant_id"] != f"sub-{name}"]
        rows.loc[len(rows)] = {"participant_id": f"sub-{name}", "location": "held-out",
                               "n_lesions": str(int(name != "normal")), "volume_ml": str(truth_ml.get(name, 0.0))}
    rows.sort_values("participant_id").to_csv(bids / "participants.tsv", sep="\t", index=False)
    prepared = time.time()

    out_dir = work / "out"
    cmd = [sys.executable, str(TOP / "run.py"), str(bids), str(out_dir), "participant", "--model", "synthetic-demo",
           "--work-dir", str(work / "work"), "--nprocs", str(args.nprocs)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    ran = time.time()
    result = evaluate(out_dir, masks, work / "evaluation")
    scans = pd.read_csv(work / "evaluation" / "evaluation_scans.tsv", sep="\t")
    scans = scans.set_index("participant_id")

    def sidecar(sub):
        return json.loads((out_dir / f"{sub}/ct/{sub}_desc-hemorrhage_mask.json").read_text())

    val = scans.loc[validation]
    with_lesion = val[val["ref_volume_ml"] > 0]
    per_scan = [{"participant_id": sub, "dice": r3(row["dice"]), "volume_ml": r3(row["pred_volume_ml"]),
                 "reference_volume_ml": r3(row["ref_volume_ml"])} for sub, row in val.iterrows()]
    held = {}
    for name in cases:
        sub = f"sub-{name}"
        held[name] = {"dice": r3(scans.loc[sub, "dice"]) if name != "normal" else None,
                      "volume_ml": r3(sidecar(sub)["HemorrhageVolume"]),
                      "reference_volume_ml": r3(truth_ml.get(name, 0.0))}
    out = {
        "script": "benchmarks/bench_demo_model.py",
        "model": {"id": spec.id, "sha256": spec.sha256, "card_val_dice": r3(card["validation"]["val_dice"])},
        "validation": {
            "participants": len(val), "with_lesion": len(with_lesion),
            "dice_median_with_lesion": r3(with_lesion["dice"].median()),
            "dice_mean_with_lesion": r3(with_lesion["dice"].mean()),
            "dice_min_with_lesion": r3(with_lesion["dice"].min()),
            "dice_mean_all": r3(val["dice"].mean()),
            "volume_rmse_ml": r3(np.sqrt(np.mean((val["pred_volume_ml"] - val["ref_volume_ml"]) ** 2))),
            "scans": per_scan,
        },
        "held_out": held,
        "evaluation_cohort": result["cohort"],
        "command": " ".join(["python", "benchmarks/bench_demo_model.py", f"--nprocs {args.nprocs}"]),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "seconds": {"prepare": round(prepared - start, 1), "run_py": round(ran - prepared, 1),
                    "total": round(time.time() - start, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, args.out)
    v = out["validation"]
    print(f"CPU: {out['cpu']} ({out['cpu_count']} cores); run.py on {len(scans)} scans {out['seconds']['run_py']:.0f} s")
    print(f"validation ({v['participants']} scans, {v['with_lesion']} with a lesion): median Dice "
          f"{v['dice_median_with_lesion']:.3f} (mean {v['dice_mean_with_lesion']:.3f}, min "
          f"{v['dice_min_with_lesion']:.3f}) over those with a lesion; mean Dice {v['dice_mean_all']:.3f} over "
          f"all (card val_dice {out['model']['card_val_dice']:.3f}, training-time, template space)")
    for name in HELD_OUT:
        h = held[name]
        print(f"held-out {name}: Dice {h['dice']:.3f}, volume {h['volume_ml']:.2f} vs {h['reference_volume_ml']:.2f} mL")
    print(f"held-out head without hemorrhage: {held['normal']['volume_ml']:.3f} mL")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
