"""The bundled ``synthetic-demo`` model through the whole BIDS-App, on held-out lesions in the real head.

The test lesions use shape seeds 7 and 13; the 200 training cases (synthesize --seed 0)
drew their shape seeds uniformly from [0, 2^31) and none is below 1000, so these shapes,
their volumes (25 and 40 mL) and places were never seen in training.
"""
import json

import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids import synth
from deepbleed_bids.metrics import dice
from deepbleed_bids.model.zoo import bundled_models, resolve_model
from deepbleed_bids.testing import run_bids_app, write_bids_dataset

CASES = {"deep": (25.0, "deep", 7), "lobar": (40.0, "lobar", 13)}


@pytest.fixture(scope="module")
def demo_run(ge_head, head_and_brain, asset_home, tmp_path_factory):
    if "synthetic-demo" not in bundled_models():
        pytest.fail("deepbleed_bids/data/models/synthetic-demo.weights.h5 is missing")
    root = tmp_path_factory.mktemp("demo")
    img, brain = head_and_brain
    images, truths = {"sub-normal/ct/sub-normal_ct.nii.gz": ge_head}, {}
    for name, (volume, location, shape_seed) in CASES.items():
        out, truth, info = synth.insert_hematoma(img, brain, volume, rng=np.random.default_rng(1000 + shape_seed),
                                                 location=location, shape_seed=shape_seed)
        images[f"sub-{name}/ct/sub-{name}_ct.nii.gz"] = out
        truths[name] = (truth, info)
    bids = write_bids_dataset(root / "bids", images)
    out_dir = root / "out"
    proc = run_bids_app(bids, out_dir, "--work-dir", root / "work", "--nprocs", "2", home=asset_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_dir, truths


def _result(out_dir, name):
    stem = out_dir / f"sub-{name}/ct/sub-{name}_desc-hemorrhage_mask"
    mask = np.asanyarray(nib.load(f"{stem}.nii.gz").dataobj) > 0
    return mask, json.loads(open(f"{stem}.json").read())


def test_card_says_what_the_model_is():
    spec = resolve_model("synthetic-demo")
    card = spec.card
    assert card["id"] == "synthetic-demo" and spec.sha256 == card["sha256"]
    assert "NOT for research" in card["description"] and "synthetic" in card["description"]
    assert card["command"].startswith("deepbleed-bids train ")
    assert spec.width == card["width"] and spec.patch_size == card["patch_size"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_held_out_lesion_dice_and_volume(demo_run, name):
    out_dir, truths = demo_run
    truth, info = truths[name]
    mask, sidecar = _result(out_dir, name)
    assert mask.shape == truth.shape
    score = dice(mask, truth)
    volume = sidecar["HemorrhageVolume"]
    print(f"{name}: Dice {score:.3f}, volume {volume:.2f} mL vs {info['volume_ml']:.2f} mL")
    assert score >= 0.85
    assert volume == pytest.approx(info["volume_ml"], rel=0.10)
    assert sidecar["Model"]["Name"] == "synthetic-demo"
    assert any("for demonstration and testing only" in w for w in sidecar["Warnings"])


def test_head_without_hemorrhage_small_volume(demo_run):
    out_dir, _ = demo_run
    mask, sidecar = _result(out_dir, "normal")
    print(f"normal head: {sidecar['HemorrhageVolume']:.3f} mL")
    assert sidecar["HemorrhageVolume"] < 1.0
