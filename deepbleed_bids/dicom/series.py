"""Reading DICOM files with pydicom, grouping them by series, and screening each series.

Screening catches what dcm2niix would convert silently or badly: scouts, reports,
secondary captures, non-CT, non-axial, truncated files and missing slices.
"""
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DeepBleedError, InputError

MIN_SLICES = 8  # as deepbleed_bids.ct: fewer slices is a scout or single slice, not a head volume
MAX_AXIAL_DEG = 45.0  # gantry tilts reach ~30 deg; beyond 45 deg the stack is coronal/sagittal

CT_IMAGE_SOPS = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image
}
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_SCOUT_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM")


@dataclass
class Series:
    """The readable files of one DICOM series (SeriesInstanceUID) and what is wrong with it."""

    uid: str
    header: object  # pydicom Dataset of the first file, pixel data not loaded
    files: list = field(default_factory=list)  # _File records
    damaged: list = field(default_factory=list)  # (relative path, what is wrong)

    @property
    def number(self):
        return self.header.get("SeriesNumber")

    @property
    def label(self):
        desc = str(self.header.get("SeriesDescription") or "").strip()
        return f"series {self.number if self.number is not None else '?'}" + (f" '{desc}'" if desc else "")

    @property
    def count(self):
        return sum(f.frames for f in self.files) + len(self.damaged)


@dataclass
class _File:
    path: Path
    position: list  # ImagePositionPatient, or None
    orientation: list  # ImageOrientationPatient, or None
    instance: int  # InstanceNumber, or None
    frames: int
    thickness: float  # SliceThickness, or None


