"""Brain extraction (skull stripping) for non-contrast head CT.

Follows the CT protocol of Muschelli et al. 2015 (keep 0-100 HU, drop skull,
eyes, face, neck and table, fill holes, keep the brain), implemented with
scipy instead of FSL:

1. Coarse grid (about 2 mm): bone is HU >= 200. The cranium is what the
   closed skull encloses in 2D sections along each of the three voxel axes;
   the skull base is open in 3D, but most sections of the vault are rings,
   and a gap rarely opens the same spot in all three directions. The shell
   that encloses is everything above the tissue window (>= 120 HU): in 5-7 mm
   slices thin bone (planum, sella, orbital roofs) averages with brain to
   120-200 HU, and a 200 HU shell then leaks from the cranium into the sinuses
   and drops whole blocks of the temporal and frontal lobes.
2. Soft tissue (0-100 HU) in the cranium is opened with a ball so thin bridges
   through foramina and orbits break; its largest component is the brain.
3. Native grid: the boundary is redrawn from the 0-100 HU threshold near the
   coarse brain, then lightly closed and hole-filled (ventricles,
   calcifications, CSF darker than 0 HU).

Blood (40-100 HU) is soft tissue in the cranium, so hematomas, also those
against the inner table, stay in the mask. Sizes are in mm and every step is
symmetric in the voxel axes, so voxel size and orientation do not matter.
"""
import warnings

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .nifti import bbox_bounds, largest_component, voxel_sizes, voxel_volume_ml

HU_MIN, HU_MAX = -1024.0, 3071.0
TISSUE_HU = (0.0, 100.0)   # Muschelli et al. 2015 window; ICH is 40-100 HU
BONE_HU = 200.0
ENCLOSE_HU = 120.0         # shell that closes the cranium: above the 0-100 HU tissue window
SMOOTH_MM = 0.75           # Gaussian sigma: tames sub-mm pixel noise, keeps edges
COARSE_MM = 2.0            # grid of the topology steps
BONE_CLOSE_MM = 5.0        # seals sutures, foramina and fissures narrower than ~10 mm
OPEN_MM = 4.0              # cuts tissue bridges narrower than ~8 mm (optic canal, fissures)
GROW_MM = 3.0              # room for the native threshold around the coarse brain
NATIVE_CLOSE_MM = 1.0
AIR_HU = -300.0            # the array's border opens a section only where it is air (or padding)


def brain_volume_ml(mask, affine):
    """Volume of a binary mask in millilitres."""
    return float(np.count_nonzero(mask) * voxel_volume_ml(affine))


def extract_brain_img(img):
    """Brain mask of a nibabel CT image (HU), as a boolean array on its grid."""
    return extract_brain(np.asanyarray(img.dataobj), img.affine)


