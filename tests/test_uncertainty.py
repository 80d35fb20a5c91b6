"""Test-time augmentation, the per-scan uncertainty record and the ``uncertain`` QC flag."""
import numpy as np
import pytest

from deepbleed_bids import qc as QC
from deepbleed_bids.model.predict import (calibration_passes, has_dropout, predict_passes, predict_volume,
                                          resolve_tta, tta_parts)
from deepbleed_bids.uncertainty import calibration_agreement, pass_agreement, summarise, uncertain_volume


def test_tta_default_is_flip_on_gpu_none_on_cpu():
    assert resolve_tta("auto", "/GPU:0") == "flip"
    assert resolve_tta("auto", "/CPU:0") == "none"
    assert resolve_tta("flip+mc", "/CPU:0") == "flip+mc"
    assert resolve_tta("flip+hu", "/GPU:0") == "flip+hu"
    with pytest.raises(ValueError, match="tta must be one of"):
        resolve_tta("mirror")
    assert tta_parts("flip+mc+hu") == {"flip", "mc", "hu"} and tta_parts("hu") == {"hu"}
    assert tta_parts(resolve_tta("auto", "/CPU:0")) == set()


@pytest.fixture(scope="module")
def tiny_models():
    import keras

    from deepbleed_bids.model.vnet import build_vnet

    # fixed weights and float32, whatever ran before in this process: random weights can
    # saturate the sigmoid (every pass 1.0), which would hide whether dropout is live
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    shape = (16, 16, 16, 1)
    return build_vnet(width=2, input_shape=shape, dropout=0.0), build_vnet(width=2, input_shape=shape, dropout=0.3)


def test_flip_pass_is_the_mirrored_prediction(tiny_models):
    model, _ = tiny_models
    rng = np.random.default_rng(0)
    volume = rng.uniform(0, 80, (16, 16, 16)).astype(np.float32)
    passes, info = predict_passes(model, volume, "flip")
    assert info["Passes"] == ["identity", "flip"] and info["TTA"] == "flip"
    np.testing.assert_allclose(passes[0], predict_volume(model, volume), atol=1e-6)
    mirrored = np.flip(predict_volume(model, np.flip(volume, 0).copy()), 0)
    np.testing.assert_allclose(passes[1], mirrored, atol=1e-6)
    # an asymmetric input: the two passes are different views, not a copy
    assert not np.allclose(passes[0], passes[1])


def test_calibration_passes_shift_only_the_brain_and_stay_out_of_the_average(tiny_models):
    model, _ = tiny_models
    volume = np.random.default_rng(3).uniform(20, 60, (16, 16, 16)).astype(np.float32)
    volume[:4] = 0  # outside the brain: stays 0 in the shifted inputs
    low, high = calibration_passes(model, volume, 4.0)
    inside = volume != 0
    np.testing.assert_allclose(low, predict_volume(model, np.where(inside, volume - 4, 0)), atol=1e-6)
    np.testing.assert_allclose(high, predict_volume(model, np.where(inside, volume + 4, 0)), atol=1e-6)
    assert not np.allclose(low, high)
    # +hu adds no pass to the averaged ones: the probability map is the flip result
    _, info = predict_passes(model, volume, "flip+hu")
    assert info["Passes"] == ["identity", "flip"] and info["TTA"] == "flip+hu"


def test_monte_carlo_dropout_only_where_the_model_has_dropout(tiny_models):
    plain, dropout = tiny_models
    volume = np.random.default_rng(1).uniform(0, 1, (16, 16, 16)).astype(np.float32)
    assert not has_dropout(plain) and has_dropout(dropout)
    passes, info = predict_passes(plain, volume, "flip+mc")
    assert len(passes) == 2 and "no dropout" in info["Notes"][0]
    passes, info = predict_passes(dropout, volume, "flip+mc", mc_passes=2)
    assert len(passes) == 2 + 2 * 2 and info["Passes"][2:] == ["mc1", "mc1-flip", "mc2", "mc2-flip"]
    assert not np.allclose(passes[2], passes[4])  # dropout is live: two MC passes differ
    assert predict_passes(dropout, volume, "none")[1]["Passes"] == ["identity"]


