"""``--kernels soft``: which series of a session are segmented (kernels.select_series)."""
import nibabel as nib
import numpy as np

from deepbleed_bids import bids as B
from deepbleed_bids.kernels import kernel_type, select_series
from deepbleed_bids.testing import write_bids_dataset


def _img(rel, sub="01", ses=None, **meta):
    ents = {"subject": sub, "suffix": "ct", **({"session": ses} if ses else {})}
    for part in rel.split("_"):
        if part.startswith("acq-"):
            ents["acquisition"] = part[4:]
        if part.startswith("rec-"):
            ents["reconstruction"] = part[4:]
    return {"relpath": rel, "entities": ents, "metadata": meta}


def _names(images):
    return [i["relpath"] for i in images]


def test_bone_series_is_skipped_when_its_session_has_a_soft_one():
    images = [_img("sub-01_acq-a_ct", ConvolutionKernel="H30s", Manufacturer="SIEMENS"),
              _img("sub-01_acq-b_ct", ConvolutionKernel="H70h", Manufacturer="SIEMENS"),
              _img("sub-01_acq-c_ct", ses="2", ConvolutionKernel="BONE")]  # alone in its session
    kept, skipped = select_series(images, "soft")
    assert _names(kept) == ["sub-01_acq-a_ct", "sub-01_acq-c_ct"]
    assert [r for r, _ in skipped] == ["sub-01_acq-b_ct"]
    assert "--kernels all" in skipped[0][1]
    bone_alone = kept[1]
    assert any("bone reconstruction kernel (ConvolutionKernel BONE)" in w for w in bone_alone["warnings"])
    assert kept[0]["warnings"] == []


def test_kernels_all_keeps_every_series_with_a_warning_on_bone():
    images = [_img("sub-01_acq-a_ct", ConvolutionKernel="SOFT"), _img("sub-01_acq-b_ct", ConvolutionKernel="BONE")]
    kept, skipped = select_series(images, "all")
    assert skipped == [] and _names(kept) == ["sub-01_acq-a_ct", "sub-01_acq-b_ct"]
    assert kept[0]["warnings"] == [] and "bone reconstruction kernel" in kept[1]["warnings"][0]


def test_acq_bone_without_kernel_in_the_sidecar_is_skipped():
    """The sidecar names no kernel: the acq-/rec- label decides, and the warning says so."""
    images = [_img("sub-01_acq-soft_ct"), _img("sub-01_acq-bone_ct"), _img("sub-01_rec-bone_ct")]
    assert [kernel_type(i["metadata"], i["entities"]) for i in images] == ["soft", "bone", "bone"]
    kept, skipped = select_series(images, "soft")
    assert _names(kept) == ["sub-01_acq-soft_ct"]
    assert sorted(r for r, _ in skipped) == ["sub-01_acq-bone_ct", "sub-01_rec-bone_ct"]
    kept, _ = select_series([_img("sub-02_acq-bone_ct", sub="02")], "soft")  # nothing softer: kept
    assert "file name label acq-bone" in kept[0]["warnings"][0]


def test_sidecar_kernel_wins_over_the_label_and_unknown_is_not_bone():
    # a sidecar kernel outranks the label; an unclassifiable series counts as processable
    images = [_img("sub-01_acq-bone_ct", ConvolutionKernel="SOFT"), _img("sub-01_acq-axial_ct"),
              _img("sub-01_acq-x_ct", KernelType="bone")]
    kept, skipped = select_series(images, "soft")
    assert _names(kept) == ["sub-01_acq-bone_ct", "sub-01_acq-axial_ct"]
    assert [r for r, _ in skipped] == ["sub-01_acq-x_ct"]
    assert kept[1]["kernel_type"] == "unknown"


def test_contrast_is_warned_not_skipped():
    kept, skipped = select_series([_img("sub-01_ct", SeriesDescription="CTA HEAD")], "soft")
    assert skipped == [] and "contrast agent suspected" in kept[0]["warnings"][0]


def test_real_dataset_labels_through_pybids(tmp_path):
    """The entities as pybids names them (acquisition, reconstruction) reach the selection."""
    tiny = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    root = write_bids_dataset(tmp_path / "bids", {
        "sub-01/ct/sub-01_acq-soft_ct.nii.gz": tiny, "sub-01/ct/sub-01_acq-bone_ct.nii.gz": tiny,
        "sub-02/ct/sub-02_rec-bone_ct.nii.gz": tiny,
    }, sidecars={"sub-01/ct/sub-01_acq-soft_ct.nii.gz": {"Modality": "CT"},
                 "sub-01/ct/sub-01_acq-bone_ct.nii.gz": {"Modality": "CT"}})
    kept, skipped = select_series(B.collect_ct(root), "soft")
    assert [r for r, _ in skipped] == ["sub-01/ct/sub-01_acq-bone_ct.nii.gz"]
    assert _names(kept) == ["sub-01/ct/sub-01_acq-soft_ct.nii.gz", "sub-02/ct/sub-02_rec-bone_ct.nii.gz"]
    assert "rec-bone" in kept[1]["warnings"][0]
