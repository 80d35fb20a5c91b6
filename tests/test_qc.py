"""Quality control (deepbleed_bids.qc): ABC/2, the classical hyperdensity estimate, the flags."""
import numpy as np
import pytest

from deepbleed_bids import qc
from deepbleed_bids.synth import insert_hematoma


def _ellipsoid(shape, zooms, axes_mm, angle_deg=0.0, centre=None):
    """Boolean ellipsoid (full axes in mm) on a grid, rotated in the axial plane."""
    centre = np.array(shape) / 2 if centre is None else np.asarray(centre)
    g = np.meshgrid(*[(np.arange(n) - c) * z for n, c, z in zip(shape, centre, zooms)], indexing="ij")
    t = np.deg2rad(angle_deg)
    u = np.cos(t) * g[0] + np.sin(t) * g[1]
    v = -np.sin(t) * g[0] + np.cos(t) * g[1]
    a, b, c = (x / 2 for x in axes_mm)
    return (u / a) ** 2 + (v / b) ** 2 + (g[2] / c) ** 2 <= 1


@pytest.mark.parametrize("angle", [0.0, 30.0, 72.0])
def test_abc2_of_an_ellipsoid_is_its_volume(angle):
    zooms = (0.5, 0.5, 2.5)  # a thick-slice clinical CT grid
    axes_mm = (50.0, 30.0, 40.0)
    mask = _ellipsoid((160, 160, 30), zooms, axes_mm, angle)
    affine = np.diag([*zooms, 1.0])
    out = qc.abc2(mask, affine)
    true_ml = np.pi / 6 * np.prod(axes_mm) / 1000
    assert out["a_mm"] == pytest.approx(50.0, abs=1.0)
    assert out["b_mm"] == pytest.approx(30.0, abs=1.0)
    assert out["c_mm"] == pytest.approx(40.0, abs=2.5)  # one slice
    assert out["n_slices"] == round(out["c_mm"] / 2.5)
    # ABC/2 = 0.955 x the ellipsoid's volume, up to one slice too many in C (6 % here:
    # a slice counts when its centre is inside, 17 slices for 40 mm centred on a slice)
    assert out["volume_ml"] == pytest.approx(0.955 * true_ml, rel=0.12)
    assert out["volume_ml"] == pytest.approx(mask.sum() * np.prod(zooms) / 1000, rel=0.12)
    assert out["slice"] == 15  # the largest section is the equator


def test_abc2_uses_world_axes_and_the_largest_component():
    zooms = (0.5, 0.5, 2.5)
    mask = _ellipsoid((160, 160, 30), zooms, (50.0, 30.0, 40.0), 30.0)
    ref = qc.abc2(mask, np.diag([*zooms, 1.0]))
    speck = mask.copy()
    speck[2:4, 2:4, 0:2] = True  # a far-away false positive on other slices
    assert qc.abc2(speck, np.diag([*zooms, 1.0]))["volume_ml"] == pytest.approx(ref["volume_ml"])
    # the same head stored with slices along the first voxel axis (sagittal storage order):
    # the axial axis is found from the affine, not assumed to be the last one
    moved = np.transpose(mask, (2, 0, 1))
    aff = np.zeros((4, 4))
    aff[0, 1], aff[1, 2], aff[2, 0], aff[3, 3] = 0.5, 0.5, 2.5, 1.0
    assert qc.axial_axis(aff) == 0
    assert qc.abc2(moved, aff)["volume_ml"] == pytest.approx(ref["volume_ml"], rel=1e-6)
    assert qc.abc2(np.zeros((5, 5, 5), bool), np.eye(4))["volume_ml"] == 0.0


@pytest.fixture(scope="module")
def head(head_and_brain):
    return head_and_brain


def test_hyperdensity_estimate_finds_inserted_blood(head):
    """The classical estimate, measured: 3.2 mL on the clean real head (dural sinuses, falx);
    inserted 20/30/40 mL hematomas within a few mL."""
    img, brain = head
    hu = np.asanyarray(img.dataobj)
    clean = qc.hyperdensity_mask(hu, brain, img.affine).sum() * qc.voxel_ml(img.affine)
    assert clean < 5.0
    for loc, vol, seed in (("deep", 20.0, 3), ("lobar", 40.0, 5)):
        bleed, truth, info = insert_hematoma(img, brain, vol, np.random.default_rng(seed), loc)
        est = qc.hyperdensity_mask(np.asanyarray(bleed.dataobj), brain, img.affine)
        est_ml = est.sum() * qc.voxel_ml(img.affine)
        assert est_ml == pytest.approx(info["volume_ml"], abs=6.0), (loc, est_ml)
        # it finds the lesion itself, not other dense voxels
        assert (est & truth).sum() / truth.sum() > 0.7


