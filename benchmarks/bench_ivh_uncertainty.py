#!/usr/bin/env python3
"""Does the per-scan uncertainty mean something, and how well is the IVH part estimated?

    python benchmarks/bench_ivh_uncertainty.py [--seed 0] [--per-kind 5] [--mc-passes 2] [--out DIR]
    python benchmarks/bench_ivh_uncertainty.py --ivh-only [--seed 0] [--per-kind 5]

Synthetic hematomas of known volume (the project's one generator, deepbleed_bids.synth)
are inserted into the real GE head, including hard ones: small (0.5-4 mL), skull-adjacent
("superficial"), low-contrast (mean 42-50 HU, against 20-45 HU brain), clots breaking
from the parenchyma into a ventricle ("extension") and clots centred inside a ventricle
("cast"), beside typical deep/lobar bleeds. The head is registered to the template once
(the rigid transform does not depend on a small lesion); each case is resampled onto the
template grid exactly as the pipeline does (nearest neighbour, 0 outside the brain), the
bundled ``synthetic-demo`` model runs directly on it (identity, left-right flip,
``--mc-passes`` Monte-Carlo dropout passes per orientation, and the identity input with the
brain's HU shifted by -4 and +4: ``flip+hu`` is the flip result with that calibration
interval), and the averaged probability goes back to native space (linear, 0.5 level) as in
the pipeline.

Table 1 (per --tta mode, all cases): Spearman rank correlation between each uncertainty
measure and the absolute volume error; how many of the worst 10 % of cases (largest
absolute error) the ``uncertain`` flag catches, and how many cases it flags.
Table 2 (extension and cast cases): error of the estimated intraventricular volume
(deepbleed_bids.ventricles) against the generator's truth, for the true hemorrhage mask
(the split alone) and for the network's mask (what a user gets); the target is <= 2 mL
or <= 15 %.
``--ivh-only`` (the IVH validation set; Table 2 only, identity + flip passes): extension,
cast, pure (blood confined to the ventricles), small_ivh (0.5-3 mL, pure or cast) and
mass_effect (a 30-80 mL deep clot that pushes the ventricles aside and grows around them:
true IVH 0) and large_extension (a 25-60 mL clot breaking into a ventricle), ``--per-kind``
each. Table 2b: the cases where the split's mass-effect fit ran, with the two IVH readings
it then reports (blood filling the displaced ventricles / only pushing them aside): is the
truth within that range, widened by the target?
Also printed: per-stage times, peak memory and the CPU model. Per-case rows go to
``--out``/cases.tsv.
"""
import argparse
import json
import math
import os
import resource
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))
from deepbleed_bids.testing import cpu_model  # noqa: E402

KINDS = ("typical", "small", "superficial", "low_contrast", "extension", "cast")
# --ivh-only: the IVH validation set (Table 2 only): clots breaking into a ventricle, casts,
# pure IVH (confined to the ventricles), small IVH (0.5-3 mL) and large deep clots that push
# the ventricles (mass effect) without filling them, and large (25-60 mL) clots breaking into a
# ventricle (these, like mass effect, start the split's mass-effect fit; appended last so the
# first 25 cases of a seed stay the same)
IVH_KINDS = ("extension", "cast", "pure", "small_ivh", "mass_effect", "large_extension")



