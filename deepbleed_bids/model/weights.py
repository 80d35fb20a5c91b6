"""Load VNet weights: the published TensorFlow checkpoint, or this project's ``.weights.h5``.

The published DeepBleed checkpoint is TF2 object-based (``model.save_weights``
on a subclassed model) with an EMPTY prefix: files are literally ``.index`` and
``.data-0000N-of-00002`` (``_index``/``_data-...`` inside the zip, ``weights.*``
after the DeepBleed README's renaming). Variables are read by name and mapped
onto the layers of :func:`deepbleed_bids.model.vnet.build_vnet`.
"""
import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelError

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_IGNORED = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "optimizer", "keras_api")


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(prefix):
    """The files of a checkpoint prefix (index first, then data shards)."""
    prefix = str(prefix)
    index = Path(prefix + ".index")
    # os.path.basename, not Path.name: the published prefix "dir/" has an empty name
    shards = sorted(index.parent.glob(os.path.basename(prefix) + ".data-*"))
    return [index, *shards]


def weights_sha256(paths):
    """One digest for a set of files: of a single file its own sha256, else the
    sha256 of the sorted ``sha256  name`` lines (as ``sha256sum`` prints them)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = sorted(f"{sha256_file(p)}  {p.name}\n" for p in paths)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def find_checkpoint_prefix(path):
    """Resolve a checkpoint given as a prefix, an ``.index`` file or a folder.

    Accepts the published naming (``.index``), the renamed one (``weights.index``)
    and the zip's (``_index``, which is copied to a temporary ``weights.*`` set
    because TensorFlow only reads ``<prefix>.index``). Returns (prefix, tmpdir or None).
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(".index"):
        return str(path)[: -len(".index")], None
    if Path(str(path) + ".index").is_file():
        return str(path), None
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0])[: -len(".index")], None
        if len(indexes) > 1:
            raise ModelError(f"{path} holds several checkpoints ({', '.join(i.name for i in indexes)}); "
                             "pass the prefix of the one to use (e.g. DIR/weights).")
        if (path / "_index").is_file():
            tmp = Path(tempfile.mkdtemp(prefix="deepbleed-ckpt-"))
            for src in path.iterdir():
                if src.name.startswith("_"):
                    shutil.copy(src, tmp / ("weights." + src.name[1:]))
            return str(tmp / "weights"), tmp
    raise ModelError(f"no TensorFlow checkpoint found at {path}: expected '<prefix>.index' and "
                     "'<prefix>.data-*' files (the published DeepBleed weights unzip to '.index' "
                     "or '_index' and '_data-0000N-of-00002').")


def extract_zip(zip_path, dest):
    """Unpack a zipped checkpoint into ``dest`` as ``weights.*`` (flattening folders)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.infolist():
            name = Path(member.filename).name
            if member.is_dir() or not name or name == "checkpoint":
                continue
            if name.startswith(("_", ".")):
                name = "weights." + name[1:]
            with archive.open(member) as src, open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out)
    return str(dest / "weights")


def read_checkpoint(prefix):
    """Every model variable of a checkpoint: ``{'down_1/convolution/kernel': array}``."""
    import tensorflow as tf

    try:
        reader = tf.compat.v1.train.NewCheckpointReader(str(prefix))
    except Exception as err:  # noqa: BLE001 - TF raises several types here
        raise ModelError(f"cannot read TensorFlow checkpoint {prefix}: {err}") from err
    out = {}
    for key in reader.get_variable_to_shape_map():
        if key.startswith(_IGNORED) or not key.endswith(_SUFFIX):
            continue
        out[key[: -len(_SUFFIX)]] = reader.get_tensor(key)
    return out


def load_checkpoint(model, prefix):
    """Assign a checkpoint's variables to ``model`` by name; fail listing every mismatch."""
    from .vnet import weight_layers  # here, not at the top: importing keras takes seconds

    variables = read_checkpoint(prefix)
    expected = {}
    for obj, layer in weight_layers(model).items():
        kernel, bias = layer.weights
        expected[f"{obj}/kernel"] = (layer, 0, tuple(kernel.shape))
        expected[f"{obj}/bias"] = (layer, 1, tuple(bias.shape))
    problems = []
    for name in sorted(set(expected) - set(variables)):
        problems.append(f"missing {name} {list(expected[name][2])}")
    for name in sorted(set(variables) - set(expected)):
        problems.append(f"unexpected {name} {list(variables[name].shape)}")
    for name in sorted(set(expected) & set(variables)):
        if tuple(variables[name].shape) != expected[name][2]:
            problems.append(f"shape of {name}: expected {list(expected[name][2])}, "
                            f"found {list(variables[name].shape)}")
    if problems:
        raise ModelError(f"checkpoint {prefix} does not fit the VNet "
                         f"(width {model.get_layer('input_layer_convolution').filters}):\n  "
                         + "\n  ".join(problems))
    for name, (layer, idx, _) in expected.items():
        layer.weights[idx].assign(np.asarray(variables[name], dtype="float32"))
    return sorted(expected)


def h5_width(path):
    """The base width of a ``.weights.h5`` VNet (channels of its input convolution)."""
    import h5py

    with h5py.File(path, "r") as h5:
        # Keras 3 keys layers by class and creation order, not by name: the
        # first Conv3D built by build_vnet is the input block's convolution.
        group = h5.get("layers/conv3d/vars")
        if group is None or "layers/conv3d_transpose" not in h5:
            raise ModelError(f"{path} is not a deepbleed-bids VNet weights file "
                             "(no Conv3D/Conv3DTranspose layers inside).")
        return int(group["0"].shape[-1]), int(group["0"].shape[0])
