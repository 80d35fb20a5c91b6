"""Volumes do not depend on the head's pose (issue 10, "Done when").

One ``run.py participant`` run (synthetic-demo model, in a subprocess as users run it) on
the real GE head with an inserted 30 mL hematoma and re-posed copies of it: the same voxels
under a rigidly moved affine (``affine``), and the head rigidly moved and resampled onto a
new world-axial grid (``resampled``). Resampling alone, without any move (``regrid``: the
same cubic resampling onto a world-axial grid), blurs the hematoma's edge and costs the
network 2-3 % of its volume; so the resampled copy is compared with the regridded one
(the pose) and, more loosely, with the original (pose and resampling).
"""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deepbleed_bids import synth
from deepbleed_bids.model.zoo import bundled_models
from deepbleed_bids.testing import run_bids_app, write_bids_dataset

# (Euler xyz degrees, shift mm): rotations of 25-27 deg in all, shifts of 20-25 mm
POSES = {"affine": ((15.0, -12.0, 18.0), (12.0, -15.0, 8.0)),
         "resampled": ((-18.0, 10.0, -14.0), (-10.0, 14.0, -16.0))}


def _motion(angles_deg, shift_mm, centre_mm):
    """RAS 4x4 rigid motion: rotation about ``centre_mm``, then a shift."""
    rot = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    move = np.eye(4)
    move[:3, :3] = rot
    move[:3, 3] = centre_mm + np.asarray(shift_mm) - rot @ centre_mm
    return move


def _with_affine(img, affine):
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header.copy())
    out.set_qform(affine, 1)
    out.set_sform(affine, 1)
    return out


@pytest.fixture(scope="module")
def pose_run(head_and_brain, asset_home, tmp_path_factory):
    if "synthetic-demo" not in bundled_models():
        pytest.fail("deepbleed_bids/data/models/synthetic-demo.weights.h5 is missing")
    root = tmp_path_factory.mktemp("pose")
    img, brain = head_and_brain
    head, _, info = synth.insert_hematoma(img, brain, 30.0, rng=np.random.default_rng(1017),
                                          location="lobar", shape_seed=17)
    centre = (img.affine @ np.r_[np.argwhere(brain).mean(axis=0), 1])[:3]
    moved = {name: _motion(*pose, centre) for name, pose in POSES.items()}
    # cubic, each slice sampled at its centre: the head moved, not re-acquired with more blur
    # (linear interpolation plus slab averaging blurs the hematoma's edge: -4.3 % hemorrhage)
    resampled, _ = synth.reslice(head, motion=moved["resampled"], inplane_mm=0.5, order=3, slab=False)
    regrid, _ = synth.reslice(head, inplane_mm=0.5, order=3, slab=False)
    images = {"sub-original/ct/sub-original_ct.nii.gz": head,
              "sub-affine/ct/sub-affine_ct.nii.gz": _with_affine(head, moved["affine"] @ head.affine),
              "sub-resampled/ct/sub-resampled_ct.nii.gz": resampled,
              "sub-regrid/ct/sub-regrid_ct.nii.gz": regrid,
              # issue 10 point 4: 7 mm slices (slab-averaged, 29 slices) run end to end
              "sub-thick/ct/sub-thick_ct.nii.gz": synth.reslice(head, slice_mm=7.0)[0]}
    bids = write_bids_dataset(root / "bids", images)
    out_dir = root / "out"
    proc = run_bids_app(bids, out_dir, "--work-dir", root / "work", "--nprocs", "2", home=asset_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecars = {}
    for name in ("original", "regrid", "thick", *POSES):
        path = out_dir / f"sub-{name}/ct/sub-{name}_desc-hemorrhage_mask.json"
        sidecars[name] = json.loads(path.read_text())
    return sidecars, info


def _within(a, b, rel):
    return all(a[key] == pytest.approx(b[key], rel=rel) for key in ("BrainVolume", "HemorrhageVolume"))


def test_pose_moves_no_volume(pose_run):
    sidecars, info = pose_run
    volumes = {name: (round(s["BrainVolume"], 1), round(s["HemorrhageVolume"], 2)) for name, s in sidecars.items()}
    print("brain, hemorrhage (mL):", volumes, "truth", round(info["volume_ml"], 2))
    # the hemorrhage is found at all (synthetic-demo model; measured 27.0 mL of 30.0)
    assert sidecars["original"]["HemorrhageVolume"] == pytest.approx(info["volume_ml"], rel=0.15)
    # the pose alone: same voxels, moved affine (measured -1.4 % hemorrhage, 0.0 % brain)
    assert _within(sidecars["affine"], sidecars["original"], 0.02), volumes
    # pose and resampling together: the re-posed copy against the head itself (issue 10's
    # 2 %; measured 0.0 % hemorrhage, -0.2 % brain since the MI stage fits the template's
    # scales; -3.8 % hemorrhage with the rigid fit)
    assert _within(sidecars["resampled"], sidecars["original"], 0.02), volumes
    # moved vs unmoved copies resampled alike: the unmoved copy is itself 2.4 % off the head
    # (25.89 vs 26.52 mL): the network input is sampled with nearest neighbour (as the paper),
    # so a sub-voxel change of the alignment moves a 26 mL clot by ~0.6 mL with the demo
    # model, pose or no pose (with the rigid fit: -1.2 % between these two)
    assert _within(sidecars["resampled"], sidecars["regrid"], 0.03), volumes


def test_thick_slices_run_end_to_end(pose_run):
    sidecars, info = pose_run
    thick, original = sidecars["thick"], sidecars["original"]
    # issue 10: brain volume within 5 % of the 2.6 mm original (measured -3.2 %: 1400 vs 1446 mL)
    assert thick["BrainVolume"] == pytest.approx(original["BrainVolume"], rel=0.05)
    # the hematoma: as well as in thin slices, or the scan is flagged `uncertain`. 7 mm slabs
    # leave many voxels near 0.5, so the CPU's float rounding moves the volume: the same code
    # measured 31.0 mL of 30.0 on an Intel Xeon (AVX-512), 34.7 mL on an AMD EPYC (AVX2),
    # flagged there with 22.5 mL of voxels of probability 0.2-0.8 (the 2.6 mm original: 26-27 mL)
    volume, flags = thick["HemorrhageVolume"], thick["QC"].get("Flags") or {}
    assert volume == pytest.approx(info["volume_ml"], rel=0.15) or (
        "uncertain" in flags and volume == pytest.approx(info["volume_ml"], rel=0.25)), (volume, flags)
