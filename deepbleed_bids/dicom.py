"""DICOM head CT -> BIDS with the real dcm2niix.

Written into ``bids_dir`` (CT is the proposed BIDS datatype of BEP024)::

    dataset_description.json                      created when absent, never rewritten
    participants.tsv                              row added; existing rows/columns kept
    sub-X/[ses-Y/]ct/sub-X[_ses-Y]_acq-<kernel>[_run-<n>]_ct.nii.gz + .json
    sourcedata/dicom2bids/sub-X[_ses-Y]_log.txt   dcm2niix output and per-series decisions

Each series is read with pydicom, screened (scouts, reports, secondary captures,
non-CT, non-axial, truncated files and missing slices are caught here), then
converted on its own by dcm2niix so that one bad series cannot spoil the others.
Of dcm2niix's images only the geometrically correct one is kept (``_Tilt_Eq_1``,
``_Eq_1`` or ``_Tilt_1`` when it writes them). A session is assembled in a hidden
temporary folder inside ``bids_dir`` and moved into place with one rename.
"""
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __url__, __version__
from .errors import DeepBleedError, InputError
from .utils import write_text_atomic

BIDS_VERSION = "1.10.0"
MIN_SLICES = 8  # as deepbleed_bids.ct: fewer slices is a scout or single slice, not a head volume
MAX_AXIAL_DEG = 45.0  # gantry tilts reach ~30 deg; beyond 45 deg the stack is coronal/sagittal
ORTHO_TOL = 1e-3  # max |cos| between voxel axes of an unsheared grid
REDACTED = "[redacted]"

CT_IMAGE_SOPS = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image
}
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_SCOUT_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM")
# dcm2niix image variants, best geometry first.
_VARIANTS = [("_Tilt_Eq_1", True, True), ("_Eq_1", False, True), ("_Tilt_1", True, False), ("", False, False)]

# ---------------------------------------------------------------- kernels, contrast

_GE_SOFT = {"SOFT", "STANDARD", "STND", "STD", "STD+", "SMOOTH"}
_GE_BONE = {"BONE", "BONEPLUS", "BONE+", "LUNG", "EDGE"}
_PHILIPS_SOFT = {"A", "B", "UA", "UB", "UC", "EA", "EB", "EC"}
_PHILIPS_BONE = {"D", "E", "L", "YC", "YD", "YE", "YF"}
_SIEMENS = re.compile(r"^([A-SU-Z])[a-z]{0,2}(\d{2})[a-z]?$")  # H30s, Hr38, Br36d; T = topogram
_CANON = re.compile(r"^FC(\d{2})$")
_SOFT_WORDS = ("SOFT", "BRAIN", "STANDARD", "SMOOTH")
_BONE_WORDS = ("BONE", "LUNG", "EDGE", "SHARP")


def classify_kernel(kernel, manufacturer=None):
    """Class of a CT reconstruction kernel: ``"soft"``, ``"bone"`` or ``"unknown"``.

    Rules (intermediate kernels are "unknown" on purpose):

    * GE: SOFT, STANDARD/STND/STD, STD+, SMOOTH -> soft; BONE, BONEPLUS, LUNG,
      EDGE -> bone (an ``HD`` prefix is ignored); DETAIL, CHEST... -> unknown.
    * Siemens (letter, optional lower-case letters, two digits: H30s, Hr38, Br36,
      J30s, Qr40): sharpness < 50 -> soft, >= 60 -> bone, 50-59 -> unknown;
      T (topogram) kernels -> unknown.
    * Philips (only when the manufacturer says Philips, the letters are too
      short to guess): A, B, UA, UB, UC, EA, EB, EC -> soft; D, E, L, YC-YF -> bone.
    * Canon/Toshiba FCnn: FC20-FC26 (head) -> soft, FC30 and above -> bone,
      other body kernels -> unknown.
    * Any other name: containing SOFT/BRAIN/STANDARD/SMOOTH -> soft,
      BONE/LUNG/EDGE/SHARP -> bone, both or neither -> unknown.
    """
    if isinstance(kernel, (list, tuple)):
        kernel = kernel[0] if kernel else ""
    text = str(kernel or "").strip()
    if not text:
        return "unknown"
    first = re.split(r"[\\\s,]+", text)[0]  # Siemens may add the iterative strength: "Hr38\3"
    name = re.sub(r"^HD[\s_]+", "", text.upper()).strip()
    if name in _GE_SOFT:
        return "soft"
    if name in _GE_BONE:
        return "bone"
    if "PHILIPS" in str(manufacturer or "").upper():
        if name in _PHILIPS_SOFT:
            return "soft"
        if name in _PHILIPS_BONE:
            return "bone"
    match = _SIEMENS.match(first)
    if match:
        sharpness = int(match.group(2))
        return "soft" if sharpness < 50 else "bone" if sharpness >= 60 else "unknown"
    match = _CANON.match(first.upper())
    if match:
        number = int(match.group(1))
        return "soft" if 20 <= number <= 26 else "bone" if number >= 30 else "unknown"
    soft = any(word in name for word in _SOFT_WORDS)
    bone = any(word in name for word in _BONE_WORDS)
    return "soft" if soft and not bone else "bone" if bone and not soft else "unknown"


