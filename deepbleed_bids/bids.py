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
from .template import SPACE as TEMPLATE_SPACE
from .utils import write_json_atomic, write_text_atomic

BIDS_VERSION = "1.10.0"  # of every dataset_description.json this project writes
CT_SUFFIXES = ["ct", "CT"]
NIFTI = [".nii", ".nii.gz"]
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


def image_id(relpath):
    """A short identifier safe for nipype node names."""
    return re.sub(r"[^a-zA-Z0-9]", "_", source_prefix(relpath))


def code_url(version=None):
    """The source of exactly this version (its release tag)."""
    return f"{__url__}/tree/{version or __version__}"


def _generated_by(config):
    model = config.model_spec or {}
    entry = {"Name": __packagename__, "Version": __version__, "CodeURL": code_url(),
             "Description": f"model {model.get('id', config.model)} (weights sha256 {model.get('sha256')})"}
    container = os.environ.get("DEEPBLEED_CONTAINER")  # set in our Docker/Singularity images
    if container:
        entry["Container"] = {"Type": container, "Tag": os.environ.get(
            "DEEPBLEED_CONTAINER_TAG", f"deepbleed-bids:{__version__}")}
    return entry


def _model_record(config):
    model = config.model_spec or {}
    return {"Name": model.get("id", config.model), "Format": model.get("format"),
            "WeightsSHA256": model.get("sha256"),
            "License": model.get("license") or "unknown: weights supplied by the user; their license applies",
            "Version": __version__}


def _license(models):
    """The outputs' license follows the weights that made them (all of them, if mixed)."""
    licenses = sorted({m["License"] for m in models})
    return " + ".join(f"{lic} ({', '.join(dict.fromkeys(m['Name'] for m in models if m['License'] == lic))})"
                      for lic in licenses) if len(licenses) > 1 else licenses[0]


def dataset_description(config, previous=None):
    """The derivatives' description for this run, merged with the one already there.

    Runs by another version or model into the same folder are kept in
    ``GeneratedBy`` and ``DeepBleedModels``, newest first (the outputs are mixed).
    """
    previous = previous or {}
    this = _generated_by(config)
    generated = [this] + [g for g in previous.get("GeneratedBy", [])
                          if (g.get("Name"), g.get("Version"), g.get("Description"))
                          != (this["Name"], this["Version"], this["Description"])]
    model = _model_record(config)
    models = [model] + [m for m in previous.get("DeepBleedModels", [])
                        if (m.get("WeightsSHA256"), m.get("Version")) != (model["WeightsSHA256"], model["Version"])]
    raw = Path(config.bids_dir).resolve().as_uri()
    return {
        "Name": "deepbleed-bids: intracerebral hemorrhage segmentation",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": generated,
        "SourceDatasets": [{"URL": raw}],
        "DatasetLinks": {"raw": raw},
        "License": _license(models),
        "HowToAcknowledge": (
            "Cite DeepBleed (Sharrock MF et al., Neuroinformatics 2021;19:403-415, "
            "doi:10.1007/s12021-020-09493-5) and deepbleed-bids " + __version__ + "; the methods text "
            "and references of each run are in logs/CITATION.md and logs/CITATION.bib."),
        "DeepBleedModels": models,
    }


def previous_runs_differ(previous, config):
    """Messages when an earlier run here used another version or other weights (else [])."""
    if not previous:
        return []
    out = []
    versions = sorted({g.get("Version") for g in previous.get("GeneratedBy", [])
                       if g.get("Name") == __packagename__} - {__version__})
    if versions:
        out.append(f"outputs in this folder were made by deepbleed-bids {', '.join(versions)}; this run is "
                   f"{__version__}")
    sha = (config.model_spec or {}).get("sha256")
    models = [m for m in previous.get("DeepBleedModels", []) if m.get("WeightsSHA256") != sha]
    if models:
        out.append(f"outputs in this folder were made with other weights ({', '.join(m['Name'] for m in models)}); "
                   f"this run uses {(config.model_spec or {}).get('id')}")
    return out


class _folder_lock:
    """An advisory lock on a folder (flock on its descriptor): jobs of an array that start
    together update the dataset files one at a time; no lock file is left behind."""

    def __init__(self, folder):
        self.folder = folder

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:  # e.g. some network file systems: proceed unlocked
            pass
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


