"""Compare predicted hemorrhage masks with reference masks: per scan, per cohort, per group.

Both folders use this project's output naming,
``sub-X/[ses-Y/]<ct|anat>/<source entities>_desc-hemorrhage_mask.nii.gz`` in the CT's
native space; masks on a template grid (``space-`` entity) are ignored. Scans are
matched by file name (the source entities), so ct/ and anat/ layouts mix freely.
"""
import json
from pathlib import Path

from . import metrics as M
from .derivatives import entities, find_outputs
from .utils import clean_json, write_json_atomic, write_tsv_atomic
from .errors import InputError

def find_masks(folder):
    """``{source prefix: path}`` of the native-space hemorrhage masks under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of hemorrhage masks.")
    return {found.prefix: found.mask for found in find_outputs(folder, read=False) if found.mask is not None}


def _entities(prefix):
    ents = entities(prefix)
    return "sub-" + ents["sub"], ("ses-" + ents["ses"]) if "ses" in ents else "n/a"


def scan_table(pred_dir, ref_dir):
    """Per-scan metrics (DataFrame) and the problems: (missing predictions, unusable pairs)."""
    import nibabel as nib
    import pandas as pd

    preds, refs = find_masks(pred_dir), find_masks(ref_dir)
    if not refs:
        raise InputError(f"no reference masks in {ref_dir}: expected files named "
                         "sub-X/[ses-Y/]ct/<CT name without _ct.nii.gz>_desc-hemorrhage_mask.nii.gz.")
    rows, missing, errors = [], [], []
    for prefix, ref_path in refs.items():
        pred_path = preds.get(prefix)
        if pred_path is None:
            missing.append(str(ref_path))
            continue
        try:
            values = M.scan_metrics(nib.load(str(pred_path)), nib.load(str(ref_path)),
                                    str(pred_path), str(ref_path))
        except (InputError, OSError, ValueError) as err:
            errors.append({"scan": prefix, "error": str(err)})
            continue
        subject, session = _entities(prefix)
        rows.append({"participant_id": subject, "session": session, "scan": prefix, **values,
                     "failed": values["dice"] < M.FAILED_DICE,
                     "pred_path": str(pred_path), "ref_path": str(ref_path)})
    columns = ["participant_id", "session", "scan", *M.SCAN_COLUMNS, "failed", "pred_path", "ref_path"]
    return pd.DataFrame(rows, columns=columns), missing, errors


def participants_file(pred_dir, participants=None):
    """``--participants``, else participants.tsv of the raw dataset the predictions link to."""
    if participants:
        if not Path(participants).is_file():
            raise InputError(f"--participants {participants}: no such file.")
        return Path(participants)
    desc = Path(pred_dir) / "dataset_description.json"
    if desc.is_file():
        raw = json.loads(desc.read_text()).get("DatasetLinks", {}).get("raw", "")
        if raw.startswith("file://"):
            candidate = Path(raw[len("file://"):]) / "participants.tsv"
            if candidate.is_file():
                return candidate
    return None


def add_participant_columns(df, path):
    import pandas as pd

    if path is None:
        return df
    info = pd.read_csv(path, sep="\t", dtype=str)
    if "participant_id" not in info.columns:
        raise InputError(f"{path}: no participant_id column.")
    info = info.drop(columns=[c for c in info.columns if c in df.columns and c != "participant_id"])
    return df.merge(info, on="participant_id", how="left")


def evaluate(pred_dir, ref_dir, out_dir, participants=None, group_by=()):
    """Write the evaluation (TSV, JSON, PNG) into ``out_dir``; returns the JSON content."""
    from .reports import plots

    df, missing, errors = scan_table(pred_dir, ref_dir)
    df = add_participant_columns(df, participants_file(pred_dir, participants))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"scans": str(write_tsv_atomic(df, out / "evaluation_scans.tsv"))}
    summary = {"cohort": M.cohort_summary(df), "by": {}}
    for column in group_by:
        table = M.summary_by(df, column)
        files[f"by-{column}"] = str(write_tsv_atomic(table, out / f"evaluation_by-{column}.tsv"))
        summary["by"][column] = table.to_dict(orient="records")
    if len(df):
        files["dice_plot"] = str(plots.dice_distribution(df, out / "dice_distribution.png"))
        files["volume_plot"] = str(plots.volume_scatter(df, out / "volume_scatter.png"))
        files["bland_altman_plot"] = str(plots.bland_altman(df, out / "bland_altman.png"))
    result = clean_json({**summary, "predictions": str(pred_dir), "references": str(ref_dir),
                     "missing_predictions": missing, "errors": errors, "files": files,
                     "conventions": {"failed": f"Dice < {M.FAILED_DICE}", "within": f"|difference| <= {M.WITHIN_ML} mL",
                                     "volume_difference": "predicted - reference",
                                     "empty_masks": "Dice of two empty masks is 1.0"}})
    write_json_atomic(result, out / "evaluation.json")
    return result