def is_soft_tissue(sidecar):
    """True when a CT sidecar describes a soft-tissue (brain) kernel reconstruction."""
    kind = sidecar.get("KernelType")
    if kind not in ("soft", "bone", "unknown"):
        kind = classify_kernel(sidecar.get("ConvolutionKernel"), sidecar.get("Manufacturer"))
    return kind == "soft"


_NO_WORDS = {"", "NONE", "NO", "N", "N/A", "NA", "NIL", "-", "0", "NON", "NOT APPLICABLE"}
_CONTRAST_TEXT = re.compile(
    r"CONTRAST|\bC\+|\+C\b|\bCTA\b|\bCTV\b|\bCTP\b|ANGIO|PERFUSION|VENOGRA|\bW/? ?CON\b|\bWITH CON", re.I)
_NO_CONTRAST_TEXT = re.compile(r"\b(NON|NO|W/O|WO|WITHOUT)[\s_-]*(IV[\s_-]*)?(CON|CONTRAST|C\+)|\bC-(?!\w)", re.I)


def contrast_suspected(sidecar):
    """True when a CT sidecar suggests iodinated contrast.

    Evidence: a ContrastBolusAgent/Ingredient other than "none", a positive
    ContrastBolusVolume, or a series/protocol/study description naming contrast,
    CTA, CTV, perfusion or C+ (unless it says non-contrast, w/o contrast, C-).
    """
    for key in ("ContrastBolusAgent", "ContrastBolusIngredient"):
        value = str(sidecar.get(key) or "").strip().upper()
        if value not in _NO_WORDS:
            return True
    try:
        if float(sidecar.get("ContrastBolusVolume") or 0) > 0:
            return True
    except (TypeError, ValueError):
        pass
    for key in ("SeriesDescription", "ProtocolName", "StudyDescription"):
        text = str(sidecar.get(key) or "")
        if _CONTRAST_TEXT.search(text) and not _NO_CONTRAST_TEXT.search(text):
            return True
    return False


def geometry_problem(img):
    """Why a NIfTI image is not a usable 3D CT grid (shear, 2D, 4D), or None."""
    shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
    if len(shape) != 3 or min(shape) < 2:
        return f"not a 3D volume (shape {tuple(img.shape)})"
    rzs = img.affine[:3, :3]
    norms = np.linalg.norm(rzs, axis=0)
    if np.any(norms <= 0):
        return "degenerate affine (zero voxel size)"
    cosines = np.abs((rzs / norms).T @ (rzs / norms) - np.eye(3)).max()
    if cosines > ORTHO_TOL:
        angle = np.degrees(np.arcsin(min(1.0, cosines)))
        return f"sheared voxel grid (axes {angle:.1f} deg off orthogonal: uncorrected gantry tilt)"
    return None


# ---------------------------------------------------------------- de-identification

