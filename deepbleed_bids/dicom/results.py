"""One CT's results back into DICOM: a SEG and an SR under ``sub-X/[ses-Y/]dicom/``.

Runs after the NIfTI derivatives are in place and reads them (never the other
way round), so a DICOM failure cannot lose them. Patient/study identifiers go
only into these DICOM objects (copied from the source), never into sidecars.
Pure code: no nipype.
"""
import csv
import json
import re
from pathlib import Path

import numpy as np

from ..derivatives import sidecar_path
from ..errors import InputError
from ..nifti import voxel_volume_ml
from ..utils import atomic_path, write_json_atomic, write_text_atomic
from .sources import lookup

BIDSIGNORE = "**/dicom"  # DICOM objects are not BIDS files; the validator must skip them
_ICH = re.compile(r"\b(ich|iph|intracerebral|intraparenchymal|parenchym)", re.I)
_IVH = re.compile(r"\b(ivh|intraventricular|ventric)", re.I)


def wanted(config, source):
    """Write DICOM for this CT? --dicom-output / --no-dicom-output, else when dicom2bids recorded its source."""
    choice = config.get("dicom_output")
    if choice is not None:
        return bool(choice)
    return lookup(config["bids_dir"], source["relpath"]) is not None


def dicom_paths(out_dir, relpath):
    from ..bids import source_prefix

    folder = Path(out_dir) / Path(relpath).parent.parent / "dicom"
    prefix = source_prefix(relpath)
    return {"seg": folder / f"{prefix}_desc-hemorrhage_seg.dcm", "sr": folder / f"{prefix}_desc-volumes_sr.dcm"}


def _labels(dseg):
    """{"ich": [values], "ivh": [values]} from a dseg's ``.tsv`` (index, name) look-up table."""
    table = Path(str(dseg).replace(".nii.gz", ".tsv").replace(".nii", ".tsv"))
    found = {"ich": [], "ivh": []}
    if not table.is_file():
        return found
    with open(table, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if not str(row.get("index", "")).strip().isdigit():
                continue
            # the name decides; a description may name both ("ICH: ... outside the ventricles")
            for key in ("name", "abbreviation", "description"):
                hits = [kind for kind, pattern in (("ivh", _IVH), ("ich", _ICH))
                        if pattern.search(str(row.get(key) or ""))]
                if len(hits) == 1:
                    found[hits[0]].append(int(row["index"]))
                    break
    return found


def write_dicom(config, source, planned, out_files=()):
    """Write the SEG and the SR of one CT; returns the sidecar record ``DicomOutputs``.

    planned: :func:`deepbleed_bids.derivatives.plan_outputs` of this CT (final paths).
    Raises InputError / any error: the caller records it as a warning.
    """
    import nibabel as nib

    from . import seg as S
    from .sr import build_report

    out_dir = Path(config["output_dir"])
    entry = lookup(config["bids_dir"], source["relpath"]) or {}
    if not entry.get("Files"):
        raise InputError(entry.get("NotRecorded") or "no source DICOM series recorded for this CT "
                         "(datasets converted by `deepbleed-bids dicom2bids` record it in sourcedata/dicom2bids/)")
    datasets = S.read_series(entry["Files"])
    sidecar = json.loads(sidecar_path(planned["hemorrhage_mask"]).read_text())
    hem_img = nib.load(str(planned["hemorrhage_mask"]))
    affine = hem_img.affine
    masks = {"hemorrhage": np.asanyarray(hem_img.dataobj) > 0}
    volumes = {"hemorrhage": sidecar["HemorrhageVolume"], "brain": sidecar["BrainVolume"]}
    vox_ml = voxel_volume_ml(affine)
    # the ICH/IVH split written with this mask (not an older file, not the atlas dseg)
    dseg = planned["hemorrhage_dseg"] if str(planned["hemorrhage_dseg"]) in map(str, out_files) else None
    if dseg is not None:
        labels = np.asanyarray(nib.load(str(dseg)).dataobj)
        for kind, values in _labels(dseg).items():
            if values:
                masks[kind] = np.isin(labels, values)
                volumes[kind] = round(float(np.count_nonzero(masks[kind]) * vox_ml), 3)
    masks["brain"] = np.asanyarray(nib.load(str(planned["brain_mask"])).dataobj) > 0
    frames = {k: S.binarize_slabs(S.resample_to_slices(m, affine, datasets)) for k, m in masks.items()}
    model = {**config.get("model_spec", {}), "threshold": config.get("threshold")}
    deid = bool(config.get("dicom_deidentify"))
    seg = S.build_segmentation(datasets, frames, model, deidentify_output=deid)
    qc = sidecar.get("QC") or {}
    measures = {"volumes": volumes, "qc": qc, "abc2_ml": (qc.get("Metrics") or {}).get("ABC2Volume")}
    report = build_report(seg, measures, model, deidentify_output=deid)
    targets = dicom_paths(out_dir, source["relpath"])
    for key, ds in (("seg", seg), ("sr", report)):
        with atomic_path(targets[key]) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    ensure_bidsignore(out_dir)
    labels = {str(s.TrackingID): str(s.SegmentLabel) for s in seg.SegmentSequence}
    seg_ml = S.segment_volumes(seg, datasets)
    return {
        "Segmentation": f"bids::{targets['seg'].relative_to(out_dir).as_posix()}",
        "StructuredReport": f"bids::{targets['sr'].relative_to(out_dir).as_posix()}",
        "SourceInstances": len(datasets),
        "Segments": list(labels.values()),
        "SegmentationVolumes": {kind: round(seg_ml[label], 3) for kind, label in labels.items()},
        "SegmentationVolumesUnits": "mL",
        "Deidentified": deid,
        "Geometry": "frames on the source slices; each frame keeps its slab's content (area-preserving)",
    }


def record(planned, entry=None, warning=None):
    """Add the DICOM outputs (or the reason they failed) to the mask sidecars."""
    for key in ("hemorrhage_mask", "brain_mask"):
        path = Path(str(planned[key]).replace(".nii.gz", ".json"))
        if not path.is_file():
            continue
        meta = json.loads(path.read_text())
        if entry is not None:
            meta["DicomOutputs"] = entry
        else:
            meta.pop("DicomOutputs", None)
        if warning and key == "hemorrhage_mask":
            meta["Warnings"] = [*meta.get("Warnings", []), warning]
        write_json_atomic(meta, path)


def ensure_bidsignore(out_dir):
    """Add the ``dicom/`` folders to the derivatives' .bidsignore (other lines kept)."""
    path = Path(out_dir) / ".bidsignore"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BIDSIGNORE not in text.splitlines():
        write_text_atomic(text + ("" if not text or text.endswith("\n") else "\n") + BIDSIGNORE + "\n", path)
