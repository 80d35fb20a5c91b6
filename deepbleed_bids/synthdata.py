"""A BIDS training set of synthetic hematomas in one real head CT, with reference masks.

Case ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so a case does
not depend on how many others are made, and a re-run skips finished cases.
Each case is :func:`deepbleed_bids.synth.random_case`: 0-2 lesions of 1-150 mL
(deep, lobar, superficial or breaking into the ventricles), 40-90 HU texture,
scanner noise, a calibration offset and a random rigid pose (affine only).

Layout (the convention ``deepbleed-bids train`` and ``evaluate`` read):
``BIDS/sub-<prefix>NNN/ct/sub-<prefix>NNN_ct.nii.gz`` and
``MASKS/sub-<prefix>NNN/ct/sub-<prefix>NNN_desc-hemorrhage_mask.nii.gz`` on the
same grid (the same affine). ``participants.tsv`` lists each case's lesion
location, count and volume (a grouping column for ``evaluate``).
"""
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from . import synth
from .bids import BIDS_VERSION
from .derivatives import derivative_path
from .utils import write_json_atomic, write_tsv_atomic
from .errors import InputError
from .nifti import like, save_atomic

EXAMPLE_LABEL = "example head CT (dcm_qa_ct In/GE, real GE head, dcm2niix tilt-corrected)"
PARTICIPANT_COLUMNS = ["participant_id", "location", "n_lesions", "volume_ml"]


def load_source(path):
    """The head CT to insert lesions into, in memory (int16 HU stays int16)."""
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"--source {path}: cannot be read as NIfTI ({err}).") from err
    if len(img.shape) != 3:
        raise InputError(f"--source {path}: expected a 3-D head CT, got shape {img.shape}.")
    return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header.copy())


def example_source(work_dir):
    """The example head CT bundled with the package, converted with dcm2niix."""
    from . import assets
    from .dicom import convert_session

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    bids = Path(work_dir) / "example-bids"
    found = sorted(bids.glob("sub-example/ct/*_ct.nii.gz"))
    if not found:
        convert_session(assets.unpack_example_ct(Path(work_dir) / "example-dicom"), bids, "example")
        found = sorted(bids.glob("sub-example/ct/*_ct.nii.gz"))
    if not found:
        raise InputError(f"the example head CT could not be converted into {bids}; pass --source FILE.")
    return found[0]


def _row(subject, info):
    lesions = sorted(info["lesions"], key=lambda les: -les["volume_ml"])
    return {"participant_id": subject, "location": lesions[0]["location"] if lesions else "none",
            "n_lesions": len(lesions), "volume_ml": round(info["volume_ml"], 3)}


def _description(name, kind):
    desc = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": kind}
    if kind == "derivative":
        desc["GeneratedBy"] = [{"Name": "deepbleed-bids synthesize"}]
    return desc


def synthesize(source, bids_dir, masks_dir, n, seed=0, prefix="synth", start=1, source_label=None,
               log=print):
    """Write ``n`` synthetic cases; returns the participants table as a list of dicts.

    ``source_label`` names the source head in each sidecar (default: its path)."""
    if n < 1:
        raise InputError(f"--n {n}: make at least one case.")
    if not prefix.isalnum():
        raise InputError(f"--prefix {prefix!r}: BIDS labels are letters and digits only.")
    from .brain import extract_brain

    img = load_source(source)
    brain = extract_brain(np.asanyarray(img.dataobj), img.affine)
    bids_dir, masks_dir = Path(bids_dir), Path(masks_dir)
    write_json_atomic(_description("deepbleed-bids synthetic hematomas", "raw"),
                      bids_dir / "dataset_description.json")
    write_json_atomic(_description("deepbleed-bids synthetic hematoma reference masks", "derivative"),
                      masks_dir / "dataset_description.json")
    rows = []
    for i in range(start, start + n):
        subject = f"sub-{prefix}{i:03d}"
        rel = f"{subject}/ct/{subject}_ct.nii.gz"
        ct_path, mask_path = bids_dir / rel, derivative_path(masks_dir, rel, "mask", desc="hemorrhage")
        sidecar = bids_dir / f"{subject}/ct/{subject}_ct.json"
        if ct_path.is_file() and mask_path.is_file() and sidecar.is_file():
            rows.append(_row(subject, json.loads(sidecar.read_text())["Synthesis"]))
            continue
        out, truth, info = synth.random_case(img, brain, np.random.default_rng([seed, i]))
        info = {"seed": [seed, i], "source": source_label or str(source), **info}
        save_atomic(like(truth, out, dtype=np.uint8), mask_path)
        write_json_atomic({"Description": "synthetic hematoma, ground truth", "Synthesis": info},
                          mask_path.with_name(mask_path.name.replace(".nii.gz", ".json")))
        save_atomic(out, ct_path)
        write_json_atomic({"Modality": "CT", "Synthesis": info}, sidecar)  # last: marks the case done
        rows.append(_row(subject, info))
        log(f"{subject}: {rows[-1]['n_lesions']} lesion(s), {rows[-1]['volume_ml']:.1f} mL "
            f"({rows[-1]['location']})")
    _write_participants(bids_dir / "participants.tsv", rows)
    return rows


def _write_participants(path, rows):
    """Merge ``rows`` into participants.tsv (other participants are kept)."""
    import pandas as pd

    new = pd.DataFrame(rows, columns=PARTICIPANT_COLUMNS)
    if path.is_file():
        old = pd.read_csv(path, sep="\t", dtype=str)
        old = old[~old["participant_id"].isin(new["participant_id"])]
        new = pd.concat([old, new.astype(str)], ignore_index=True)
    new = new.sort_values("participant_id")
    write_tsv_atomic(new, path, float_format=None)
