"""Write one CT image's derivatives atomically, with JSON sidecars and provenance.

All files are first written to a staging folder inside the output folder, then
renamed into place; a failure before that leaves nothing behind, and a re-run
replaces complete files with complete files.
"""
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import bids as B
from .template import SPACE as TEMPLATE_SPACE
from .config import parameters
from .provenance import software_versions


# ---------------------------------------------------------------- naming, both ways

RAW_URI = "bids:raw:"  # BIDS URI of a file of the raw dataset (DatasetLinks "raw")
HEMORRHAGE_MASK = "_desc-hemorrhage_mask"  # the output every CT image has: its sidecar holds the volumes
SOURCE_FOLDERS = ("ct", "anat")  # native-space outputs sit in the source's datatype folder


def raw_uri(relpath):
    """``bids:raw:<relpath>``: how a sidecar names its source image."""
    return f"{RAW_URI}{relpath}"


def raw_source(meta):
    """The raw dataset's relative path of the first ``bids:raw:`` entry of ``Sources``, or None."""
    return next((s[len(RAW_URI):] for s in (meta or {}).get("Sources", []) if str(s).startswith(RAW_URI)),
                None)


def _sources(relpath):
    return [raw_uri(relpath)]


def derivative_path(out_dir, relpath, suffix, desc=None, space=None, extension=".nii.gz", **extra):
    """Derivative path next to the source entities, in the source's folder layout."""
    parts = [B.source_prefix(relpath)]
    parts += [f"{k}-{v}" for k, v in extra.items()]
    if space:
        parts.append(f"space-{space}")
    if desc:
        parts.append(f"desc-{desc}")
    return Path(out_dir) / Path(relpath).parent / ("_".join(parts) + f"_{suffix}{extension}")


def plan_outputs(out_dir, relpath):
    """Where each derivative of one source image goes."""
    sp = TEMPLATE_SPACE
    return {
        "brain_mask": derivative_path(out_dir, relpath, "mask", desc="brain"),
        "hemorrhage_mask": derivative_path(out_dir, relpath, "mask", desc="hemorrhage"),
        "hemorrhage_probseg": derivative_path(out_dir, relpath, "probseg", desc="hemorrhage"),
        "hemorrhage_dseg": derivative_path(out_dir, relpath, "dseg", desc="hemorrhage"),
        "edema_mask": derivative_path(out_dir, relpath, "mask", desc="edema"),
        "atlas_dseg": derivative_path(out_dir, relpath, "dseg", desc="atlas"),
        "preproc_template": derivative_path(out_dir, relpath, "ct", desc="preproc", space=sp),
        "probseg_template": derivative_path(out_dir, relpath, "probseg", desc="hemorrhage", space=sp),
        "transform": derivative_path(out_dir, relpath, "xfm", extension=".mat",
                                     **{"from": "orig", "to": sp, "mode": "image"}),
    }


def entities(prefix):
    """``sub-01_ses-1_run-2`` -> ``{"sub": "01", "ses": "1", "run": "2"}``."""
    return dict(part.split("-", 1) for part in prefix.split("_") if "-" in part)


@dataclass
class Found:
    """One CT image's outputs found in a derivatives folder (see :func:`find_outputs`)."""

    folder: Path                # e.g. out/sub-01/ses-1/ct
    prefix: str                 # the source entities, e.g. sub-01_ses-1_run-2
    mask: Path = None           # the native hemorrhage mask, when present
    sidecar: Path = None        # its JSON sidecar, when present
    meta: dict = None           # the sidecar's content (read=True)
    error: str = None           # why the sidecar could not be read
    source: str = None          # relpath in the raw dataset (from Sources, else from the name)
    paths: dict = field(default_factory=dict)  # plan_outputs of the source, those that exist

    @property
    def entities(self):
        return entities(self.prefix)

    @property
    def path(self):
        """The file that was found: the sidecar, else the mask."""
        return self.sidecar if self.sidecar is not None else self.mask


