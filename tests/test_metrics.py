"""Agreement metrics against hand-computed cases (deepbleed_bids.metrics)."""
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepbleed_bids import metrics as M
from deepbleed_bids.errors import InputError


def _img(mask, zooms=(0.5, 0.5, 2.0)):
    return nib.Nifti1Image(np.asarray(mask, np.uint8), np.diag([*zooms, 1.0]))


def test_dice_empty_identical_disjoint():
    empty = np.zeros((4, 4, 4), bool)
    block = empty.copy()
    block[:2] = True
    other = empty.copy()
    other[2:] = True
    assert M.dice(empty, empty) == 1.0  # both agree: no hemorrhage
    assert M.dice(block, empty) == 0.0
    assert M.dice(empty, block) == 0.0
    assert M.dice(block, block) == 1.0
    assert M.dice(block, other) == 0.0


def test_dice_known_partial_overlap():
    a = np.zeros((10, 1, 1))
    b = np.zeros((10, 1, 1))
    a[0:6] = 1  # 6 voxels
    b[4:8] = 1  # 4 voxels, 2 shared
    assert M.dice(a, b) == pytest.approx(2 * 2 / (6 + 4))
    # 0/255 label images and probabilities read as masks at >= 0.5
    assert M.dice(a * 255, b) == pytest.approx(0.4)
    assert M.dice(a * 0.49, b) == 0.0


def test_dice_refuses_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        M.dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


def test_scan_metrics_volumes_from_native_voxel_size():
    pred = np.zeros((20, 20, 10), bool)
    ref = pred.copy()
    pred[:10, :10, :4] = True  # 400 voxels
    ref[5:15, :10, :4] = True  # 400 voxels, 200 shared
    out = M.scan_metrics(_img(pred), _img(ref))
    vox_ml = 0.5 * 0.5 * 2.0 / 1000
    assert out["dice"] == pytest.approx(0.5)
    assert out["pred_volume_ml"] == pytest.approx(400 * vox_ml)
    assert out["ref_volume_ml"] == pytest.approx(400 * vox_ml)
    assert out["volume_diff_ml"] == pytest.approx(0.0)
    pred[:, :, 4:8] = True
    out = M.scan_metrics(_img(pred), _img(ref))
    assert out["volume_diff_ml"] == pytest.approx((400 + 1600 - 400) * vox_ml)
    assert out["abs_volume_diff_ml"] == pytest.approx(out["volume_diff_ml"])


def test_scan_metrics_oblique_voxel_volume():
    affine = np.eye(4)
    angle = np.deg2rad(20)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                               [0, 0, 1]]) @ np.diag([0.5, 0.5, 3.0])
    mask = np.ones((10, 10, 10), np.uint8)
    img = nib.Nifti1Image(mask, affine)
    assert M.scan_metrics(img, img)["ref_volume_ml"] == pytest.approx(1000 * 0.75 / 1000)


def test_masks_on_different_grids_are_refused():
    mask = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(InputError, match="not on the same grid.*shape"):
        M.scan_metrics(_img(mask), _img(np.zeros((8, 8, 9), np.uint8)), "pred.nii.gz", "ref.nii.gz")
    with pytest.raises(InputError, match="pred.nii.gz and ref.nii.gz .*affine"):
        M.scan_metrics(_img(mask), _img(mask, zooms=(0.5, 0.5, 2.5)), "pred.nii.gz", "ref.nii.gz")
    shifted = np.diag([0.5, 0.5, 2.0, 1.0])
    shifted[0, 3] = 1.0  # same shape and voxel size, moved by 1 mm
    moved = nib.Nifti1Image(mask, shifted)
    with pytest.raises(InputError, match="native space"):
        M.scan_metrics(_img(mask), moved)


def test_cohort_summary_by_hand():
    df = pd.DataFrame({
        "dice": [0.9, 0.8, 0.4, 1.0],
        "pred_volume_ml": [10.0, 22.0, 5.0, 0.0],
        "ref_volume_ml": [12.0, 20.0, 11.0, 0.0],
    })
    s = M.cohort_summary(df)
    assert s["n"] == 4
    assert s["dice_mean"] == pytest.approx(0.775)
    assert s["dice_sd"] == pytest.approx(np.std([0.9, 0.8, 0.4, 1.0], ddof=1))
    assert s["dice_median"] == pytest.approx(0.85)
    assert (s["dice_min"], s["dice_max"]) == (0.4, 1.0)
    assert s["percent_failed"] == pytest.approx(25.0)
    diff = np.array([-2.0, 2.0, -6.0, 0.0])
    assert s["volume_diff_mean_ml"] == pytest.approx(-1.5)
    assert s["volume_rmse_ml"] == pytest.approx(math.sqrt((4 + 4 + 36 + 0) / 4))
    assert s["percent_within_5ml"] == pytest.approx(75.0)
    assert s["volume_r"] == pytest.approx(np.corrcoef([10, 22, 5, 0], [12, 20, 11, 0])[0, 1])
    sd = np.std(diff, ddof=1)
    assert s["loa_low_ml"] == pytest.approx(-1.5 - 1.96 * sd)
    assert s["loa_high_ml"] == pytest.approx(-1.5 + 1.96 * sd)


def test_cohort_summary_single_scan_has_nan_spread():
    s = M.cohort_summary(pd.DataFrame({"dice": [0.7], "pred_volume_ml": [3.0], "ref_volume_ml": [4.0]}))
    assert s["dice_mean"] == 0.7
    assert math.isnan(s["dice_sd"]) and math.isnan(s["volume_r"])


def test_summary_by_group():
    df = pd.DataFrame({
        "dice": [0.9, 0.3, 0.8, 0.6],
        "pred_volume_ml": [10.0, 1.0, 30.0, 9.0],
        "ref_volume_ml": [10.0, 8.0, 30.0, 10.0],
        "subtype": ["ich", "ich", "ivh", None],
    })
    out = M.summary_by(df, "subtype").set_index("subtype")
    assert list(out.index) == ["ich", "ivh", "n/a"]
    assert out.loc["ich", "n"] == 2
    assert out.loc["ich", "dice_mean"] == pytest.approx(0.6)
    assert out.loc["ich", "percent_failed"] == pytest.approx(50.0)
    assert out.loc["ivh", "percent_within_5ml"] == 100.0
    with pytest.raises(InputError, match="grouping column 'site' not found"):
        M.summary_by(df, "site")
