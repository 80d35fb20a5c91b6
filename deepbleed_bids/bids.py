"""Find CT images in a BIDS dataset and name their derivatives.

CT may be stored as the proposed CT datatype (``sub-*/[ses-*/]ct/*_ct.nii[.gz]``)
or under ``anat/`` with suffix ``ct`` or ``CT``.
"""
import json
import os
import re
from pathlib import Path

from . import __packagename__, __url__, __version__
from .errors import InputError
from .utils import write_json_atomic

CT_SUFFIXES = ["ct", "CT"]
NIFTI = [".nii", ".nii.gz"]
TEMPLATE_SPACE = "DeepBleedCT"
_QUERY_ENTITIES = {"subject", "session", "acquisition", "run", "reconstruction", "ceagent",
                   "task", "direction", "echo", "part", "chunk"}


def load_filters(path):
    """A pybids query from ``--bids-filter-file`` (``{"ct": {...}}`` or a flat entity dict)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(f"--bids-filter-file {path}: no such file.") from err
    except json.JSONDecodeError as err:
        raise InputError(f"--bids-filter-file {path}: not valid JSON ({err.msg} at line {err.lineno}, "
                         f"column {err.colno}). Example: {{\"ct\": {{\"session\": \"1\"}}}}") from err
    if not isinstance(data, dict):
        raise InputError(f"--bids-filter-file {path}: must hold a JSON object, e.g. {{\"ct\": {{\"session\": \"1\"}}}}.")
    query = data.get("ct", data)
    if not isinstance(query, dict):
        raise InputError(f"--bids-filter-file {path}: 'ct' must map BIDS entities to values.")
    unknown = sorted(set(query) - _QUERY_ENTITIES - {"datatype", "suffix", "extension"})
    if unknown:
        raise InputError(f"--bids-filter-file {path}: unknown BIDS entities {unknown}; "
                         f"use some of {sorted(_QUERY_ENTITIES)}.")
    return query


def strip_label(label, prefix):
    return label[len(prefix):] if label.startswith(prefix) else label


def collect_ct(bids_dir, participant_label=(), session_label=(), filters=None, layout=None):
    """Every CT image matching the selection, as dicts (path, entities, relpath, metadata)."""
    from bids import BIDSLayout

    layout = layout or BIDSLayout(str(bids_dir), validate=False)
    subjects = layout.get_subjects()
    wanted = [strip_label(p, "sub-") for p in participant_label]
    missing = sorted(set(wanted) - set(subjects))
    if missing:
        raise InputError(f"participant(s) {', '.join('sub-' + m for m in missing)} not found in "
                         f"{bids_dir} (it holds {', '.join('sub-' + s for s in subjects) or 'none'}).")
    query = {"suffix": CT_SUFFIXES, "extension": NIFTI, **(filters or {})}
    query.pop("datatype", None)  # pybids does not know the CT datatype; checked below
    if wanted:
        query["subject"] = wanted
    if session_label:
        query["session"] = [strip_label(s, "ses-") for s in session_label]
    images = []
    for bids_file in layout.get(**query):
        rel = Path(bids_file.relpath)
        if rel.parent.name not in ("ct", "anat") or not rel.parts[0].startswith("sub-"):
            continue
        ents = {k: v for k, v in bids_file.get_entities().items() if k not in ("extension", "datatype")}
        images.append({
            "path": str(bids_file.path),
            "relpath": str(rel),
            "datatype": rel.parent.name,
            "entities": ents,
            "metadata": layout.get_metadata(bids_file.path),
        })
    if not images:
        where = f"participant(s) {', '.join(wanted)}" if wanted else str(bids_dir)
        raise InputError(
            f"no CT images found for {where}"
            + (f" with sessions {list(session_label)}" if session_label else "")
            + (f" and filters {filters}" if filters else "")
            + ". deepbleed-bids looks for sub-*/[ses-*/]ct/*_ct.nii[.gz] or sub-*/[ses-*/]anat/*_ct.nii[.gz]"
            " (suffix ct or CT); convert DICOM with `deepbleed-bids dicom2bids`."
        )
    return sorted(images, key=lambda i: i["relpath"])


def source_prefix(relpath):
    """``sub-01/ses-1/ct/sub-01_ses-1_run-2_ct.nii.gz`` -> ``sub-01_ses-1_run-2``."""
    name = Path(relpath).name
    return re.sub(r"_[a-zA-Z0-9]+\.nii(\.gz)?$", "", name)


def derivative_path(out_dir, relpath, suffix, desc=None, space=None, extension=".nii.gz", **extra):
    """Derivative path next to the source entities, in the source's folder layout."""
    parts = [source_prefix(relpath)]
    parts += [f"{k}-{v}" for k, v in extra.items()]
    if space:
        parts.append(f"space-{space}")
    if desc:
        parts.append(f"desc-{desc}")
    return Path(out_dir) / Path(relpath).parent / ("_".join(parts) + f"_{suffix}{extension}")


def image_id(relpath):
    """A short identifier safe for nipype node names."""
    return re.sub(r"[^a-zA-Z0-9]", "_", source_prefix(relpath))


def dataset_description(bids_dir):
    desc = {
        "Name": "deepbleed-bids: intracerebral hemorrhage segmentation",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": __packagename__, "Version": __version__, "CodeURL": __url__}],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
        "License": "Outputs of the published DeepBleed weights: CC BY-NC-ND 4.0, not for clinical use.",
    }
    container = os.environ.get("DEEPBLEED_CONTAINER")  # set in our Docker/Singularity images
    if container:
        desc["GeneratedBy"][0]["Container"] = {"Type": container, "Tag": os.environ.get(
            "DEEPBLEED_CONTAINER_TAG", f"deepbleed-bids:{__version__}")}
    return desc


def write_dataset_description(out_dir, bids_dir):
    """Create ``dataset_description.json`` once; safe when several jobs start together
    (the first writer wins, nobody clobbers)."""
    target = Path(out_dir) / "dataset_description.json"
    if not target.exists():
        write_json_atomic(dataset_description(bids_dir), target, clobber=False)
    return target
