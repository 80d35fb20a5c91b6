"""Check every image before any processing, and record each image's last outcome.

One bad image is refused alone: every error reading or checking it becomes a
message naming the file, what is wrong and what to do; the others still run.
The outcome of an image's last run is kept in ``sub-X/log/<image>_failure.json``
(written when it fails, removed when it succeeds) so that the group level never
counts outputs that an unsuccessful re-run made stale, and can say why an image
has no outputs.
"""
import json
import re
from datetime import datetime
from pathlib import Path

from .errors import InputError
from .utils import write_json_atomic

# sub-<label>[_<key>-<label>...]_<suffix>.nii[.gz]; labels are alphanumeric (BIDS)
_BIDS_NAME = re.compile(r"^sub-[a-zA-Z0-9]+(_[a-zA-Z]+-[a-zA-Z0-9]+)*_[a-zA-Z0-9]+\.nii(\.gz)?$")


def check_name(relpath):
    """InputError unless the file name follows BIDS naming (labels are letters and digits only)."""
    name = Path(relpath).name
    if not _BIDS_NAME.match(name):
        fixed = re.sub(r"[^a-zA-Z0-9_.-]", "", name)
        raise InputError(f"{relpath}: not a valid BIDS file name (entity labels may hold only letters "
                         f"and digits, e.g. {fixed!r}); rename the file (and its .json sidecar) and run again.")


def check_image(source, skull_stripped=False):
    """Read and check one source image; InputError says what is wrong.

    skull_stripped: the user's --skull-stripped (True), else detected (None)."""
    from .ct import check_hounsfield, read_ct
    from .nifti import check_affine

    check_name(source["relpath"])
    img, data = read_ct(source["path"])
    check_not_8bit(img, source["relpath"])
    check_hounsfield(data, source["relpath"], skull_stripped=skull_stripped or None,
                     zooms=img.header.get_zooms()[:3])
    check_affine(img, source["relpath"])


def check_not_8bit(img, relpath):
    """8-bit voxels without a scaling to HU are a display export (a window applied), never HU:
    refused here because, brain-like after the window, they could pass for a skull-stripped CT."""
    import numpy as np

    slope, inter = img.header.get_slope_inter() if hasattr(img.header, "get_slope_inter") else (None, None)
    scaled = slope not in (None, 1.0) and np.isfinite(slope) or inter not in (None, 0.0) and np.isfinite(inter)
    if np.dtype(img.get_data_dtype()).itemsize == 1 and not scaled:
        raise InputError(f"{relpath}: 8-bit voxels ({img.get_data_dtype()}) with no scaling cannot hold "
                         "Hounsfield units (-1024 to 3071): this does not look like a head CT in Hounsfield "
                         "units but a display export with a window applied. Convert the original DICOM "
                         "with dcm2niix (`deepbleed-bids dicom2bids`).")


def preflight(images, skull_stripped=False):
    """Read and check every image before any processing; return (good, failures)."""
    good, failures = [], []
    for source in images:
        try:
            check_image(source, skull_stripped)
        except InputError as err:
            failures.append((source["relpath"], str(err)))
        except Exception as err:  # noqa: BLE001 - anything else is still this image's problem
            why = f"{source['relpath']}: cannot be checked ({type(err).__name__}: {err}); convert it again with dcm2niix."
            failures.append((source["relpath"], why))
        else:
            good.append(source)
    return good, failures


def failure_record(out_dir, relpath):
    """Where the failure of ``relpath``'s last run is recorded."""
    from .bids import source_prefix

    return Path(out_dir) / Path(relpath).parts[0] / "log" / f"{source_prefix(relpath)}_failure.json"


def record_outcomes(out_dir, ok=(), failures=()):
    """Record this run's failures (``(relpath, reason)``) and clear those of images that succeeded."""
    for relpath in ok:
        failure_record(out_dir, relpath).unlink(missing_ok=True)
    for relpath, reason in failures:
        write_json_atomic({"Source": relpath, "Reason": reason,
                           "Date": datetime.now().isoformat(timespec="seconds")},
                          failure_record(out_dir, relpath))


def read_failure(out_dir, relpath):
    """The recorded failure of ``relpath``'s last run (a dict), or None."""
    try:
        return json.loads(failure_record(out_dir, relpath).read_text())
    except (OSError, ValueError):
        return None


def user_reason(reason, work_dir):
    """A failure message without work-folder paths: only the file name is meaningful to a user."""
    if not work_dir:
        return reason
    return re.sub(re.escape(str(Path(work_dir))) + r"/\S*?([^/\s]+)(?=[\s,;:)'\"]|$)", r"\1", reason)
