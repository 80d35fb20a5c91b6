"""Per-scan uncertainty of the segmentation from the test-time passes (pure numpy).

Measures (the ``Uncertainty`` record of the hemorrhage sidecar):

* ``UncertainVolume``: volume (mL, native grid) where the averaged probability
  lies in ``band`` (0.2-0.8): voxels that could go either way. Available with
  every ``--tta`` mode, also a single pass.
* ``PassVolumes``: the hemorrhage volume of each pass (mL, template grid, mask
  probability >= threshold); ``PassDice``: the smallest Dice between the
  averaged mask and a pass's mask (1 with a single pass).
* ``VolumeInterval``: the reported (native) volume shifted by the lowest and
  highest pass volume relative to the averaged mask's template-grid volume:
  [V + min_k(v_k - v), V + max_k(v_k - v)]; its width is ``VolumeSpread``.
* ``CalibrationInterval`` (``--tta ...+hu``): the reported volume shifted as the
  identity pass's volume moves when the brain's HU are shifted by -/+``CalibrationShiftHU``
  (``CalibrationVolumes``, template grid); its width is ``CalibrationSpread``. A
  confident miss of blood barely denser than the brain has no 0.2-0.8 band and passes
  that agree, but its volume swings with a few HU.

The ``uncertain`` QC flag (deepbleed_bids.qc) fires when ``UncertainVolume``
exceeds ``max_uncertain_ml`` (and a share of the volume), ``VolumeSpread`` exceeds
``max_volume_spread_ml``, or ``CalibrationSpread`` exceeds ``max_calibration_spread_ml``
(and a share of the volume).
"""
import numpy as np

BAND = (0.2, 0.8)


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return float(2 * np.count_nonzero(a & b) / total) if total else 1.0


def uncertain_volume(prob, voxel_ml, band=BAND):
    """Volume (mL) of voxels whose probability lies within ``band`` (inclusive)."""
    prob = np.asarray(prob)
    return float(np.count_nonzero((prob >= band[0]) & (prob <= band[1])) * voxel_ml)


def _mask_volume(prob, voxel_ml, threshold):
    """Volume (mL, 3 decimals) of the mask prob >= threshold."""
    return round(float(np.count_nonzero(np.asarray(prob) >= threshold) * voxel_ml), 3)


def pass_agreement(passes, voxel_ml, threshold=0.5):
    """Agreement between test-time passes (template grid): volumes and Dice with their mean's mask."""
    passes = [np.asarray(p, np.float32) for p in passes]
    mean = np.mean(passes, axis=0) if len(passes) > 1 else passes[0]
    mean_mask = mean >= threshold
    dices = [dice(p >= threshold, mean_mask) for p in passes]
    return {"Passes": len(passes), "PassVolumes": [_mask_volume(p, voxel_ml, threshold) for p in passes],
            "MeanMaskVolume": _mask_volume(mean, voxel_ml, threshold),
            "PassDice": round(min(dices), 4)}


def calibration_agreement(identity, shifted, shift_hu, voxel_ml, threshold=0.5):
    """The volumes (mL, template grid) of the identity pass and of the HU-shifted passes."""
    return {"CalibrationShiftHU": float(shift_hu),
            "CalibrationVolumes": [_mask_volume(p, voxel_ml, threshold) for p in shifted],
            "IdentityVolume": _mask_volume(identity, voxel_ml, threshold)}


def _interval(volume, base, others):
    lo = volume + min(v - base for v in others)
    hi = volume + max(v - base for v in others)
    return max(0.0, min(lo, volume)), max(hi, volume)


def summarise(agreement, native_volume_ml, native_prob, native_voxel_ml, band=BAND):
    """The sidecar's ``Uncertainty`` record from the pass agreement and the native probability."""
    lo, hi = _interval(native_volume_ml, agreement["MeanMaskVolume"], agreement["PassVolumes"])
    rec = {**agreement,
           "UncertainVolume": round(uncertain_volume(native_prob, native_voxel_ml, band), 3),
           "UncertainBand": list(band),
           "VolumeInterval": [round(lo, 3), round(hi, 3)],
           "VolumeSpread": round(hi - lo, 3),
           "Units": "mL"}
    if agreement.get("CalibrationVolumes"):
        lo, hi = _interval(native_volume_ml, agreement["IdentityVolume"], agreement["CalibrationVolumes"])
        rec.update(CalibrationInterval=[round(lo, 3), round(hi, 3)], CalibrationSpread=round(hi - lo, 3))
    return rec
