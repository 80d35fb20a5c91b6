"""NIfTI helpers that keep a reference image's geometry exactly."""
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

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
    affine = ref.affine if ref.affine is not None else ref.header.get_best_affine()
    img = nib.Nifti1Image(data, affine, hdr)
    # nibabel recomputes the quaternion from the affine at float precision:
    # put the reference's fields back bit for bit (the affine is unchanged).
    for name in _GEOMETRY:
        img.header[name] = ref.header[name]
    return img


def voxel_sizes(affine):
    """Voxel edge lengths in mm (column norms of the affine)."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def voxel_volume_ml(img_or_affine):
    """Volume of one voxel in mL, from the affine (the true, possibly oblique, grid);
    takes an image or its voxel-to-world affine."""
    affine = getattr(img_or_affine, "affine", img_or_affine)
    return abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def bbox_bounds(mask):
    """(lo, hi) voxel indices of the non-zero voxels, hi exclusive; from the axis
    projections, not np.argwhere (which lists every voxel: seconds on a large mask)."""
    mask = np.asarray(mask)
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    return np.array(lo), np.array(hi)


def bbox(mask, pad=0):
    """Slices of the non-zero voxels' box, grown by ``pad`` voxels (scalar or per axis)
    and clipped to the array."""
    lo, hi = bbox_bounds(mask)
    lo = np.maximum(lo - pad, 0)
    hi = np.minimum(hi + pad, np.shape(mask))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def largest_component(mask, connectivity):
    """The largest connected component of ``mask``. ``connectivity`` is explicit because
    callers differ on purpose: 1 = faces (6-neighbourhood in 3-D), 3 = faces, edges and
    corners (26-neighbourhood)."""
    mask = np.asarray(mask)
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    lab, n = ndi.label(mask, structure=structure)
    if n <= 1:
        return lab > 0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)


def save_atomic(img, path):
    """Write ``img`` so that ``path`` either does not exist or is complete."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)
