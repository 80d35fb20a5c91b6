"""Load a CT image, check that it is a head CT volume in HU, and clamp it."""
import nibabel as nib
import numpy as np

from .errors import InputError
from .nifti import voxel_sizes

HU_MIN, HU_MAX = -1024, 3071
MIN_SLICES = 8
MIN_EXTENT_MM = 40.0
MIN_COVERAGE_MM = 80.0  # head-to-foot extent below which the brain cannot be covered
VOXEL_MM = (0.1, 10.0)  # plausible voxel sizes of a head CT
_REDO = "Convert the DICOM series again with dcm2niix (`deepbleed-bids dicom2bids`)."


def load_ct(path):
    """Load a 3D CT volume; 4D, 2D and unreadable files raise :class:`InputError`."""
    try:
        img = nib.load(str(path))
        shape = img.shape
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(f"{path}: cannot be read as NIfTI ({_why(err)}). Re-convert it with dcm2niix "
                         "(deepbleed-bids dicom2bids).") from err
    if img.get_data_dtype().names:  # RGB(A) and other structured types
        raise InputError(f"{path}: a colour (RGB) image, not a CT volume in Hounsfield units (a "
                         f"screenshot or secondary capture?). {_REDO}")
    check_voxels(img, path)
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = img.shape
    if len(shape) == 4:
        raise InputError(f"{path}: a 4D image with {shape[3]} volumes; deepbleed-bids needs one 3D "
                         "head CT volume per file (split the series, e.g. one file per phase).")
    if len(shape) != 3:
        raise InputError(f"{path}: a {len(shape)}D image of shape {shape}; a 3D head CT volume is needed.")
    zooms = voxel_sizes(img.affine)
    extent = np.array(shape) * zooms
    thin = int(np.argmin(extent))
    if min(shape) < MIN_SLICES or extent[thin] < MIN_EXTENT_MM:
        raise InputError(
            f"{path}: only {shape[thin]} slice(s) covering {extent[thin]:.0f} mm along axis {thin} "
            f"(shape {shape}): a 2D image such as a scout/localizer or a single slice, not a head "
            "CT volume. Remove it from the dataset or use the axial series."
        )
    rzs = np.asarray(img.affine, float)[:3, :3]
    # along the voxel axis closest to head-foot (the slice axis of an axial scan, tilted or not)
    axis = int(np.argmax(np.abs(rzs[2]) / np.linalg.norm(rzs, axis=0)))
    coverage = float(abs(rzs[2, axis]) * shape[axis])
    if coverage < MIN_COVERAGE_MM:
        raise InputError(
            f"{path}: covers only {coverage:.0f} mm from feet to head (shape {shape}): partial coverage, "
            f"not a head CT of the whole brain (at least {MIN_COVERAGE_MM:.0f} mm), so volumes would be "
            "incomplete. Use the series that covers the whole head.")
    return img


def _why(err):
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check_voxels(img, path):
    """Refuse a header whose voxel sizes or voxel-to-world affine make volumes meaningless."""
    hdr = _raw_header(img, path)
    pixdim = np.asarray(hdr["pixdim"][1:4], float) if "pixdim" in hdr else np.ones(3)
    codes = [int(hdr[c]) for c in ("qform_code", "sform_code") if c in hdr]
    shown = ", ".join(f"{v:g}" for v in pixdim)
    if not np.isfinite(pixdim).all():
        raise InputError(f"{path}: the header's voxel sizes (pixdim {shown}) are not numbers; the header "
                         f"is damaged. {_REDO}")
    if codes and not any(codes) and (pixdim <= 0).any():
        raise InputError(f"{path}: the header gives no orientation (qform and sform codes 0) and voxel "
                         f"sizes {shown} mm: the true voxel size is unknown, so no volume can be measured. "
                         f"{_REDO}")
    if (pixdim <= 0).any():
        raise InputError(f"{path}: zero or negative voxel size(s) in the header (pixdim {shown}); NIfTI voxel "
                         "sizes must be positive (a flip belongs in the affine), and tools disagree on how to "
                         f"read such a header. {_REDO}")
    rzs = np.asarray(img.affine, float)[:3, :3]
    if not np.isfinite(rzs).all():
        raise InputError(f"{path}: the voxel-to-world affine holds NaN or infinite values. {_REDO}")
    zooms = np.linalg.norm(rzs, axis=0)
    if zooms.min() < 1e-6 or abs(np.linalg.det(rzs)) < 1e-3 * np.prod(zooms):
        raise InputError(f"{path}: the voxel-to-world affine is singular (voxel axes of length "
                         f"{', '.join(f'{z:g}' for z in zooms)} mm that do not span 3D space), so voxel "
                         f"positions and volumes are undefined. {_REDO}")
    lo, hi = VOXEL_MM
    if zooms.min() < lo or zooms.max() > hi:
        raise InputError(f"{path}: voxel size {' x '.join(f'{z:.4g}' for z in zooms)} mm is implausible "
                         f"for a head CT (expected {lo:g} to {hi:g} mm per axis); the header's voxel sizes or "
                         f"units are wrong, and every volume would be wrong with them. {_REDO}")


def _raw_header(img, path):
    """The header as stored: nibabel silently replaces zero/negative pixdim on load."""
    from nibabel.openers import ImageOpener

    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        return img.header
    try:
        with ImageOpener(str(path)) as fobj:
            return type(img.header).from_fileobj(fobj, check=False)
    except Exception:  # noqa: BLE001 - the loaded header is still checked
        return img.header


