"""ICH score (Hemphill et al., Stroke 2001;32:891-7): the imaging items from the scan, the
clinical items from the dataset's tables.

Items and points (Hemphill 2001, table 3):

* GCS 3-4 -> 2, 5-12 -> 1, 13-15 -> 0 (clinical: ``gcs`` column)
* hematoma volume >= 30 mL -> 1 (imaging; Hemphill counts supratentorial and
  infratentorial volume alike)
* intraventricular hemorrhage present -> 1 (imaging: the estimated IVH part)
* infratentorial origin -> 1 (imaging: the location class, deepbleed_bids.location)
* age >= 80 years -> 1 (clinical: ``age`` column)

The total (0-6) is reported only when every item is known. Every item keeps the
input that produced it, so a reader can check or recompute it.

Pure Python: no nipype.
"""
import csv
import math
from pathlib import Path

VOLUME_ML = 30.0
AGE_YEARS = 80.0
IVH_MIN_ML = 0.5  # an estimated IVH part below this is border noise, not extension
REFERENCE = "Hemphill JC 3rd et al. The ICH score. Stroke 2001;32:891-7"


def _number(value):
    """A float, or None for missing / n/a / non-numeric values."""
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    try:
        out = float(str(value).strip())
    except ValueError:
        return None
    return None if math.isnan(out) else out


def gcs_points(gcs):
    """Glasgow Coma Scale 3-4 -> 2, 5-12 -> 1, 13-15 -> 0; None when unknown; ValueError off-scale."""
    gcs = _number(gcs)
    if gcs is None:
        return None
    if gcs != int(gcs) or not 3 <= gcs <= 15:
        raise ValueError(f"GCS must be a whole number from 3 to 15, got {gcs:g}")
    return 2 if gcs <= 4 else (1 if gcs <= 12 else 0)


def age_points(age):
    """Age >= 80 years -> 1, else 0; None when unknown; ValueError when negative or > 130."""
    age = _number(age)
    if age is None:
        return None
    if not 0 <= age <= 130:
        raise ValueError(f"age must be in years (0-130), got {age:g}")
    return 1 if age >= AGE_YEARS else 0


def volume_points(volume_ml):
    volume_ml = _number(volume_ml)
    return None if volume_ml is None else int(volume_ml >= VOLUME_ML)


def ivh_points(ivh_ml, min_ml=IVH_MIN_ML):
    ivh_ml = _number(ivh_ml)
    return None if ivh_ml is None else int(ivh_ml >= min_ml)


def infratentorial_points(location_class):
    if location_class in (None, "", "none"):
        return None
    return int(location_class == "infratentorial")


def ich_score(volume_ml, ivh_ml, location_class, gcs=None, age=None, ivh_min_ml=IVH_MIN_ML):
    """The ICH score record: every item with its points and input; Total only when all are known.

    A scan without hemorrhage has no location: its infratentorial item is 0 (nothing there).
    """
    volume = _number(volume_ml)
    if volume is not None and volume == 0 and location_class in (None, "", "none"):
        location_class = "none"
        infra = 0
    else:
        infra = infratentorial_points(location_class)
    items = {
        "Volume": {"Points": volume_points(volume_ml), "Input": _number(volume_ml), "InputUnits": "mL",
                   "Rule": f">= {VOLUME_ML:g} mL -> 1", "Source": "image"},
        "IntraventricularHemorrhage": {"Points": ivh_points(ivh_ml, ivh_min_ml), "Input": _number(ivh_ml),
                                       "InputUnits": "mL",
                                       "Rule": f"estimated IVH >= {ivh_min_ml:g} mL -> 1", "Source": "image"},
        "InfratentorialOrigin": {"Points": infra, "Input": location_class,
                                 "Rule": "location class infratentorial -> 1", "Source": "image"},
        "GCS": {"Points": gcs_points(gcs), "Input": _number(gcs),
                "Rule": "3-4 -> 2, 5-12 -> 1, 13-15 -> 0", "Source": "gcs column"},
        "Age": {"Points": age_points(age), "Input": _number(age), "InputUnits": "years",
                "Rule": f">= {AGE_YEARS:g} -> 1", "Source": "age column"},
    }
    imaging = [items[k]["Points"] for k in ("Volume", "IntraventricularHemorrhage", "InfratentorialOrigin")]
    every = [item["Points"] for item in items.values()]
    return {
        "Items": items,
        "ImagingPoints": sum(imaging) if None not in imaging else None,
        "Total": sum(every) if None not in every else None,
        "Complete": None not in every,
        "Reference": REFERENCE,
        "Note": "imaging items from automated estimates (volume, estimated IVH, atlas location); "
                "the total needs gcs and age columns in sessions.tsv or participants.tsv",
    }


def _rows(path):
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def clinical_inputs(bids_dir, subject, session=None):
    """``{"gcs", "age"}`` for a scan: sub-X/sub-X_sessions.tsv (the session's row) first, then
    participants.tsv; missing values are None."""
    if not bids_dir:
        return {"gcs": None, "age": None}
    sub = subject if str(subject).startswith("sub-") else f"sub-{subject}"
    found = {"gcs": None, "age": None}
    if session:
        ses = session if str(session).startswith("ses-") else f"ses-{session}"
        for row in _rows(Path(bids_dir) / sub / f"{sub}_sessions.tsv"):
            if row.get("session_id") == ses:
                for key in found:
                    found[key] = _number(row.get(key))
    for row in _rows(Path(bids_dir) / "participants.tsv"):
        if row.get("participant_id") == sub:
            for key in found:
                if found[key] is None:
                    found[key] = _number(row.get(key))
    return found
