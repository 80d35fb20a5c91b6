"""The project's figures (matplotlib object API, no display, atomic writes): group-level ones as
PNG and SVG; training and evaluation ones as one PNG."""
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic_path


def _new(width=6.0, height=4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, stem, formats=("png", "svg")):
    """stem.png and stem.svg (or ``formats``), each renamed into place once complete."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    out = []
    for ext in formats:
        path = Path(f"{stem}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=110)
        out.append(path)
    return out


def _save_png(fig, path):
    """One PNG at ``path`` (which ends in .png)."""
    return _save(fig, str(path)[: -len(".png")], ("png",))[0]


# ---------------------------------------------------------------- training and evaluation

def loss_curve(history, path, window=5):
    """Training and validation loss per epoch (with the validation moving average)."""
    fig, ax = _new(6.0, 4.0)
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
    return _save_png(fig, path)


def dice_distribution(df, path):
    """Histogram of per-scan Dice, with the failure line at 0.5."""
    fig, ax = _new(5.0, 4.0)
    ax.hist(np.asarray(df["dice"], float), bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(0.5, color="tab:red", linestyle="--", label="failed below 0.5")
    ax.set_xlabel("Dice")
    ax.set_ylabel("scans")
    ax.legend()
    return _save_png(fig, path)


def volume_scatter(df, path):
    """Predicted against reference volume, with the identity and the least-squares line."""
    fig, ax = _new(5.0, 5.0)
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
    return _save_png(fig, path)


def bland_altman(df, path, band_ml=5.0):
    """Difference (predicted - reference) against the mean, with bias, limits of agreement, +-5 mL."""
    fig, ax = _new(6.0, 4.0)
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
    return _save_png(fig, path)


def volume_distribution(df, stem):
    fig, ax = _new()
    v = pd.to_numeric(df["hemorrhage_volume_ml"], errors="coerce").dropna()
    ax.hist(v, bins=min(30, max(5, len(v))), color="#c62828", alpha=0.8, edgecolor="white")
    ax.plot(v, np.zeros(len(v)), "|", color="black", markersize=12)
    ax.set_xlabel("hemorrhage volume (mL)")
    ax.set_ylabel("CT images")
    ax.set_title(f"Hemorrhage volume, {len(v)} CT image(s)")
    return _save(fig, stem)


def volume_by_group(df, column, stem):
    keys = df[column].fillna("n/a").astype(str)
    groups = sorted(keys.unique(), key=str)
    data = [pd.to_numeric(df.loc[keys == g, "hemorrhage_volume_ml"], errors="coerce").dropna() for g in groups]
    fig, ax = _new(max(4.0, 1.2 * len(groups) + 2), 4.0)
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(groups) + 1), [f"{g}\n(n={len(d)})" for g, d in zip(groups, data)])
    rng = np.random.default_rng(0)  # fixed jitter: the same figure at every run
    for k, d in enumerate(data, 1):
        ax.plot(k + rng.uniform(-0.12, 0.12, len(d)), d, "o", color="#c62828", alpha=0.7, markersize=4)
    ax.set_xlabel(column)
    ax.set_ylabel("hemorrhage volume (mL)")
    ax.set_title(f"Hemorrhage volume by {column}")
    return _save(fig, stem)


def spaghetti(long, stem):
    """Volume over scans, one line per participant; expansion and post-treatment marked."""
    fig, ax = _new(7.0, 4.5)
    use_hours = long["hours_from_first"].notna().all()
    x = "hours_from_first" if use_hours else "scan_order"
    for sub, part in long.groupby("participant_id", sort=True):
        part = part.sort_values("scan_order")
        line, = ax.plot(part[x], part["hemorrhage_volume_ml"], "-o", markersize=4, label=sub)
        grew = part["expansion"] == True  # noqa: E712
        ax.plot(part.loc[grew, x], part.loc[grew, "hemorrhage_volume_ml"], "^", color="#b71c1c",
                markersize=10, fillstyle="none")
        post = part["post_treatment"] == True  # noqa: E712
        ax.plot(part.loc[post, x], part.loc[post, "hemorrhage_volume_ml"], "s", color=line.get_color(),
                markersize=9, fillstyle="none")
    if not use_hours:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hours from the first scan" if use_hours else "scan (in time order)")
    ax.set_ylabel("hemorrhage volume (mL)")
    ax.set_title("Volume over time (triangle: expansion, square: post-treatment)")
    if long["participant_id"].nunique() <= 15:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, stem)


def abc2_vs_planimetric(df, stem):
    fig, ax = _new(5.0, 5.0)
    x = pd.to_numeric(df["hemorrhage_volume_ml"], errors="coerce")
    y = pd.to_numeric(df["abc2_ml"], errors="coerce")
    ok = x.notna() & y.notna()
    ax.plot(x[ok], y[ok], "o", color="#1565c0", alpha=0.8)
    top = float(max(x[ok].max(), y[ok].max(), 1.0)) * 1.05 if ok.any() else 1.0
    ax.plot([0, top], [0, top], "--", color="gray", label="identity")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("planimetric volume, network (mL)")
    ax.set_ylabel("ABC/2 (mL)")
    ax.set_title("ABC/2 vs planimetric volume")
    ax.legend()
    return _save(fig, stem)


def group_figures(df, long, group_by, gdir, agreement=None, log=print):
    """Every group figure that the data allow: {name: [png, svg]}; a failed plot is logged."""
    jobs = [("volume_distribution", lambda s: volume_distribution(df, s)),
            ("abc2_vs_planimetric", lambda s: abc2_vs_planimetric(df, s))]
    by = list(group_by) or (["session"] if df["session"].nunique() > 1 else [])
    jobs += [(f"volume_by-{c}", lambda s, c=c: volume_by_group(df, c, s)) for c in by]
    if len(long):
        jobs.append(("volume_over_time", lambda s: spaghetti(long, s)))
    out = {}
    for name, job in jobs:
        try:
            out[name] = job(Path(gdir) / name)
        except Exception as err:  # noqa: BLE001  one figure must not cost the others
            log(f"group: figure {name} failed: {err}")
    for name, path in ((agreement or {}).get("files") or {}).items():
        if str(path).endswith(".png"):  # from deepbleed_bids.evaluation (PNG only)
            out[f"agreement_{name}"] = [Path(path)]
    return out
