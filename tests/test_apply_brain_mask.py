"""ApplyBrainMask: the FSL path's masking step (it runs without FSL) on the real tilted head."""
import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids.errors import InputError
from deepbleed_bids.interfaces.brain import ApplyBrainMask
from deepbleed_bids.nifti import like


def _same_geometry(out, ref):
    assert out.shape == ref.shape
    assert np.array_equal(out.affine, ref.affine)
    for code in ("qform_code", "sform_code"):
        assert int(out.header[code]) == int(ref.header[code])
    assert np.array_equal(out.header.get_qform(), ref.header.get_qform())
    assert np.array_equal(out.header.get_sform(), ref.header.get_sform())


@pytest.fixture
def inputs(head_and_brain, tmp_path):
    img, brain = head_and_brain
    ct, mask = tmp_path / "sub-01_ct.nii.gz", tmp_path / "fsl_brain_mask.nii.gz"
    nib.save(img, ct)
    # an FSL-style mask: float 0/1 (bet writes its mask in the input's float type)
    nib.save(like(brain.astype(np.float32), img, dtype=np.float32), mask)
    return img, brain, ct, mask


def test_masked_ct_and_mask_keep_the_ct_geometry_and_values(inputs, tmp_path, monkeypatch):
    img, brain, ct, mask = inputs
    monkeypatch.chdir(tmp_path)
    res = ApplyBrainMask(in_file=str(ct), in_mask=str(mask)).run()
    out_mask, out_ct = nib.load(res.outputs.out_mask), nib.load(res.outputs.out_file)
    _same_geometry(out_mask, img)
    _same_geometry(out_ct, img)
    assert out_mask.get_data_dtype() == np.uint8
    assert out_ct.get_data_dtype() == img.get_data_dtype()  # int16 HU stay int16
    got = np.asanyarray(out_mask.dataobj)
    assert set(np.unique(got)) == {0, 1} and np.array_equal(got > 0, brain)
    hu, src = np.asanyarray(out_ct.dataobj), np.asanyarray(img.dataobj)
    assert np.array_equal(hu[brain], src[brain]) and not hu[~brain].any()
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    assert res.outputs.brain_volume_ml == pytest.approx(brain.sum() * voxel_ml, rel=1e-6)
    assert 900 < res.outputs.brain_volume_ml < 2000  # an adult brain, not a slab


def test_mask_on_another_grid_is_refused_naming_both_files(inputs, tmp_path, monkeypatch):
    img, brain, ct, _ = inputs
    monkeypatch.chdir(tmp_path)
    half = tmp_path / "half_mask.nii.gz"
    nib.save(nib.Nifti1Image(brain[::2, ::2].astype(np.uint8), img.affine @ np.diag([2, 2, 1, 1])), half)
    with pytest.raises(InputError) as err:
        ApplyBrainMask(in_file=str(ct), in_mask=str(half)).run()
    msg = str(err.value)
    assert str(half) in msg and str(ct) in msg and "computed on the CT itself" in msg
    assert not list(tmp_path.glob("*brainmask*")) and not list(tmp_path.glob("*_brain.nii*"))
