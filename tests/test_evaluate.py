"""``deepbleed-bids evaluate`` on masks of synthetic hematomas in the real GE head."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from deepbleed_bids import metrics as M
from deepbleed_bids import synth
from deepbleed_bids.brain import extract_brain
from deepbleed_bids.cli.main import main


def _save(mask, ref, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), ref.affine, ref.header), path)


@pytest.fixture(scope="module")
def folders(ge_head, tmp_path_factory):
    """References and predictions for 4 scans: exact, dilated, shifted, empty-vs-empty; one
    reference without prediction; one prediction on a different grid."""
    root = tmp_path_factory.mktemp("evaluate")
    img = nib.load(ge_head)
    brain = extract_brain(np.asanyarray(img.dataobj), img.affine)
    ref1, _ = synth.hematoma_mask(brain, img.affine, 20.0, rng=1, location="deep")
    ref2, _ = synth.hematoma_mask(brain, img.affine, 40.0, rng=2, location="lobar")
    empty = np.zeros(img.shape, bool)
    cases = {
        "sub-01/ct/sub-01_ct": (ref1, ref1),
        "sub-02/ses-1/ct/sub-02_ses-1_ct": (ref2, ndi.binary_dilation(ref2, iterations=2)),
        "sub-03/anat/sub-03_acq-soft_ct": (ref1, np.roll(ref1, 6, axis=0)),
        "sub-04/ct/sub-04_ct": (empty, empty),
    }
    for stem, (ref, pred) in cases.items():
        _save(ref, img, root / "refs" / f"{stem[:-3]}_desc-hemorrhage_mask.nii.gz")
        _save(pred, img, root / "preds" / f"{stem[:-3]}_desc-hemorrhage_mask.nii.gz")
    # a template-space mask next to it must be ignored
    _save(ref1[:128, :128, :56], img.slicer[:128, :128, :56],
          root / "preds/sub-01/ct/sub-01_space-DeepBleedCT_desc-hemorrhage_mask.nii.gz")
    _save(ref2, img, root / "refs/sub-05/ct/sub-05_desc-hemorrhage_mask.nii.gz")  # no prediction
    _save(ref2, img, root / "refs/sub-06/ct/sub-06_desc-hemorrhage_mask.nii.gz")
    _save(ref2[::2, ::2], img.slicer[::2, ::2], root / "preds/sub-06/ct/sub-06_desc-hemorrhage_mask.nii.gz")
    pd.DataFrame({"participant_id": [f"sub-0{i}" for i in range(1, 7)],
                  "subtype": ["ich", "ich", "ivh", "none", "ich", "ivh"]}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    return root, img, cases


def test_evaluate_cli_tables_json_plots(folders, capsys):
    root, img, cases = folders
    out = root / "out"
    code = main(["evaluate", str(root / "preds"), str(root / "refs"), str(out),
                 "--participants", str(root / "participants.tsv"), "--group-by", "subtype"])
    assert code == 1  # one reference without prediction, one pair on different grids
    err = capsys.readouterr().err
    assert "no prediction for reference" in err and "sub-05" in err
    assert "sub-06" in err and "not on the same grid" in err

    scans = pd.read_csv(out / "evaluation_scans.tsv", sep="\t").set_index("scan")
    assert sorted(scans.index) == ["sub-01", "sub-02_ses-1", "sub-03_acq-soft", "sub-04"]
    vox_ml = M.voxel_ml(img.affine)
    for stem, (ref, pred) in cases.items():
        row = scans.loc[stem.split("/")[-1][:-3]]
        assert row["dice"] == pytest.approx(M.dice(pred, ref), abs=1e-6)
        assert row["ref_volume_ml"] == pytest.approx(ref.sum() * vox_ml, rel=1e-5)
        assert row["volume_diff_ml"] == pytest.approx((pred.sum() - ref.sum()) * vox_ml, rel=1e-4, abs=1e-6)
    assert scans.loc["sub-01", "dice"] == 1.0 and scans.loc["sub-04", "dice"] == 1.0
    assert 0.3 < scans.loc["sub-03_acq-soft", "dice"] < 0.95  # shifted by 3 mm
    assert scans.loc["sub-02_ses-1", "volume_diff_ml"] > 0  # dilated
    assert scans.loc["sub-02_ses-1", "session"] == "ses-1"
    assert scans.loc["sub-03_acq-soft", "subtype"] == "ivh"

    result = json.loads((out / "evaluation.json").read_text())
    cohort = result["cohort"]
    assert cohort["n"] == 4
    assert cohort["dice_mean"] == pytest.approx(scans["dice"].mean())
    assert cohort["percent_within_5ml"] == pytest.approx(
        100 * (scans["abs_volume_diff_ml"] <= 5).mean())
    by = pd.read_csv(out / "evaluation_by-subtype.tsv", sep="\t").set_index("subtype")
    assert by.loc["ich", "n"] == 2 and by.loc["none", "n"] == 1
    assert by.loc["ivh", "dice_mean"] == pytest.approx(scans.loc["sub-03_acq-soft", "dice"])
    assert len(result["missing_predictions"]) == 1 and len(result["errors"]) == 1
    for png in ("dice_distribution.png", "volume_scatter.png", "bland_altman.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_evaluate_all_good_exit_zero(folders, tmp_path):
    root, img, cases = folders
    refs = tmp_path / "refs"
    for stem, (ref, _) in cases.items():
        _save(ref, img, refs / f"{stem[:-3]}_desc-hemorrhage_mask.nii.gz")
    assert main(["evaluate", str(root / "preds"), str(refs), str(tmp_path / "out")]) == 0


def test_evaluate_unknown_group_and_empty_reference_folder(folders, tmp_path, capsys):
    root, _, _ = folders
    assert main(["evaluate", str(root / "preds"), str(root / "refs"), str(tmp_path / "a"),
                 "--participants", str(root / "participants.tsv"), "--group-by", "site"]) == 1
    assert "grouping column 'site' not found" in capsys.readouterr().err
    (tmp_path / "none").mkdir()
    assert main(["evaluate", str(root / "preds"), str(tmp_path / "none"), str(tmp_path / "b")]) == 1
    assert "no reference masks" in capsys.readouterr().err