# Sidecar keys never written; the "Patient*" family is handled by prefix.
_DENY_KEYS = {
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "StationName", "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "NameOfPhysiciansReadingStudy",
    "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "ImageComments", "OtherPatientIDs", "IssuerOfPatientID",
}
_KEEP_PATIENT = {"PatientPosition"}
# DICOM attributes whose values are blanked wherever they appear in text.
_ID_TAGS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "AccessionNumber", "InstitutionName",
    "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "RequestingPhysician", "NameOfPhysiciansReadingStudy", "StationName",
    "DeviceSerialNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
)
_PERSON_TAGS = {  # PN values: each part of the name is blanked too
    "PatientName", "PatientMotherBirthName", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "NameOfPhysiciansReadingStudy",
}


def identifiers(header):
    """The identifying strings of a pydicom header (person names also split into their parts)."""
    found = set()
    for tag in _ID_TAGS:
        value = header.get(tag)
        values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for item in values:
            text = str(item or "").strip()
            found.add(text)
            if tag in _PERSON_TAGS:
                found.update(re.split(r"[\^=\s,]+", text))
            if tag == "PatientBirthDate" and re.fullmatch(r"\d{8}", text):
                found.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")
    return {item for item in found if len(item) >= 3}


def scrub_text(text, ids):
    """Replace every identifier (whole word, any case) by ``[redacted]``."""
    for item in sorted(ids, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(item)}(?![A-Za-z0-9])", REDACTED, text, flags=re.I)
    return text


def scrub_sidecar(sidecar, ids):
    """Drop identifying keys and blank identifiers inside the remaining strings."""
    def clean(value):
        if isinstance(value, str):
            return scrub_text(value, ids)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {key: clean(value) for key, value in sidecar.items()
            if key not in _DENY_KEYS and "Date" not in key
            and (not key.startswith("Patient") or key in _KEEP_PATIENT)}


# ---------------------------------------------------------------- reading DICOM


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


def read_dicom_folder(dicom_dir):
    """Group the DICOM files under ``dicom_dir`` by series.

    Returns ``(series, notes, damaged)``: series in acquisition order, notes on
    ignored files (not DICOM, DICOMDIR) and damaged files that belong to no series.
    Raises InputError when the folder holds no file or no DICOM file at all.
    """
    try:
        import pydicom  # noqa: F401
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


# ---------------------------------------------------------------- conversion


def dcm2niix_binary():
    """The dcm2niix executable: on PATH, beside this Python, or from the PyPI package."""
    found = shutil.which("dcm2niix") or shutil.which("dcm2niix", path=str(Path(sys.executable).parent))
    if not found:
        try:
            import dcm2niix

            found = str(dcm2niix.bin)
        except (ImportError, AttributeError):
            pass
    if not found or not Path(found).is_file():
        raise DeepBleedError("dcm2niix not found: install it (pip install dcm2niix) or put it on PATH.")
    return found


@dataclass
class Decision:
    """What happened to one series (or damaged file)."""

    label: str
    status: str  # converted | skipped | failed
    reason: str = ""
    outputs: list = field(default_factory=list)  # relative BIDS paths
    details: list = field(default_factory=list)
    tool_output: str = ""


@dataclass
class _Image:
    nii: Path  # the uncompressed dcm2niix image kept
    sidecar: dict
    kernel_type: str
    summary: str


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _series_fields(series):
    """Sidecar fields read from the DICOM header (dcm2niix omits some of them)."""
    h = series.header
    kernel = h.get("ConvolutionKernel")
    if isinstance(kernel, (list, tuple)) or type(kernel).__name__ == "MultiValue":
        kernel = "\\".join(str(k) for k in kernel)
    out = {"ConvolutionKernel": str(kernel) if kernel else None, "KVP": _number(h.get("KVP"))}
    thick = [f.thickness for f in series.files if f.thickness is not None]
    if thick:
        values, counts = np.unique(np.round(thick, 3), return_counts=True)
        out["SliceThickness"] = float(values[np.argmax(counts)])
        if len(values) > 1:
            out["SliceThicknessRange"] = [float(values.min()), float(values.max())]
    tilt = _number(h.get("GantryDetectorTilt"))
    if tilt is not None:
        out["GantryDetectorTilt"] = tilt
    for key in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusIngredient"):
        if str(h.get(key) or "").strip():
            out[key] = str(h.get(key)).strip()
    volume = _number(h.get("ContrastBolusVolume"))
    if volume is not None:
        out["ContrastBolusVolume"] = volume
    return {k: v for k, v in out.items() if v is not None}


