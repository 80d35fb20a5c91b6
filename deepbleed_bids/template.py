"""The DeepBleed template grid and space: one home for what the network's input must be.

The published weights only work on this grid (128^3 voxels of 1.5 mm, RAS, MNI-aligned
origin); registration, training and the derivatives' ``space-`` entity all take it from here.
"""
from pathlib import Path

import numpy as np

from .errors import InputError

SPACE = "DeepBleedCT"  # the BIDS ``space-`` label of the template grid
SHAPE = (128, 128, 128)
VOXEL_MM = 1.5
ZOOMS = (VOXEL_MM, VOXEL_MM, VOXEL_MM)
ORIGIN = (-90.0, -125.0, -71.0)
VOXEL_ML = VOXEL_MM ** 3 / 1000.0  # one template voxel in mL
GRID_TOL = 1e-3  # mm and mm/voxel


def _affine(img):
    """The image's voxel-to-RAS affine; nibabel leaves .affine None for images built from a header."""
    return np.asarray(img.affine if img.affine is not None else img.header.get_best_affine(), float)


def _fmt(values, digits=4):
    return str(tuple(round(float(v), digits) for v in values))


def check_template_grid(img, path=None):
    """InputError unless ``img`` is on the DeepBleed grid: 128^3, 1.5 mm, RAS, origin (-90,-125,-71)."""
    import nibabel as nib

    where = str(path) if path is not None else "template"
    aff = _affine(img)
    shape = tuple(int(n) for n in img.shape)
    zooms = np.linalg.norm(aff[:3, :3], axis=0)
    origin = aff[:3, 3]
    found = []
    if shape != SHAPE:
        found.append(f"shape {shape}")
    if not np.allclose(zooms, ZOOMS, atol=GRID_TOL):
        found.append(f"voxel size {_fmt(zooms)} mm")
    if not np.allclose(aff[:3, :3], np.diag(zooms), atol=GRID_TOL):
        codes = "".join(nib.aff2axcodes(aff))
        found.append(f"orientation {codes} with axes not aligned with RAS")
    if not np.allclose(origin, ORIGIN, atol=1e-2):
        found.append(f"origin {_fmt(origin, 3)} mm")
    if found:
        raise InputError(
            f"{where}: not on the DeepBleed template grid: found " + ", ".join(found) +
            f"; required shape {SHAPE}, voxel size 1.5 mm isotropic, RAS axes without "
            f"rotation, origin {ORIGIN} mm. The published weights only work on that "
            "grid: use the DeepBleed template (scct_unsmooth_SS_0.01_128x128x128.nii.gz) or an "
            "image resampled onto its grid.")


def resolve_template(path=None):
    """The template file to use (``--template PATH``, else the bundled DeepBleed template),
    checked: it exists, reads as NIfTI and lies on the grid. Returns its absolute Path."""
    import nibabel as nib

    if path:
        path = Path(path).absolute()
        if not path.is_file():
            raise InputError(f"--template {path}: no such file.")
    else:
        from . import assets

        path = Path(assets.fetch_template()).absolute()
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"template {path} cannot be read as NIfTI: {err}") from err
    check_template_grid(img, path)
    return path
