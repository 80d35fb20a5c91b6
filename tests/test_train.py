"""``deepbleed-bids train``: data pairing, preprocessing cache, split, recipe parts, resume, export."""
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepbleed_bids.cli.main import main
from deepbleed_bids.errors import InputError
from deepbleed_bids.training import augment as A
from deepbleed_bids.training.data import load_case, split_participants
from deepbleed_bids.training.loop import TrainParams, moving_average, should_stop, train

TINY = ["--width", "2", "--kernel-size", "3", "--dropout", "0", "--patch-size", "32",
        "--inference-patch-size", "0", "--batch-size", "2", "--samples-per-epoch", "2",
        "--min-epochs", "1", "--max-epochs", "3", "--val-fraction", "0.34", "--threads", "2",
        "--nprocs", "2", "--name", "tiny"]


# ---------------------------------------------------------------- recipe parts (no data needed)


def test_split_is_by_participant_seeded_and_explicit():
    subjects = ["01", "01", "02", "03", "04", "05", "sub-05"]
    train_ids, val_ids = split_participants(subjects, 0.4, seed=3)
    assert sorted(train_ids + val_ids) == ["01", "02", "03", "04", "05"]
    assert not set(train_ids) & set(val_ids) and len(val_ids) == 2
    assert split_participants(subjects, 0.4, seed=3) == (train_ids, val_ids)
    assert any(split_participants(subjects, 0.4, seed=s) != (train_ids, val_ids) for s in range(4, 8))
    assert split_participants(subjects, validation=["sub-02"]) == (["01", "03", "04", "05"], ["02"])
    assert split_participants(["01", "02"], 0.1)[1] != []  # at least one validation participant
    with pytest.raises(InputError, match="sub-09"):
        split_participants(subjects, validation=["09"])


def test_flip_is_left_right_on_the_template_grid():
    image = np.zeros((8, 4, 4), np.float32)
    image[1, 2, 3] = 50  # x index 1: the right side in RAS (x grows to the left... of the viewer)
    mask = image > 0
    flipped, fmask = A.flip_lr(image, mask, np.random.default_rng(0), p=1.0)
    assert flipped[6, 2, 3] == 50 and fmask[6, 2, 3] and flipped.sum() == 50


def test_elastic_moves_only_within_axial_planes():
    grid = np.meshgrid(*(np.arange(48, dtype=np.float32),) * 3, indexing="ij")
    mask = np.zeros((48, 48, 48), np.uint8)
    mask[16:32, 16:32, 16:32] = 1
    rng = np.random.default_rng(0)
    out_z, _ = A.elastic_xy(grid[2], mask, rng, sd_mm=4.0, sigma_mm=12.0)
    np.testing.assert_allclose(out_z, grid[2], atol=1e-4)  # no displacement along z
    out_x, _ = A.elastic_xy(grid[0], mask, np.random.default_rng(0), sd_mm=4.0, sigma_mm=12.0)
    assert np.abs(out_x - grid[0]).max() > 1.0  # but along x
    # image and mask move together
    blood, out_mask = A.elastic_xy(mask * 60.0, mask, np.random.default_rng(5))
    assert set(np.unique(out_mask)) <= {0, 1} and not np.array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_mask, blood >= 30)
    # slices without lesion stay without lesion: z is untouched
    assert not out_mask[:, :, :16].any() and not out_mask[:, :, 32:].any()


def test_patches_are_biased_to_lesions():
    image = np.zeros((128, 128, 128), np.float32)
    image[20:110, 20:110, 20:110] = 30  # brain
    mask = np.zeros(image.shape, np.uint8)
    mask[90:96, 30:36, 60:66] = 1
    rng = np.random.default_rng(1)
    hits = [A.sample_patch(image, mask, 32, rng, lesion_fraction=1.0)[1].any() for _ in range(20)]
    assert all(hits)
    patch, pmask = A.sample_patch(image, mask, 32, rng, lesion_fraction=0.0)
    assert patch.shape == (32, 32, 32) and (patch > 0).any()  # centred in the brain
    none = [A.sample_patch(image, mask, 32, rng, lesion_fraction=0.0)[1].any() for _ in range(20)]
    assert sum(none) < 10


