"""Load VNet weights: the published TensorFlow checkpoint, or this project's ``.weights.h5``.

The published DeepBleed checkpoint is TF2 object-based (``model.save_weights``
on a subclassed model) with an EMPTY prefix: files are literally ``.index`` and
``.data-0000N-of-00002`` (``_index``/``_data-...`` inside the zip, ``weights.*``
after the DeepBleed README's renaming). Variables are read by name and mapped
onto the layers of :func:`deepbleed_bids.model.vnet.build_vnet`.
"""
import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..utils import atomic_path, sha256_file  # noqa: F401 (weights.sha256_file)

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_IGNORED = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "optimizer", "keras_api")


def checkpoint_files(prefix):
    """The files of a checkpoint prefix (index first, then data shards)."""
    prefix = str(prefix)
    index = Path(prefix + ".index")
    # os.path.basename, not Path.name: the published prefix "dir/" has an empty name
    shards = sorted(index.parent.glob(os.path.basename(prefix) + ".data-*"))
    return [index, *shards]


def weights_sha256(paths):
    """One digest for a set of files: of a single file its own sha256, else the
    sha256 of the sorted ``sha256  name`` lines (as ``sha256sum`` prints them).

    A checkpoint's files are named without their prefix (``index``,
    ``data-00000-of-00002``), so the published folder (``.index``), the zip's
    members (``_index``) and the renamed copy (``weights.index``) of the same
    weights have the same digest."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = sorted(f"{sha256_file(p)}  {_CKPT_PART.sub('', p.name)}\n" for p in paths)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


_CKPT_PART = re.compile(r"^.*?[._](?=index$|data-\d+-of-\d+$)")


def find_checkpoint_prefix(path):
    """Resolve a checkpoint given as a prefix, an ``.index`` file or a folder.

    Accepts the published naming (``.index``) and the renamed one
    (``weights.index``). Returns the prefix, or None for a folder of the zip's
    naming (``_index``, ``_data-...``): TensorFlow only reads ``<prefix>.index``,
    so those files must be copied first (:func:`copy_underscore_checkpoint`).
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(".index"):
        return str(path)[: -len(".index")]
    if Path(str(path) + ".index").is_file():
        return str(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0])[: -len(".index")]
        if len(indexes) > 1:
            raise ModelError(f"{path} holds several checkpoints ({', '.join(i.name for i in indexes)}); "
                             "pass the prefix of the one to use (e.g. DIR/weights).")
        if (path / "_index").is_file():
            return None
    raise ModelError(f"no TensorFlow checkpoint found at {path}: expected '<prefix>.index' and "
                     "'<prefix>.data-*' files (the published DeepBleed weights unzip to '.index' "
                     "or '_index' and '_data-0000N-of-00002').")


def underscore_files(folder):
    """The checkpoint files of a folder in the zip's naming (``_index``, ``_data-*``)."""
    folder = Path(folder)
    return [folder / "_index", *sorted(folder.glob("_data-*"))]


def copy_underscore_checkpoint(folder, dest):
    """Copy ``_index``/``_data-*`` to ``dest/weights.*`` (the DeepBleed README's renaming)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = underscore_files(folder)
    for src in files[1:] + files[:1]:  # the index last: its presence marks a complete copy
        target = dest / ("weights." + src.name[1:])
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
    return str(dest / "weights")


def extract_zip(zip_path, dest):
    """Unpack a zipped checkpoint into ``dest`` as ``weights.*`` (flattening folders)."""
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelError(f"model weights {zip_path} cannot be opened as a zip archive ({err}): it is damaged or "
                         "truncated (an interrupted download?). Download it again (`deepbleed-bids fetch`) or "
                         "check it against its sha256.") from err
    with archive:
        bad = _first_bad_member(archive)
        if bad:
            raise ModelError(f"model weights {zip_path}: {bad} is damaged inside the zip archive (CRC error). "
                             "Download it again (`deepbleed-bids fetch`).")
        names = [Path(m.filename).name for m in archive.infolist()]
        if not any(n in (".index", "_index") or n.endswith(".index") for n in names):
            raise ModelError(f"model weights {zip_path}: the zip archive holds no TensorFlow checkpoint "
                             f"(no .index file among {len(names)} member(s)); give the published DeepBleed "
                             "weights zip, a checkpoint folder or a .weights.h5 file.")
        dest.mkdir(parents=True, exist_ok=True)
        # the index last, each file atomically: an index in the cache means a complete copy
        members = sorted(archive.infolist(), key=lambda m: m.filename.endswith("index"))
        for member in members:
            name = Path(member.filename).name
            if member.is_dir() or not name or name == "checkpoint":
                continue
            if name.startswith(("_", ".")):
                name = "weights." + name[1:]
            with archive.open(member) as src, atomic_path(dest / name) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
    return str(dest / "weights")


def _first_bad_member(archive):
    try:
        return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"a member ({err})"


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


def checkpoint_architecture(prefix):
    """(width, kernel size) of a VNet checkpoint, from its input convolution's kernel
    (k, k, k, 1, width): 16 and 5 for the published weights; other widths of the same
    object graph (e.g. a checkpoint written from a narrower VNet) load as well."""
    import tensorflow as tf

    try:
        shapes = tf.compat.v1.train.NewCheckpointReader(str(prefix)).get_variable_to_shape_map()
    except Exception as err:  # noqa: BLE001 - TF raises several types here
        raise ModelError(f"cannot read TensorFlow checkpoint {prefix}: {err}") from err
    shape = shapes.get("input_layer/convolution/kernel" + _SUFFIX)
    if shape is None or len(shape) != 5:
        names = sorted(k[: -len(_SUFFIX)] for k in shapes if k.endswith(_SUFFIX))[:5]
        raise ModelError(f"checkpoint {prefix} is not a DeepBleed VNet: no input_layer/convolution/kernel "
                         f"of shape (k, k, k, 1, width) (it holds {', '.join(names) or 'no variables'}).")
    return int(shape[-1]), int(shape[0])


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

    try:
        with h5py.File(path, "r") as h5:
            # Keras 3 keys layers by class and creation order, not by name: the
            # first Conv3D built by build_vnet is the input block's convolution.
            group = h5.get("layers/conv3d/vars")
            if group is None or "layers/conv3d_transpose" not in h5:
                raise ModelError(f"model weights {path} do not fit the VNet: not a deepbleed-bids VNet "
                                 "weights file (no Conv3D/Conv3DTranspose layers inside). Give the "
                                 "weights written by `deepbleed-bids train`, or a model name.")
            _read_all(h5)  # a half-copied file fails here, not in the middle of a run
            return int(group["0"].shape[-1]), int(group["0"].shape[0])
    except (OSError, KeyError, ValueError, IndexError, TypeError) as err:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ModelError(f"model weights {path} ({size} bytes) cannot be read as a Keras .weights.h5 "
                         f"file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): it is "
                         "damaged or truncated (an interrupted copy or download?). Copy it again, or check it "
                         "against its sha256.") from err


def _read_all(h5):
    def read(name, obj):
        if hasattr(obj, "shape") and hasattr(obj, "dtype"):
            obj[()]

    h5.visititems(read)
