"""The README's example run, offline: example DICOM from the asset cache -> dicom2bids
(dcm2niix) -> run.py participant. This is also the path 'DICOM in, derivatives out'."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np

from deepbleed_bids.model.zoo import bundled_models


def test_example_runs_offline_from_dicom(asset_home, tmp_path):
    env = {**os.environ, "DEEPBLEED_HOME": str(asset_home)}
    cmd = [sys.executable, "-m", "deepbleed_bids.cli.main", "example", str(tmp_path / "ex"), "--nprocs", "2"]
    assert "synthetic-demo" in bundled_models()  # the example's default, offline
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    bids = tmp_path / "ex" / "bids"
    ct = bids / "sub-example" / "ct" / "sub-example_acq-soft_ct.nii.gz"
    side = json.loads(ct.with_suffix("").with_suffix(".json").read_text())
    assert side["TiltCorrected"] is True and side["KernelType"] == "soft"
    out = tmp_path / "ex" / "derivatives" / "deepbleed" / "sub-example" / "ct"
    mask = nib.load(out / "sub-example_acq-soft_desc-hemorrhage_mask.nii.gz")
    assert np.array_equal(mask.affine, nib.load(ct).affine)
    meta = json.loads((out / "sub-example_acq-soft_desc-hemorrhage_mask.json").read_text())
    assert 1150 < meta["BrainVolume"] < 1700
    assert meta["Model"]["Name"] == "synthetic-demo"
    assert meta["HemorrhageVolume"] < 1.0  # a head without hemorrhage
    assert (tmp_path / "ex" / "derivatives" / "deepbleed" / "sub-example.html").is_file()