def extract_brain(data, affine):
    """Boolean brain mask of a head CT in HU (same shape as ``data``)."""
    data = np.asarray(data)
    affine = np.asarray(affine, float)
    if data.ndim != 3 or min(data.shape) < 2:
        raise InputError(
            f"brain extraction needs a 3D CT volume, got an array of shape {data.shape}; "
            "pass a single 3D head CT (not a scout/localizer, split 4D series first)."
        )
    zooms = voxel_sizes(affine) if affine.shape == (4, 4) else np.zeros(3)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0) or \
            abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError("brain extraction needs a valid 4x4 voxel-to-world affine; "
                         "check the qform/sform of the input CT's NIfTI header.")

    hu = data.astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        hu[np.isnan(hu)] = HU_MIN
    np.clip(hu, HU_MIN, HU_MAX, out=hu)

    # Thick slices are interpolated to the coarse grid too: eroding by OPEN_MM across
    # 5-7 mm slices would cut off lobes only two or three slices thick.
    cshape = tuple(max(3, int(round((n - 1) * z / COARSE_MM)) + 1) for n, z in zip(hu.shape, zooms))
    step = np.array([(n - 1) / (m - 1) for n, m in zip(hu.shape, cshape)])
    czooms = zooms * step
    # Max-pool before sampling so thin bone keeps the skull sections closed.
    pool = 2 * np.ceil((step - 1.1) / 2).clip(0).astype(int) + 1
    bone = ndi.maximum_filter((hu >= BONE_HU).view(np.uint8), size=pool)
    bone = _sample(bone.astype(np.float32), step, cshape) >= 0.5
    shell = ndi.maximum_filter((hu >= ENCLOSE_HU).view(np.uint8), size=pool)
    shell = _sample(shell.astype(np.float32), step, cshape) >= 0.5
    hu = ndi.gaussian_filter(hu, SMOOTH_MM / zooms, mode="nearest")
    coarse = _sample(hu, step, cshape)

    closed = _erode(_dilate(shell, BONE_CLOSE_MM, czooms), BONE_CLOSE_MM, czooms) | shell
    # Beyond the array lies what was not scanned, not air: a section leaves the head through
    # the array's border only where that border is air. A scan cut through the cranium
    # (vertex or skull base missing) otherwise opens every section that reaches the cut,
    # and where the skull base opens the others too, whole blocks of brain were dropped.
    air = coarse < AIR_HU
    cranium = (_fill_holes(closed, 0, air) | _fill_holes(closed, 1, air)
               | _fill_holes(closed, 2, air))
    for axis in range(3):
        cranium |= _fill_oblique(closed, air, axis)
    tissue = (coarse >= TISSUE_HU[0]) & (coarse <= TISSUE_HU[1]) & cranium & ~bone
    core = largest_component(_erode(tissue, OPEN_MM, czooms), connectivity=1)
    if not core.any():
        raise InputError(
            "brain extraction found no brain (no soft tissue of 0-100 HU enclosed by skull). "
            "The input must be a non-contrast head CT in Hounsfield units covering the head."
        )
    brain = _dilate(core, OPEN_MM, czooms) & tissue
    allowed = _dilate(brain, GROW_MM, czooms) & cranium

    # Native grid, cropped to the coarse brain's box for speed.
    lo_c, hi_c = bbox_bounds(allowed)
    hi_c = hi_c - 1  # inclusive
    margin = np.ceil(NATIVE_CLOSE_MM / zooms).astype(int) + 1
    lo = np.maximum(np.floor(lo_c * step).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(hi_c * step).astype(int) + margin + 1, hu.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    near = _sample(allowed.astype(np.float32), 1 / step, tuple(hi - lo), lo / step) > 0.5
    # Upper bound on raw HU: smoothing would push blood next to bone above it.
    sub = near & (hu[box] >= TISSUE_HU[0]) & (data[box] <= TISSUE_HU[1])
    sub = largest_component(sub, connectivity=1)
    sub = _fill_holes(_close(sub, zooms))
    mask = np.zeros(hu.shape, bool)
    mask[box] = sub
    return mask


def _sample(array, step, shape, offset=0.0):
    """Linear resampling at index ``offset + step * i`` along each axis.

    Corner-aligned grids keep every step symmetric under axis flips.
    """
    with warnings.catch_warnings():  # a 1-D matrix (diagonal) takes scipy's fast path
        warnings.simplefilter("ignore", UserWarning)
        return ndi.affine_transform(array, np.asarray(step, float), offset=offset,
                                    output_shape=tuple(shape), order=1, mode="nearest")


def _erode(mask, radius, sampling):
    return ndi.distance_transform_edt(mask, sampling=sampling) > radius


def _dilate(mask, radius, sampling):
    return ndi.distance_transform_edt(~mask, sampling=sampling) <= radius


def _close(mask, zooms):
    """Closing with a NATIVE_CLOSE_MM ball; edge padding keeps the array borders."""
    steps = np.floor(NATIVE_CLOSE_MM / zooms + 1e-6).astype(int)
    grids = np.ogrid[tuple(slice(-s, s + 1) for s in steps)]
    ball = sum((g * z) ** 2 for g, z in zip(grids, zooms)) <= NATIVE_CLOSE_MM ** 2 + 1e-6
    closed = ndi.binary_closing(np.pad(mask, [(s, s) for s in steps], mode="edge"), ball)
    return closed[tuple(slice(s, n + s) for s, n in zip(steps, mask.shape))]


def _fill_oblique(mask, open_border, axis, angle_deg=45.0):
    """Sections of ``mask`` (a near-isotropic grid) filled along the two diagonal directions
    in the plane across ``axis``: a head turned against its voxel axes may leave a spot open in
    all three voxel-axis sections (near the orbits and the skull base) but not in these."""
    a, b = [k for k in range(3) if k != axis]
    plane = np.array([mask.shape[a], mask.shape[b]], float)
    centre = (plane - 1) / 2
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    half = np.abs(np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]]) * centre @ rot).max(axis=0)
    size = np.ceil(2 * half).astype(int) + 1

    def nearest(points, shape):  # nearest voxel, clipped: beyond the array is its border's value
        return tuple(np.clip(np.rint(p), 0, n - 1).astype(np.intp) for p, n in zip(points, shape))

    # rotated grid u -> array x = rot @ (u - half) + centre, in the plane of a and b only
    u = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")).reshape(2, -1)
    src = nearest(rot @ (u - half[:, None]) + centre[:, None], plane.astype(int))
    m = np.moveaxis(mask, (a, b), (0, 1))[src].reshape(*size, -1)  # plane axes first
    o = np.moveaxis(open_border, (a, b), (0, 1))[src].reshape(*size, -1)
    filled = _fill_holes(m, 0, o) | _fill_holes(m, 1, o)
    x = np.stack(np.meshgrid(np.arange(plane[0]), np.arange(plane[1]), indexing="ij")).reshape(2, -1)
    back = nearest(rot.T @ (x - centre[:, None]) + half[:, None], size)
    out = filled[back].reshape(int(plane[0]), int(plane[1]), -1)
    return np.moveaxis(out, (0, 1), (a, b))