def _read_header(path):
    """pydicom header (pixel data deferred), None when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        pass
    try:  # old files without the 128-byte preamble
        header = pydicom.dcmread(path, defer_size=1024, force=True)
        if re.fullmatch(r"[0-9.]{3,64}", str(header.get("SOPClassUID") or "")):
            return header
    except Exception:  # noqa: BLE001 - forced reading of non-DICOM raises anything
        pass
    return None


def _pixel_problem(header, path):
    """Why the pixel data of a CT image file is incomplete, or None."""
    try:
        elem = header.get_item(0x7FE00010, keep_deferred=True)
    except TypeError:  # pydicom < 3
        elem = header.get_item(0x7FE00010)
    if elem is None:
        return "has no pixel data (truncated or damaged file)"
    length, start = getattr(elem, "length", None), getattr(elem, "value_tell", None)
    if length is None or start is None or length == 0xFFFFFFFF:
        return None  # compressed or already read: dcm2niix checks it
    size = os.path.getsize(path)
    if start + length > size:
        return f"is truncated ({size} bytes; its pixel data ends at byte {start + length})"
    try:
        need = (int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel", 1))
                * int(header.BitsAllocated) // 8 * int(header.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return None
    if length < need:
        return f"holds {length} bytes of pixel data but its image needs {need}"
    return None


def _floats(value, n):
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_dicom_folder(dicom_dir):
    """Group the DICOM files under ``dicom_dir`` by series.

    Returns ``(series, notes, damaged)``: series in acquisition order, notes on
    ignored files (not DICOM, DICOMDIR) and damaged files that belong to no series.
    Raises InputError when the folder holds no file or no DICOM file at all.
    """
    try:  # fail early with a clear message rather than on the first file
        importlib.import_module("pydicom")
    except ImportError as err:
        raise DeepBleedError("dicom2bids needs pydicom: pip install pydicom") from err
    dicom_dir = Path(dicom_dir)
    paths = sorted(p for p in dicom_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise InputError(f"{dicom_dir}: the folder is empty; give the folder holding the DICOM files of one exam.")
    series, notes, damaged = {}, [], []
    for path in paths:
        rel = str(path.relative_to(dicom_dir))
        try:
            header = _read_header(path)
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on damaged files
            damaged.append((rel, f"is a damaged DICOM file ({type(err).__name__}: {err})"))
            continue
        if header is None:
            notes.append(f"{rel}: not a DICOM file, ignored")
            continue
        meta = header.get("file_meta")
        sop = str(header.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else "") or "")
        if sop == DICOMDIR_SOP:
            notes.append(f"{rel}: DICOMDIR index file, ignored")
            continue
        uid = str(header.get("SeriesInstanceUID") or "")
        if not uid:
            damaged.append((rel, "is an incomplete DICOM file (no SeriesInstanceUID: truncated header?)"))
            continue
        one = series.setdefault(uid, Series(uid, header))
        problem = _pixel_problem(header, path) if sop in CT_IMAGE_SOPS else None
        if problem:
            one.damaged.append((rel, problem))
            continue
        instance = str(header.get("InstanceNumber") or "").strip()
        one.files.append(_File(path, _floats(header.get("ImagePositionPatient"), 3),
                               _floats(header.get("ImageOrientationPatient"), 6),
                               int(instance) if instance.lstrip("-").isdigit() else None,
                               int(header.get("NumberOfFrames") or 1), _number(header.get("SliceThickness"))))
    if not series and not damaged:
        raise InputError(f"{dicom_dir}: no DICOM files among its {len(paths)} file(s) "
                         f"(e.g. {paths[0].name}); give the folder holding the exam's DICOM files.")

    def order(one):
        h = one.header
        return (int(one.number or 0), str(h.get("SeriesTime") or h.get("AcquisitionTime") or ""), one.uid)

    return sorted(series.values(), key=order), notes, damaged


# ---------------------------------------------------------------- screening


def _stack(files):
    """Geometry of a single-frame stack: (normal, sorted positions along it) or a skip reason."""
    orients = {tuple(np.round(f.orientation, 3)) for f in files if f.orientation}
    if len(orients) > 1:
        return "several image orientations in one series (multi-plane or reformatted images)"
    if not orients or any(f.position is None for f in files):
        return None
    iop = np.array(next(f.orientation for f in files if f.orientation))  # unrounded
    normal = np.cross(iop[:3], iop[3:])
    tilt = np.degrees(np.arccos(min(1.0, abs(normal[2]))))
    if tilt > MAX_AXIAL_DEG:
        return f"not axial: the slices are {tilt:.0f} deg from the axial plane (coronal/sagittal images)"
    pos = np.sort([float(np.dot(normal, f.position)) for f in files])
    if len(pos) > 1 and np.min(np.diff(pos)) < 1e-3:
        return "several images share a slice position (repeated or 4D acquisition), not one volume"
    return pos


def _missing_slices(pos, instances):
    """Why a stack seems to miss slices, or None.

    A gap that is a whole multiple (>= 2) of the spacing on both sides is a missing
    slice; holes in the instance numbers count only when the spacing varies
    (variable spacing by design, as the GE head, is legitimate).
    """
    gaps = np.diff(pos)
    for i, gap in enumerate(gaps):
        sides = [gaps[j] for j in (i - 1, i + 1) if 0 <= j < len(gaps)]
        ratios = [gap / s for s in sides if s > 0]
        if ratios and all(r > 1.5 and abs(r - round(r)) < 0.15 for r in ratios):
            lost = int(round(ratios[0])) - 1
            return (f"{lost} slice(s) missing: a {gap:.2f} mm gap at position {pos[i]:.1f} mm where "
                    f"neighbouring slices are {sides[0]:.2f} mm apart")
    numbers = sorted(n for n in instances if n is not None)
    if len(numbers) == len(pos) and numbers and numbers[-1] - numbers[0] + 1 > len(numbers) \
            and gaps.max() - gaps.min() > 0.01 * gaps.max():
        holes = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        return (f"slice(s) missing: instance numbers {numbers[0]}-{numbers[-1]} lack "
                f"{', '.join(map(str, holes[:10]))} and the slice spacing is irregular")
    return None


def screen(series):
    """``("skip" | "fail", reason)`` for a series that is not a convertible axial CT volume, else None."""
    h = series.header
    sop = str(h.get("SOPClassUID") or "")
    try:
        from pydicom.uid import UID

        sop_name = UID(sop).name if sop else "unknown SOP class"
    except Exception:  # noqa: BLE001
        sop_name = sop
    modality = str(h.get("Modality") or "?")
    image_type = [str(t).upper() for t in (h.get("ImageType") or [])]
    if "PixelData" not in h and sop not in CT_IMAGE_SOPS:
        return "skip", f"no pixel data ({sop_name}): a report or other non-image object"
    if modality != "CT":
        return "skip", f"modality {modality}, not CT"
    if sop not in CT_IMAGE_SOPS:
        return "skip", f"{sop_name}: not an original CT image (secondary capture or other object)"
    shown = "\\".join(image_type)
    if "DERIVED" in image_type and "SECONDARY" in image_type:
        return "skip", f"derived secondary images (ImageType {shown}): a reformat or capture"
    words = image_type + [str(h.get("ScanOptions") or "").upper()]
    if any(w in word for w in _SCOUT_WORDS for word in words):
        return "skip", f"localizer/scout (ImageType {shown}, ScanOptions {h.get('ScanOptions') or '-'})"
    if series.count < MIN_SLICES:
        return "skip", f"only {series.count} image(s): not a volume (at least {MIN_SLICES} slices needed)"
    if series.damaged:
        rel, why = series.damaged[0]
        more = f" (and {len(series.damaged) - 1} more file(s))" if len(series.damaged) > 1 else ""
        return "fail", f"file {rel} {why}{more}; re-export the series from PACS"
    if any(f.frames > 1 for f in series.files):
        return None  # enhanced multi-frame: dcm2niix reads the per-frame geometry
    stack = _stack(series.files)
    if isinstance(stack, str):
        return "skip", stack
    if stack is not None:
        missing = _missing_slices(stack, [f.instance for f in series.files])
        if missing:
            return "fail", f"{missing}; re-export the complete series"
    return None
