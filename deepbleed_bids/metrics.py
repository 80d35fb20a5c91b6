"""Agreement between predicted and reference hemorrhage masks (Sharrock et al. 2020, tables 2-4).

Pure numpy/pandas: no nipype, no plotting. Per scan, in the scan's native space:
Dice, predicted and reference volume (mL, from the native voxel size) and their
difference. Per cohort: Dice mean/SD/median/min/max and percent failed
(Dice < 0.5); volume Pearson r, RMSE, percent within 5 mL and the mean
difference (Bland-Altman bias and 95 % limits of agreement).

Conventions: a voxel belongs to a mask when its value is >= 0.5 (binary masks
stored as 0/1 or 0/255 alike). The Dice of two empty masks is 1.0 (both agree
there is no hemorrhage); of exactly one empty mask 0.0. Volume difference is
predicted minus reference.
"""
import numpy as np

from .errors import InputError
from .nifti import voxel_volume_ml as voxel_ml

FAILED_DICE = 0.5  # the paper counts a segmentation with Dice < 0.5 as failed
WITHIN_ML = 5.0  # the paper's volume agreement band (mL)
GRID_ATOL_MM = 1e-3

SCAN_COLUMNS = ["dice", "pred_volume_ml", "ref_volume_ml", "volume_diff_ml", "abs_volume_diff_ml"]


def as_mask(data):
    """Boolean mask of an array: values >= 0.5."""
    return np.asarray(data) >= 0.5


def dice(a, b):
    """Dice coefficient of two masks of the same shape (1.0 when both are empty)."""
    a, b = as_mask(a), as_mask(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def volume_ml(mask, affine):
    """Volume of a mask in mL."""
    return int(as_mask(mask).sum()) * voxel_ml(affine)


def check_same_grid(pred_img, ref_img, pred_name="predicted mask", ref_name="reference mask"):
    """InputError unless both images share shape and voxel-to-world affine."""
    ps, rs = tuple(pred_img.shape[:3]), tuple(ref_img.shape[:3])
    if len(pred_img.shape) != 3 or len(ref_img.shape) != 3:
        raise InputError(f"{pred_name} {pred_img.shape} / {ref_name} {ref_img.shape}: masks must be 3-D.")
    problems = []
    if ps != rs:
        problems.append(f"shape {ps} vs {rs}")
    elif not np.allclose(pred_img.affine, ref_img.affine, atol=GRID_ATOL_MM):
        worst = float(np.abs(np.asarray(pred_img.affine) - np.asarray(ref_img.affine)).max())
        problems.append(f"voxel-to-world affine differs by up to {worst:.4g} mm")
    if problems:
        raise InputError(
            f"{pred_name} and {ref_name} are not on the same grid ({'; '.join(problems)}). "
            "Both must be in the CT's native space: save the reference mask on the CT's own grid "
            "(same shape and affine), e.g. resample it with nearest neighbour onto the CT.")


def scan_metrics(pred_img, ref_img, pred_name="predicted mask", ref_name="reference mask"):
    """Per-scan agreement of two nibabel masks on the same native grid (dict of floats)."""
    check_same_grid(pred_img, ref_img, pred_name, ref_name)
    pred = as_mask(np.asanyarray(pred_img.dataobj))
    ref = as_mask(np.asanyarray(ref_img.dataobj))
    vox = voxel_ml(ref_img.affine)
    pv, rv = int(pred.sum()) * vox, int(ref.sum()) * vox
    return {"dice": dice(pred, ref), "pred_volume_ml": pv, "ref_volume_ml": rv,
            "volume_diff_ml": pv - rv, "abs_volume_diff_ml": abs(pv - rv)}


def _pearson(x, y):
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def cohort_summary(df):
    """The paper's cohort statistics from a per-scan table (columns as :func:`scan_metrics`).

    Returns a dict; statistics that need two scans (SD, r) are NaN for one.
    """
    d = np.asarray(df["dice"], float)
    pv = np.asarray(df["pred_volume_ml"], float)
    rv = np.asarray(df["ref_volume_ml"], float)
    diff = pv - rv
    n = len(d)
    nan = float("nan")
    sd_diff = float(np.std(diff, ddof=1)) if n > 1 else nan
    bias = float(diff.mean()) if n else nan
    fit = np.polyfit(rv, pv, 1) if n > 1 and np.std(rv) > 0 else (nan, nan)
    return {
        "n": n,
        "dice_mean": float(d.mean()) if n else nan,
        "dice_sd": float(np.std(d, ddof=1)) if n > 1 else nan,
        "dice_median": float(np.median(d)) if n else nan,
        "dice_min": float(d.min()) if n else nan,
        "dice_max": float(d.max()) if n else nan,
        "percent_failed": 100.0 * float((d < FAILED_DICE).mean()) if n else nan,
        "pred_volume_mean_ml": float(pv.mean()) if n else nan,
        "ref_volume_mean_ml": float(rv.mean()) if n else nan,
        "volume_r": _pearson(pv, rv),
        "volume_rmse_ml": float(np.sqrt((diff ** 2).mean())) if n else nan,
        "percent_within_5ml": 100.0 * float((np.abs(diff) <= WITHIN_ML).mean()) if n else nan,
        "volume_diff_mean_ml": bias,
        "volume_diff_sd_ml": sd_diff,
        "abs_volume_diff_mean_ml": float(np.abs(diff).mean()) if n else nan,
        "loa_low_ml": bias - 1.96 * sd_diff,
        "loa_high_ml": bias + 1.96 * sd_diff,
        "fit_slope": float(fit[0]),
        "fit_intercept": float(fit[1]),
    }


def summary_by(df, column):
    """:func:`cohort_summary` per value of ``column`` (a DataFrame, one row per group)."""
    import pandas as pd

    if column not in df.columns:
        raise InputError(f"grouping column {column!r} not found; available: {', '.join(map(str, df.columns))}.")
    rows = [{column: key, **cohort_summary(group)}
            for key, group in df.groupby(df[column].fillna("n/a").astype(str), sort=True)]
    return pd.DataFrame(rows)
