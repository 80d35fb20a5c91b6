"""Shared fixtures. The real head CT and the template come from the copies bundled in the
package (nothing outside the repository needed); ``data_dir`` is the shared real data
(phantom, scout, other templates, atlas) and skips, with the reason, when it is absent."""
import os

import pytest

from deepbleed_bids.testing import convert_ge_head, ge_head_dicom, shared_data_dir, shared_data_reason

# Keep TensorFlow quiet and on the CPU in tests; tests/test_gpu.py runs its checks in
# subprocesses that see the GPUs again, so the original setting is kept for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DEEPBLEED_TEST_CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def data_dir():
    """The shared real data folder (``../shared/data`` or ``$DEEPBLEED_TEST_DATA``)."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(shared_data_reason())
    return path


@pytest.fixture(scope="session")
def ge_head_dicom_dir(tmp_path_factory):
    """Folder of the real GE head's 28 DICOM files (bundled copy, sha256-checked)."""
    return ge_head_dicom(tmp_path_factory.mktemp("gehead_dicom") / "ge-head-tilt")


@pytest.fixture(scope="session")
def ge_head(ge_head_dicom_dir, tmp_path_factory):
    """Path of the real GE head CT, tilt-corrected and equidistant (dcm2niix)."""
    nii, _ = convert_ge_head(tmp_path_factory.mktemp("gehead"), dicom_dir=ge_head_dicom_dir)
    return nii


@pytest.fixture(scope="session")
def template_path():
    """The DeepBleed template bundled with the package (sha256-checked)."""
    from deepbleed_bids.assets import fetch_template

    return fetch_template()


@pytest.fixture(scope="session")
def asset_home(tmp_path_factory):
    """An empty DEEPBLEED_HOME: runs need nothing from it (template and example are bundled);
    a test that reaches for a download (the published weights) fails offline instead of
    using the developer's own cache."""
    return tmp_path_factory.mktemp("deepbleed_home")


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


@pytest.fixture(scope="session")
def registered_head(head_and_brain, template_path, tmp_path_factory):
    """The real head rigidly registered to the template as the pipeline does it:
    (native image, brain mask, template image, transform)."""
    import nibabel as nib
    import numpy as np

    from deepbleed_bids.ct import clamp_hu
    from deepbleed_bids.nifti import like
    from deepbleed_bids.registration import register_rigid

    img, brain = head_and_brain
    hu = clamp_hu(np.asanyarray(img.dataobj))
    tpl = nib.load(str(template_path))
    reg = register_rigid(like(np.where(brain, hu, 0), img, dtype=np.int16), tpl,
                         str(tmp_path_factory.mktemp("reg_head") / "reg_"))
    return img, brain, tpl, reg["transform"]