def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def make_case(kind, img, brain, rng):
    """(image, truth mask, truth IVH mask or None, info) of one synthetic case."""
    import numpy as np

    from deepbleed_bids import synth

    if kind in ("extension", "cast"):
        volume = float(np.exp(rng.uniform(np.log(3.0), np.log(50.0))))
        return synth.insert_ventricular_hematoma(img, brain, volume, rng, kind=kind)
    if kind == "pure":
        volume = float(np.exp(rng.uniform(np.log(2.0), np.log(30.0))))
        return synth.insert_ventricular_hematoma(img, brain, volume, rng, kind="pure")
    if kind == "small_ivh":
        volume = float(rng.uniform(0.5, 3.0))
        return synth.insert_ventricular_hematoma(img, brain, volume, rng, kind=["pure", "cast"][rng.integers(2)])
    if kind == "large_extension":
        return synth.insert_ventricular_hematoma(img, brain, float(rng.uniform(25.0, 60.0)), rng, kind="extension")
    if kind == "mass_effect":
        volume = float(rng.uniform(30.0, 80.0))
        return synth.insert_ventricular_hematoma(img, brain, volume, rng, kind="mass_effect")
    if kind == "typical":
        volume, loc, extra = float(np.exp(rng.uniform(np.log(10), np.log(70)))), ["deep", "lobar"][rng.integers(2)], {}
    elif kind == "small":
        volume, loc, extra = float(rng.uniform(0.5, 4.0)), ["deep", "lobar"][rng.integers(2)], {}
    elif kind == "superficial":
        volume, loc, extra = float(np.exp(rng.uniform(np.log(3), np.log(40)))), "superficial", {}
    else:  # low contrast: a bleed barely denser than grey matter (anaemia, subacute clot)
        volume, loc = float(np.exp(rng.uniform(np.log(5), np.log(40)))), ["deep", "lobar"][rng.integers(2)]
        extra = {"mean_hu": float(rng.uniform(42, 50)), "texture_sd": 4.0, "hu_range": (34, 60)}
    out, mask, info = synth.insert_hematoma(img, brain, volume, rng, location=loc, **extra)
    return out, mask, None, info


