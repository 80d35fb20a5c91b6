"""Trial measures: ICH-score rules, location classes, perihematomal edema and midline shift.

The rules are checked on hand-computed cases; edema and midline shift on the real GE head
with synthetic hematomas of known rim and known mass-effect displacement (the project's
generator, deepbleed_bids.synth).
"""
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepbleed_bids import edema as E
from deepbleed_bids import ichscore as S
from deepbleed_bids import location as L
from deepbleed_bids import midline as M
from deepbleed_bids import synth

# ---------------------------------------------------------------- ICH score rules


@pytest.mark.parametrize("gcs,points", [(3, 2), (4, 2), (5, 1), (12, 1), (13, 0), (15, 0), ("8", 1),
                                        (None, None), ("n/a", None)])
def test_gcs_points(gcs, points):
    assert S.gcs_points(gcs) == points


@pytest.mark.parametrize("gcs", [2, 16, 7.5, -1])
def test_gcs_off_scale_is_an_error(gcs):
    with pytest.raises(ValueError, match="GCS"):
        S.gcs_points(gcs)


@pytest.mark.parametrize("age,points", [(79.9, 0), (80, 1), (93, 1), (45, 0), (None, None)])
def test_age_points(age, points):
    assert S.age_points(age) == points


# (volume, ivh mL, class, gcs, age) -> (imaging points, total); totals computed by hand
HAND = [
    ((29.9, 0.0, "deep", 15, 60), (0, 0)),          # nothing scores
    ((30.0, 0.0, "lobar", 14, 70), (1, 1)),         # volume exactly 30 mL scores
    ((45.0, 3.0, "deep", 10, 82), (2, 2 + 1 + 1)),  # vol + IVH; GCS 10 -> 1; age -> 1
    ((12.0, 0.2, "infratentorial", 4, 50), (1, 1 + 2)),  # IVH below 0.5 mL does not count
    ((60.0, 8.0, "infratentorial", 3, 85), (3, 3 + 2 + 1)),  # the maximum, 6
    ((20.0, 5.0, "intraventricular", None, 70), (1, None)),  # GCS unknown: no total
]


@pytest.mark.parametrize("inputs,expected", HAND)
def test_ich_score_hand_computed(inputs, expected):
    vol, ivh, cls, gcs, age = inputs
    rec = S.ich_score(vol, ivh, cls, gcs, age)
    assert (rec["ImagingPoints"], rec["Total"]) == expected
    assert rec["Complete"] is (expected[1] is not None)
    items = rec["Items"]
    assert items["Volume"]["Input"] == vol and items["InfratentorialOrigin"]["Input"] == cls
    assert items["IntraventricularHemorrhage"]["Input"] == ivh
    assert items["GCS"]["Input"] == gcs and items["Age"]["Input"] == age


def test_ich_score_without_hemorrhage_or_volume():
    assert S.ich_score(0.0, 0.0, "none", 15, 50)["Total"] == 0
    assert S.ich_score(None, None, None, 15, 50)["Total"] is None


