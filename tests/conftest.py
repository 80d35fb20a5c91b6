"""Shared fixtures: real data from ../shared/data, converted once per session."""
import os

import pytest

from deepbleed_bids.testing import convert_ge_head, shared_data_dir

# Keep TensorFlow quiet and on the CPU in tests; tests/test_gpu.py runs its checks in
# subprocesses that see the GPUs again, so the original setting is kept for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DEEPBLEED_TEST_CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def data_dir():
    path = shared_data_dir()
    if path is None:
        pytest.skip("real test data not found: set DEEPBLEED_TEST_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def ge_head(data_dir, tmp_path_factory):
    """Path of the real GE head CT, tilt-corrected and equidistant (dcm2niix)."""
    nii, _ = convert_ge_head(tmp_path_factory.mktemp("gehead"), data_dir)
    return nii


@pytest.fixture(scope="session")
def template_path(data_dir):
    return data_dir / "templates" / "deepbleed" / "scct_unsmooth_SS_0.01_128x128x128.nii.gz"


@pytest.fixture(scope="session")
def asset_home(data_dir, tmp_path_factory):
    """A DEEPBLEED_HOME pre-populated from the shared data, so asset fetching runs offline."""
    from deepbleed_bids.assets import prepopulate_cache

    home = tmp_path_factory.mktemp("deepbleed_home")
    prepopulate_cache(home, data_dir)
    return home


@pytest.fixture(scope="session")
def head_and_brain(ge_head):
    """The real head loaded into memory, and its brain mask (native extraction on clamped HU)."""
    import nibabel as nib
    import numpy as np

    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.ct import clamp_hu
    from deepbleed_bids.nifti import like

    img = nib.load(ge_head)
    img = like(np.asanyarray(img.dataobj), img)  # in memory, geometry fields kept bit for bit
    return img, extract_brain(clamp_hu(np.asanyarray(img.dataobj)), img.affine)