def write_dataset_description(config, log=print):
    """Keep ``dataset_description.json`` true: it lists every version and model that wrote
    here. Warns (as fMRIPrep does) when an earlier run used another version or model.
    Rewritten only when something new is to be recorded, so racing jobs of one version
    leave one file that is never replaced."""
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "dataset_description.json"
    with _folder_lock(out_dir):
        try:
            previous = json.loads(target.read_text()) if target.is_file() else {}
        except (OSError, json.JSONDecodeError):
            previous = {}
        for message in previous_runs_differ(previous, config):
            log(f"WARNING: {message}. Both are recorded in {target}; use a new output folder to keep "
                "their outputs apart.")
        new = dataset_description(config, previous)
        same = previous and all(previous.get(k) == new[k] for k in ("DeepBleedModels", "License")) and \
            [g.get("Description") for g in previous.get("GeneratedBy", [])] == \
            [g.get("Description") for g in new["GeneratedBy"]]
        if not same:
            write_json_atomic(new, target)
        write_derivatives_files(out_dir)
    return target


DERIVATIVES_BIDSIGNORE = [
    "# CT is not in the BIDS specification yet (BEP024, https://bids.neuroimaging.io/bep024)",
    "**/ct", "*_ct.nii.gz", "*_ct.json", "*_CT.nii.gz", "*_CT.json",
    "# transforms (ANTs text), reports, logs and the template copy, as fMRIPrep does",
    "*_xfm.*", "*.html", "logs", "figures", "sub-*/log", "templates", "group",
]

DERIVATIVES_README = """# deepbleed-bids derivatives

Intracerebral hemorrhage (ICH, with any intraventricular extension) segmented on
non-contrast head CT by deepbleed-bids (DeepBleed 3D VNet). Per CT image, next to
the source entities:

- `*_desc-brain_mask.nii.gz`: brain mask (native space); sidecar `BrainVolume` (mL)
- `*_desc-hemorrhage_mask.nii.gz`: hemorrhage mask (native space, BIDS mask `Type: "Lesion"`,
  `LesionClass: "hemorrhage"`); sidecar `HemorrhageVolume`, `BrainVolume` (mL), QC and provenance
- `*_desc-hemorrhage_probseg.nii.gz`: hemorrhage probability (native space)
- `*_space-DeepBleedCT_desc-preproc_ct.nii.gz` and `*_space-DeepBleedCT_desc-hemorrhage_probseg.nii.gz`:
  network input and output on the DeepBleed template grid (128^3, 1.5 mm); their
  `SpatialReference` is the pinned template URL (or `templates/` here for a user template)
- `*_from-orig_to-DeepBleedCT_mode-image_xfm.mat`: the rigid transform (ITK/ANTs format)

`sub-*.html` are the visual reports, `sub-*/log/<run-id>/` each run's configuration and
crash files, `logs/` the run logs and the methods text (`CITATION.md`, `.bib`, `.html`),
`group/` the group-level tables.

`dataset_description.json` lists every version and model that wrote here
(`GeneratedBy`, `DeepBleedModels`); its `License` follows the weights used.

CT is not in the BIDS specification yet (BEP024): `.bidsignore` lists the CT files
and `ct/` folders so that the BIDS validator accepts the dataset.
"""


def _ensure_lines(path, lines):
    """Add the lines missing from a text file (a user's own lines are kept)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    have = set(text.splitlines())
    missing = [line for line in lines if line not in have]
    if missing:
        sep = "" if not text or text.endswith("\n") else "\n"
        write_text_atomic(text + sep + "\n".join(missing) + "\n", path)


def write_derivatives_files(out_dir):
    """.bidsignore (added to, never replaced) and README (written when absent)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _ensure_lines(out_dir / ".bidsignore", DERIVATIVES_BIDSIGNORE)
    readme = out_dir / "README.md"
    if not readme.exists() and not (out_dir / "README").exists():
        write_text_atomic(DERIVATIVES_README, readme, clobber=False)


def spatial_reference(config):
    """Where the template of ``space-DeepBleedCT`` can be found: the pinned URL when the
    template is the published one, else a copy in ``templates/`` of the derivatives."""
    from .assets import TEMPLATE

    sha = config["template_sha256"] if isinstance(config, dict) else config.template_sha256
    if sha == TEMPLATE["sha256"]:
        return TEMPLATE["url"]
    return f"bids::templates/tpl-{TEMPLATE_SPACE}_desc-{sha[:12]}_ct.nii.gz"


def copy_template(config):
    """Put a user template (not the published one) into the derivatives, once."""
    import shutil

    ref = spatial_reference(config)
    if not ref.startswith("bids::"):
        return None
    target = Path(config.output_dir) / ref[len("bids::"):]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        from .utils import atomic_path

        with atomic_path(target) as tmp:
            shutil.copyfile(config.template, tmp)
    return target