def test_quality_flags_on_the_real_head(head):
    img, brain = head
    hu = np.asanyarray(img.dataobj)
    deep, deep_truth, _ = insert_hematoma(img, brain, 20.0, np.random.default_rng(3), "deep")
    rec = qc.quality(np.asanyarray(deep.dataobj), brain, deep_truth, img.affine, similarity=0.3)
    m = rec["Metrics"]
    # a perfect segmentation of a deep bleed: nothing to flag, the medulla on the lowest slice is normal
    assert rec["Pass"] and rec["Flags"] == {}, rec["Flags"]
    assert m["BrainInferiorEdgeArea"] > 0 and m["BrainEdgeArea"] == 0
    assert m["SkullContactArea"] < 1.0
    assert m["HemorrhageVolume"] == pytest.approx(deep_truth.sum() * qc.voxel_ml(img.affine), abs=1e-3)
    # a bleed against the inner table: the paper's known failure is flagged
    sup, sup_truth, _ = insert_hematoma(img, brain, 30.0, np.random.default_rng(4), "superficial")
    rec = qc.quality(np.asanyarray(sup.dataobj), brain, sup_truth, img.affine)
    assert "skull_contact" in rec["Flags"], rec["Metrics"]["SkullContactArea"]
    # a 20 mL mask on the head without any blood disagrees with the classical estimate
    rec = qc.quality(hu, brain, deep_truth, img.affine)
    assert "hyperdensity_disagreement" in rec["Flags"]
    # a head cut at the top: partial coverage and a brain volume out of range
    top = int(np.nonzero(brain.any(axis=(0, 1)))[0].mean())
    rec = qc.quality(hu[:, :, :top], brain[:, :, :top], deep_truth[:, :, :top], img.affine)
    assert "partial_coverage" in rec["Flags"] and "brain_volume" in rec["Flags"]


def _metrics(**kw):
    base = {"BrainVolume": 1400.0, "BrainExtentSI": 140.0, "BrainEdgeArea": 0.0, "BrainInferiorEdgeArea": 3.0,
            "HemorrhageEdgeArea": 0.0, "HemorrhageOutsideBrain": 0.0, "SkullContactArea": 0.0, "NoiseHU": 3.0,
            "HyperdensityVolume": 20.0, "HemorrhageVolume": 22.0, "RegistrationSimilarity": 0.3,
            "TemplateOverlap": 0.85, "KernelType": "soft", "ContrastSuspected": False}
    return {**base, **kw}


@pytest.mark.parametrize("change, flag", [
    ({"RegistrationSimilarity": 0.02}, "registration"),
    ({"TemplateOverlap": 0.5}, "registration"),
    ({"TemplateCoverage": 0.7}, "registration"),
    ({"BrainVolume": 700.0}, "brain_volume"),
    ({"BrainEdgeArea": 5.0}, "partial_coverage"),
    ({"BrainInferiorEdgeArea": 20.0}, "partial_coverage"),
    ({"BrainExtentSI": 60.0}, "partial_coverage"),
    ({"HemorrhageEdgeArea": 1.0}, "hemorrhage_at_edge"),
    ({"SkullContactArea": 9.0}, "skull_contact"),
    ({"HemorrhageOutsideBrain": 0.5}, "outside_brain"),
    ({"KernelType": "bone"}, "bone_kernel"),
    ({"NoiseHU": 40.0}, "bone_kernel"),
    ({"ContrastSuspected": True}, "contrast"),
    ({"HyperdensityVolume": 5.0}, "hyperdensity_disagreement"),
])
def test_each_flag_fires_alone(change, flag):
    assert qc.flags(_metrics()) == {}
    assert list(qc.flags(_metrics(**change))) == [flag]


def test_disagreement_needs_both_tolerances_and_thresholds_are_configurable():
    # 4 mL apart: under 5 mL; 20 vs 28 mL: 8 mL but under 30 % of 28
    assert qc.flags(_metrics(HemorrhageVolume=2.0, HyperdensityVolume=6.0)) == {}
    assert qc.flags(_metrics(HemorrhageVolume=28.0, HyperdensityVolume=20.0)) == {}
    assert "hyperdensity_disagreement" in qc.flags(_metrics(HemorrhageVolume=40.0, HyperdensityVolume=20.0))
    assert qc.flags(_metrics(SkullContactArea=9.0), {"skull_contact_cm2": 10.0}) == {}
    with pytest.raises(ValueError, match="unknown QC thresholds"):
        qc.check_thresholds({"skull_contact": 3})


def test_registration_flag_catches_a_cut_head():
    """The template brain's share inside the scanned field of view (issue 10)."""
    assert qc.registration_flag(0.3, 0.85, coverage=0.97) is None
    assert qc.registration_flag(0.3, 0.85, coverage=0.82) is None  # cut by ~30 %: aligned fine
    reason = qc.registration_flag(0.3, 0.85, coverage=0.70)
    assert "70% of the template brain" in reason
    assert qc.registration_flag(0.3, 0.85, {"min_template_coverage": 0.6}, coverage=0.70) is None
    assert qc.flags(_metrics(TemplateCoverage=0.95)) == {}