def test_dropout_twin_of_the_demo_model_shares_its_weights():
    from deepbleed_bids.model.predict import dropout_twin
    from deepbleed_bids.model.zoo import load_model, resolve_model

    spec = resolve_model("synthetic-demo")
    model = load_model(spec, input_shape=(32, 32, 32, 1))
    assert not has_dropout(model)  # inference models carry no dropout layers
    twin = dropout_twin(model, spec)
    assert has_dropout(twin)
    volume = np.random.default_rng(2).uniform(0, 80, (32, 32, 32)).astype(np.float32)
    # dropout off: the twin is the same network
    np.testing.assert_allclose(predict_volume(twin, volume), predict_volume(model, volume), atol=1e-5)
    passes, info = predict_passes(model, volume, "flip+mc", mc_passes=1, mc_model=twin)
    assert info["Passes"] == ["identity", "flip", "mc1", "mc1-flip"] and not info["Notes"]
    assert not np.allclose(passes[0], passes[2])


def test_uncertainty_record_interval_and_band():
    a = np.zeros((10, 10, 10), np.float32)
    a[2:6, 2:6, 2:6] = 0.9  # 64 voxels
    b = a.copy()
    b[6:8, 2:6, 2:6] = 0.7  # the second pass sees 32 more voxels
    agreement = pass_agreement([a, b], voxel_ml=0.1)
    assert agreement["PassVolumes"] == [6.4, 9.6]
    assert agreement["MeanMaskVolume"] == 6.4  # mean 0.35 on the extra voxels: below 0.5
    assert agreement["PassDice"] == pytest.approx(2 * 64 / (64 + 96), abs=1e-4)
    native = np.zeros((20, 20, 20), np.float32)
    native[:5, :5, :5] = 0.5  # 125 voxels in the 0.2-0.8 band
    native[10:, 10:, 10:] = 0.95
    rec = summarise(agreement, 12.0, native, 0.01)
    assert rec["UncertainVolume"] == pytest.approx(1.25)
    assert rec["VolumeInterval"] == [12.0, pytest.approx(15.2)] and rec["VolumeSpread"] == pytest.approx(3.2)
    assert uncertain_volume(native, 1.0, (0.6, 0.99)) == 1000.0
    assert "CalibrationInterval" not in rec
    # -/+4 HU: the identity pass's 6.4 mL becomes 4.8 and 9.6 mL; the native 12 mL moves as much
    low = a.copy()
    low[2:6, 2:6, 5] = 0  # 48 voxels left at -4 HU; b (96 voxels) stands for +4 HU
    calib = calibration_agreement(a, [low, b], 4.0, voxel_ml=0.1)
    assert calib == {"CalibrationShiftHU": 4.0, "CalibrationVolumes": [4.8, 9.6], "IdentityVolume": 6.4}
    rec = summarise({**agreement, **calib}, 12.0, native, 0.01)
    assert rec["CalibrationInterval"] == [pytest.approx(10.4), pytest.approx(15.2)]
    assert rec["CalibrationSpread"] == pytest.approx(4.8)


def _metrics(**extra):
    base = {"BrainVolume": 1400.0, "BrainEdgeArea": 0.0, "BrainInferiorEdgeArea": 0.0, "BrainExtentSI": 150.0,
            "HemorrhageEdgeArea": 0.0, "SkullContactArea": 0.0, "HemorrhageOutsideBrain": 0.0,
            "HemorrhageVolume": 20.0, "HyperdensityVolume": 20.0}
    return {**base, **extra}


def test_uncertain_flag_and_its_thresholds():
    assert "uncertain" not in QC.flags(_metrics(UncertainVolume=1.0, VolumeSpread=0.5))
    assert "uncertain" not in QC.flags(_metrics())  # older sidecars without the measures
    fired = QC.flags(_metrics(UncertainVolume=15.0))  # > 3 mL and > 0.6 x 20 mL
    assert "probability 0.2-0.8" in fired["uncertain"]
    # a large clear clot has mL of 0.2-0.8 band along its edge: not unsure
    assert "uncertain" not in QC.flags(_metrics(UncertainVolume=6.0))
    # a miss: uncertain blood and almost no mask
    assert "uncertain" in QC.flags(_metrics(UncertainVolume=3.5, HemorrhageVolume=0.0))
    spread = QC.flags(_metrics(UncertainVolume=0.0, VolumeSpread=QC.THRESHOLDS["max_volume_spread_ml"] + 1))
    assert "passes disagree" in spread["uncertain"]
    # the threshold is a --qc-thresholds key, re-applied at the group level
    QC.check_thresholds({"max_uncertain_ml": 10.0})
    assert "uncertain" not in QC.flags(_metrics(UncertainVolume=5.0, HemorrhageVolume=2.0),
                                       {"max_uncertain_ml": 10.0})
    assert "uncertain" in QC.flags(_metrics(UncertainVolume=5.0, HemorrhageVolume=2.0), {"max_uncertain_ml": 4.0})
    assert "uncertain" in QC.flags(_metrics(UncertainVolume=6.0), {"max_uncertain_ratio": 0.2})
    # +hu: a confident miss (no mask, no band) whose volume swings with a -/+4 HU shift
    miss = QC.flags(_metrics(UncertainVolume=0.1, HemorrhageVolume=0.0, CalibrationSpread=7.2))
    assert "HU shift moves the volume over 7.2 mL" in miss["uncertain"]
    # a clear 20 mL clot whose edge moves by 3 mL: within 0.5 x its volume
    assert "uncertain" not in QC.flags(_metrics(UncertainVolume=0.1, CalibrationSpread=3.0))
    assert "uncertain" not in QC.flags(_metrics(HemorrhageVolume=0.0, CalibrationSpread=1.0))
    assert "uncertain" in QC.flags(_metrics(CalibrationSpread=3.0), {"max_calibration_spread_ratio": 0.1})


