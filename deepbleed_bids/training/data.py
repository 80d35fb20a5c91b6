"""Training data: pair each CT with its reference mask, preprocess both, split by participant.

Reference masks follow the naming of this project's outputs:
``<masks_dir>/sub-X/[ses-Y/]<ct|anat>/<source entities>_desc-hemorrhage_mask.nii.gz``,
on the CT's own (native) grid.
"""
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from .. import bids as B
from ..derivatives import derivative_path
from ..errors import InputError


def log(msg):
    print(f"[deepbleed-bids train {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def mask_path(masks_dir, relpath):
    """Where the reference mask of a CT is expected (the CT's datatype folder first)."""
    first = derivative_path(masks_dir, relpath, "mask", desc="hemorrhage")
    rel = Path(relpath)
    other = "anat" if rel.parent.name == "ct" else "ct"
    second = derivative_path(masks_dir, str(rel.parent.parent / other / rel.name), "mask",
                               desc="hemorrhage")
    return next((p for p in (first, second) if p.is_file()), first)


def check_mask(mask_file, ct_file):
    """InputError unless the mask is a readable 3-D image on the CT's grid with 0/1 values."""
    import nibabel as nib

    from ..metrics import check_same_grid

    try:
        mask = nib.load(str(mask_file))
        ct = nib.load(str(ct_file))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{mask_file}: cannot be read as NIfTI ({err}).") from err
    check_same_grid(mask, ct, str(mask_file), f"its CT {ct_file}")


def collect_pairs(bids_dir, masks_dir, participant_label=(), filters=None):
    """CTs with a usable reference mask, and (relpath, reason) for every CT left out."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise InputError(f"reference mask folder {masks_dir} does not exist.")
    images = B.collect_ct(bids_dir, participant_label, (), filters)
    pairs, skipped = [], []
    for source in images:
        path = mask_path(masks_dir, source["relpath"])
        if not path.is_file():
            skipped.append((source["relpath"], f"no reference mask (expected {path})"))
            continue
        try:
            check_mask(path, source["path"])
        except InputError as err:
            skipped.append((source["relpath"], str(err)))
            continue
        pairs.append({"source": source, "mask": str(path.absolute())})
    if not pairs:
        raise InputError(
            f"no CT in {bids_dir} has a usable reference mask in {masks_dir}: masks must be named like "
            "<masks_dir>/sub-X/[ses-Y/]ct/<CT name without _ct.nii.gz>_desc-hemorrhage_mask.nii.gz "
            "and lie on the CT's own grid. "
            + "; ".join(f"{r}: {why}" for r, why in skipped[:5]))
    return pairs, skipped


def case_file(cases_dir, relpath):
    return Path(cases_dir) / f"{B.image_id(relpath)}.npz"


def prepare_cases(pairs, template, work_dir, brain_extraction="native", seed=1, nprocs=1,
                  omp_nthreads=1, verbose=0):
    """Run the preprocessing workflow (cached in ``work_dir``); returns (case files, failures).

    A second call with the same ``work_dir`` reuses every finished step.
    """
    from ..execution import configure_nipype, run_workflow, workflow_name
    from ..workflows.train import init_training_data_wf

    work_dir = Path(work_dir).absolute()
    cases_dir = work_dir / "cases"
    # MultiProc checks ~nprocs cached nodes per poll: a 2 s poll makes a fully cached
    # 200-case re-run take ~17 min instead of seconds
    _, crash_dir = configure_nipype(work_dir, verbose, poll=0.05)
    wf = init_training_data_wf(pairs, template, cases_dir, work_dir, brain_extraction, seed, omp_nthreads)
    plugin = "Linear" if nprocs == 1 else "MultiProc"
    args = {"n_procs": nprocs, "raise_insufficient": False} if plugin == "MultiProc" else {}
    crashes = {name: reason for name, (reason, _) in run_workflow(wf, plugin, args, crash_dir, kind="case").items()}
    files, failures = [], []
    for pair in pairs:
        rel = pair["source"]["relpath"]
        path = case_file(cases_dir, rel)
        if path.is_file():
            files.append(path)
        else:
            reason = crashes.get(workflow_name(rel, kind="case"), f"preprocessing failed; see {crash_dir}")
            failures.append((rel, reason))
    return files, failures


def load_case(path):
    """One prepared case: {'image': float32 HU, 'mask': uint8, 'meta': dict}."""
    with np.load(path) as data:
        return {"image": data["image"].astype(np.float32), "mask": data["mask"].astype(np.uint8),
                "meta": json.loads(str(data["meta"]))}


def split_participants(subjects, val_fraction=0.2, seed=0, validation=()):
    """(train, validation) participant labels: never one participant on both sides.

    ``validation`` fixes the validation participants; otherwise a seeded shuffle
    puts ``val_fraction`` of them (at least one when there are two or more) aside.
    """
    subjects = sorted({B.strip_label(s, "sub-") for s in subjects})
    if validation:
        val = sorted({B.strip_label(s, "sub-") for s in validation})
        unknown = sorted(set(val) - set(subjects))
        if unknown:
            raise InputError(f"--validation: participant(s) {', '.join('sub-' + u for u in unknown)} "
                             "have no usable CT and mask.")
    else:
        if not 0 <= val_fraction < 1:
            raise InputError(f"--val-fraction {val_fraction}: must be at least 0 and below 1.")
        order = [str(s) for s in np.random.default_rng(seed).permutation(subjects)]
        n_val = int(round(val_fraction * len(subjects)))
        if val_fraction > 0 and len(subjects) > 1:
            n_val = min(max(n_val, 1), len(subjects) - 1)
        val = sorted(order[:n_val])
    train = [s for s in subjects if s not in val]
    if not train:
        raise InputError("no participant is left for training: validate on fewer participants.")
    return train, val
