"""The training loop: mini-batches, Adam, Dice loss, per-epoch checkpoints, resume, early stopping.

Recipe (Sharrock et al. 2020): the 3D VNet, Dice loss, Adam (lr 1e-4), random
left-right flips and elastic x/y deformation, dropout in the deepest blocks, at
least ``min_epochs`` (200) epochs, then stop once the moving average of the
validation loss has not improved for ``patience`` (10) epochs.

Resume: after every epoch the weights, the optimizer's variables (moments and
iteration count) and the history are written to ``checkpoints/epoch-NNNN/``, then
``checkpoints/latest.json`` is replaced to point at it, so an interruption at any
moment leaves the last complete epoch. Epoch ``e`` draws its samples and
augmentations from ``default_rng([seed, e])``: a resumed run sees the same data as
an uninterrupted one.
"""
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..template import VOXEL_ML
from ..utils import atomic_path, write_text_atomic, write_tsv_atomic
from .augment import augment

# Parameters that fix the network and the data; a resumed run must keep them.
ARCHITECTURE = ("width", "kernel_size", "dropout", "patch_size", "input_scale")
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_loss_avg", "val_dice", "val_abs_volume_diff_ml",
               "learning_rate", "samples", "seconds"]


@dataclass
class TrainParams:
    width: int = 16
    kernel_size: int = 5
    dropout: float = 0.1
    patch_size: int = 0  # 0: whole 128^3 volumes; 64 or 32: lesion-biased patches
    inference_patch_size: int = -1  # -1: same as patch_size (recorded in the model card)
    batch_size: int = 2
    learning_rate: float = 1e-4
    loss: str = "dice"
    min_epochs: int = 200
    max_epochs: int = 1000
    patience: int = 10
    average_window: int = 5
    samples_per_epoch: int = 0  # 0: one sample per training case
    lesion_fraction: float = 0.5  # share of patches centred on a lesion
    flip: bool = True
    elastic: bool = True
    elastic_sd_mm: float = 3.0
    elastic_sigma_mm: float = 15.0
    input_scale: float = 100.0  # train on HU / input_scale; exported weights take raw HU (see to_raw_hu)
    output_init: bool = True  # data-dependent start of the output block (see init_output_block)
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = False
    threads: int = 0

    @property
    def predict_patch_size(self):
        return self.patch_size if self.inference_patch_size < 0 else self.inference_patch_size

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check(self):
        if self.width < 1:
            raise InputError(f"--width {self.width}: must be a positive integer.")
        for name in ("patch_size", "inference_patch_size"):
            value = getattr(self, name)
            if value > 0 and value % 16:
                raise InputError(f"--{name.replace('_', '-')} {value}: must be 0 (whole volume) or a "
                                 "multiple of 16 (the VNet halves the grid four times), e.g. 64 or 32.")
        if self.batch_size < 1 or self.min_epochs < 0 or self.max_epochs < 1:
            raise InputError("--batch-size and --max-epochs must be at least 1, --min-epochs at least 0.")
        if self.average_window < 1 or self.patience < 1:
            raise InputError("--average-window and --patience must be at least 1.")