def test_quality_records_uncertainty_measures():
    hu = np.full((40, 40, 40), 30.0, np.float32)
    brain = np.zeros(hu.shape, bool)
    brain[5:35, 5:35, 5:35] = True
    bleed = np.zeros(hu.shape, bool)
    bleed[15:20, 15:20, 15:20] = True
    hu[bleed] = 70
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    one = QC.quality(hu, brain, bleed, affine, uncertainty={"Passes": 1, "UncertainVolume": 9.0,
                                                            "VolumeSpread": 0.0, "PassDice": 1.0})
    assert one["Metrics"]["UncertainVolume"] == 9.0 and one["Metrics"]["VolumeSpread"] is None
    assert "uncertain" in one["Flags"]
    two = QC.quality(hu, brain, bleed, affine, uncertainty={"Passes": 2, "UncertainVolume": 0.1,
                                                            "VolumeSpread": 0.2, "PassDice": 0.97})
    assert two["Metrics"]["PassDice"] == 0.97 and "uncertain" not in two["Flags"]


def test_hu_shift_flags_faint_blood_in_the_real_head(registered_head, tmp_path):
    """--tta hu on the real head with the demo model: a faint 20 mL bleed (mean 43 HU, barely
    above grey matter) swings with a -/+4 HU shift and is flagged; the same bleed at a clear
    65 HU and the lesion-free head are not."""
    import nibabel as nib

    from deepbleed_bids import synth
    from deepbleed_bids.model.segment import segment
    from deepbleed_bids.model.zoo import resolve_model
    from deepbleed_bids.nifti import like
    from deepbleed_bids.registration import to_template

    img, brain, tpl, xfm = registered_head
    spec = resolve_model("synthetic-demo").provenance()
    cases = {"lesion-free": img}
    for name, mean_hu in (("faint", 43.0), ("clear", 65.0)):  # one shape and place (same seed)
        cases[name] = synth.insert_hematoma(img, brain, 20.0, np.random.default_rng(11), location="deep",
                                            mean_hu=mean_hu, texture_sd=4.0, hu_range=(34, 90))[0]
    found = {}
    for name, case in cases.items():
        hu = np.asanyarray(case.dataobj).astype(np.float32)
        path = tmp_path / f"{name}.nii.gz"
        nib.save(to_template(like(np.where(brain, hu, 0), img, dtype=np.float32), tpl, xfm), path)
        (tmp_path / name).mkdir()
        agreement = segment(str(path), str(tmp_path / name), spec, device="cpu", tta="hu")["agreement"]
        assert agreement["TTA"] == "hu" and agreement["Passes"] == 1 and agreement["CalibrationShiftHU"] == 4.0
        volume = agreement["IdentityVolume"]
        rec = summarise(agreement, volume, np.zeros(1), 1.0)
        low, high = rec["CalibrationInterval"]
        assert low <= volume <= high
        found[name] = (volume, rec["CalibrationSpread"], QC.uncertain_reasons(
            {"HemorrhageVolume": volume, "UncertainVolume": 0.0, "CalibrationSpread": rec["CalibrationSpread"]}))
    print(found)
    assert found["clear"][0] > 15.0 and not found["clear"][2]
    assert not found["lesion-free"][2] and found["lesion-free"][0] < 1.0
    volume, spread, reasons = found["faint"]
    assert volume < 15.0 and spread > 0.5 * max(volume, 3.0)
    assert reasons and "HU shift" in reasons[0]