def test_dice_loss_by_hand():
    import tensorflow as tf

    from deepbleed_bids.training.losses import dice_loss, get_loss

    g = np.zeros((2, 4, 4, 4, 1), np.float32)
    g[0, :2] = 1  # 32 voxels
    p = np.zeros_like(g)
    p[0, :1] = 1.0  # 16 voxels, all inside
    p[1, :1] = 0.5  # 16 voxels at 0.5 in an empty sample: false positives count batch-wide
    expected = 1 - (2 * 16 + 1) / (16 + 16 * 0.25 + 32 + 1)
    assert float(dice_loss(tf.constant(g), tf.constant(p))) == pytest.approx(expected, rel=1e-6)
    assert float(dice_loss(tf.constant(g), tf.constant(g))) == pytest.approx(0.0, abs=1e-6)
    assert float(get_loss("dice+bce")(tf.constant(g), tf.constant(p))) > expected
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("focal")


def test_early_stopping_on_moving_average():
    assert moving_average([4, 2, 3, 1], 2) == [4, 3, 2.5, 2]
    params = TrainParams(min_epochs=5, patience=3, average_window=2)

    def history(values):
        return [{"epoch": i + 1, "val_loss": v} for i, v in enumerate(values)]

    assert not should_stop(history([1.0, 0.9, 0.8]), params)  # before min_epochs
    assert not should_stop(history([1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.7]), params)
    # best average at epoch 3 (0.5), then 3 epochs without a better one
    assert should_stop(history([1.0, 0.5, 0.5, 0.9, 0.9, 0.9]), params)
    # a single noisy low value does not reset the counter if the average does not improve
    assert should_stop(history([1.0, 0.4, 0.4, 0.9, 0.3, 0.9, 0.9, 0.9]), params)
    assert not should_stop(history([1.0, 0.4, 0.4, 0.9, 0.3, 0.3]), params)


# ---------------------------------------------------------------- real data end to end


@pytest.fixture(scope="module")
def dataset(ge_head, asset_home, tmp_path_factory):
    """3 synthetic cases with masks, a CT without mask and one whose mask is on another grid."""
    root = tmp_path_factory.mktemp("train")
    bids, masks = root / "bids", root / "masks"
    assert main(["synthesize", str(bids), str(masks), "--n", "3", "--seed", "11",
                 "--source", str(ge_head)]) == 0
    for sub in ("nomask", "badmask"):
        (bids / f"sub-{sub}/ct").mkdir(parents=True)
        shutil.copy(bids / "sub-synth001/ct/sub-synth001_ct.nii.gz", bids / f"sub-{sub}/ct/sub-{sub}_ct.nii.gz")
    src = nib.load(masks / "sub-synth001/ct/sub-synth001_desc-hemorrhage_mask.nii.gz")
    (masks / "sub-badmask/ct").mkdir(parents=True)
    nib.save(src.slicer[::2, ::2], masks / "sub-badmask/ct/sub-badmask_desc-hemorrhage_mask.nii.gz")
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def trained(dataset, asset_home, monkeypatch_module):
    """Train 1 epoch and stop; then the same command resumes and finishes 3 epochs."""
    monkeypatch_module.setenv("DEEPBLEED_HOME", str(asset_home))  # the template, offline
    out = dataset / "out"
    args = ["train", str(dataset / "bids"), str(dataset / "masks"), str(out), *TINY]
    assert main([*args, "--stop-after", "1"]) == 0
    first = {
        "log": pd.read_csv(out / "training_log.tsv", sep="\t"),
        "state": json.loads((out / "checkpoints/latest.json").read_text()),
        "cases": {p.name: p.stat().st_mtime_ns for p in (out / "work/cases").glob("*.npz")},
        "exported": (out / "tiny.weights.h5").exists(),
    }
    assert main(args) == 0
    return out, first