def test_clinical_inputs_session_row_first(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\tgcs\nsub-01\t81\t14\nsub-02\tn/a\t9\n")
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tgcs\nses-1\t6\nses-2\tn/a\n")
    assert S.clinical_inputs(tmp_path, "01", "1") == {"gcs": 6.0, "age": 81.0}
    assert S.clinical_inputs(tmp_path, "sub-01", "ses-2") == {"gcs": 14.0, "age": 81.0}
    assert S.clinical_inputs(tmp_path, "02") == {"gcs": 9.0, "age": None}
    assert S.clinical_inputs(tmp_path, "03") == {"gcs": None, "age": None}


def test_group_ich_score_needs_every_item():
    from deepbleed_bids.group import add_ich_score

    df = pd.DataFrame({"participant_id": ["sub-01", "sub-01", "sub-02", "sub-03"],
                       "session": ["1", "2", "1", "1"], "ich_score_imaging": [2, 3, 1, 1],
                       "gcs": ["14", "14", None, "20"], "age": ["85", "85", "50", "50"]})
    sessions = {"sub-01": pd.DataFrame({"gcs": ["4", None]}, index=pd.Index(["1", "2"], name="session"))}
    out = add_ich_score(df, sessions)
    assert list(out["gcs"])[:2] == [4.0, 14.0]  # the session's GCS first, else participants.tsv
    assert out["ich_score"].tolist()[:2] == [2 + 2 + 1, 3 + 0 + 1]
    assert pd.isna(out["ich_score"].iloc[2]) and pd.isna(out["ich_score"].iloc[3])  # unknown / off-scale GCS


# ---------------------------------------------------------------- location


NAMES = {1: "BrainStem", 2: "Cerebellum", 5: "LeftBasalganglia-lentiform-nucleus", 14: "LeftParietalLobe",
         26: "RightInsula", 28: "RightParietalLobe", 31: "Ventricle"}


def _blocks():
    labels = np.zeros((40, 10, 10), np.int16)
    for k, lab in enumerate((5, 14, 28, 1, 31, 26, 2)):
        labels[5 * k:5 * k + 5] = lab
    return labels, np.ones(labels.shape, bool)


def test_region_classes():
    assert L.region_class("LeftThalamusProper") == "deep" and L.region_class("RightCaudate") == "deep"
    assert L.region_class("RightInsula") == "deep" and L.region_class("LeftHippocampus") == "lobar"
    assert L.region_class("LeftCerebellum") == "infratentorial" and L.region_class("BrainStem") == "infratentorial"
    assert L.region_class("Ventricle") == "intraventricular"
    from deepbleed_bids.atlas import atlas_labels

    assert {L.region_class(n) for n in atlas_labels().values()} == set(L.CLASSES)


def test_location_volumes_largest_region_and_class():
    labels, brain = _blocks()
    hem = np.zeros(labels.shape, bool)
    hem[0:5, :, :6] = True      # 300 voxels lentiform (deep)
    hem[5:10, :, :4] = True     # 200 voxels left parietal (lobar)
    hem[20:25, :, :2] = True    # 100 voxels ventricle
    rec = L.hemorrhage_location(hem, labels, brain, 0.01, NAMES)
    assert rec["RegionVolumes"] == {"LeftBasalganglia-lentiform-nucleus": 3.0, "LeftParietalLobe": 2.0,
                                    "Ventricle": 1.0}
    assert rec["LargestRegion"] == "LeftBasalganglia-lentiform-nucleus"
    assert rec["LargestRegionShare"] == pytest.approx(0.5)
    assert rec["Class"] == "deep" and rec["Side"] == "left"
    assert rec["ClassVolumes"] == {"deep": 3.0, "lobar": 2.0, "infratentorial": 0.0, "intraventricular": 1.0}


def test_location_infratentorial_primary_ivh_and_unlabelled():
    labels, brain = _blocks()
    hem = np.zeros(labels.shape, bool)
    hem[15:20, :, :3] = True    # brain stem 150
    hem[30:35, :, :1] = True    # cerebellum 50
    labels[39] = 0
    hem[39, :, :5] = True       # 50 voxels in the brain but in no region
    rec = L.hemorrhage_location(hem, labels, brain, 0.01, NAMES)
    assert rec["Class"] == "infratentorial" and rec["UnlabelledVolume"] == pytest.approx(0.5)
    assert rec["Side"] is None  # midline structures only
    # mostly in the ventricles: primary IVH; the split's IVH mask overrides the atlas label
    hem2 = np.zeros(labels.shape, bool)
    hem2[20:25] = True          # 500 voxels ventricle label
    hem2[25:26, :, :5] = True   # 50 insula
    assert L.hemorrhage_location(hem2, labels, brain, 0.01, NAMES)["Class"] == "intraventricular"
    rec = L.hemorrhage_location(hem2, labels, brain, 0.01, NAMES, ivh=np.zeros(labels.shape, bool))
    # no IVH per the split: the blood on the atlas ventricle label is unlabelled, the insula decides
    assert rec["Class"] == "deep" and "Ventricle" not in rec["RegionVolumes"]
    assert rec["UnlabelledVolume"] == pytest.approx(5.0)
    assert sum(rec["RegionVolumes"].values()) + rec["UnlabelledVolume"] == pytest.approx(
        rec["HemorrhageInBrainVolume"])
    none = L.hemorrhage_location(np.zeros(labels.shape, bool), labels, brain, 0.01, NAMES)
    assert none["Class"] == "none" and none["HemorrhageInBrainVolume"] == 0


# ---------------------------------------------------------------- real head: edema, midline


@pytest.fixture(scope="module")
def head(head_and_brain):
    from deepbleed_bids.ct import clamp_hu
    from deepbleed_bids.ventricles import csf_mask

    img, brain = head_and_brain
    hu = clamp_hu(np.asanyarray(img.dataobj)).astype(np.float32)
    img = nib.Nifti1Image(hu, img.affine, img.header)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    # deep CSF stands in for the atlas ventricles here (no registration needed)
    vent = csf_mask(hu, brain, zooms, min_depth_mm=15.0)
    plane = M.skull_plane(hu, img.affine, brain)
    return img, brain, vent, plane


def test_skull_plane_is_found_from_a_rotated_start(head):
    img, brain, _vent, (n, d, info) = head
    hu = np.asanyarray(img.dataobj)
    # the same head with its world turned 6 degrees about the vertical axis (affine only)
    rot = np.eye(4)
    a = np.deg2rad(6.0)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    n2, d2, _ = M.skull_plane(hu, rot @ img.affine, brain)
    expected = rot[:3, :3] @ n
    assert np.degrees(np.arccos(min(1.0, abs(n2 @ expected)))) < 1.5
    centre = (img.affine[:3, :3] @ (np.array(img.shape) / 2) + img.affine[:3, 3])
    # the moved plane passes through the moved centre's mirror-consistent offset
    assert abs((n2 @ (rot[:3, :3] @ centre) - d2) - (n @ centre - d)) < 1.5
    assert info["SymmetryCost"] < 1.5


def test_midline_shift_follows_a_known_mass_effect(head):
    img, brain, vent, plane = head
    hu = np.asanyarray(img.dataobj)
    base = M.midline_shift(hu, img.affine, brain, vent, plane=plane)
    assert base["MidlineShift"] is not None and base["MidlineShift"] < 3.0  # a normal head
    dist, pts, kind = M.midline_points(hu, img.affine, brain, vent, plane[0], plane[1])
    assert kind == "septum pellucidum"
    # a 60 mL clot centred 28 mm to one side of the septum points, level with them
    centre = np.median(pts, axis=0) + 28.0 * plane[0]
    case, _clot, _edema, moved, info = synth.trial_case(img, brain, 4, 60.0, "lobar", centre, edema_mm=0.0)
    true = float(np.median(dist + synth.mass_effect_shift(pts, info["centre_mm"], 60.0) @ plane[0]))
    assert abs(true - float(np.median(dist))) > 1.5  # the case really shifts the septum
    shifted = M.midline_shift(np.asanyarray(case.dataobj).astype(np.float32), img.affine, moved, vent,
                              plane=plane)
    assert shifted["MidlineShiftSigned"] == pytest.approx(true, abs=1.5)
    # the clot's side pushes the septum to the other side
    side = np.sign(plane[0] @ np.asarray(info["centre_mm"]) - plane[1])
    assert np.sign(shifted["MidlineShiftSigned"] - base["MidlineShiftSigned"]) == -side


def test_edema_estimate_finds_a_known_rim(head):
    img, brain, vent, plane = head
    vml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    case, clot, edema, info = synth.insert_hematoma_with_edema(img, brain, 25.0, 7, "lobar", edema_mm=6.0)
    assert info["edema_ml"] == pytest.approx(edema.sum() * vml) and info["edema_ml"] > 3.0
    assert not (edema & clot).any()
    hu = np.asanyarray(case.dataobj).astype(np.float32)
    est, rec = E.perihematomal_edema(hu, brain, clot, img.affine, ventricles=vent, plane=plane)
    assert rec["Estimate"] is True and not (est & clot).any()
    assert rec["RelativeEdema"] == pytest.approx(rec["EdemaVolume"] / rec["ClotVolume"], rel=1e-2)
    hit = (est & edema).sum() / edema.sum()
    assert hit > 0.4  # most of the rim is found
    assert rec["EdemaVolume"] == pytest.approx(info["edema_ml"], rel=0.6)
    # the same clot without a rim: less edema is reported
    plain, clot2, _, _ = synth.insert_hematoma_with_edema(img, brain, 25.0, 7, "lobar", edema_mm=0.0)
    _, rec0 = E.perihematomal_edema(np.asanyarray(plain.dataobj).astype(np.float32), brain, clot2, img.affine,
                                    ventricles=vent, plane=plane)
    # (normal tissue near the clot adds a floor of false edema: the README's limits), but the rim
    # itself adds about its true volume
    assert rec["EdemaVolume"] - rec0["EdemaVolume"] > 0.4 * info["edema_ml"]


def test_derivative_names_and_atlas_table():
    from deepbleed_bids.derivatives import atlas_tsv, plan_outputs

    plan = plan_outputs("/out", "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz")
    assert plan["edema_mask"].name == "sub-01_ses-1_desc-edema_mask.nii.gz"
    assert plan["atlas_dseg"].name == "sub-01_ses-1_desc-atlas_dseg.nii.gz"
    rows = [r.split("\t") for r in atlas_tsv().strip().splitlines()]
    assert rows[0] == ["index", "name", "class"] and len(rows) == 32
    assert {r[2] for r in rows[1:]} == set(L.CLASSES)


# ---------------------------------------------------------------- the node and its outputs


def score_input(rec):
    return rec["ICHScore"]["Items"]["Volume"]["Input"]


def test_trial_node_writes_sidecar_fields_edema_and_atlas(head, template_path, tmp_path):
    """TrialMeasures on a deep clot with a rim in the real head, then the derivatives writer and the
    group reader: every measure reaches the sidecar, the files and volumes.tsv columns."""
    import json

    from deepbleed_bids.derivatives import write_outputs
    from deepbleed_bids.group import collect_outputs
    from deepbleed_bids.interfaces.trial import TrialMeasures
    from deepbleed_bids.nifti import like
    from deepbleed_bids.registration import register_rigid

    img, brain, _, _ = head
    hu = np.asanyarray(img.dataobj)
    reg = register_rigid(like(np.where(brain, hu, 0), img, dtype=np.int16), nib.load(str(template_path)),
                         str(tmp_path / "reg_"))
    case, clot, _edema, moved, info = synth.trial_case(img, brain, 11, 35.0, "deep", edema_mm=5.0)
    files = {}
    for name, data, dtype in (("ct", np.asanyarray(case.dataobj), np.int16), ("brain", moved, np.uint8),
                              ("hem", clot, np.uint8)):
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(like(data, img, dtype=dtype), files[name])
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\tgcs\nsub-01\t84\t11\n")
    node = TrialMeasures(reference=files["ct"], brain_mask=files["brain"], hemorrhage_mask=files["hem"],
                         transform=reg["transform"], bids_dir=str(bids),
                         entities={"subject": "01", "session": "1"})
    (tmp_path / "node").mkdir()
    res = node.run(cwd=str(tmp_path / "node")).outputs
    rec = res.measures
    assert rec["Location"]["Class"] in ("deep", "lobar") and rec["Location"]["HemorrhageInBrainVolume"] == \
        pytest.approx(info["volume_ml"], abs=0.05)
    assert score_input(rec) == pytest.approx(info["volume_ml"], abs=0.01)
    assert rec["Edema"]["EdemaVolume"] > 1.0 and rec["Midline"]["MidlineShift"] is not None
    score = rec["ICHScore"]
    assert score["Items"]["Volume"]["Points"] == 1 and score["Items"]["GCS"]["Points"] == 1
    assert score["Items"]["Age"]["Points"] == 1 and score["Total"] == score["ImagingPoints"] + 2
    atlas_img = nib.load(res.out_atlas)
    assert np.array_equal(atlas_img.affine, img.affine) and atlas_img.shape == img.shape
    edema_img = nib.load(res.out_edema)
    assert np.array_equal(edema_img.affine, img.affine)
    assert not (np.asanyarray(edema_img.dataobj).astype(bool) & clot).any()

    # the writer and the group reader
    out = tmp_path / "out"
    relpath = "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz"
    config = {"output_dir": str(out), "brain_extraction": "native", "model_spec": {"id": "x"},
              "template": str(template_path), "template_sha256": "0", "mask_method": "linear",
              "threshold": 0.5, "seed": 1, "device": "cpu", "mixed_precision": False, "kernels": "all"}
    paths = {"brain_mask": files["brain"], "hemorrhage_mask": files["hem"], "hemorrhage_probseg": files["hem"],
             "preproc_template": files["hem"], "probseg_template": files["hem"], "transform": reg["transform"],
             "edema_mask": res.out_edema, "atlas_dseg": res.out_atlas}
    results = {"hemorrhage_volume_ml": info["volume_ml"], "hemorrhage_voxel_count": int(clot.sum()),
               "brain_volume_ml": 1200.0, "voxel_volume_ml": 0.001, "trial": rec}
    written = write_outputs(config, {"relpath": relpath}, paths, results)
    names = {Path(p).name for p in written}
    assert {"sub-01_ses-1_desc-edema_mask.nii.gz", "sub-01_ses-1_desc-atlas_dseg.nii.gz",
            "sub-01_ses-1_desc-atlas_dseg.tsv"} <= names
    meta = json.loads((out / "sub-01/ses-1/ct/sub-01_ses-1_desc-hemorrhage_mask.json").read_text())
    assert meta["EdemaVolume"] == rec["Edema"]["EdemaVolume"] and meta["LocationClass"] == rec["Location"]["Class"]
    assert meta["MidlineShift"] == rec["Midline"]["MidlineShift"] and meta["ICHScore"]["Total"] is not None
    df, problems = collect_outputs(out)
    assert not problems and df.loc[0, "edema_volume_ml"] == meta["EdemaVolume"]
    assert df.loc[0, "location_class"] == meta["LocationClass"]
    assert df.loc[0, "midline_shift_mm"] == meta["MidlineShift"]
    assert df.loc[0, "ich_score_imaging"] == meta["ICHScore"]["ImagingPoints"]
