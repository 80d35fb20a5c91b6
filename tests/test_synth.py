"""Synthetic hematomas inserted into the real GE head CT (deepbleed_bids.synth)."""
import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from deepbleed_bids import synth

BONE_HU = 300


# ---------------------------------------------------------------- helpers


def _volume_ml(mask, img):
    return mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0


def _zooms(img):
    return np.array(img.header.get_zooms()[:3], float)


def _box(mask, pad):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _bone_distance(mask, hu, zooms):
    """Shortest distance (mm) from a lesion voxel to a bone voxel (>= 300 HU)."""
    box = _box(mask, np.ceil(6 / zooms).astype(int))
    dist = ndi.distance_transform_edt(hu[box] < BONE_HU, sampling=zooms)
    return dist[mask[box]].min()


def _surface_mm2(mask, zooms):
    """Area of the voxel faces between the mask and the rest."""
    area = 0.0
    for axis in range(3):
        faces = np.count_nonzero(np.diff(mask.astype(np.int8), axis=axis))
        area += faces * np.prod(np.delete(zooms, axis))
    return area


def _ball_like(mask, affine):
    """A ball with the mask's voxel count, on the same grid."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    n = np.count_nonzero(mask)
    radius = (3 * n * np.prod(zooms) / (4 * np.pi)) ** (1 / 3)
    half = np.ceil(radius / zooms).astype(int) + 2
    g = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    d = sum((gi * z) ** 2 for gi, z in zip(g, zooms))
    d = np.broadcast_to(d, tuple(2 * half + 1)).ravel()
    ball = np.zeros(d.size, bool)
    ball[np.argpartition(d, n - 1)[:n]] = True
    return ball.reshape(tuple(2 * half + 1))


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def head(ge_head):
    img = nib.load(ge_head)
    return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)


@pytest.fixture(scope="module")
def hu(head):
    return np.asarray(head.dataobj, np.float32)


@pytest.fixture(scope="module")
def brain(head):
    """The project's brain extraction; an adult brain is 1.0-1.8 L (this head's field of
    view cuts the vertex: at least 0.9 L)."""
    from deepbleed_bids.brain import extract_brain

    mask = extract_brain(np.asanyarray(head.dataobj), head.affine)
    assert 900 < _volume_ml(mask, head) < 2000, f"brain extraction gave {_volume_ml(mask, head):.0f} mL"
    return mask


@pytest.fixture(scope="module")
def anatomy(head, hu, brain):
    """On a 1 mm in-plane grid: depth in the brain (mm) and the ventricular region
    (smoothed 0-15 HU, >= 15 mm deep), defined here independently of synth."""
    sl = (slice(None, None, 2), slice(None, None, 2), slice(None))
    zooms = _zooms(head) * [2, 2, 1]
    b = brain[sl]
    depth = ndi.distance_transform_edt(b, sampling=zooms)
    smooth = ndi.gaussian_filter(hu[sl], 1.0 / zooms)
    vent = b & (smooth >= 0) & (smooth <= 15) & (depth >= 15)
    return sl, depth, vent


CASES = [  # (location, volume mL)
    ("deep", 1.0), ("lobar", 5.0), ("superficial", 20.0), ("ventricle", 60.0),
    ("deep", 150.0), ("superficial", 3.0), ("ventricle", 10.0), ("lobar", 40.0),
]


@pytest.fixture(scope="module")
def lesions(head, hu, brain):
    rng = np.random.default_rng(2024)
    return [synth.hematoma_mask(brain, head.affine, v, rng, loc, image=hu) for loc, v in CASES]


# ---------------------------------------------------------------- masks


def test_requested_volume_is_achieved(lesions, head, brain):
    for (loc, requested), (mask, info) in zip(CASES, lesions):
        achieved = _volume_ml(mask, head)
        assert achieved == pytest.approx(info["volume_ml"], rel=1e-4)
        assert info["location"] == loc
        tol = 0.02 if requested >= 5 else 0.05
        assert abs(achieved - requested) <= tol * requested, (loc, requested, achieved)
        assert mask.dtype == bool and mask.shape == brain.shape
        assert not (mask & ~brain).any(), "lesion leaks out of the brain mask"
        assert ndi.label(mask)[1] == 1, "lesion is not one connected piece"


def test_superficial_lesions_touch_the_skull(lesions, hu, head):
    for (loc, v), (mask, _) in zip(CASES, lesions):
        if loc == "superficial":
            assert _bone_distance(mask, hu, _zooms(head)) <= 2.0, v


def test_ventricle_lesions_fill_part_of_the_ventricles(lesions, anatomy, head, brain):
    sl, _, vent = anatomy

    def inside(mask):
        return np.count_nonzero(mask[sl] & vent) / np.count_nonzero(mask[sl])

    for (loc, v), (mask, info) in zip(CASES, lesions):
        if loc == "ventricle":
            assert inside(mask) >= 0.1, (v, inside(mask))
            assert 0 < info["ventricle_ml"] < info["volume_ml"]
            # The same lesion without the pull of the ventricles stays more parenchymal.
            control, _ = synth.hematoma_mask(brain, head.affine, v, None, "deep",
                                             info["center_mm"], info["shape_seed"])
            assert inside(mask) > 1.3 * inside(control), (v, inside(mask), inside(control))


def test_deep_lesions_are_central(lesions, anatomy, head):
    sl, depth, _ = anatomy
    cvox = {}
    for (loc, v), (mask, info) in zip(CASES, lesions):
        ijk = np.rint(np.linalg.inv(head.affine) @ [*info["center_mm"], 1])[:3].astype(int)
        cvox.setdefault(loc, []).append(depth[ijk[0] // 2, ijk[1] // 2, ijk[2]])
    assert min(cvox["deep"]) >= 20
    assert max(cvox["superficial"]) < min(cvox["deep"])


def test_shapes_are_irregular_not_balls(lesions, head):
    # Voxel-face area relative to a ball of the same voxel count on the same grid.
    zooms = _zooms(head)
    ratios = []
    for (loc, v), (mask, _) in zip(CASES, lesions):
        if v >= 5:
            box = _box(mask, 1)
            ball = _ball_like(mask, head.affine)
            ratios.append(_surface_mm2(mask[box], zooms) / _surface_mm2(ball, zooms))
    assert min(ratios) > 1.05 and np.median(ratios) > 1.2, ratios


def test_shape_seed_changes_the_shape(head, brain):
    centre = synth.hematoma_mask(brain, head.affine, 20, 1, "deep")[1]["center_mm"]
    a, _ = synth.hematoma_mask(brain, head.affine, 20, 1, "deep", centre, shape_seed=1)
    b, _ = synth.hematoma_mask(brain, head.affine, 20, 1, "deep", centre, shape_seed=2)
    assert _dice(a, b) < 0.85


def test_shape_is_defined_in_millimetres(head, brain):
    # Same lesion on a grid with twice the in-plane voxel size (every other voxel):
    # the shape lives in world mm, so it must match the fine one sampled there.
    fine, info = synth.hematoma_mask(brain, head.affine, 30, 5, "lobar")
    coarse_affine = head.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    sl = (slice(None, None, 2), slice(None, None, 2), slice(None))
    coarse, cinfo = synth.hematoma_mask(brain[sl], coarse_affine, 30, None, "lobar",
                                        info["center_mm"], info["shape_seed"])
    assert cinfo["volume_ml"] == pytest.approx(30, rel=0.02)
    assert _dice(coarse, fine[sl]) > 0.9


def test_nested_series_for_growth_and_residual(head, hu, brain):
    volumes = [30.0, 8.0, 60.0, 15.0]  # growth then post-surgical residual
    series = synth.hematoma_series(brain, head.affine, volumes, 11, "ventricle", image=hu)
    masks = [m for m, _ in series]
    assert len({tuple(i["center_mm"]) for _, i in series}) == 1
    assert len({i["shape_seed"] for _, i in series}) == 1
    for v, (m, info) in zip(volumes, series):
        assert info["volume_ml"] == pytest.approx(v, rel=0.02)
    order = np.argsort(volumes)
    for small, large in zip(order[:-1], order[1:]):
        assert not (masks[small] & ~masks[large]).any(), (volumes[small], volumes[large])


# ---------------------------------------------------------------- images


def _digest(a):
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_insert_hematoma_intensities_and_header(head, brain):
    before = _digest(np.asanyarray(head.dataobj))
    out, mask, info = synth.insert_hematoma(head, brain, 25, np.random.default_rng(3), "deep")
    assert _digest(np.asanyarray(head.dataobj)) == before, "input modified in place"
    assert out.get_data_dtype() == np.int16 and np.asanyarray(out.dataobj).dtype == np.int16
    assert np.array_equal(out.affine, head.affine)
    assert out.header.binaryblock == head.header.binaryblock

    new = np.asanyarray(out.dataobj).astype(float)
    old = np.asanyarray(head.dataobj).astype(float)
    blood = new[mask]
    assert blood.min() >= 40 and blood.max() <= 90
    assert 55 <= blood.mean() <= 80 and blood.mean() == pytest.approx(info["mean_hu"], abs=1.5)
    assert blood.std() > 3, "no texture"
    # Texture is spatially correlated: neighbours (0.49 mm apart) agree.
    both = mask[1:] & mask[:-1]
    r = np.corrcoef(new[1:][both], new[:-1][both])[0, 1]
    assert 0.3 < r < 0.99, r
    # Only the lesion and a thin partial-volume rim (<= 2 mm) change.
    near = ndi.distance_transform_edt(~mask[_box(mask, 8)], sampling=_zooms(head)) <= 2.0
    changed = new != old
    assert not changed[~_pad_to(near, mask, _box(mask, 8))].any()


def _pad_to(part, like, box):
    full = np.zeros(like.shape, bool)
    full[box] = part
    return full


def test_edema_rim_is_hypodense(head, brain):
    kw = dict(location="lobar", mean_hu=70.0, texture_sd=5.0)
    plain, mask, info = synth.insert_hematoma(head, brain, 20, 9, **kw)
    oedema, mask2, _ = synth.insert_hematoma(head, brain, 20, 9, edema_mm=3.0, **kw)
    assert np.array_equal(mask, mask2)
    assert np.asanyarray(plain.dataobj)[mask].mean() == pytest.approx(70, abs=2)
    box = _box(mask, 10)
    dist = ndi.distance_transform_edt(~mask[box], sampling=_zooms(head))
    orig = np.asanyarray(head.dataobj)[box].astype(float)
    rim = (dist >= 1.0) & (dist <= 2.0) & brain[box] & (orig >= 20) & (orig <= 45)
    a = np.asanyarray(plain.dataobj)[box][rim].astype(float)
    b = np.asanyarray(oedema.dataobj)[box][rim].astype(float)
    assert a.mean() - b.mean() > 4
    assert 12 <= b.mean() <= 28


def test_same_seed_same_case(head, brain):
    a, ma, ia = synth.insert_hematoma(head, brain, 12, np.random.default_rng(42))
    b, mb, ib = synth.insert_hematoma(head, brain, 12, np.random.default_rng(42))
    c, mc, _ = synth.insert_hematoma(head, brain, 12, np.random.default_rng(43))
    assert ia == ib and np.array_equal(ma, mb)
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    assert not np.array_equal(ma, mc)


# ---------------------------------------------------------------- augmentation


def test_random_pose_is_rigid_and_keeps_voxels(head):
    moved = synth.random_pose(head, np.random.default_rng(0), max_rotation_deg=10, max_shift_mm=10)
    assert np.array_equal(np.asanyarray(moved.dataobj), np.asanyarray(head.dataobj))
    move = moved.affine @ np.linalg.inv(head.affine)
    rot = move[:3, :3]
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-9)
    angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
    assert 0 < angle <= 10
    assert np.allclose(move[3], [0, 0, 0, 1])
    # Distances between world positions of voxels are unchanged.
    ijk = np.array([[0, 0, 0, 1], [511, 0, 0, 1], [0, 610, 55, 1], [200, 300, 30, 1]], float)
    a, b = ijk @ head.affine.T, ijk @ moved.affine.T
    da = np.linalg.norm(a[:, None, :3] - a[None, :, :3], axis=-1)
    db = np.linalg.norm(b[:, None, :3] - b[None, :, :3], axis=-1)
    assert np.allclose(da, db, atol=1e-6)
    centre = (np.array([*head.shape, 2]) - 1) / 2
    assert np.linalg.norm((moved.affine - head.affine) @ centre) <= 10 * np.sqrt(3) + 1e-6
    assert np.allclose(moved.header.get_best_affine(), moved.affine, atol=1e-4)
    again = synth.random_pose(head, np.random.default_rng(0))
    other = synth.random_pose(head, np.random.default_rng(1))
    assert np.array_equal(again.affine, moved.affine)
    assert not np.allclose(other.affine, moved.affine)


def test_add_noise(head):
    noisy = synth.add_noise(head, 0, sd_hu=3.0, offset_hu=1.0)
    old = np.asanyarray(head.dataobj)
    diff = np.asanyarray(noisy.dataobj).astype(float) - old
    pad = old <= -1000
    assert not diff[pad].any()
    assert diff[~pad].mean() == pytest.approx(1.0, abs=0.05)
    assert diff[~pad].std() == pytest.approx(np.sqrt(9 + 1 / 12), rel=0.05)  # + rounding


def test_random_case(head, brain):
    one, truth, info = synth.random_case(head, brain, np.random.default_rng(5), p_empty=0, p_two=0)
    assert len(info["lesions"]) == 1 and truth.any()
    lesion = info["lesions"][0]
    assert 1 <= lesion["requested_ml"] <= 150
    assert lesion["volume_ml"] == pytest.approx(_volume_ml(truth, head), rel=1e-4)
    assert not (truth & ~brain).any()
    assert one.shape == head.shape and one.get_data_dtype() == np.int16
    assert not np.allclose(one.affine, head.affine)  # posed
    blood = np.asanyarray(one.dataobj)[truth]
    assert 45 <= blood.mean() <= 85

    two, truth2, info2 = synth.random_case(head, brain, 6, p_empty=0, p_two=1, pose=False)
    assert len(info2["lesions"]) == 2
    assert np.array_equal(two.affine, head.affine)
    total = sum(x["volume_ml"] for x in info2["lesions"])
    assert info2["volume_ml"] == pytest.approx(total, rel=1e-6)
    assert ndi.label(truth2)[1] >= 2

    empty, truth3, info3 = synth.random_case(head, brain, 7, p_empty=1, pose=False,
                                             max_noise_hu=0, max_offset_hu=0)
    assert not truth3.any() and info3["lesions"] == []
    assert np.array_equal(np.asanyarray(empty.dataobj), np.asanyarray(head.dataobj))

    again, truth4, info4 = synth.random_case(head, brain, np.random.default_rng(5),
                                             p_empty=0, p_two=0)
    assert info4 == info and np.array_equal(truth4, truth)
    assert np.array_equal(np.asanyarray(again.dataobj), np.asanyarray(one.dataobj))


def test_bad_requests_raise(head, hu, brain):
    with pytest.raises(ValueError, match="unknown location"):
        synth.hematoma_mask(brain, head.affine, 5, 0, "cerebellar")
    with pytest.raises(ValueError, match="outside the brain"):
        synth.hematoma_mask(brain, head.affine, 5, 0, "deep", center_mm=[0, 0, 500])
    with pytest.raises(ValueError, match="needs the image"):
        synth.hematoma_mask(brain, head.affine, 5, 0, "ventricle")
