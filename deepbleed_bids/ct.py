"""Load a CT image, check that it is a head CT volume in HU, and clamp it."""
import nibabel as nib
import numpy as np

from .errors import InputError

HU_MIN, HU_MAX = -1024, 3071
MIN_SLICES = 8
MIN_EXTENT_MM = 40.0


def load_ct(path):
    """Load a 3D CT volume; 4D, 2D and unreadable files raise :class:`InputError`."""
    try:
        img = nib.load(str(path))
        shape = img.shape
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(f"{path}: cannot be read as NIfTI ({err}). Re-convert it with dcm2niix "
                         "(deepbleed-bids dicom2bids).") from err
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = img.shape
    if len(shape) == 4:
        raise InputError(f"{path}: a 4D image with {shape[3]} volumes; deepbleed-bids needs one 3D "
                         "head CT volume per file (split the series, e.g. one file per phase).")
    if len(shape) != 3:
        raise InputError(f"{path}: a {len(shape)}D image of shape {shape}; a 3D head CT volume is needed.")
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    extent = np.array(shape) * zooms
    thin = int(np.argmin(extent))
    if min(shape) < MIN_SLICES or extent[thin] < MIN_EXTENT_MM:
        raise InputError(
            f"{path}: only {shape[thin]} slice(s) covering {extent[thin]:.0f} mm along axis {thin} "
            f"(shape {shape}): a 2D image such as a scout/localizer or a single slice, not a head "
            "CT volume. Remove it from the dataset or use the axial series."
        )
    return img


def check_hounsfield(data, path):
    """Refuse images whose intensities are not CT in HU (no air, no bone)."""
    data = np.asarray(data)
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite values; re-convert the CT with dcm2niix.")
    air = float((data < -800).mean())
    bone = float((data > 500).mean())
    lo, hi = float(data.min()), float(data.max())
    if air < 1e-3 or bone < 1e-4:
        hint = ""
        if lo >= 0 and hi <= 4095 and bone > 0.2:
            hint = " It may be a CT stored without RescaleIntercept (air at 0 instead of -1024)."
        elif lo > -200 and hi <= 200:
            hint = " It may already be skull-stripped; give deepbleed-bids the full head CT."
        raise InputError(
            f"{path}: intensities {lo:.0f} to {hi:.0f} with {100 * air:.2f}% of voxels below -800 "
            f"(air) and {100 * bone:.3f}% above 500 (bone): this does not look like a head CT in "
            f"Hounsfield units (an MRI?).{hint}"
        )
    return {"air_fraction": air, "bone_fraction": bone, "min": lo, "max": hi}


def clamp_hu(data):
    """Clamp to the CT range [-1024, 3071] HU (padding such as -2000/-1500 becomes air)."""
    return np.clip(np.asarray(data), HU_MIN, HU_MAX)