def spearman(x, y):
    from scipy.stats import spearmanr

    x, y = list(x), list(y)
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=5, help="cases per kind (6 kinds)")
    parser.add_argument("--mc-passes", type=int, default=2, help="Monte-Carlo dropout passes per orientation")
    parser.add_argument("--out", type=Path, default=None, help="folder for cases.tsv and tables.json")
    parser.add_argument("--from-tsv", type=Path, default=None, help="only print the tables of a cases.tsv")
    parser.add_argument("--ivh-only", action="store_true",
                        help=f"only the IVH validation set ({', '.join(IVH_KINDS)}; identity + flip passes, Table 2)")
    args = parser.parse_args()
    if args.from_tsv:
        import pandas as pd

        tables(pd.read_csv(args.from_tsv, sep="\t"), args.mc_passes, args.from_tsv.parent, {})
        return

    import numpy as np
    import pandas as pd

    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.model.device import configure
    from deepbleed_bids.model.predict import (
        CALIBRATION_HU,
        calibration_passes,
        predict_passes,
    )
    from deepbleed_bids.model.zoo import load_model, resolve_model
    from deepbleed_bids.nifti import like, voxel_volume_ml
    from deepbleed_bids.registration import register_rigid, to_native, to_template
    from deepbleed_bids.testing import StageTimes, bench_head_and_template
    from deepbleed_bids.uncertainty import (
        calibration_agreement,
        pass_agreement,
        summarise,
    )
    from deepbleed_bids.ventricles import split_hemorrhage

    tmp = Path(tempfile.mkdtemp(prefix="deepbleed-bench-ivh-"))
    out_dir = args.out or tmp
    out_dir.mkdir(parents=True, exist_ok=True)
    times = StageTimes()
    timed = times.timed

    img, template = bench_head_and_template(tmp)
    hu0 = np.asanyarray(img.dataobj)
    brain = timed("brain extraction", lambda: extract_brain(hu0, img.affine))
    reg = timed("registration (once)", lambda: register_rigid(like(np.where(brain, hu0, 0), img, dtype=np.int16),
                                                              template, str(tmp / "reg_"), threads=1))
    xfm = reg["transform"]
    plan = configure("cpu", threads=os.cpu_count())
    spec = resolve_model("synthetic-demo")
    model = load_model(spec, input_shape=(*((spec.patch_size,) * 3 if spec.patch_size else (128,) * 3), 1))
    from deepbleed_bids.model.predict import dropout_twin

    mc_model = dropout_twin(model, spec)  # the demo model was trained with dropout 0.1
    vml = voxel_volume_ml(img)
    tml = voxel_volume_ml(template)
    rng = np.random.default_rng(args.seed)
    rows = []
    kinds = [k for k in (IVH_KINDS if args.ivh_only else KINDS) for _ in range(args.per_kind)]
    for n, kind in enumerate(kinds):
        try:
            case, truth, ivh, info = timed("insert lesion", lambda: make_case(kind, img, brain, rng))
        except ValueError as err:
            print(f"case {n} ({kind}) skipped: {err}", flush=True)
            continue
        hu = np.asanyarray(case.dataobj).astype(np.float32)
        net_in = timed("to template (NN)", lambda: to_template(like(np.where(brain, hu, 0), img, dtype=np.float32),
                                                               template, xfm))
        vol = np.asanyarray(net_in.dataobj).astype(np.float32)
        passes, _ = timed("VNet passes", lambda: predict_passes(model, vol, "flip" if args.ivh_only else "flip+mc",
                                                                 patch_size=spec.patch_size or 0,
                                                                 device=plan["device"], mc_passes=args.mc_passes,
                                                                 seed=args.seed + n, mc_model=mc_model))
        true_ml = float(truth.sum() * vml)
        row = {"case": n, "kind": kind, "true_ml": true_ml}
        modes = (("none", passes[:1]), ("flip", passes[:2])) + (() if args.ivh_only else (("flip+mc", passes),))
        calib = {}
        if not args.ivh_only:  # flip+hu: the flip result with the brain's HU shifted by -/+4 (not averaged in)
            shifted = timed("VNet passes", lambda: calibration_passes(
                model, vol, CALIBRATION_HU, patch_size=spec.patch_size or 0, device=plan["device"]))
            calib = calibration_agreement(passes[0], shifted, CALIBRATION_HU, tml)
        for mode, sub in modes:
            prob_t = np.mean(sub, axis=0) if len(sub) > 1 else sub[0]
            prob = timed("to native (linear)", lambda: np.clip(np.asanyarray(
                to_native(like(prob_t, template, dtype=np.float32), img, xfm, "linear").dataobj), 0, 1))
            mask = prob >= 0.5
            volume = float(mask.sum() * vml)
            rec = summarise({**pass_agreement(sub, tml), **(calib if mode == "flip" else {})}, volume, prob, vml)
            cols = {"ml": volume, "abs_err": abs(volume - true_ml), "uncertain_ml": rec["UncertainVolume"],
                    "spread_ml": rec["VolumeSpread"], "pass_dice": rec["PassDice"]}
            row.update({f"{mode}_{k}": v for k, v in cols.items()})
            if mode == "flip":
                flip_mask, flip_prob_t = mask, prob_t
            if "CalibrationInterval" in rec:
                row.update({f"flip+hu_{k}": v for k, v in cols.items()})
                row.update({"flip+hu_cal_low": rec["CalibrationInterval"][0],
                            "flip+hu_cal_high": rec["CalibrationInterval"][1],
                            "flip+hu_cal_spread_ml": rec["CalibrationSpread"]})
        if ivh is not None:
            row.update(true_ivh_ml=info["intraventricular_ml"], true_par_ml=info["parenchymal_ml"])
            for label, hem in (("truthmask", truth), ("network", flip_mask)):
                prob_in = flip_prob_t if label == "network" else np.asanyarray(to_template(
                    like(truth.astype(np.float32), img, dtype=np.float32), template, xfm, "linear").dataobj)
                dseg, _, split = timed("IVH split", lambda: split_hemorrhage(net_in, prob_in, img, xfm, hu, brain, hem))
                row[f"{label}_ivh_ml"] = split["IntraventricularVolume"]
                row[f"{label}_par_ml"] = split["ParenchymalVolume"]
                low, high = split.get("IntraventricularVolumeRange") or (float("nan"), float("nan"))
                row.update({f"{label}_mass_fit": "Caution" in split, f"{label}_ivh_low": low,
                            f"{label}_ivh_high": high})
        rows.append(row)
        pd.DataFrame(rows).to_csv(out_dir / "cases.tsv", sep="\t", index=False, float_format="%.4f")
        print(f"case {n:2d} {kind:<12} true {true_ml:6.2f} mL  none {row['none_ml']:6.2f}  flip {row['flip_ml']:6.2f}"
              f"  unc {row['flip_uncertain_ml']:5.2f}  spread {row[('flip' if args.ivh_only else 'flip+mc') + '_spread_ml']:5.2f}"
              + (f"  IVH true {row['true_ivh_ml']:5.2f} est {row['truthmask_ivh_ml']:5.2f}/{row['network_ivh_ml']:5.2f}"
                 if ivh is not None else ""), flush=True)

    tables(pd.DataFrame(rows), args.mc_passes, out_dir, times)


