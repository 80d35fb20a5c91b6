"""The VNet is DeepBleed's, and the published checkpoint layout loads into it by name."""
import json
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from deepbleed_bids.errors import ModelError
from deepbleed_bids.model import weights as W
from deepbleed_bids.model.predict import patch_starts, predict_volume
from deepbleed_bids.model.vnet import build_vnet
from deepbleed_bids.model.zoo import load_model, resolve_model

def _published_shapes(w=16):
    """Kernel shapes of the published object graph (deepbleed-checkpoint-variables.txt)."""
    shapes = {"input_layer/convolution": (5, 5, 5, 1, w)}
    prev = w
    for i, c in zip(range(1, 5), (2 * w, 4 * w, 8 * w, 16 * w)):
        shapes[f"down_{i}/downsample"] = (2, 2, 2, prev, c)
        shapes[f"down_{i}/convolution"] = (5, 5, 5, c, c)
        prev = c
    for i, c in zip((4, 3, 2, 1), (16 * w, 8 * w, 4 * w, 2 * w)):
        shapes[f"up_{i}/upsample"] = (2, 2, 2, c // 2, prev)  # transpose: (k, k, k, out, in)
        shapes[f"up_{i}/convolution"] = (5, 5, 5, c, c)
        prev = c
    shapes["outblock/final"] = (1, 1, 1, 2 * w, 2)
    shapes["outblock/binary"] = (1, 1, 1, 2, 1)
    return shapes


def _published_variables(seed=0, w=16):
    """Random variables with the published names and shapes (He-scaled, small biases)."""
    rng = np.random.default_rng(seed)
    out = {}
    for obj, shape in _published_shapes(w).items():
        transpose = obj.endswith("upsample")
        fan_in = np.prod(shape[:3]) * (shape[4] if transpose else shape[3])
        out[f"{obj}/kernel"] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype("float32")
        out[f"{obj}/bias"] = rng.normal(0, 0.05, shape[3] if transpose else shape[4]).astype("float32")
    return out


def _write_checkpoint(variables, prefix):
    """Save variables under exactly the published object graph, from tf.Module objects."""
    roots = {}
    for name, value in variables.items():
        block, part, var = name.split("/")
        blk = roots.setdefault(block, tf.Module())
        if not hasattr(blk, part):
            setattr(blk, part, tf.Module())
        setattr(getattr(blk, part), var, tf.Variable(value))
    return tf.train.Checkpoint(**roots).write(str(prefix))


def _reference_forward(v, x):
    """The published network, operation by operation (deepbleed-vnet-architecture.md)."""
    def conv(t, name, stride=1):
        pad = "SAME" if stride == 1 else "VALID"
        return tf.nn.relu(tf.nn.conv3d(t, v[f"{name}/kernel"], [1, stride, stride, stride, 1], pad)
                          + v[f"{name}/bias"])

    x = tf.constant(x)
    x16 = conv(x, "input_layer/convolution") + tf.tile(x, [1, 1, 1, 1, 16])
    skips, out = [x16], x16
    for i, n in zip(range(1, 5), (2, 3, 3, 3)):
        d = conv(out, f"down_{i}/downsample", 2)
        y = d
        for _ in range(n):
            y = conv(y, f"down_{i}/convolution")
        out = y + d
        skips.append(out)
    for i, n in zip((4, 3, 2, 1), (3, 3, 2, 1)):
        skip = skips[i - 1]
        k = v[f"up_{i}/upsample/kernel"]
        shape = tf.concat([tf.shape(out)[:1], tf.shape(out)[1:4] * 2, [k.shape[3]]], 0)
        u = tf.nn.relu(tf.nn.conv3d_transpose(out, k, shape, [1, 2, 2, 2, 1], "VALID")
                       + v[f"up_{i}/upsample/bias"])
        c = tf.concat([u, skip], -1)
        y = c
        for _ in range(n):
            y = conv(y, f"up_{i}/convolution")
        out = y + c
    out = conv(out, "outblock/final")
    logits = tf.nn.conv3d(out, v["outblock/binary/kernel"], [1] * 5, "VALID") + v["outblock/binary/bias"]
    return tf.sigmoid(logits).numpy()


def test_published_size():
    model = build_vnet(input_shape=(128, 128, 128, 1))
    assert model.count_params() == 22_546_101
    assert model.output_shape == (None, 128, 128, 128, 1)


def test_checkpoint_names_match_shared_listing(data_dir):
    listed = {}
    for line in (data_dir / "deepbleed-checkpoint-variables.txt").read_text().splitlines():
        if line.startswith("#") or "VARIABLE_VALUE" not in line:
            continue
        name, shape = line.split(" ", 1)
        listed[name.replace("/.ATTRIBUTES/VARIABLE_VALUE", "")] = tuple(json.loads(shape))
    ours = {k: v.shape for k, v in _published_variables().items()}
    assert ours == listed


@pytest.fixture(scope="module")
def published_ckpt(tmp_path_factory):
    """A checkpoint laid out like the published one: empty prefix, a 'checkpoint' file."""
    variables = _published_variables(seed=1)
    folder = tmp_path_factory.mktemp("published")
    _write_checkpoint(variables, folder / "weights")
    for f in folder.glob("weights.*"):  # the published files have an EMPTY prefix
        f.rename(folder / f.name[len("weights"):])
    (folder / "checkpoint").write_text('model_checkpoint_path: "."\nall_model_checkpoint_paths: "."\n')
    return folder, variables


def test_every_variable_lands_and_output_matches_reference(published_ckpt):
    folder, variables = published_ckpt
    spec = resolve_model(str(folder))
    assert spec.format == "tf-checkpoint" and spec.width == 16
    model = load_model(spec, input_shape=(32, 32, 32, 1))
    for name, value in variables.items():
        block, part, var = name.split("/")
        layer = model.get_layer(f"{block}_{part}")
        np.testing.assert_array_equal(layer.weights[0 if var == "kernel" else 1].numpy(), value)
    x = np.random.default_rng(2).uniform(-20, 90, (1, 32, 32, 32, 1)).astype("float32")
    x[:, :4] = 0  # zero outside the "brain", as the network sees it
    ours = model(x, training=False).numpy()
    ref = _reference_forward(variables, x)
    assert ours.shape == ref.shape == (1, 32, 32, 32, 1)
    assert ref.std() > 1e-3  # a non-trivial output, so the comparison means something
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_zip_and_renamed_layouts(published_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPBLEED_HOME", str(tmp_path / "home"))
    folder, variables = published_ckpt
    zpath = tmp_path / "mistie_2-20200122T175000Z-001.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, "mistie_2/" + f.name.replace(".", "_", 1) if f.name != "checkpoint" else "mistie_2/checkpoint")
    spec = resolve_model(str(zpath))
    assert spec.sha256 == W.sha256_file(zpath)
    model = load_model(spec, input_shape=(16, 16, 16, 1))
    np.testing.assert_array_equal(model.get_layer("up_2_upsample").weights[0].numpy(),
                                  variables["up_2/upsample/kernel"])
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for f in folder.glob(".*"):
        shutil.copy(f, renamed / ("weights" + f.name))
    spec2 = resolve_model(str(renamed / "weights"))
    assert spec2.path.endswith("weights")
    load_model(spec2, input_shape=(16, 16, 16, 1))


def test_mismatch_lists_expected_and_found(tmp_path):
    variables = _published_variables(w=8)
    del variables["outblock/binary/bias"]
    variables["down_1/convolution/kernel"] = variables["down_1/convolution/kernel"][..., :8, :8]
    _write_checkpoint(variables, tmp_path / "weights")
    with pytest.raises(ModelError) as err:
        load_model(resolve_model(str(tmp_path / "weights")), input_shape=(16, 16, 16, 1))
    msg = str(err.value)
    assert "missing outblock/binary/bias [1]" in msg
    assert "shape of down_1/convolution/kernel: expected [5, 5, 5, 16, 16], found [5, 5, 5, 8, 8]" in msg
    assert "(width 8)" in msg


def test_width_and_kernel_are_read_from_the_checkpoint(tmp_path):
    """A narrower VNet with the published object graph loads (its width from the input block)."""
    variables = _published_variables(seed=4, w=4)
    _write_checkpoint(variables, tmp_path / "weights")
    spec = resolve_model(str(tmp_path / "weights"))
    assert (spec.width, spec.kernel_size) == (4, 5)
    model = load_model(spec, input_shape=(16, 16, 16, 1))
    np.testing.assert_array_equal(model.get_layer("up_1_convolution").weights[0].numpy(),
                                  variables["up_1/convolution/kernel"])
    (tmp_path / "other").mkdir()
    _write_checkpoint({"something/else/kernel": np.zeros((2, 2), "float32")}, tmp_path / "other" / "weights")
    with pytest.raises(ModelError, match="not a DeepBleed VNet: no input_layer/convolution/kernel"):
        resolve_model(str(tmp_path / "other"))


def test_the_three_folder_forms_have_one_digest(published_ckpt, tmp_path, monkeypatch):
    """The same weights as '.index', '_index' (the zip's members unpacked) and 'weights.index'."""
    monkeypatch.setenv("DEEPBLEED_HOME", str(tmp_path / "home"))
    folder, variables = published_ckpt
    forms = {"dot": folder}
    for name, rename in (("underscore", lambda n: "_" + n[1:]), ("renamed", lambda n: "weights" + n)):
        forms[name] = tmp_path / name
        forms[name].mkdir()
        for f in folder.glob(".*"):
            shutil.copy(f, forms[name] / rename(f.name))
    specs = {name: resolve_model(str(path)) for name, path in forms.items()}
    assert len({s.sha256 for s in specs.values()}) == 1
    assert specs["underscore"].path.startswith(str(tmp_path / "home"))  # copied once into the cache
    assert resolve_model(str(forms["underscore"])).path == specs["underscore"].path
    model = load_model(specs["underscore"], input_shape=(16, 16, 16, 1))
    np.testing.assert_array_equal(model.get_layer("down_3_downsample").weights[1].numpy(),
                                  variables["down_3/downsample/bias"])


def test_h5_roundtrip_infers_width(tmp_path):
    model = build_vnet(width=4, input_shape=(16, 16, 16, 1))
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    spec = resolve_model(str(path))
    assert (spec.width, spec.kernel_size, spec.format) == (4, 5, "keras-h5")
    again = load_model(spec, input_shape=(16, 16, 16, 1))
    x = np.random.default_rng(0).uniform(0, 80, (1, 16, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_unknown_model_name():
    with pytest.raises(ModelError, match="neither a known model"):
        resolve_model("no-such-model")


def test_patch_starts_cover_volume():
    assert patch_starts(128, 64, 0.5) == [0, 32, 64]
    assert patch_starts(128, 32, 0.0) == [0, 32, 64, 96]
    assert patch_starts(100, 64, 0.5) == [0, 32, 36]
    assert patch_starts(64, 128, 0.5) == [0]


def test_patch_reassembly_equals_whole_for_pointwise_model():
    import keras

    inp = keras.Input((None, None, None, 1))
    model = keras.Model(inp, keras.layers.Conv3D(1, 1, activation="sigmoid")(inp))
    vol = np.random.default_rng(3).uniform(-10, 90, (64, 64, 48)).astype("float32") / 50
    whole = predict_volume(model, vol)
    tiled = predict_volume(model, vol, patch_size=32, overlap=0.5, batch_size=3)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)
