"""Training augmentation on the template grid (RAS: array axis 0 is x, left-right).

As in the paper: random left-right flips and random elastic deformations in the
axial (x/y) plane only; the displacement has no z component because slice
thickness varies between scans. Patches (64^3, 32^3) are sampled with a bias
towards lesions, since hemorrhage is a small fraction of the brain.
"""
import numpy as np
from scipy import ndimage as ndi

from ..template import VOXEL_MM


def flip_lr(image, mask, rng, p=0.5):
    """Mirror left-right (array axis 0) with probability ``p``."""
    if rng.uniform() < p:
        return image[::-1].copy(), mask[::-1].copy()
    return image, mask


def _smooth_field(shape, sigma_vox, rng, coarse=4):
    """Unit-SD random field smooth over ``sigma_vox`` voxels (made coarse, then upsampled)."""
    small = [max(2, int(np.ceil(n / coarse))) for n in shape]
    field = ndi.gaussian_filter(rng.standard_normal(small), sigma_vox / coarse, mode="wrap")
    field /= max(float(field.std()), 1e-6)
    return ndi.zoom(field, [n / s for n, s in zip(shape, small)], order=1)[:shape[0], :shape[1], :shape[2]]


def elastic_xy(image, mask, rng, sd_mm=3.0, sigma_mm=15.0):
    """Smooth random displacement in x and y (SD ``sd_mm``, correlated over ``sigma_mm``), none in z.

    The image is resampled linearly, the mask linearly then thresholded at 0.5
    (the same rule as the reference masks' trip to the template grid).
    """
    shape = image.shape
    sigma = sigma_mm / VOXEL_MM
    dx = _smooth_field(shape, sigma, rng) * (sd_mm / VOXEL_MM)
    dy = _smooth_field(shape, sigma, rng) * (sd_mm / VOXEL_MM)
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    coords = [grid[0] + dx.astype(np.float32), grid[1] + dy.astype(np.float32), grid[2]]
    warped = ndi.map_coordinates(image, coords, order=1, mode="nearest")
    warped_mask = ndi.map_coordinates(mask.astype(np.float32), coords, order=1, mode="nearest") >= 0.5
    return warped.astype(np.float32), warped_mask.astype(mask.dtype)


def sample_patch(image, mask, size, rng, lesion_fraction=0.5):
    """A ``size``^3 window: centred on a random lesion voxel with probability
    ``lesion_fraction`` (when there is a lesion), else on a random brain voxel."""
    shape = np.array(image.shape)
    if size >= shape.min():
        return image, mask
    pool = np.flatnonzero(mask) if rng.uniform() < lesion_fraction else np.array([], int)
    if pool.size == 0:
        pool = np.flatnonzero(image)  # brain: everything else is 0
    if pool.size:
        centre = np.array(np.unravel_index(pool[rng.integers(pool.size)], image.shape))
    else:
        centre = rng.integers(0, shape)
    lo = np.clip(centre - size // 2, 0, shape - size)
    box = tuple(slice(a, a + size) for a in lo)
    return image[box], mask[box]


def augment(image, mask, rng, patch_size=0, lesion_fraction=0.5, flip=True, elastic=True,
            elastic_sd_mm=3.0, elastic_sigma_mm=15.0):
    """One training sample: patch (if ``patch_size``), flip, elastic deformation."""
    if patch_size:
        image, mask = sample_patch(image, mask, patch_size, rng, lesion_fraction)
    if flip:
        image, mask = flip_lr(image, mask, rng)
    if elastic:
        image, mask = elastic_xy(image, mask, rng, elastic_sd_mm, elastic_sigma_mm)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask, np.float32)