def test_masks_missing_or_on_another_grid_are_skipped(trained):
    out, _ = trained
    card = json.loads((out / "tiny.json").read_text())
    reasons = {item["scan"]: item["reason"] for item in card["data"]["skipped"]}
    assert "no reference mask" in reasons["sub-nomask/ct/sub-nomask_ct.nii.gz"]
    assert "not on the same grid" in reasons["sub-badmask/ct/sub-badmask_ct.nii.gz"]
    assert card["data"]["scans"] == 3


def test_reference_masks_reach_the_template_grid(trained):
    out, _ = trained
    cases = [load_case(p) for p in sorted((out / "work/cases").glob("*.npz"))]
    assert len(cases) == 3
    for case in cases:
        assert case["image"].shape == case["mask"].shape == (128, 128, 128)
        meta = case["meta"]
        assert meta["template_volume_ml"] == pytest.approx(case["mask"].sum() * 1.5 ** 3 / 1000)
        if meta["native_volume_ml"] > 2:
            # linear interpolation then >= 0.5 keeps the volume
            assert meta["template_volume_ml"] == pytest.approx(meta["native_volume_ml"], rel=0.1)
            # and the mask lands on the blood in the network input
            assert 40 <= np.median(case["image"][case["mask"] > 0]) <= 90


