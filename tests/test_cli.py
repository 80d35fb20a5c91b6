"""The BIDS-App contract: arguments, discovery, and clear refusals."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids import __version__
from deepbleed_bids.bids import collect_ct, load_filters
from deepbleed_bids.derivatives import derivative_path
from deepbleed_bids.cli.run import main
from deepbleed_bids.config import Config
from deepbleed_bids.errors import InputError
from deepbleed_bids.runner import check_dirs, preflight
from deepbleed_bids.testing import write_bids_dataset

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"


@pytest.fixture(scope="module")
def small_ct():
    """A small synthetic CT-like volume (air, skull ring, brain) for discovery tests."""
    data = np.full((40, 40, 20), -1000, np.int16)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(xx - 20, yy - 20)
    data[(r < 16)] = 1200
    data[(r < 14)] = 35
    return nib.Nifti1Image(data, np.diag([4.0, 4.0, 5.0, 1.0]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, small_ct):
    root = tmp_path_factory.mktemp("bids")
    return write_bids_dataset(root, {
        "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz": small_ct,
        "sub-01/ses-2/ct/sub-01_ses-2_run-2_ct.nii.gz": small_ct,
        "sub-01/ses-2/anat/sub-01_ses-2_acq-thin_CT.nii.gz": small_ct,
        "sub-02/anat/sub-02_ct.nii.gz": small_ct,
        "sub-02/anat/sub-02_T1w.nii.gz": small_ct,
    })


def test_discovers_every_layout_session_and_run(dataset):
    found = [i["relpath"] for i in collect_ct(dataset)]
    assert found == [
        "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_acq-thin_CT.nii.gz",
        "sub-01/ses-2/ct/sub-01_ses-2_run-2_ct.nii.gz",
        "sub-02/anat/sub-02_ct.nii.gz",
    ]
    assert [i["relpath"] for i in collect_ct(dataset, ["sub-02"])] == ["sub-02/anat/sub-02_ct.nii.gz"]
    assert len(collect_ct(dataset, ["01"], ["ses-2"])) == 2
    assert len(collect_ct(dataset, ["01"], filters={"run": 2})) == 1


def test_derivative_names_follow_source_entities():
    rel = "sub-01/ses-2/anat/sub-01_ses-2_acq-thin_run-2_CT.nii.gz"
    assert derivative_path("/o", rel, "mask", desc="hemorrhage") == Path(
        "/o/sub-01/ses-2/anat/sub-01_ses-2_acq-thin_run-2_desc-hemorrhage_mask.nii.gz")
    assert derivative_path("/o", rel, "ct", desc="preproc", space="DeepBleedCT").name == \
        "sub-01_ses-2_acq-thin_run-2_space-DeepBleedCT_desc-preproc_ct.nii.gz"


def test_unknown_participant(dataset, tmp_path, capsys):
    assert main([str(dataset), str(tmp_path / "out"), "participant", "--participant-label", "07"]) == 1
    err = capsys.readouterr().err
    assert "sub-07 not found" in err and "sub-01, sub-02" in err
    assert not (tmp_path / "out").exists()


def test_missing_bids_dir(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_output_inside_bids_dir(dataset, capsys):
    assert main([str(dataset), str(dataset / "out"), "participant"]) == 1
    assert "inside the BIDS folder" in capsys.readouterr().err
    check_dirs(Config(bids_dir=str(dataset), output_dir=str(dataset / "derivatives" / "deepbleed")))
    with pytest.raises(InputError):
        check_dirs(Config(bids_dir=str(dataset), output_dir=str(dataset)))


def test_no_ct_found(tmp_path, small_ct, capsys):
    root = write_bids_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": small_ct})
    assert main([str(root), str(tmp_path / "out"), "participant"]) == 1
    assert "no CT images found" in capsys.readouterr().err


def test_filter_file_not_json(dataset, tmp_path, capsys):
    bad = tmp_path / "filter.json"
    bad.write_text("{'ct': {session: 1}")
    assert main([str(dataset), str(tmp_path / "out"), "participant", "--bids-filter-file", str(bad)]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"ct": {"session": "2", "run": 2}}))
    assert load_filters(good) == {"session": "2", "run": 2}
    with pytest.raises(InputError, match="unknown BIDS entities"):
        good.write_text(json.dumps({"ct": {"sesion": "2"}}))
        load_filters(good)


def test_4d_2d_and_mri_rejected_per_file(tmp_path, small_ct):
    data = np.asanyarray(small_ct.dataobj)
    four_d = nib.Nifti1Image(np.stack([data, data], -1), small_ct.affine)
    scout = nib.Nifti1Image(data[:, :, :1], small_ct.affine)
    mri = nib.Nifti1Image(np.abs(data).astype(np.int16) % 400, small_ct.affine)
    root = write_bids_dataset(tmp_path / "bids", {
        "sub-01/ct/sub-01_run-1_ct.nii.gz": four_d,
        "sub-01/ct/sub-01_run-2_ct.nii.gz": scout,
        "sub-01/ct/sub-01_run-3_ct.nii.gz": mri,
        "sub-01/ct/sub-01_run-4_ct.nii.gz": small_ct,
    })
    good, failures = preflight(collect_ct(root))
    assert [g["relpath"] for g in good] == ["sub-01/ct/sub-01_run-4_ct.nii.gz"]
    reasons = dict(failures)
    assert "4D image with 2 volumes" in reasons["sub-01/ct/sub-01_run-1_ct.nii.gz"]
    assert "scout/localizer" in reasons["sub-01/ct/sub-01_run-2_ct.nii.gz"]
    assert "does not look like a head CT" in reasons["sub-01/ct/sub-01_run-3_ct.nii.gz"]


def test_version_and_help_subprocess():
    out = subprocess.run([sys.executable, str(RUN_PY), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run([sys.executable, str(RUN_PY), "a", "b", "everything"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr
