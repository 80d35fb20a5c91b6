"""Export a trained network in the project's format: ``<name>.weights.h5`` + ``<name>.json`` card.

The weights are re-saved from a VNet built exactly as :func:`deepbleed_bids.model.zoo.load_model`
builds it (no dropout layers), so ``--model <dir>/<name>.weights.h5`` loads them as is.
"""
from datetime import datetime, timezone
from pathlib import Path

from ..utils import atomic_path, write_json_atomic
from ..utils import sha256_file

DEFAULT_LICENSE = "same terms as your training data; the code is Apache-2.0"


def export_weights(trained, params, path):
    """Save ``trained``'s weights into a dropout-free VNet of the same width and kernel, taking raw HU."""
    from ..model.vnet import build_vnet

    from .loop import to_raw_hu

    clean = build_vnet(width=params.width, kernel_size=params.kernel_size)
    clean.set_weights(trained.get_weights())
    to_raw_hu(clean, params.input_scale)  # the published input: raw HU
    with atomic_path(path) as tmp:
        clean.save_weights(str(tmp))
    return Path(path), clean.count_params()


def model_card(name, params, state, data, split, weights_path, n_params, command, description=None,
               license_text=None):
    """The card's content (see README: id, description, data, split, epochs, validation, ...)."""
    from ..provenance import software_versions

    history = state["history"]
    best = next((r for r in history if r["epoch"] == state.get("best_epoch")), history[-1] if history else {})
    return {
        "id": name,
        "description": description or f"DeepBleed VNet (width {params.width}) trained with deepbleed-bids train",
        "license": license_text or DEFAULT_LICENSE,
        "architecture": "DeepBleed 3D VNet (Sharrock et al. 2020), deepbleed_bids.model.vnet.build_vnet",
        "width": params.width,
        "kernel_size": params.kernel_size,
        "parameters": n_params,
        "patch_size": params.predict_patch_size,
        "training_patch_size": params.patch_size,
        "input": "raw HU, 0 outside the brain, on the DeepBleed template grid (128^3, 1.5 mm)",
        "sha256": sha256_file(weights_path),
        "data": data,
        "split": split,
        "epochs": {"completed": state["epoch"], "exported": best.get("epoch"),
                   "stopped_early": bool(state.get("stopped_early"))},
        "validation": {k: best.get(k) for k in ("val_loss", "val_loss_avg", "val_dice",
                                                 "val_abs_volume_diff_ml")},
        "training": {k: v for k, v in vars(params).items() if k not in ("device", "threads")},
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": software_versions(),
    }


def write_card(card, path):
    return write_json_atomic(card, path)