def _link_inputs(series, folder):
    folder.mkdir(parents=True)
    for i, one in enumerate(series.files):
        target = folder / f"{i:05d}.dcm"  # neutral names: source names may carry identifiers
        try:
            os.symlink(Path(one.path).resolve(), target)
        except OSError:
            shutil.copyfile(one.path, target)


def _choose_image(out, stem, spacing):
    """The best-geometry dcm2niix image of one output: (path, image, tilt fixed, equidistant), problems."""
    import nibabel as nib

    variable = spacing is not None and spacing.max() - spacing.min() > 0.01 * spacing.max()
    problems = []
    for suffix, tilt_fixed, equidistant in _VARIANTS:
        nii = out / f"{stem}{suffix}.nii"
        if not nii.exists():
            continue
        img = nib.load(nii)
        problem = geometry_problem(img)
        if not problem and variable and not equidistant:
            problem = (f"slice spacing varies ({spacing.min():.2f}-{spacing.max():.2f} mm) "
                       "and dcm2niix wrote no equidistant image")
        if not problem:
            return (nii, img, tilt_fixed, equidistant), problems
        problems.append(f"{nii.name}: {problem}")
    return None, problems


def convert_series(series, work, tool):
    """Run dcm2niix on one series; returns (decision, images) (images not yet named)."""
    verdict = screen(series)
    if verdict:
        return Decision(series.label, "skipped" if verdict[0] == "skip" else "failed", verdict[1]), []
    src, out = work / "in", work / "out"
    _link_inputs(series, src)
    out.mkdir()
    cmd = [tool, "-b", "y", "-ba", "y", "-c", "", "-z", "n", "-d", "0", "-f", "series", "-o", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    text = (proc.stdout + proc.stderr).replace(str(work), "<work>")
    decision = Decision(series.label, "converted", tool_output=text)
    stems = sorted(p.stem for p in out.glob("*.json"))  # dcm2niix writes a sidecar per image stack
    if proc.returncode != 0 or not stems:
        last = [line for line in text.splitlines() if line.strip()][-2:]
        decision.status = "failed"
        decision.reason = f"dcm2niix failed (exit {proc.returncode}): {' | '.join(last) or 'no output'}"
        return decision, []
    stack = _stack(series.files) if all(f.frames == 1 for f in series.files) else None
    spacing = np.diff(stack) if isinstance(stack, np.ndarray) and len(stack) > 1 else None
    images = []
    for stem in stems:
        chosen, problems = _choose_image(out, stem, spacing)
        decision.details += problems
        if chosen is None:
            continue
        nii, img, tilt_fixed, equidistant = chosen
        sidecar = {**json.loads((out / f"{stem}.json").read_text()), **_series_fields(series)}
        sidecar["KernelType"] = classify_kernel(sidecar.get("ConvolutionKernel"), sidecar.get("Manufacturer"))
        sidecar["TiltCorrected"] = tilt_fixed
        sidecar["EquidistantResampled"] = equidistant
        if spacing is not None:
            sidecar["OriginalSliceSpacingMin"] = round(float(spacing.min()), 4)
            sidecar["OriginalSliceSpacingMax"] = round(float(spacing.max()), 4)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        if equidistant:
            sidecar["ResampledSliceSpacing"] = round(zooms[2], 4)
        fixes = [w for w, on in (("tilt corrected", tilt_fixed), ("resampled to equidistant slices", equidistant)) if on]
        summary = (f"{'x'.join(map(str, img.shape[:3]))} voxels of {'x'.join(f'{z:.3f}' for z in zooms)} mm, "
                   f"kernel {sidecar.get('ConvolutionKernel', '?')} ({sidecar['KernelType']}), "
                   f"dcm2niix image '{nii.stem}'" + (f" ({', '.join(fixes)})" if fixes else ""))
        images.append(_Image(nii, sidecar, sidecar["KernelType"], summary))
    if not images:
        decision.status = "failed"
        decision.reason = "no image with correct geometry: " + "; ".join(decision.details or ["dcm2niix wrote none"])
        decision.details = []
    elif len(stems) > 1:
        decision.reason = f"dcm2niix split the series into {len(stems)} images"
    return decision, images


def _write_nifti(src, dst):
    """Gzip ``src`` into ``dst`` with the free-text header fields blanked (they may hold identifiers)."""
    with open(src, "rb") as fin:
        header = bytearray(fin.read(348))
        if 348 not in (int.from_bytes(header[:4], "little"), int.from_bytes(header[:4], "big")):
            raise DeepBleedError(f"{src.name}: dcm2niix wrote an unexpected (not NIfTI-1) header")
        for start, size in ((14, 18), (148, 80), (228, 24), (328, 16)):  # db_name descrip aux_file intent_name
            header[start:start + size] = bytes(size)
        with gzip.open(dst, "wb", compresslevel=4) as fout:  # ~level-6 size in half the time
            fout.write(header)
            shutil.copyfileobj(fin, fout, 1 << 20)


# ---------------------------------------------------------------- BIDS dataset


def bids_label(value, what, prefix):
    """A BIDS label from user input (``sub-01`` or ``01``); InputError when not alphanumeric."""
    label = str(value or "").strip()
    label = label[len(prefix):] if label.startswith(prefix) else label
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise InputError(f"{what} label {value!r} is not a BIDS label: use letters and digits only (e.g. 01 or P001).")
    return label


def bids_name(participant, session, acq, run=None):
    """``sub-X[_ses-Y]_acq-<acq>[_run-<n>]_ct``."""
    parts = [f"sub-{participant}"] + ([f"ses-{session}"] if session else []) + [f"acq-{acq}"]
    return "_".join(parts + ([f"run-{run}"] if run else []) + ["ct"])


def _atomic_write(path, text, clobber=True):
    return write_text_atomic(text, path, clobber=clobber)


def _check_destination(bids_dir, participant, session):
    """The session's ct folder; InputError when writing there would mix or overwrite data."""
    sub = bids_dir / f"sub-{participant}"
    if session and (sub / "ct").exists():
        raise InputError(f"{sub}: already holds data without sessions; convert sub-{participant} "
                         "without --session-label, or into another BIDS folder.")
    if not session and sub.is_dir() and any(sub.glob("ses-*")):
        raise InputError(f"{sub}: already has sessions ({', '.join(sorted(p.name for p in sub.glob('ses-*')))}); "
                         "give --session-label.")
    dest = (sub / f"ses-{session}" if session else sub) / "ct"
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"{dest}: already holds CT images; nothing is overwritten: choose another "
                         "session label, or move that folder away yourself.")
    table = bids_dir / "participants.tsv"
    if table.is_file():
        first = table.read_text(encoding="utf-8").splitlines()[:1]
        if not first or "participant_id" not in first[0].split("\t"):
            raise InputError(f"{table}: has no participant_id column in its first line; fix the file "
                             "(tab-separated, participant_id first) and run again.")
    return dest