def _fill_holes(mask, axis=None, open_border=None):
    """Fill holes in 3D, or in each 2D section across ``axis``.

    Background is what reaches the array border (of the section) where
    ``open_border`` is True (default: everywhere); the rest is a hole.
    """
    structure = ndi.generate_binary_structure(3, 1)
    if axis is not None:
        structure[tuple(0 if a == axis else 1 for a in range(3))] = False
        structure[tuple(2 if a == axis else 1 for a in range(3))] = False
    labels, n = ndi.label(~mask, structure=structure)
    border = np.zeros(mask.shape, bool)
    for a in range(3):
        if a != axis:
            index = [slice(None)] * 3
            index[a] = [0, -1]
            border[tuple(index)] = True
    if open_border is not None:
        border &= open_border
    keep = np.ones(n + 1, bool)
    keep[labels[border]] = False
    keep[0] = True  # label 0 is the mask itself
    return keep[labels]


STRIPPED_BRAIN_ONLY = 0.9   # share of the foreground within 0-100 HU of a brain-only image
PSEUDO_BONE_HU, PSEUDO_AIR_HU = 1000.0, -1000.0


def mask_from_background(data, affine):
    """Brain mask of an already brain-extracted or windowed CT (background: its commonest value).

    Brain only (nearly all of the rest within 0-100 HU): the non-background
    voxels, largest component, holes filled. Windowed (bone and air set to the
    background, scalp and muscle kept): background enclosed by tissue in an axial
    section is where bone was; it is given back as bone, the rest as air, and
    the normal extraction runs.
    """
    data = np.asarray(data)
    affine = np.asarray(affine, float)
    values, counts = np.unique(data[::2, ::2, ::2], return_counts=True)
    background = data == values[np.argmax(counts)]
    fg = data[~background]
    if fg.size and np.mean((fg >= TISSUE_HU[0]) & (fg <= TISSUE_HU[1])) < STRIPPED_BRAIN_ONLY:
        axial = int(np.argmax(np.abs(affine[2, :3]) / voxel_sizes(affine)))
        # in an axial section the blanked skull is a ring enclosed by scalp
        enclosed = background & _fill_holes(~background, axial)
        hu = np.where(background, np.where(enclosed, PSEUDO_BONE_HU, PSEUDO_AIR_HU), data)
        return extract_brain(hu, affine)
    mask = _fill_holes(largest_component(~background, connectivity=1))
    if not mask.any():
        raise InputError("the skull-stripped CT has no foreground: no brain to segment.")
    return mask
