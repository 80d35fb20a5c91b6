#!/usr/bin/env python3
"""Location, perihematomal edema and midline shift against known truth on the real head.

    python benchmarks/bench_trial_measures.py [--seed 0] [--cases 20] [--shift-cases 0] [--out DIR]

Synthetic hematomas (the project's one generator, deepbleed_bids.synth.trial_case and
insert_ventricular_hematoma) are inserted into the real GE head at a KNOWN location:
"deep" and "lobar" placements of the generator, "infratentorial" (centre drawn inside the
atlas's brain stem / cerebellum carried to the head) and "intraventricular" (a cast inside
a ventricle); each parenchymal clot (5-60 mL) has a hypodense edema rim of 2-8 mm whose
truth mask is known, and clots of >= 15 mL push the brain (mass effect) by a known
displacement field. The head is registered to the template once; the atlas is carried to
it through that transform (the cases stay on its grid), exactly as the participant level
carries it through each scan's own transform. The measures run on the TRUE clot mask, so
they are judged alone (not the network).

Printed: location-class accuracy and confusion (truth = the placement), edema volume error
(estimate vs truth rim; and Volbers' 5-33 HU band alone, without the contralateral check,
for comparison), midline-shift error (truth = the septum points of the unshifted head moved
by the known displacement), per-stage times, peak memory and the CPU model. Times are
noisy on a shared machine. Per-case rows go to ``--out``/cases.tsv.
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))
from deepbleed_bids.testing import cpu_model  # noqa: E402

KINDS = ("deep", "lobar", "infratentorial", "intraventricular")
MIX = ("deep", "lobar", "deep", "lobar", "infratentorial", "deep", "lobar", "infratentorial", "deep", "lobar",
       "intraventricular", "deep", "lobar", "infratentorial", "deep", "lobar", "deep", "lobar", "infratentorial",
       "intraventricular")



def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--shift-cases", type=int, default=0,
                        help="extra midline-only cases: a 40-80 mL mass 24-32 mm beside the septum, pushing "
                             "harder (reach 50 mm) for clinically relevant shifts")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from scipy import ndimage as ndi

    from deepbleed_bids import atlas as A
    from deepbleed_bids import edema as E
    from deepbleed_bids import location as L
    from deepbleed_bids import midline as M
    from deepbleed_bids import synth
    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.nifti import like, voxel_sizes, voxel_volume_ml
    from deepbleed_bids.registration import register_rigid
    from deepbleed_bids.testing import StageTimes, bench_head_and_template

    tmp = Path(tempfile.mkdtemp(prefix="deepbleed-bench-trial-"))
    out_dir = args.out or tmp
    out_dir.mkdir(parents=True, exist_ok=True)
    times = StageTimes()
    timed = times.timed

    img, template = bench_head_and_template(tmp)
    hu0 = np.asanyarray(img.dataobj).astype(np.float32)
    brain = timed("brain extraction", lambda: extract_brain(hu0, img.affine))
    reg = timed("registration (once)", lambda: register_rigid(like(np.where(brain, hu0, 0), img, dtype=np.int16),
                                                              template, str(tmp / "reg_"), threads=1))
    xfm = reg["transform"]
    labels = timed("atlas to the scan", lambda: np.asanyarray(
        A.carry_labels(A.atlas_image(), img, xfm).dataobj).astype(np.int16))
    labels[~brain] = 0
    names = A.atlas_labels()
    vent = labels == A.VENTRICLE_LABEL
    vml = voxel_volume_ml(img)
    zooms = voxel_sizes(img.affine)
    plane0 = timed("mid-sagittal plane", lambda: M.skull_plane(hu0, img.affine, brain, M.plane_from_transform(xfm)))
    base = M.midline_shift(hu0, img.affine, brain, vent, plane=plane0)
    d0, p0, _ = M.midline_points(hu0, img.affine, brain, vent, plane0[0], plane0[1])
    infra = np.isin(labels, [i for i, n in names.items() if L.region_class(n) == "infratentorial"])
    infra &= ndi.distance_transform_edt(brain, sampling=zooms) >= 10
    infra_idx = np.argwhere(infra)
    print(f"head: {img.shape} voxels {np.round(zooms, 2)} mm; baseline midline shift "
          f"{base['MidlineShiftSigned']} mm from {base['MidlineLines']} septum lines")

    rng = np.random.default_rng(args.seed)
    rows = []
    for k in range(args.cases):
        kind = MIX[k % len(MIX)]
        t0 = time.perf_counter()
        truth_edema, pushed, centre = None, False, None
        if kind == "intraventricular":
            vol = float(rng.uniform(5, 25))
            case, clot, _, info = synth.insert_ventricular_hematoma(img, brain, vol, rng, kind="cast")
            moved = brain
            rim = 0.0
        else:
            vol = float(np.exp(rng.uniform(np.log(5), np.log(60)))) if kind != "infratentorial" \
                else float(rng.uniform(4, 15))
            rim = float(rng.uniform(2, 8))
            if kind == "infratentorial":
                ijk = infra_idx[rng.integers(len(infra_idx))]
                centre = img.affine[:3, :3] @ ijk + img.affine[:3, 3]
            pushed = kind != "infratentorial" and vol >= 15
            case, clot, truth_edema, moved, info = synth.trial_case(img, brain, rng, vol, kind, centre,
                                                                    edema_mm=rim, push=pushed)
            centre = info["centre_mm"]
        times["case generation"] = times.get("case generation", 0.0) + time.perf_counter() - t0
        hu = np.asanyarray(case.dataobj).astype(np.float32)
        loc = timed("location", lambda: L.hemorrhage_location(clot, labels, moved, vml, names))
        plane = timed("mid-sagittal plane", lambda: M.skull_plane(hu, img.affine, moved,
                                                                  M.plane_from_transform(xfm)))
        est, rec = timed("edema", lambda: E.perihematomal_edema(hu, moved, clot, img.affine, ventricles=vent,
                                                                 plane=plane))
        _, band = timed("edema (band only)", lambda: E.perihematomal_edema(hu, moved, clot, img.affine,
                                                                          ventricles=vent, plane=None))
        mid = timed("midline", lambda: M.midline_shift(hu, img.affine, moved, vent, plane=plane))
        true_shift = float(np.median(d0))
        if pushed:
            true_shift = float(np.median(d0 + synth.mass_effect_shift(p0, centre, vol) @ plane0[0]))
        row = {"case": k, "kind": kind, "volume_ml": round(float(clot.sum() * vml), 2),
               "class": loc["Class"], "largest_region": loc["LargestRegion"],
               "rim_mm": round(rim, 1), "edema_true_ml": None, "edema_ml": rec["EdemaVolume"],
               "edema_band_ml": band["EdemaVolume"], "edema_dice": None,
               "pushed": pushed, "shift_true_mm": round(true_shift, 2),
               "shift_mm": mid.get("MidlineShiftSigned"),
               "plane_tilt_deg": round(float(np.degrees(np.arccos(min(1.0, abs(plane[0] @ plane0[0]))))), 2)}
        if truth_edema is not None:
            row["edema_true_ml"] = round(float(truth_edema.sum() * vml), 2)
            tot = est.sum() + truth_edema.sum()
            row["edema_dice"] = round(float(2 * (est & truth_edema).sum() / tot), 3) if tot else 1.0
        rows.append(row)
        print(f"case {k:2d} {kind:16s} {row['volume_ml']:6.1f} mL -> {loc['Class']!s:16s} "
              f"({loc['LargestRegion']}); edema true {row['edema_true_ml']} est {row['edema_ml']} "
              f"(band {row['edema_band_ml']}); shift true {row['shift_true_mm']} est {row['shift_mm']}",
              flush=True)
    if args.shift_cases:
        shift_table(args, img, brain, vent, xfm, plane0, d0, p0, rng, times, timed, out_dir)
    if not rows:
        print("\nper-stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
        print(f"peak memory {peak_gb():.2f} GB; CPU {cpu_model()} ({os.cpu_count()} cores)")
        return
    df = pd.DataFrame(rows)
    df.to_csv(out_dir / "cases.tsv", sep="\t", index=False, na_rep="n/a")

    print("\n== Location class (truth = where the generator placed the clot)")
    print(f"accuracy {np.mean(df['kind'] == df['class']):.2f} ({int((df['kind'] == df['class']).sum())}/{len(df)})")
    print(pd.crosstab(df["kind"], df["class"].fillna("none"), rownames=["truth"], colnames=["estimate"]).to_string())

    ed = df[df["edema_true_ml"].notna()].copy()
    print(f"\n== Perihematomal edema ({len(ed)} clots with a known rim)")
    for col, label in (("edema_ml", "estimate (band + contralateral check)"),
                       ("edema_band_ml", "Volbers 5-33 HU band alone")):
        err = ed[col].astype(float) - ed["edema_true_ml"].astype(float)
        rel = err / ed["edema_true_ml"].astype(float)
        print(f"{label:40s} mean error {err.mean():+6.2f} mL, MAE {err.abs().mean():5.2f} mL, "
              f"median |rel| {rel.abs().median() * 100:5.1f} %, r {np.corrcoef(ed[col], ed['edema_true_ml'])[0, 1]:.2f}")
    print(f"mean Dice of the edema mask with the true rim: {ed['edema_dice'].astype(float).mean():.2f}")
    for kind in ("deep", "lobar", "infratentorial"):
        sub = ed[ed["kind"] == kind]
        if len(sub):
            err = sub["edema_ml"].astype(float) - sub["edema_true_ml"].astype(float)
            print(f"  {kind:16s} n={len(sub):2d} mean error {err.mean():+6.2f} mL, MAE {err.abs().mean():5.2f} mL")

    ms = df[df["shift_mm"].notna()]
    err = ms["shift_mm"].astype(float) - ms["shift_true_mm"].astype(float)
    pushed = ms["pushed"].astype(bool)
    print(f"\n== Midline shift ({len(ms)}/{len(df)} measurable; truth = septum of the unshifted head moved by "
          "the known displacement)")
    print(f"all: MAE {err.abs().mean():.2f} mm, max {err.abs().max():.2f} mm; with mass effect (n={pushed.sum()}): "
          f"MAE {err[pushed].abs().mean():.2f} mm, true shifts {ms['shift_true_mm'][pushed].abs().min():.1f}-"
          f"{ms['shift_true_mm'][pushed].abs().max():.1f} mm")
    print(f"plane tilt vs the unshifted head: max {df['plane_tilt_deg'].max():.2f} deg")

    print(f"\nper-stage times (s, {len(df)} cases; shared CPU, noisy): "
          + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    print(f"peak memory {peak_gb():.2f} GB; CPU {cpu_model()} ({os.cpu_count()} cores); cases in {out_dir / 'cases.tsv'}")


def shift_table(args, img, brain, vent, xfm, plane0, d0, p0, rng, times, timed, out_dir):
    """Midline shift on larger, known displacements (see --shift-cases)."""
    import numpy as np
    import pandas as pd

    from deepbleed_bids import midline as M
    from deepbleed_bids import synth

    normal = plane0[0]
    e1, e2 = M._basis(normal)
    rows = []
    for k in range(args.shift_cases):
        vol = float(rng.uniform(40, 80))
        side = float(rng.choice([-1.0, 1.0]))
        centre = np.median(p0, axis=0) + side * rng.uniform(24, 32) * normal + rng.uniform(-10, 10) * e1 \
            + rng.uniform(-8, 8) * e2
        t0 = time.perf_counter()
        case, clot, _, moved, info = synth.trial_case(img, brain, rng, vol, "lobar", centre, edema_mm=0.0,
                                                      reach_mm=50.0)
        times["case generation"] = times.get("case generation", 0.0) + time.perf_counter() - t0
        hu = np.asanyarray(case.dataobj).astype(np.float32)
        plane = timed("mid-sagittal plane", lambda: M.skull_plane(hu, img.affine, moved, M.plane_from_transform(xfm)))
        mid = timed("midline", lambda: M.midline_shift(hu, img.affine, moved, vent, plane=plane))
        true = float(np.median(d0 + synth.mass_effect_shift(p0, centre, vol, reach_mm=50.0) @ normal))
        rows.append({"case": k, "volume_ml": round(float(info["volume_ml"]), 1), "shift_true_mm": round(true, 2),
                     "shift_mm": mid.get("MidlineShiftSigned"), "structure": mid.get("MidlineStructure")})
        print(f"shift case {k}: {vol:5.1f} mL, true {true:+.2f} mm, estimate {mid.get('MidlineShiftSigned')} "
              f"({mid.get('MidlineStructure')}, {mid.get('MidlineLines')} lines)", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out_dir / "shift_cases.tsv", sep="\t", index=False, na_rep="n/a")
    ok = df[df["shift_mm"].notna()]
    err = ok["shift_mm"].astype(float) - ok["shift_true_mm"].astype(float)
    print(f"\n== Midline shift, larger displacements ({len(ok)}/{len(df)} measurable; true |shift| "
          f"{df['shift_true_mm'].abs().min():.1f}-{df['shift_true_mm'].abs().max():.1f} mm)")
    print(f"MAE {err.abs().mean():.2f} mm, max {err.abs().max():.2f} mm, mean signed {err.mean():+.2f} mm")


if __name__ == "__main__":
    main()