def tables(df, mc_passes, out_dir, times):
    if "flip+mc_abs_err" not in df.columns:  # --ivh-only: no Table 1
        return ivh_table(df, out_dir, times, {"uncertainty": [], "ivh": []})
    return _tables(df, mc_passes, out_dir, times)


def _tables(df, mc_passes, out_dir, times):
    """Print Tables 1 and 2 (markdown) and write tables.json."""
    from deepbleed_bids import qc as QC

    thresholds = QC.THRESHOLDS
    tables = {"uncertainty": [], "ivh": []}
    print(f"\nTable 1. Uncertainty vs absolute volume error ({len(df)} synthetic cases in the real head, "
          f"synthetic-demo model; flag: uncertain volume > {thresholds['max_uncertain_ml']:g} mL and > "
          f"{thresholds['max_uncertain_ratio']:g} x the volume, or pass spread > "
          f"{thresholds['max_volume_spread_ml']:g} mL, or (+hu) a -/+4 HU shift moving the volume over "
          f"{thresholds['max_calibration_spread_ml']:g} mL and {thresholds['max_calibration_spread_ratio']:g} x it)")
    print("| --tta | passes | mean abs error (mL) | rho(uncertain vol, error) | rho(spread, error) "
          "| rho(calibration spread, error) | worst 10% caught | cases flagged |")
    print("|---|---|---|---|---|---|---|---|")
    n_worst = max(1, int(round(0.1 * len(df))))
    for mode, npass in (("none", 1), ("flip", 2), ("flip+mc", 2 + 2 * mc_passes), ("flip+hu", 4)):
        if f"{mode}_abs_err" not in df.columns:  # rows of an older run
            continue
        err = df[f"{mode}_abs_err"]
        cal = df[f"{mode}_cal_spread_ml"] if f"{mode}_cal_spread_ml" in df.columns else [None] * len(df)
        # the flag's rule on the recorded measures (so --from-tsv re-applies today's thresholds)
        df[f"{mode}_flag"] = [bool(QC.uncertain_reasons(
            {"UncertainVolume": u, "VolumeSpread": s if npass > 1 else None, "HemorrhageVolume": v,
             "CalibrationSpread": c}, thresholds))
            for u, s, v, c in zip(df[f"{mode}_uncertain_ml"], df[f"{mode}_spread_ml"], df[f"{mode}_ml"], cal)]
        worst = df.nlargest(n_worst, f"{mode}_abs_err")
        caught = int(worst[f"{mode}_flag"].sum())
        rho_u = spearman(df[f"{mode}_uncertain_ml"], err)
        rho_s = spearman(df[f"{mode}_spread_ml"], err) if npass > 1 else float("nan")
        rho_c = spearman(cal, err) if cal[0] is not None else float("nan")
        flagged = int(df[f"{mode}_flag"].sum())
        tables["uncertainty"].append({"tta": mode, "passes": npass, "mae_ml": float(err.mean()),
                                      "rho_uncertain": rho_u, "rho_spread": rho_s, "rho_calibration": rho_c,
                                      "worst": n_worst, "worst_caught": caught, "flagged": flagged, "n": len(df)})
        print(f"| {mode} | {npass} | {err.mean():.2f} | {rho_u:.2f} | "
              f"{'n/a' if npass == 1 else f'{rho_s:.2f}'} | {'n/a' if math.isnan(rho_c) else f'{rho_c:.2f}'} | "
              f"{caught}/{n_worst} | {flagged}/{len(df)} |")

    ivh_table(df, out_dir, times, tables)


def target_tol(true_ivh_ml):
    """The IVH target: an error within 2 mL or 15 % of the true IVH, whichever is larger."""
    return (0.15 * true_ivh_ml).clip(lower=2.0)