def _add_participant(bids_dir, participant):
    path, pid = bids_dir / "participants.tsv", f"sub-{participant}"
    if not path.exists():
        return _atomic_write(path, f"participant_id\n{pid}\n")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    columns = lines[0].split("\t")
    col = columns.index("participant_id")
    if any(len(row.split("\t")) > col and row.split("\t")[col] == pid for row in lines[1:]):
        return False
    row = ["n/a"] * len(columns)
    row[col] = pid
    return _atomic_write(path, text + ("" if text.endswith("\n") else "\n") + "\t".join(row) + "\n")


def ensure_dataset_description(bids_dir, dcm2niix_version=None):
    """Write dataset_description.json when absent; an existing one is left untouched."""
    desc = {
        "Name": "CT dataset converted by deepbleed-bids dicom2bids",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "deepbleed-bids", "Version": __version__,
                         "Description": "dicom2bids: DICOM CT to BIDS with dcm2niix", "CodeURL": __url__}],
    }
    if dcm2niix_version:
        desc["GeneratedBy"].append({"Name": "dcm2niix", "Version": dcm2niix_version})
    path = Path(bids_dir) / "dataset_description.json"
    return not path.exists() and _atomic_write(path, json.dumps(desc, indent=2) + "\n", clobber=False)


def log_path(bids_dir, participant, session=None):
    stem = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    return Path(bids_dir) / "sourcedata" / "dicom2bids" / f"{stem}_log.txt"


