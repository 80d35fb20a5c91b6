"""NIfTI helpers that keep a reference image's geometry exactly."""
from pathlib import Path

import nibabel as nib
import numpy as np

from .utils import atomic_path


_GEOMETRY = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
             "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units")


def like(data, ref, dtype=None):
    """A NIfTI image of ``data`` with ``ref``'s affine, qform, sform and their codes."""
    data = np.asarray(data)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    hdr = ref.header.copy()
    hdr.set_data_dtype(data.dtype)
    hdr.set_slope_inter(None, None)  # data are stored as given, never rescaled
    img = nib.Nifti1Image(data, ref.affine, hdr)
    # nibabel recomputes the quaternion from the affine at float precision:
    # put the reference's fields back bit for bit (the affine is unchanged).
    for name in _GEOMETRY:
        img.header[name] = ref.header[name]
    return img


def voxel_volume_ml(img):
    """Volume of one voxel in mL, from the affine (the true, possibly oblique, grid)."""
    return abs(float(np.linalg.det(img.affine[:3, :3]))) / 1000.0


def save_atomic(img, path):
    """Write ``img`` so that ``path`` either does not exist or is complete."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)