def ivh_table(df, out_dir, times, tables):
    """Table 2 (per kind and all) and the footer; writes tables.json."""
    ivh = df[df["true_ivh_ml"].notna()] if "true_ivh_ml" in df.columns else df.iloc[:0]
    print(f"\nTable 2. Intraventricular volume estimate ({len(ivh)} cases with known IVH; target: error "
          "<= 2 mL or <= 15 %)")
    print("| hemorrhage mask | kind | n | true IVH mean (mL) | mean abs error (mL) | max abs error (mL) "
          "| bias (mL) | within target | parenchymal mean abs error (mL) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in ("truthmask", "network"):
        for kind, part in [("all", ivh), *[(k, ivh[ivh["kind"] == k]) for k in IVH_KINDS]]:
            if not len(part):
                continue
            e = part[f"{label}_ivh_ml"] - part["true_ivh_ml"]
            ok = e.abs() <= target_tol(part["true_ivh_ml"])
            pe = (part[f"{label}_par_ml"] - part["true_par_ml"]).abs()
            rec = {"mask": label, "kind": kind, "n": len(part), "true_mean_ml": float(part["true_ivh_ml"].mean()),
                   "mae_ml": float(e.abs().mean()), "max_ml": float(e.abs().max()), "bias_ml": float(e.mean()),
                   "within": int(ok.sum()), "parenchymal_mae_ml": float(pe.mean())}
            tables["ivh"].append(rec)
            name = "true mask (split alone)" if label == "truthmask" else "network mask (flip)"
            print(f"| {name} | {kind} | {len(part)} | {rec['true_mean_ml']:.2f} | {rec['mae_ml']:.2f} | "
                  f"{rec['max_ml']:.2f} | {rec['bias_ml']:+.2f} | {rec['within']}/{len(part)} | "
                  f"{rec['parenchymal_mae_ml']:.2f} |")

    if len(ivh) and "truthmask_mass_fit" in ivh.columns:
        print("\nTable 2b. Cases where the mass-effect fit ran: the reported IVH and the range of the two readings "
              "(true IVH within [low - tol, high + tol], tol = max(2 mL, 15 %))")
        print("| hemorrhage mask | kind | n | reported within target | truth within range | mean range width (mL) |")
        print("|---|---|---|---|---|---|")
        for label in ("truthmask", "network"):
            fit = ivh[ivh[f"{label}_mass_fit"].astype(bool)]
            for kind, part in [("all", fit), *[(k, fit[fit["kind"] == k]) for k in IVH_KINDS]]:
                if not len(part):
                    continue
                t = part["true_ivh_ml"]
                tol = target_tol(t)
                ok = (part[f"{label}_ivh_ml"] - t).abs() <= tol
                inside = (t >= part[f"{label}_ivh_low"] - tol) & (t <= part[f"{label}_ivh_high"] + tol)
                width = (part[f"{label}_ivh_high"] - part[f"{label}_ivh_low"]).mean()
                tables.setdefault("ivh_mass_fit", []).append(
                    {"mask": label, "kind": kind, "n": len(part), "within": int(ok.sum()),
                     "inside_range": int(inside.sum()), "mean_width_ml": float(width)})
                name = "true mask (split alone)" if label == "truthmask" else "network mask (flip)"
                print(f"| {name} | {kind} | {len(part)} | {int(ok.sum())}/{len(part)} | "
                      f"{int(inside.sum())}/{len(part)} | {width:.2f} |")

    if "IVH split" in times and len(ivh):
        print(f"IVH split: {times['IVH split'] / (2 * len(ivh)):.1f} s per CT on average (2 per case: true and "
              "network mask; the mass-effect fit, two SyN fits, runs only with >= 20 mL of blood outside the prior)")
    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} logical cores, shared); peak memory {peak_gb():.2f} GB")
    print("stage totals (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    tables["times_s"] = {k: round(v, 2) for k, v in times.items()}
    tables["cpu"] = cpu_model()
    (out_dir / "tables.json").write_text(json.dumps(tables, indent=2, default=float))
    print(f"per-case rows: {out_dir / 'cases.tsv'}")


if __name__ == "__main__":
    main()