def read_ct(path):
    """:func:`load_ct` and its intensities (float32); a truncated or damaged file is an InputError."""
    img = load_ct(path)
    try:
        data = img.get_fdata(dtype="float32")
    except Exception as err:  # noqa: BLE001 - gzip/zlib/numpy raise EOFError, OSError, ValueError...
        raise InputError(f"{path}: the image data cannot be read ({_why(err)}); the file is truncated or "
                         "damaged (an interrupted copy or download?). Copy or convert it again.") from err
    return img, data


# Already brain-extracted or windowed CT (bone and air set to a constant): what it must look like.
STRIPPED_MIN_BACKGROUND = 0.2       # the constant background holds at least this share of voxels
STRIPPED_MIN_FOREGROUND_ML = 400.0  # a brain or more
STRIPPED_HU_RANGE = (-200.0, 400.0)  # 1st-99th percentile of the foreground
STRIPPED_MIN_BRAIN_BAND = 0.6       # share of the foreground within 0-100 HU (brain, CSF, blood)
STRIPPED_MEDIAN_HU = (5.0, 55.0)    # median of the foreground: brain parenchyma is 20-45 HU; a
                                    # rescaled export (air at 0, brain near 66) falls outside


def skull_stripped_evidence(data, zooms=None):
    """Why ``data`` looks like an already brain-extracted or windowed head CT in HU, or None.

    Such an image has no air and no bone (set to a constant), a large constant
    background, and foreground values in the range of brain, CSF and blood:
    most of them within 0-100 HU. MRI in arbitrary units fails the last test.
    """
    data = np.asarray(data)
    values, counts = np.unique(data[::2, ::2, ::2], return_counts=True)
    background = values[np.argmax(counts)]
    share = counts.max() / counts.sum()
    if share < STRIPPED_MIN_BACKGROUND or background != values[0] and background != 0:
        return None
    fg = data[data != background]
    voxel_ml = float(np.prod(zooms)) / 1000.0 if zooms is not None else None
    if fg.size == 0 or (voxel_ml and fg.size * voxel_ml < STRIPPED_MIN_FOREGROUND_ML):
        return None
    sample = fg[:: max(1, fg.size // 200000)].astype(np.float32)
    lo, hi = np.percentile(sample, [1, 99])
    band = float(np.mean((sample >= 0) & (sample <= 100)))
    median = float(np.median(sample))
    if lo < STRIPPED_HU_RANGE[0] or hi > STRIPPED_HU_RANGE[1] or band < STRIPPED_MIN_BRAIN_BAND:
        return None
    if not STRIPPED_MEDIAN_HU[0] <= median <= STRIPPED_MEDIAN_HU[1]:
        return None
    return (f"constant background {background:g} in {100 * share:.0f}% of voxels, no air or bone, "
            f"{100 * band:.0f}% of the rest within 0-100 HU (1st-99th percentile {lo:.0f} to {hi:.0f} HU)")


def check_hounsfield(data, path, skull_stripped=None, zooms=None):
    """Refuse images whose intensities are not CT in HU; say whether the CT is skull-stripped.

    skull_stripped: None detects an already brain-extracted or windowed CT (no
    air, no bone, constant background, brain-like HU); True is the user's word
    for it (the HU check on the foreground still applies); False requires a full head.
    Returns the intensity statistics with "skull_stripped" and "skull_stripped_reason".
    """
    data = np.asarray(data)
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite values; re-convert the CT with dcm2niix.")
    air = float((data < -800).mean())
    bone = float((data > 500).mean())
    lo, hi = float(data.min()), float(data.max())
    stats = {"air_fraction": air, "bone_fraction": bone, "min": lo, "max": hi,
             "skull_stripped": False, "skull_stripped_reason": None}
    full_head = air >= 1e-3 and bone >= 1e-4
    if full_head and not skull_stripped:
        return stats
    evidence = skull_stripped_evidence(data, zooms) if skull_stripped is not False else None
    if evidence:
        reason = "--skull-stripped" if skull_stripped else "detected"
        return {**stats, "skull_stripped": True, "skull_stripped_reason": f"{reason}: {evidence}"}
    if skull_stripped:
        raise InputError(
            f"{path}: given as skull-stripped (--skull-stripped) but it does not look like a "
            f"brain-extracted or windowed CT in Hounsfield units: intensities {lo:.0f} to {hi:.0f}; "
            "expected a constant background and most other voxels within 0-100 HU (brain, CSF, "
            "blood). An MRI or a CT without its rescale slope/intercept cannot be used.")
    hint = ""
    if lo >= 0 and hi <= 4095 and bone > 0.2:
        hint = " It may be a CT stored without RescaleIntercept (air at 0 instead of -1024)."
    raise InputError(
        f"{path}: intensities {lo:.0f} to {hi:.0f} with {100 * air:.2f}% of voxels below -800 "
        f"(air) and {100 * bone:.3f}% above 500 (bone): this does not look like a head CT in Hounsfield "
        "units, nor like an already brain-extracted or windowed CT in HU (constant background, "
        f"most other voxels within 0-100 HU): an MRI or another modality?{hint}"
    )


def clamp_hu(data):
    """Clamp to the CT range [-1024, 3071] HU (padding such as -2000/-1500 becomes air)."""
    return np.clip(np.asarray(data), HU_MIN, HU_MAX)
