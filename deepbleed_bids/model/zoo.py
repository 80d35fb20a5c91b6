"""Which weights ``--model NAME|PATH`` means, and building the network for them."""
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import assets
from ..errors import ModelError
from . import weights as W

# vnet.PUBLISHED_WIDTH; vnet (keras, seconds to import) is imported only to build a model,
# so resolving a model before a run stays fast
PUBLISHED_WIDTH = 16

DEFAULT_MODEL = "deepbleed-mistie2"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
ALIASES = {"deepbleed": DEFAULT_MODEL, "published": DEFAULT_MODEL, "mistie2": DEFAULT_MODEL}


@dataclass
class ModelSpec:
    id: str
    format: str  # "tf-checkpoint" | "keras-h5"
    path: str  # checkpoint prefix or .weights.h5 file
    sha256: str
    width: int = PUBLISHED_WIDTH
    kernel_size: int = 5
    patch_size: int = 0  # 0: the whole 128^3 volume at once
    license: str = ""
    description: str = ""
    notice: str = ""  # a warning every result of this model carries (card "notice")
    card: dict = field(default_factory=dict)

    def provenance(self):
        """Everything but the model card: enough to rebuild the spec (``ModelSpec(**p)``)."""
        out = asdict(self)
        out.pop("card")
        return out


def bundled_models():
    return sorted(p.name[: -len(".weights.h5")] for p in BUNDLED_DIR.glob("*.weights.h5"))


def _extract_cached(zip_path, sha):
    dest = assets.home() / "models" / "extracted" / sha[:16]
    prefix = dest / "weights"
    if Path(str(prefix) + ".index").is_file():
        return str(prefix)
    try:
        return W.extract_zip(zip_path, dest)
    except OSError:  # read-only cache: unpack somewhere private instead
        return W.extract_zip(zip_path, tempfile.mkdtemp(prefix="deepbleed-weights-"))


def _copy_cached(folder, sha):
    """A ``weights.*`` copy of a folder in the zip's naming, in the asset cache (made once)."""
    dest = assets.home() / "models" / "extracted" / sha[:16]
    if Path(str(dest / "weights") + ".index").is_file():
        return str(dest / "weights")
    try:
        return W.copy_underscore_checkpoint(folder, dest)
    except OSError:  # read-only cache: copy somewhere private instead
        return W.copy_underscore_checkpoint(folder, tempfile.mkdtemp(prefix="deepbleed-weights-"))


def _h5_spec(path, model_id=None, card=None):
    path = Path(path)
    card_path = path.with_name(path.name[: -len(".weights.h5")] + ".json")
    if card is None and card_path.is_file():
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as err:
            raise ModelError(f"model card {card_path} is not valid JSON ({err}); fix or remove it.") from err
    card = card or {}
    width, kernel = W.h5_width(path)
    return ModelSpec(
        id=model_id or card.get("id") or path.name[: -len(".weights.h5")], format="keras-h5",
        path=str(path), sha256=W.sha256_file(path), width=width, kernel_size=kernel,
        patch_size=int(card.get("patch_size", 0) or 0), license=card.get("license", ""),
        description=card.get("description", ""), notice=card.get("notice", ""), card=card,
    )


def _checkpoint_spec(model_id, prefix, sha256, **fields):
    width, kernel = W.checkpoint_architecture(prefix)
    return ModelSpec(id=model_id, format="tf-checkpoint", path=str(prefix), sha256=sha256, width=width,
                     kernel_size=kernel, **fields)


def resolve_model(name_or_path=None):
    """A :class:`ModelSpec` for a bundled/published model name or a local path."""
    name = ALIASES.get(name_or_path or DEFAULT_MODEL, name_or_path or DEFAULT_MODEL)
    if name == DEFAULT_MODEL:
        zip_path = assets.fetch_published_weights()
        sha = W.sha256_file(zip_path)
        return _checkpoint_spec(DEFAULT_MODEL, _extract_cached(zip_path, sha), sha,
                                license=assets.PUBLISHED_WEIGHTS["license"],
                                description="DeepBleed VNet trained on 112 MISTIE II scans (Sharrock et al. 2020)")
    if name in bundled_models():
        return _h5_spec(BUNDLED_DIR / f"{name}.weights.h5", model_id=name)
    path = Path(name).expanduser().absolute()
    if not path.exists() and not Path(str(path) + ".index").exists():
        known = ", ".join([DEFAULT_MODEL, *bundled_models()])
        raise ModelError(f"--model {name_or_path}: neither a known model ({known}) nor an existing path.")
    if path.is_file() and path.name.endswith(".weights.h5"):
        return _h5_spec(path)
    if path.is_file() and path.suffix == ".zip":
        sha = W.sha256_file(path)
        return _checkpoint_spec(path.stem, _extract_cached(path, sha), sha)
    prefix = W.find_checkpoint_prefix(path)
    if prefix is None:  # the zip's members unpacked as they are: _index, _data-*
        sha = W.weights_sha256(W.underscore_files(path))
        return _checkpoint_spec(path.name, _copy_cached(path, sha), sha)
    base = os.path.basename(prefix)
    return _checkpoint_spec(Path(prefix).parent.name if base in ("", "weights") else base, prefix,
                            W.weights_sha256(W.checkpoint_files(prefix)))


def load_model(spec, input_shape=(None, None, None, 1)):
    """Build the VNet for ``spec`` and load its weights."""
    from .vnet import build_vnet

    model = build_vnet(width=spec.width, kernel_size=spec.kernel_size, input_shape=input_shape)
    if spec.format == "tf-checkpoint":
        W.load_checkpoint(model, spec.path)
    else:
        try:
            model.load_weights(spec.path)
        except Exception as err:  # noqa: BLE001
            raise ModelError(f"cannot load {spec.path} into a VNet of width {spec.width}: {err}") from err
    return model