@dataclass
class SessionResult:
    """Outcome of converting one exam folder."""

    participant: str
    session: str = None
    decisions: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    images: list = field(default_factory=list)  # absolute paths of the written NIfTI files
    log: Path = None
    error: str = None  # the session as a whole could not be converted

    @property
    def failed(self):
        return [d for d in self.decisions if d.status == "failed"]

    @property
    def ok(self):
        return not self.error and bool(self.images) and not self.failed

    def report(self, tool_output=False):
        """Human-readable summary (the log adds dcm2niix's output)."""
        name = f"sub-{self.participant}" + (f" ses-{self.session}" if self.session else "")
        if self.error:
            return f"{name}: FAILED: {self.error}\n"
        lines = [f"{name}: {len(self.images)} CT image(s) written, "
                 f"{sum(d.status == 'skipped' for d in self.decisions)} series skipped, "
                 f"{len(self.failed)} failed"]
        if not self.images:
            lines.append("  nothing usable was converted: nothing written")
        for d in self.decisions:
            lines.append(f"  {d.status:9} {d.label}" + (f": {d.reason}" if d.reason else ""))
            lines += [f"            -> {o}" for o in d.outputs]
            lines += [f"            note: {x}" for x in d.details]
            if tool_output and d.tool_output:
                lines += ["            | " + x for x in d.tool_output.rstrip().splitlines()]
        lines += [f"  ignored   {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _dcm2niix_version(tool):
    proc = subprocess.run([tool, "--version"], capture_output=True, text=True, errors="replace")
    found = re.search(r"v\d+\.\d+\.\d+\S*", proc.stdout + proc.stderr)
    return found.group(0) if found else "unknown"


def convert_session(dicom_dir, bids_dir, participant, session=None):
    """Convert the DICOM exam in ``dicom_dir`` to ``sub-<participant>[/ses-<session>]/ct``.

    Naming: ``acq-<KernelType>`` (soft, bone or unknown from :func:`classify_kernel`)
    tells kernels apart; several images of the same kernel class (thin and thick
    slices, repeated scans) get ``run-1``, ``run-2``... in series-number order.
    Slice thickness, kernel and corrections are in each JSON sidecar.

    Raises InputError when the folder is unusable or the destination is taken;
    otherwise returns a :class:`SessionResult` (see ``.ok``). Nothing is written
    unless at least one image converted.
    """
    participant = bids_label(participant, "participant", "sub-")
    session = bids_label(session, "session", "ses-") if session else None
    dicom_dir, bids_dir = Path(dicom_dir), Path(bids_dir)
    if not dicom_dir.is_dir():
        raise InputError(f"{dicom_dir}: no such folder; give the folder holding the DICOM files of one exam.")
    if bids_dir.exists() and not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: exists and is not a folder; give a BIDS folder (created if absent).")
    if not bids_dir.exists() and not bids_dir.parent.is_dir():
        raise InputError(f"{bids_dir.parent}: no such folder to create the BIDS folder in.")
    dest = _check_destination(bids_dir, participant, session)
    series, notes, damaged = read_dicom_folder(dicom_dir)
    tool = dcm2niix_binary()
    result = SessionResult(participant, session, notes=notes)
    result.decisions = [Decision(f"file {rel}", "failed", f"{why}; remove or replace it") for rel, why in damaged]
    ids = set()
    for one in series:
        ids |= identifiers(one.header)
    work = Path(tempfile.mkdtemp(prefix=".dicom2bids-", dir=bids_dir if bids_dir.is_dir() else bids_dir.parent))
    try:
        kept = []
        for i, one in enumerate(series):
            try:
                decision, images = convert_series(one, work / f"s{i:03d}", tool)
            except Exception as err:  # noqa: BLE001 - one bad series must not stop the others
                decision, images = Decision(one.label, "failed", f"conversion error ({type(err).__name__}: {err})"), []
            result.decisions.append(decision)
            kept += [(decision, image) for image in images]
        if kept:
            version = _dcm2niix_version(tool)
            _assemble(kept, work / "ct", participant, session, dest, bids_dir, ids)
            ensure_dataset_description(bids_dir, version)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.rmdir()  # empty (checked above); rename needs the name free
            os.rename(work / "ct", dest)
            result.images = sorted(dest.glob("*.nii.gz"))
            _add_participant(bids_dir, participant)
            result.log = log_path(bids_dir, participant, session)
            old = result.log.read_text(encoding="utf-8") + "\n" if result.log.exists() else ""
            _atomic_write(result.log, old + scrub_text(_log_text(result, version), ids))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for d in result.decisions:  # the printed summary may carry series descriptions
        d.label, d.reason = scrub_text(d.label, ids), scrub_text(d.reason, ids)
        d.outputs = [scrub_text(o, ids) for o in d.outputs]
    return result


def _assemble(kept, folder, participant, session, dest, bids_dir, ids):
    """Write the kept images, named and de-identified, into ``folder``."""
    folder.mkdir()
    by_kind = {}
    for _, image in kept:
        by_kind.setdefault(image.kernel_type, []).append(image)
    names = {}
    for kind, images in by_kind.items():
        for run, image in enumerate(images, 1):
            names[id(image)] = bids_name(participant, session, kind, run if len(images) > 1 else None)
    for decision, image in kept:
        name = names[id(image)]
        _write_nifti(image.nii, folder / f"{name}.nii.gz")
        sidecar = scrub_sidecar(image.sidecar, ids)
        _atomic_write(folder / f"{name}.json", json.dumps(sidecar, indent=2) + "\n")
        decision.outputs.append(f"{(dest / name).relative_to(bids_dir)}.nii.gz: {image.summary}")


def _log_text(result, version):
    return (f"deepbleed-bids {__version__} dicom2bids, dcm2niix {version}\n"
            f"dcm2niix options: -b y -ba y -c '' -z n -d 0 -f series (one series at a time)\n"
            + result.report(tool_output=True))


def read_batch_table(path):
    """Rows of a batch TSV (columns dicom_dir, participant, optional session).

    Relative dicom_dir paths are taken relative to the table's folder.
    """
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except OSError as err:
        raise InputError(f"--batch {path}: cannot be read ({err.strerror}).") from err
    if not lines:
        raise InputError(f"--batch {path}: empty; it needs a header line: dicom_dir<TAB>participant<TAB>session.")
    columns = [c.strip() for c in lines[0].split("\t")]
    missing = [c for c in ("dicom_dir", "participant") if c not in columns]
    if missing:
        raise InputError(f"--batch {path}: missing column(s) {', '.join(missing)} in the header "
                         f"{columns}; the table is tab-separated with dicom_dir, participant, session.")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        cells = dict(zip(columns, (c.strip() for c in line.split("\t"))))
        if not cells.get("dicom_dir") or not cells.get("participant"):
            raise InputError(f"--batch {path}, line {n}: dicom_dir and participant must not be empty.")
        folder = Path(cells["dicom_dir"])
        rows.append({"dicom_dir": folder if folder.is_absolute() else path.parent / folder,
                     "participant": cells["participant"],
                     "session": cells.get("session") or None, "line": n})
    return rows


def convert_batch(table, bids_dir):
    """Convert every row of a batch table; a failing row does not stop the others."""
    results = []
    for row in read_batch_table(table):
        try:
            results.append(convert_session(row["dicom_dir"], bids_dir, row["participant"], row["session"]))
        except (DeepBleedError, OSError) as err:
            results.append(SessionResult(str(row["participant"]), row["session"],
                                         error=f"line {row['line']} ({row['dicom_dir']}): {err}"))
    return results
