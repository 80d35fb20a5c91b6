"""Figures for training and evaluation (matplotlib, no display needed); written atomically."""
from pathlib import Path

import numpy as np

from .utils import atomic_path


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def loss_curve(history, path, window=5):
    """Training and validation loss per epoch (with the validation moving average)."""
    fig, ax = _figure(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], label="training")
    val = [(r["epoch"], r["val_loss"], r["val_loss_avg"]) for r in history if r.get("val_loss") is not None]
    if val:
        e, v, a = zip(*val)
        ax.plot(e, v, label="validation", alpha=0.6)
        ax.plot(e, a, label=f"validation, {window}-epoch average")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Dice loss")
    ax.legend()
    return _save(fig, path)


def dice_distribution(df, path):
    """Histogram of per-scan Dice, with the failure line at 0.5."""
    fig, ax = _figure(figsize=(5, 4))
    ax.hist(np.asarray(df["dice"], float), bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(0.5, color="tab:red", linestyle="--", label="failed below 0.5")
    ax.set_xlabel("Dice")
    ax.set_ylabel("scans")
    ax.legend()
    return _save(fig, path)


def volume_scatter(df, path):
    """Predicted against reference volume, with the identity and the least-squares line."""
    fig, ax = _figure(figsize=(5, 5))
    ref = np.asarray(df["ref_volume_ml"], float)
    pred = np.asarray(df["pred_volume_ml"], float)
    ax.scatter(ref, pred, s=16)
    top = max(float(np.max(ref, initial=0)), float(np.max(pred, initial=0)), 1.0) * 1.05
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="identity")
    if len(ref) > 1 and np.std(ref) > 0:
        slope, icpt = np.polyfit(ref, pred, 1)
        ax.plot([0, top], [icpt, icpt + slope * top], color="tab:red",
                label=f"fit: {slope:.2f} x {icpt:+.1f} mL")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("reference volume (mL)")
    ax.set_ylabel("predicted volume (mL)")
    ax.legend()
    return _save(fig, path)


def bland_altman(df, path, band_ml=5.0):
    """Difference (predicted - reference) against the mean, with bias, limits of agreement, +-5 mL."""
    fig, ax = _figure(figsize=(6, 4))
    ref = np.asarray(df["ref_volume_ml"], float)
    pred = np.asarray(df["pred_volume_ml"], float)
    mean, diff = (ref + pred) / 2, pred - ref
    ax.axhspan(-band_ml, band_ml, color="tab:green", alpha=0.15, label=f"+-{band_ml:g} mL")
    ax.scatter(mean, diff, s=16)
    if len(diff):
        bias = float(diff.mean())
        ax.axhline(bias, color="tab:red", label=f"bias {bias:+.2f} mL")
        if len(diff) > 1:
            sd = float(diff.std(ddof=1))
            for lim in (bias - 1.96 * sd, bias + 1.96 * sd):
                ax.axhline(lim, color="tab:red", linestyle=":")
    ax.set_xlabel("mean of predicted and reference volume (mL)")
    ax.set_ylabel("predicted - reference (mL)")
    ax.legend()
    return _save(fig, path)