def test_resume_continues_epochs_optimizer_and_log(trained):
    out, first = trained
    assert not first["exported"] and first["state"]["epoch"] == 1 and len(first["log"]) == 1
    log = pd.read_csv(out / "training_log.tsv", sep="\t")
    assert list(log["epoch"]) == [1, 2, 3]
    assert log.loc[0, "train_loss"] == pytest.approx(first["log"].loc[0, "train_loss"])
    state = json.loads((out / "checkpoints/latest.json").read_text())
    assert state["epoch"] == 3 and [r["epoch"] for r in state["history"]] == [1, 2, 3]
    with np.load(out / "checkpoints" / state["checkpoint"] / "optimizer.npz") as opt:
        assert int(opt["arr_0"]) == 3  # Adam's iteration count: 1 step per epoch, never reset
    # the second run reused the cached preprocessing
    assert {p.name: p.stat().st_mtime_ns for p in (out / "work/cases").glob("*.npz")} == first["cases"]
    png = (out / "loss_curve.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 5000


def test_split_by_participant_is_written(trained):
    out, _ = trained
    split = pd.read_csv(out / "split.tsv", sep="\t")
    assert sorted(split["participant_id"]) == ["sub-synth001", "sub-synth002", "sub-synth003"]
    assert split.groupby("participant_id")["set"].nunique().max() == 1
    card = json.loads((out / "tiny.json").read_text())
    assert card["split"]["validation"] == list(split.loc[split["set"] == "validation", "participant_id"])
    assert len(card["split"]["validation"]) == 1 and len(card["split"]["training"]) == 2


def test_exported_model_and_card(trained):
    from deepbleed_bids.model.weights import sha256_file
    from deepbleed_bids.model.zoo import load_model, resolve_model

    out, _ = trained
    card = json.loads((out / "tiny.json").read_text())
    for key in ("id", "description", "license", "data", "split", "epochs", "validation", "patch_size",
                "width", "sha256", "command"):
        assert key in card
    assert card["sha256"] == sha256_file(out / "tiny.weights.h5")
    assert card["command"].startswith("deepbleed-bids train ") and "--stop-after" not in card["command"]
    assert card["epochs"]["completed"] == 3 and card["validation"]["val_loss"] is not None
    spec = resolve_model(str(out / "tiny.weights.h5"))
    assert (spec.id, spec.width, spec.kernel_size, spec.patch_size) == ("tiny", 2, 3, 0)
    model = load_model(spec)
    assert model.count_params() == card["parameters"]
    # the exported file is the best epoch, converted to raw HU: on the validation scan it
    # reproduces the validation metrics the card records for that epoch (fails if the last
    # epoch were exported instead, or if the HU scaling were lost in the export)
    from deepbleed_bids.training.loop import validate

    log = pd.read_csv(out / "training_log.tsv", sep="\t")
    assert card["validation"]["val_loss"] == pytest.approx(log["val_loss"].min())
    assert card["epochs"]["exported"] == int(log.loc[log["val_loss"].idxmin(), "epoch"])
    cases = [load_case(p) for p in sorted((out / "work/cases").glob("*.npz"))]
    val = [c for c in cases if "sub-" + c["meta"]["subject"] in card["split"]["validation"]]
    assert len(val) == 1
    params = TrainParams(width=2, kernel_size=3, patch_size=32, inference_patch_size=0, input_scale=1.0)
    loss, dice, diff = validate(model, val, params, "cpu")
    assert loss == pytest.approx(card["validation"]["val_loss"], abs=1e-4)
    assert dice == pytest.approx(card["validation"]["val_dice"], abs=1e-3)
    assert diff == pytest.approx(card["validation"]["val_abs_volume_diff_ml"], abs=0.02)  # ~5 voxels


def test_resume_with_another_architecture_is_refused(trained, capsys):
    out, _ = trained
    args = ["train", str(out.parent / "bids"), str(out.parent / "masks"), str(out), *TINY, "--width", "4"]
    assert main(args) == 1
    assert "different width" in capsys.readouterr().err


def test_interrupted_and_resumed_equals_uninterrupted(trained, tmp_path):
    """Weights, Adam moments and the data order all survive the interruption: bit-identical."""
    out, _ = trained
    cases = [load_case(p) for p in sorted((out / "work/cases").glob("*.npz"))]
    params = TrainParams(width=2, kernel_size=3, dropout=0.0, patch_size=32, inference_patch_size=0,
                         batch_size=2, samples_per_epoch=2, min_epochs=1, max_epochs=3, threads=2)
    whole = train(cases[:2], cases[2:], tmp_path / "a", params, log=lambda m: None)
    part = train(cases[:2], cases[2:], tmp_path / "b", params, stop_after=1, log=lambda m: None)
    assert part["epoch"] == 1 and not part["finished"]
    resumed = train(cases[:2], cases[2:], tmp_path / "b", params, log=lambda m: None)
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    for a, b in zip(whole["model"].get_weights(), resumed["model"].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(resumed["optimizer"].iterations.numpy()) == 3


def test_scaled_training_form_exports_the_same_function_on_raw_hu(trained):
    """Training sees HU / 100; the exported raw-HU network gives the same probabilities."""
    import keras

    from deepbleed_bids.model.vnet import build_vnet
    from deepbleed_bids.training.loop import init_output_block, to_raw_hu

    out, _ = trained
    image = load_case(sorted((out / "work/cases").glob("*.npz"))[0])["image"]
    keras.utils.set_random_seed(1)
    scaled = build_vnet(width=2, kernel_size=3)
    rng = np.random.default_rng(0)  # non-zero biases everywhere, or the test proves little
    scaled.set_weights([w + rng.normal(0, 0.05, w.shape).astype(np.float32) for w in scaled.get_weights()])
    init_output_block(scaled, [image / 100])
    expected = np.asarray(scaled(image[None, ..., None] / 100))
    raw = build_vnet(width=2, kernel_size=3)
    raw.set_weights(scaled.get_weights())
    to_raw_hu(raw, 100.0)
    got = np.asarray(raw(image[None, ..., None]))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    brain = image != 0
    assert 0.005 < expected[0, ..., 0][brain].mean() < 0.1  # starts near the prior (0.02), not saturated
    assert expected.std() > 0.001
