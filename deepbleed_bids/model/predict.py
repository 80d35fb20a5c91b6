"""Run the VNet on a template-space volume, whole or in overlapping patches."""
import itertools

import numpy as np


def patch_starts(size, patch, overlap):
    """Start indices covering ``size`` with windows of ``patch`` overlapping by ``overlap``."""
    if patch >= size:
        return [0]
    step = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def predict_volume(model, volume, patch_size=0, overlap=0.5, batch_size=1, device="/CPU:0"):
    """Sigmoid probability map (float32, same shape as ``volume``).

    ``volume`` is the network input exactly as the published model expects it:
    raw HU, 0 outside the brain, on the template grid. ``patch_size`` 0 runs the
    whole volume at once; 64 or 32 tiles it and averages overlapping windows.
    """
    import tensorflow as tf

    # a graph, not op-by-op eager execution: measurably faster for these large convolutions
    # float32 out whatever the compute precision (bf16/fp16 policies, model.device)
    forward = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)
    volume = np.asarray(volume, dtype=np.float32)
    if not patch_size or all(s <= patch_size for s in volume.shape):
        with tf.device(device):
            out = forward(tf.constant(volume[None, ..., None]))
        return np.asarray(out, dtype=np.float32)[0, ..., 0]

    total = np.zeros(volume.shape, np.float32)
    count = np.zeros(volume.shape, np.float32)
    corners = list(itertools.product(*(patch_starts(s, patch_size, overlap) for s in volume.shape)))
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        batch = np.stack([volume[x:x + patch_size, y:y + patch_size, z:z + patch_size]
                          for x, y, z in chunk])[..., None]
        with tf.device(device):
            out = np.asarray(forward(tf.constant(batch)), dtype=np.float32)[..., 0]
        for (x, y, z), prob in zip(chunk, out):
            total[x:x + patch_size, y:y + patch_size, z:z + patch_size] += prob
            count[x:x + patch_size, y:y + patch_size, z:z + patch_size] += 1
    return total / np.maximum(count, 1)


# ---------------------------------------------------------------- test-time augmentation

TTA_CHOICES = ("auto", "none", "flip", "flip+mc", "hu", "flip+hu", "flip+mc+hu")
MC_PASSES = 4  # Monte-Carlo dropout passes added by --tta flip+mc
# +hu: two more passes with the brain's HU shifted by -/+ this much (not averaged in). CT number
# accuracy of water is held to about +/-4 HU in acceptance testing (ACR allows +/-7), and the
# published network reads raw HU: how far the volume moves is what a site's calibration can do.
CALIBRATION_HU = 4.0
FLIP_AXIS = 0  # the template grid is RAS: axis 0 runs left to right


def resolve_tta(requested, device="/CPU:0"):
    """``auto`` -> ``flip`` on a GPU, ``none`` on the CPU (a flip doubles the forward time)."""
    if requested not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}, not {requested!r}")
    if requested == "auto":
        return "flip" if "GPU" in str(device).upper() else "none"
    return requested


def tta_parts(tta):
    """The passes a (resolved) ``--tta`` mode asks for: a subset of {"flip", "mc", "hu"}."""
    return set(tta.split("+")) - {"none", "auto"}


def has_dropout(model):
    """True when the model holds a dropout layer with a non-zero rate (Monte-Carlo dropout possible)."""
    for layer in getattr(model, "layers", []):
        rate = getattr(layer, "rate", None)
        if "dropout" in type(layer).__name__.lower() and rate:
            return True
        if has_dropout(layer) if getattr(layer, "layers", None) else False:
            return True
    return False


def dropout_twin(model, spec):
    """The model's VNet rebuilt with the dropout its card says it was trained with, sharing the
    trained weights (inference models are built without dropout layers, which hold no weights);
    None when the card names no dropout (e.g. the published weights)."""
    from .vnet import build_vnet

    rate = ((getattr(spec, "card", None) or {}).get("training") or {}).get("dropout")
    if not rate or has_dropout(model):
        return None
    twin = build_vnet(width=spec.width, kernel_size=spec.kernel_size, input_shape=model.input_shape[1:],
                      dropout=float(rate))
    twin.set_weights(model.get_weights())
    return twin


def predict_passes(model, volume, tta="none", patch_size=0, overlap=0.5, batch_size=1,
                   device="/CPU:0", mc_passes=MC_PASSES, seed=1, mc_model=None):
    """The probability map of every test-time pass and what was run.

    ``none``: one pass; ``flip``: also the left-right mirrored input (mirrored back);
    ``flip+mc``: plus ``mc_passes`` Monte-Carlo dropout passes on each of the two
    orientations when the model has dropout, or with ``mc_model`` (see :func:`dropout_twin`)
    (the VNet has no batch normalisation, so ``training=True`` only switches dropout on).
    A ``+hu`` suffix changes nothing here: its passes are :func:`calibration_passes`, which
    are not averaged into the probability. Returns (list of arrays, info).
    """
    import tensorflow as tf

    tta = resolve_tta(tta, device)
    parts = tta_parts(tta)
    volume = np.asarray(volume, dtype=np.float32)
    run = lambda v: predict_volume(model, v, patch_size, overlap, batch_size, device)  # noqa: E731
    passes, names, notes = [run(volume)], ["identity"], []
    if "flip" in parts:
        passes.append(np.flip(run(np.flip(volume, FLIP_AXIS).copy()), FLIP_AXIS).copy())
        names.append("flip")
    if "mc" in parts:
        if mc_model is not None and has_dropout(mc_model):
            model = mc_model
        if not has_dropout(model):
            notes.append("flip+mc: the model has no dropout, Monte-Carlo passes skipped (flip only)")
        else:
            tf.random.set_seed(seed)
            dropout_on = _DropoutOn(model)
            for k in range(mc_passes):
                for flipped in (False, True):
                    v = np.flip(volume, FLIP_AXIS).copy() if flipped else volume
                    out = predict_volume(dropout_on, v, patch_size, overlap, batch_size, device)
                    passes.append(np.flip(out, FLIP_AXIS).copy() if flipped else out)
                    names.append(f"mc{k + 1}" + ("-flip" if flipped else ""))
    return passes, {"TTA": tta, "Passes": names, "Notes": notes}


def calibration_passes(model, volume, shift_hu=CALIBRATION_HU, patch_size=0, overlap=0.5, batch_size=1,
                       device="/CPU:0"):
    """The probability maps with the brain's HU shifted by -shift_hu and +shift_hu (0 outside
    the brain stays 0): how much the answer hangs on the scanner's HU calibration. A blood
    pool barely denser than the brain can vanish at -4 HU and appear at +4 HU while every
    pass is confident: the uncertainty the flip and dropout passes cannot show."""
    volume = np.asarray(volume, dtype=np.float32)
    inside = volume != 0
    return [predict_volume(model, np.where(inside, volume + s, 0).astype(np.float32), patch_size, overlap,
                           batch_size, device) for s in (-shift_hu, shift_hu)]


class _DropoutOn:
    """The model called with dropout active whatever ``training`` the caller passes."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, training=False):
        return self.model(x, training=True)