def moving_average(values, window):
    """Trailing mean of the last ``window`` values at each position."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(float(np.mean(chunk)))
    return out


def should_stop(history, params):
    """Early stopping: past ``min_epochs`` and no new best moving average for ``patience`` epochs."""
    val = [row["val_loss"] for row in history if row.get("val_loss") is not None]
    if len(history) < max(params.min_epochs, 1) or len(val) < len(history):
        return False
    avg = moving_average(val, params.average_window)
    best = int(np.argmin(avg))
    return len(avg) - 1 - best >= params.patience


def _atomic_json(data, path):
    write_text_atomic(json.dumps(data, indent=2, default=float) + "\n", path)


class Checkpoints:
    """``out/checkpoints``: the latest complete epoch, and the best weights so far."""

    def __init__(self, out_dir):
        self.dir = Path(out_dir) / "checkpoints"
        self.latest = self.dir / "latest.json"
        self.best = self.dir / "best.weights.h5"

    def state(self):
        return json.loads(self.latest.read_text()) if self.latest.is_file() else None

    def save(self, model, optimizer, state):
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{state['epoch']:04d}"
        tmp = self.dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_weights(str(tmp / "model.weights.h5"))
        np.savez(tmp / "optimizer.npz", *[np.asarray(v.numpy()) for v in optimizer.variables])
        final = self.dir / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _atomic_json({**state, "checkpoint": name}, self.latest)
        for old in self.dir.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, model, optimizer, state):
        folder = self.dir / state["checkpoint"]
        model.load_weights(str(folder / "model.weights.h5"))
        with np.load(folder / "optimizer.npz") as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        variables = optimizer.variables
        if len(values) != len(variables):
            raise InputError(f"checkpoint {folder} holds {len(values)} optimizer variables, the optimizer "
                             f"has {len(variables)}: it was written by a different setup; use a new output folder.")
        for var, value in zip(variables, values):
            var.assign(value)

    def save_best(self, model):
        with atomic_path(self.best) as tmp:
            model.save_weights(str(tmp))


def _batches(cases, params, epoch):
    """The epoch's samples: a seeded order over the cases, augmented."""
    rng = np.random.default_rng([params.seed, epoch])
    n = params.samples_per_epoch or len(cases)
    n = max(params.batch_size, n - n % params.batch_size)
    order = np.concatenate([rng.permutation(len(cases)) for _ in range(-(-n // len(cases)))])[:n]
    for k, idx in enumerate(order):
        sample_rng = np.random.default_rng([params.seed, epoch, k])
        image, mask = augment(cases[idx]["image"], cases[idx]["mask"], sample_rng, params.patch_size,
                              params.lesion_fraction, params.flip, params.elastic,
                              params.elastic_sd_mm, params.elastic_sigma_mm)
        yield image[..., None] / np.float32(params.input_scale), mask[..., None]


def validate(model, cases, params, device):
    """Mean Dice loss (soft), mean Dice (0.5 threshold) and mean |volume difference| on the template grid."""
    import tensorflow as tf

    from ..metrics import dice
    from ..model.predict import predict_volume
    from .losses import get_loss

    loss_fn = get_loss(params.loss)
    losses, dices, diffs = [], [], []
    for case in cases:
        prob = predict_volume(model, case["image"] / np.float32(params.input_scale),
                              patch_size=params.predict_patch_size, device=device)
        losses.append(float(loss_fn(tf.constant(case["mask"], tf.float32), tf.constant(prob))))
        dices.append(dice(prob >= 0.5, case["mask"]))
        diffs.append(abs(int((prob >= 0.5).sum()) - int(case["mask"].sum())) * VOXEL_ML)
    return float(np.mean(losses)), float(np.mean(dices)), float(np.mean(diffs))


def init_output_block(model, images, prior=0.02):
    """Data-dependent start of the two 1x1 output convolutions (LSUV-like, Mishkin & Matas 2016).

    The input is raw HU and its residual path carries it to the last block, whose
    features are ~100 in size: with a standard initialisation the sigmoid starts
    saturated (p = 0 or 1, no gradient) and the 2-channel ReLU before it can die for
    good (constant output). Rescale so that, over brain voxels of ``images``, the
    ReLU's inputs have unit SD and are positive about half the time, and the logits
    have SD 1 around the logit of ``prior`` (a small hemorrhage probability, as in
    Lin et al. 2017): starting at p = 0.5 everywhere, the Dice loss first removes the
    huge false-positive volume, fastest by switching both ReLUs off for good.
    """
    import keras

    features = keras.Model(model.input, model.get_layer("up_1_add").output)
    final, binary = model.get_layer("outblock_final"), model.get_layer("outblock_binary")
    chunks = []
    for image in images:
        f = np.asarray(features(image[None, ..., None], training=False), np.float64)[0]
        chunks.append(f[image != 0])
    feats = np.concatenate(chunks)
    w, b = final.get_weights()
    z = feats @ w[0, 0, 0] + b
    scale = 1.0 / np.maximum(z.std(axis=0), 1e-6)
    w = w * scale
    b = -np.median(z * scale, axis=0)
    final.set_weights([w.astype(np.float32), b.astype(np.float32)])
    h = np.maximum(feats @ w[0, 0, 0] + b, 0)
    w2, _ = binary.get_weights()
    w2 = np.abs(w2)  # more ReLU output -> more hemorrhage: lesions keep the ReLUs alive
    logits = h @ w2[0, 0, 0]
    w2 = w2 / max(float(logits.std()), 1e-6)
    b2 = float(np.log(prior / (1 - prior)) - np.mean(h @ w2[0, 0, 0]))
    binary.set_weights([w2.astype(np.float32), np.array([b2], np.float32)])


def to_raw_hu(model, scale):
    """Make a network trained on ``HU / scale`` take raw HU, exactly.

    Every layer is a ReLU (positively homogeneous) convolution, a sum, a
    concatenation or a channel repeat, so multiplying the input and every bias up
    to the last hidden layer by ``scale`` multiplies every activation by ``scale``;
    dividing the final 1x1 kernel by ``scale`` gives back the same logits. Training
    in the scaled form keeps activations near 1 instead of ~100 (the raw form's
    weights then move ~100 times too fast relative to their size under Adam's step,
    and the 2-channel output ReLU dies); the exported model is the published form.
    """
    if scale == 1:
        return model
    last = model.get_layer("outblock_binary")
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel, bias = weights
        if layer is last:
            layer.set_weights([kernel / scale, bias])
        else:
            layer.set_weights([kernel, bias * scale])
    return model


def build(params, plan):
    """Model and optimizer inside the plan's distribution strategy."""
    import keras

    from ..model.device import strategy_for
    from ..model.vnet import build_vnet

    strategy = strategy_for(plan)
    keras.utils.set_random_seed(params.seed)
    with strategy.scope():
        model = build_vnet(width=params.width, kernel_size=params.kernel_size, dropout=params.dropout)
        optimizer = keras.optimizers.Adam(learning_rate=params.learning_rate)
        if plan["mixed_precision"]:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return strategy, model, optimizer


def _step_fn(strategy, model, optimizer, loss_fn, mixed):
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    def step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = loss_fn(y, pred)
            scaled = loss / replicas  # gradients are summed over replicas
            if mixed:
                scaled = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(reduce_retracing=True)
    def distributed(x, y):
        per_replica = strategy.run(step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    return distributed


def _dataset(cases, params, epoch, strategy):
    import tensorflow as tf

    side = params.patch_size or None
    spec = tf.TensorSpec((side, side, side, 1), tf.float32)
    ds = tf.data.Dataset.from_generator(lambda: _batches(cases, params, epoch), output_signature=(spec, spec))
    ds = ds.batch(params.batch_size, drop_remainder=True).prefetch(2)
    return strategy.experimental_distribute_dataset(ds)


def train(train_cases, val_cases, out_dir, params, stop_after=None, log=print, on_epoch=None):
    """Train (or resume) in ``out_dir``; returns the final state (history, best epoch, ...).

    ``stop_after``: end this call after that many new epochs (resumable later).
    """
    from ..model.device import configure
    from ..reports.plots import loss_curve
    from .losses import get_loss

    params.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoints(out_dir)
    state = ckpt.state()
    if state:
        saved = TrainParams.from_dict(state["params"])
        changed = [k for k in ARCHITECTURE if getattr(saved, k) != getattr(params, k)]
        if changed:
            raise InputError(f"{out_dir} holds a training run with different {', '.join(changed)} "
                             f"({', '.join(f'{k}={getattr(saved, k)}' for k in changed)}); resume with "
                             "the same settings or use a new output folder.")
    plan = configure(params.device, params.mixed_precision, params.threads or None)
    for warning in plan["warnings"]:
        log(f"warning: {warning}")
    strategy, model, optimizer = build(params, plan)
    history = []
    if state:
        ckpt.restore(model, optimizer, state)
        history = state["history"]
        log(f"resuming after epoch {state['epoch']} from {ckpt.dir / state['checkpoint']}")
    elif params.output_init:
        with strategy.scope():
            init_output_block(model, [c["image"] / np.float32(params.input_scale) for c in train_cases[:2]])
    step = _step_fn(strategy, model, optimizer, get_loss(params.loss), plan["mixed_precision"])
    best = min((r for r in history if r.get("val_loss") is not None), key=lambda r: r["val_loss"],
               default=None)
    done = 0
    stopped = should_stop(history, params) if history else False
    while not stopped and len(history) < params.max_epochs and (stop_after is None or done < stop_after):
        epoch = len(history) + 1
        start = time.perf_counter()
        losses = [float(step(x, y)) for x, y in _dataset(train_cases, params, epoch, strategy)]
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": None, "val_loss_avg": None,
               "val_dice": None, "val_abs_volume_diff_ml": None, "learning_rate": params.learning_rate,
               "samples": len(losses) * params.batch_size}
        if val_cases:
            row["val_loss"], row["val_dice"], row["val_abs_volume_diff_ml"] = validate(
                model, val_cases, params, plan["device"])
            row["val_loss_avg"] = moving_average([r["val_loss"] for r in history] + [row["val_loss"]],
                                                 params.average_window)[-1]
        row["seconds"] = round(time.perf_counter() - start, 2)
        history.append(row)
        if row["val_loss"] is not None and (best is None or row["val_loss"] < best["val_loss"]):
            best = row
            ckpt.save_best(model)
        stopped = should_stop(history, params)
        state = {"epoch": epoch, "params": asdict(params), "history": history,
                 "best_epoch": best["epoch"] if best else None, "stopped_early": stopped,
                 "device_plan": plan}
        ckpt.save(model, optimizer, state)
        write_log(history, out_dir / "training_log.tsv")
        loss_curve(history, out_dir / "loss_curve.png", params.average_window)
        done += 1
        log(_summary(row))
        if on_epoch:
            on_epoch(row)
    final = ckpt.state() or {"epoch": 0, "history": [], "best_epoch": None, "stopped_early": False}
    final["finished"] = bool(final.get("stopped_early")) or final["epoch"] >= params.max_epochs
    final["model"], final["optimizer"] = model, optimizer
    return final


def _summary(row):
    text = f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}"
    if row["val_loss"] is not None:
        text += (f", val loss {row['val_loss']:.4f} (avg {row['val_loss_avg']:.4f}), "
                 f"val Dice {row['val_dice']:.3f}")
    return text + f" [{row['seconds']:.0f} s]"


def write_log(history, path):
    """The training log as TSV (one row per epoch), written atomically."""
    import pandas as pd

    write_tsv_atomic(pd.DataFrame(history, columns=LOG_COLUMNS), path, float_format=None)
