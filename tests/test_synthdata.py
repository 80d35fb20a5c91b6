"""``deepbleed-bids synthesize``: a BIDS training set of synthetic hematomas in the real GE head."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepbleed_bids.cli.main import main
from deepbleed_bids.metrics import check_same_grid


@pytest.fixture(scope="module")
def dataset(ge_head, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthdata")
    assert main(["synthesize", str(root / "bids"), str(root / "masks"), "--n", "3", "--seed", "5",
                 "--source", str(ge_head)]) == 0
    return root


def test_layout_grid_and_truth(dataset, ge_head):
    source = nib.load(ge_head)
    table = pd.read_csv(dataset / "bids/participants.tsv", sep="\t")
    assert list(table["participant_id"]) == ["sub-synth001", "sub-synth002", "sub-synth003"]
    for _, row in table.iterrows():
        sub = row["participant_id"]
        ct = nib.load(dataset / f"bids/{sub}/ct/{sub}_ct.nii.gz")
        mask_img = nib.load(dataset / f"masks/{sub}/ct/{sub}_desc-hemorrhage_mask.nii.gz")
        check_same_grid(mask_img, ct)  # the reference lies on its CT's grid (posed affine)
        assert ct.shape == source.shape and not np.allclose(ct.affine, source.affine)  # random pose
        mask = np.asanyarray(mask_img.dataobj) > 0
        hu = np.asanyarray(ct.dataobj).astype(float)
        meta = json.loads((dataset / f"bids/{sub}/ct/{sub}_ct.json").read_text())["Synthesis"]
        vox_ml = abs(np.linalg.det(ct.affine[:3, :3])) / 1000
        assert mask.sum() * vox_ml == pytest.approx(meta["volume_ml"], rel=1e-6)
        assert row["volume_ml"] == pytest.approx(meta["volume_ml"], abs=1e-3)
        assert row["n_lesions"] == len(meta["lesions"])
        if mask.any():  # blood: 40-90 HU texture plus up to 3 HU noise and 3 HU offset
            assert 35 <= np.median(hu[mask]) <= 95
            assert np.percentile(hu[mask], 1) > 25
            assert row["location"] in ("deep", "lobar", "superficial", "ventricle")
        else:
            assert row["location"] == "none"


def test_case_depends_only_on_seed_and_index(dataset, ge_head, tmp_path):
    """Case 2 made alone (--start 2 --n 1) equals case 2 of the batch; a re-run skips done cases."""
    assert main(["synthesize", str(tmp_path / "bids"), str(tmp_path / "masks"), "--n", "1", "--start", "2",
                 "--seed", "5", "--source", str(ge_head)]) == 0
    rel = "sub-synth002/ct/sub-synth002"
    a = nib.load(dataset / f"bids/{rel}_ct.nii.gz")
    b = nib.load(tmp_path / f"bids/{rel}_ct.nii.gz")
    assert np.array_equal(a.affine, b.affine)
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    mtime = (tmp_path / f"bids/{rel}_ct.nii.gz").stat().st_mtime_ns
    assert main(["synthesize", str(tmp_path / "bids"), str(tmp_path / "masks"), "--n", "2", "--start", "2",
                 "--seed", "5", "--source", str(ge_head)]) == 0
    assert (tmp_path / f"bids/{rel}_ct.nii.gz").stat().st_mtime_ns == mtime
    assert len(pd.read_csv(tmp_path / "bids/participants.tsv", sep="\t")) == 2


def test_bad_source_and_prefix(tmp_path, capsys):
    (tmp_path / "notnifti.nii.gz").write_text("hello")
    assert main(["synthesize", str(tmp_path / "b"), str(tmp_path / "m"), "--n", "1",
                 "--source", str(tmp_path / "notnifti.nii.gz")]) == 1
    assert "cannot be read as NIfTI" in capsys.readouterr().err
    assert main(["synthesize", str(tmp_path / "b"), str(tmp_path / "m"), "--prefix", "a_b",
                 "--source", str(tmp_path / "notnifti.nii.gz")]) == 1
    assert "letters and digits" in capsys.readouterr().err