_FOUND = re.compile(r"^(?P<prefix>sub-[a-zA-Z0-9]+.*)" + HEMORRHAGE_MASK + r"\.(?P<ext>nii|nii\.gz|json)$")


def find_outputs(out_dir, subject=None, read=True):
    """The native-space hemorrhage outputs under ``out_dir`` (one :class:`Found` per CT image, in
    file-name order): ``sub-X/[ses-Y/]<ct|anat>/<source entities>_desc-hemorrhage_mask.{nii[.gz],json}``;
    outputs on a template grid (``space-``) are not native and are left out. ``subject`` limits the
    search to one participant; ``read`` reads each sidecar (an unreadable one sets ``error``)."""
    out_dir = Path(out_dir)
    root = out_dir / ("sub-" + B.strip_label(subject, "sub-")) if subject else out_dir
    pattern = "**/*" + HEMORRHAGE_MASK + ".*" if subject else "sub-*/**/*" + HEMORRHAGE_MASK + ".*"
    found = {}
    for path in root.glob(pattern):
        match = _FOUND.match(path.name)
        if not match or "_space-" in path.name or path.parent.name not in SOURCE_FOLDERS:
            continue
        rec = found.setdefault(path.parent / match.group("prefix"),
                               Found(folder=path.parent, prefix=match.group("prefix")))
        if match.group("ext") == "json":
            rec.sidecar = path
        elif rec.mask is None or match.group("ext") == "nii.gz":
            rec.mask = path
    out = []
    for key in sorted(found, key=lambda k: k.parent / (k.name + HEMORRHAGE_MASK)):
        rec = found[key]
        if read and rec.sidecar is not None:
            try:
                rec.meta = json.loads(rec.sidecar.read_text())
            except (OSError, ValueError) as err:
                rec.error = str(err)
        rec.source = raw_source(rec.meta) if isinstance(rec.meta, dict) else None
        if rec.source is None:  # named like the source: its relpath, with the usual suffix
            rec.source = str(rec.folder.relative_to(out_dir) / (rec.prefix + "_ct.nii.gz"))
        rec.paths = {k: p for k, p in plan_outputs(out_dir, rec.source).items() if p.exists()}
        out.append(rec)
    return out


def dseg_tsv():
    """The BIDS look-up table of the hemorrhage dseg (``*_desc-hemorrhage_dseg.tsv``)."""
    from .ventricles import DSEG_LABELS

    return "index\tname\tdescription\n" + "".join(
        f"{i}\t{name}\t{text}\n" for i, (name, text) in sorted(DSEG_LABELS.items()))


def atlas_tsv():
    """The look-up table of the native atlas dseg (``*_desc-atlas_dseg.tsv``): BLAST-CT regions."""
    from .atlas import atlas_labels
    from .location import region_class

    return "index\tname\tclass\n" + "".join(f"{i}\t{n}\t{region_class(n)}\n"
                                            for i, n in sorted(atlas_labels().items()))


def split_fields(split):
    """The IVH / parenchymal fields of the hemorrhage sidecar (empty when the split did not run)."""
    if not split:
        return {}
    return {"IntraventricularVolume": split.get("IntraventricularVolume"),
            "ParenchymalVolume": split.get("ParenchymalVolume"),
            "IntraventricularVolumeUnits": "mL", "ParenchymalVolumeUnits": "mL",
            "HemorrhageSplit": {**{k: v for k, v in split.items()
                                   if k not in ("IntraventricularVolume", "ParenchymalVolume")},
                                "Note": "ESTIMATE from anatomy (atlas ventricle prior refined on the scan), "
                                        "not from IVH labels; not validated on labelled scans"}}


def trial_fields(record):
    from .trial import sidecar_fields

    return sidecar_fields(record)


def sidecar_path(path):
    path = str(path)
    for ext in (".nii.gz", ".nii", ".mat"):
        if path.endswith(ext):
            return Path(path[: -len(ext)] + ".json")
    raise ValueError(path)


def _brain_extraction_fields(info):
    return {"BrainExtraction": info.get("method"), "SkullStrippedInput": bool(info.get("skull_stripped")),
            "SkullStrippedReason": info.get("reason")}


def _registration_fields(params):
    """Which global-search start won and its score (the rest stays in RegistrationParameters)."""
    if not params:
        return {}
    search = params.get("global_search") or {}
    out = {"RegistrationStart": search.get("start", "principal-axes"),
           "RegistrationStartScore": search.get("score")}
    if search.get("mi_scale"):  # fitted, not applied: the brain's shape against the template's
        out["RegistrationTemplateScale"] = search["mi_scale"]
    return {**out, "RegistrationParameters": params}


def build_sidecars(config, source, results):
    """JSON sidecar content for every output (dict keyed like :func:`plan_outputs`)."""
    raw = _sources(source["relpath"])
    brain = {"BrainVolume": round(results["brain_volume_ml"], 3), "BrainVolumeUnits": "mL",
             "BrainVoxelCount": int(results.get("brain_voxel_count", 0)),
             "BrainExtraction": config["brain_extraction"]}
    if results.get("brain_extraction"):
        # skull-stripped input: the mask is the non-background voxels, not an extraction
        brain.update(_brain_extraction_fields(results["brain_extraction"]))
    registration = _registration_fields(results.get("registration") or {})
    model = config["model_spec"]
    model_info = {"Name": model.get("id"), "Format": model.get("format"),
                  "WeightsSHA256": model.get("sha256"), "Width": model.get("width"),
                  "PatchSize": model.get("patch_size"), "License": model.get("license")}
    template = {"Name": TEMPLATE_SPACE, "Path": config["template"], "SHA256": config["template_sha256"]}
    versions = software_versions()
    provenance = {
        "Parameters": {**parameters(config),
                       "Precision": (results.get("device_plan") or {}).get("precision", "fp32"),
                       "RequestedPrecision": config.get("precision", "fp32"),
                       "TTA": config.get("tta", "auto"),
                       "HU_clamp": [-1024, 3071], "NetworkInputInterpolation": "nearestNeighbor",
                       "ProbabilityInterpolation": "linear"},
        "Model": model_info,
        "Template": template,
        "Device": results.get("device_plan", {}),
        # BIDS defines SoftwareVersions as a string; the table is in our own key
        "SoftwareVersions": "; ".join(f"{k} {v}" for k, v in versions.items()),
        "Software": versions,
        "Timings": {k: round(v, 3) for k, v in results.get("timings", {}).items()},
        "DateProcessed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    vox_ml = results["voxel_volume_ml"]
    # BIDS mask Type is one of Brain/Lesion/Face/ROI: the class is in our own key
    lesion = {"Type": "Lesion", "LesionClass": "hemorrhage"}
    native_ref = {"SpatialReference": raw[0]}  # the source image's own grid
    template_ref = {"SpatialReference": B.spatial_reference(config)}
    hemorrhage = {
        "Sources": raw + [f"bids::{Path(plan_outputs('', source['relpath'])['hemorrhage_probseg'])}"],
        **lesion, **native_ref,
        "Description": "Intracerebral hemorrhage with any intraventricular extension (ICH + IVH)",
        "HemorrhageVolume": round(results["hemorrhage_volume_ml"], 3),
        "HemorrhageVolumeUnits": "mL",
        "HemorrhageVoxelCount": int(results["hemorrhage_voxel_count"]),
        "VoxelVolume": vox_ml, "VoxelVolumeUnits": "mL",
        **brain,
        "Threshold": config["threshold"],
        "MaskMethod": config["mask_method"],
        "Warnings": results.get("warnings", []),
        "QC": results.get("qc", {}),
        **split_fields(results.get("split")),
        **({"Uncertainty": results["uncertainty"]} if results.get("uncertainty") else {}),
        **trial_fields(results.get("trial")),
        **registration,
        **provenance,
    }
    return {
        "brain_mask": {"Sources": raw, "Type": "Brain", **native_ref,
                       "Description": "Brain (CT brain extraction)", **brain, "VoxelVolume": vox_ml, **provenance},
        "hemorrhage_mask": hemorrhage,
        "hemorrhage_probseg": {"Sources": raw, **lesion, **native_ref, "Interpolation": "linear",
                               "Description": "Hemorrhage probability (ICH + IVH), warped back from the "
                                              "template grid",
                               **{k: hemorrhage[k] for k in ("HemorrhageVolume", "HemorrhageVolumeUnits")},
                               **provenance},
        "hemorrhage_dseg": {
            "Sources": raw + [f"bids::{Path(plan_outputs('', source['relpath'])['hemorrhage_mask'])}"],
            "Description": "the hemorrhage mask split into parenchymal (ICH, 1) and intraventricular "
                           "(IVH, 2) parts: an ESTIMATE from anatomy, not from IVH labels",
            **native_ref, **split_fields(results.get("split")), **provenance},
        "edema_mask": {
            "Sources": raw + [f"bids::{Path(plan_outputs('', source['relpath'])['hemorrhage_mask'])}"],
            "Type": "Lesion", "LesionClass": "perihematomal edema", **native_ref,
            "Description": "perihematomal edema: an automated, label-free ESTIMATE after Volbers et al. "
                           "2018 (5-33 HU next to the clot); see deepbleed_bids.edema",
            **{k: v for k, v in trial_fields(results.get("trial")).items()
               if k in ("EdemaVolume", "EdemaVolumeUnits", "RelativeEdema", "PerihematomalEdema")},
            **provenance},
        "atlas_dseg": {
            "Sources": raw + ["BLAST-CT atlas (deepbleed_bids/data/atlas), carried through the rigid transform"],
            "Description": "the BLAST-CT 31-region atlas carried to this scan (genericLabel) and restricted "
                           "to the brain mask; classes in the .tsv",
            "License": "Apache-2.0 (BLAST-CT)", **native_ref, **provenance},
        "preproc_template": {"Sources": raw, **template_ref, "SkullStripped": True, "Interpolation": "nearestNeighbor",
                             "Description": "network input: raw HU, 0 outside the brain, template grid",
                             "RegistrationSimilarity": results.get("similarity"), **provenance},
        "probseg_template": {"Sources": raw, **lesion, **template_ref,
                             "Description": "Hemorrhage probability (ICH + IVH): the network output",
                             **provenance},
        "transform": {"Sources": raw, "FromSpace": "orig", "ToSpace": TEMPLATE_SPACE, "Type": "rigid",
                      "Software": "deepbleed-bids registration (NumPy/SciPy); ITK transform file (antspyx)",
                      "RegistrationSimilarity": results.get("similarity"),
                      **registration, **provenance},
    }


def write_outputs(config, source, files, results):
    """Stage every file and sidecar, then rename them into place. Returns the final paths."""
    out_dir = Path(config["output_dir"])
    targets = plan_outputs(out_dir, source["relpath"])
    sidecars = build_sidecars(config, source, results)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".deepbleed-staging-", dir=out_dir))
    moves = []
    try:
        for key, target in targets.items():
            if key not in files:  # e.g. no dseg from an older workflow: nothing half-written
                continue
            staged = staging / target.name
            shutil.copyfile(files[key], staged)
            staged_json = staging / sidecar_path(target).name
            staged_json.write_text(json.dumps(sidecars[key], indent=2, default=str) + "\n")
            moves += [(staged, target), (staged_json, sidecar_path(target))]
        if "hemorrhage_dseg" in files:
            tsv = Path(str(targets["hemorrhage_dseg"])[: -len(".nii.gz")] + ".tsv")
            (staging / tsv.name).write_text(dseg_tsv())
            moves.append((staging / tsv.name, tsv))
        if "atlas_dseg" in files:
            tsv = Path(str(targets["atlas_dseg"])[: -len(".nii.gz")] + ".tsv")
            (staging / tsv.name).write_text(atlas_tsv())
            moves.append((staging / tsv.name, tsv))
        # the hemorrhage mask's sidecar (the volumes) lands last: if it exists, all do
        moves.sort(key=lambda m: m[1] == sidecar_path(targets["hemorrhage_mask"]))
        for staged, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [str(t) for _, t in moves]
