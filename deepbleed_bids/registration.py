"""Rigid registration of a brain-extracted CT onto the DeepBleed template grid, and back.

Geometry: nibabel affines map voxels to RAS mm, ITK/ANTs physical space is LPS.
Images reach ANTs in memory (``ants.from_numpy`` with origin, spacing and
direction taken from the nibabel affine, flipped to LPS), never through ITK's
NIfTI reader, which may choose qform or sform differently from nibabel. Every
output is built from the reference's own affine and header, so its qform and
sform are the reference's.

Registration (issue 10, issue 13 point 2): a numpy global search, then mutual
information, all in this process.

* Global start: the 24 pairings of the two brains' principal axes, each scored as it
  stands; around the 2 best, 125 rotations (-40..40 deg in 20 deg steps about each axis;
  the search moves with the scan: pose invariance) x 3 head-foot shifts (-20, 0, +20 mm: a
  scan cut at the top or bottom has its brain's centre of mass displaced), about the brain
  centres of mass, scored on a 6 mm template grid; the 4 best distinct poses refined with
  Powell on that grid, the 2 best of those refined on a 3 mm grid (1/3 of its points,
  regular sampling), the best kept. Two pairings, not the one with the smallest rotation: a
  brain cut at the top or bottom can change which of its axes is longest (a benchmark case
  cut by 28 % at the bottom started 88 deg off and ended 98 mm off, unflagged).
* Search metric: Pearson r (ANTs' GC) of HU clipped to [0, 50] (a hematoma
  weighs no more than grey matter) at template points within 10 mm of its
  brain, the brain-extracted CT 0 elsewhere, and 0 outside the scanned field of
  view too (ITK's metrics skip such points, which let a cut scan slide 9-23 mm:
  see _Level.score).
* Fine stage (``FINE_MI``, fine="mi"): Powell on mutual information of HU
  (-20..100 HU, 32 bins, linear Parzen window: :class:`_MILevel`) at 6 then 3 mm, over
  the rigid parameters and a scale of the template along each of its axes about its
  brain's centre; the scales are then dropped (the rigid part maps the template brain's
  centre where the fit does) and recorded (``mi_scale``). A brain shaped unlike the
  template (the GE head fits it at 1.02 x 0.92 x 0.85: shorter front to back, much
  shorter head to foot) and fitted rigidly is centred on whatever part the scan holds, so
  a cut at the top or bottom moved the rigid optimum by 2-6 mm. With the scales fitted the
  rigid part no longer depends on the coverage (the 50 seed-0 benchmark cases within 2 mm:
  rigid fit and one pairing 84 %, one scale and two pairings 96 %, three scales and two
  pairings 98 %). The network still sees a rigidly aligned scan.
  The Pearson optimum follows the brain's outline: on the GE head it sat 10 deg of pitch
  from where ANTs' Mattes MI lands, and the ventricle prior carried with it put 16 of 25
  synthetic IVH volumes within target instead of 22.
* Threads: poses are scored side by side and each MI score's interpolation is
  split into 4 fixed chunks on the threads given (scipy's interpolation releases
  the GIL); every sum runs alone in a fixed order, so the transform is the same
  bits with any number of threads and on every re-run.
* Why not ANTs for the fine stage (fine="ants" keeps it, for the benchmark):
  its optimizer stops on a flat optimum wherever its convergence window fires
  (a 1e-9 change of the GE head's header moved its end point by 0.57 mm, an
  8 deg / 10 mm header motion by 1.0 mm), its results differ between CPUs, its
  multi-threaded sums differ between thread counts (0.36 mm), and it needs a
  child process (ITK reads its thread count once per process).

``search=False`` keeps the former single start (principal axes, then ANTs
Mattes MI at 6-3-1.5 mm in a child process: ITK reads
ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once per process) for the side-by-side in
benchmarks/bench_registration.py.

The transform file maps template (fixed) points to native (moving) points, as
ANTs' forward transforms do: used as is it pulls native data onto the template
grid, inverted it pulls template-grid data onto the native grid.
"""
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .nifti import check_affine, like, voxel_volume_ml  # noqa: F401 (registration.check_affine)
from .template import ORIGIN as TEMPLATE_ORIGIN  # noqa: F401 (registration.TEMPLATE_ORIGIN)
from .template import SHAPE as TEMPLATE_SHAPE  # noqa: F401
from .template import ZOOMS as TEMPLATE_ZOOMS
from .template import check_template_grid

INTERPOLATORS = ("linear", "nearestNeighbor", "genericLabel")
FINE_STAGES = ("mi", "ants", None)

# Registration settings (see the module docstring for why they differ from DeepBleed's).
MI_BINS = 64                    # DeepBleed: aff_sampling=64
SAMPLING_RATE = 0.5             # regular grid, jittered by the seeded generator
ITERATIONS = (1000, 500, 10)    # coarse levels run to convergence; short full-res polish
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (3.0, 1.5, 0.0)
MASK_MARGIN_MM = 10.0           # metric sampled only near the template brain
MOVING_VOXEL_MM = 1.0           # finer native voxels are block-averaged to about this
AXES_MIN_RATIO = 1.05           # principal axes closer than this (SD ratio) are ambiguous

# Global start search (numpy, before ANTs): the grid poses and their local refinement.
SEARCH_BLOCK = 4                # template blocks of 4 voxels: a 6 mm grid
SEARCH_MOVING_MM = 3.0          # moving brain block-averaged to about this
SEARCH_ANGLES_DEG = (-40.0, -20.0, 0.0, 20.0, 40.0)  # about each axis, around the brain centre
SEARCH_SHIFTS_MM = (-20.0, 0.0, 20.0)  # head-foot shifts of the grid (partial coverage)
SEARCH_PAIRINGS = 2             # principal-axes pairings (of 24) the grid goes around
SEARCH_REFINE = 4               # best distinct grid starts refined locally (Powell)
SEARCH_DISTINCT_MM = 10.0       # a refined start moves the brain by at least this from the others
FINE_STARTS = 2                 # best refined starts taken to the 3 mm grid; best final kept
CLIP_HU = (0.0, 50.0)           # metric on clipped HU: blood weighs no more than grey matter
MI_HU = (-20.0, 100.0)          # numpy MI fine stage: the HU range binned
MI_BINS_NUMPY = 32
# The numpy fine stage (fine="mi"): Powell on mutual information at 6 then 3 mm (half the
# 3 mm points), from the search's pose.
FINE_MI = {"metric": "mutual-information", "bins": MI_BINS_NUMPY, "hu": list(MI_HU),
           "parzen": "linear", "sampling": "regular", "scale": "x, y, z (template axes), fitted then dropped",
           "levels": [{"grid_mm": 6.0, "moving_mm": 3.0, "smoothing_mm": 3.0, "stride": 1, "xtol": 0.2},
                      {"grid_mm": 3.0, "moving_mm": 1.5, "smoothing_mm": 1.5, "stride": 2, "xtol": 0.05}]}

# The numpy registration (global search and refinement), as recorded in the sidecar; and
# the former ANTs single-start settings (kept for the benchmark: register_rigid(search=False)).
SEARCH = {"metric": "pearson", "clip_hu": list(CLIP_HU), "sampling": "regular", "axes_pairings": SEARCH_PAIRINGS,
          "grid_mm": [6.0, 3.0, 3.0], "moving_mm": [SEARCH_MOVING_MM, 1.5, 1.5],
          "smoothing_mm": [0.0, 1.5, 1.5], "sampling_stride": [1, 3, 1],
          "optimizer": "powell", "xtol": [0.5, 0.1, 0.05]}
# ANTs fine stage after the numpy search: Mattes MI at 3 and 1.5 mm from the found pose. On the
# real GE head the numpy optimum (Pearson of 0-50 HU on a 3 mm grid) sat 10 deg of pitch from
# where ANTs' MI lands from any start (single start, search start), with a worse fit of the
# template brain (Dice 0.870 vs 0.877): the published network was trained on ANTs alignments.
# One 3 mm level: from the search's pose it converges in well under 200 iterations; a 1.5 mm
# level moved the GE head's result by 0.45 mm and cost 5 of its 9 CPU s.
FINE = {"metric": "mattes", "bins": MI_BINS, "sampling_rate": SAMPLING_RATE,
        "iterations": (200,), "shrink_factors": (2,), "smoothing_mm": (1.5,)}
SINGLE_START = {"metric": "mattes", "bins": MI_BINS, "sampling_rate": SAMPLING_RATE,
                "iterations": ITERATIONS, "shrink_factors": SHRINK_FACTORS,
                "smoothing_mm": SMOOTHING_MM}

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _name(path, default):
    return str(path) if path is not None else default


def _fmt(values, digits=4):
    return str(tuple(round(float(v), digits) for v in values))


def _affine(img):
    """The image's voxel-to-RAS affine; nibabel leaves .affine None for images built from a header."""
    return np.asarray(img.affine if img.affine is not None else img.header.get_best_affine(), float)


# ------------------------------------------------------------------ conversion


def _ants_geometry(affine):
    """origin, spacing, direction (LPS) of a nibabel RAS affine."""
    lps = _LPS @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return lps[:3, 3].tolist(), spacing.tolist(), lps[:3, :3] / spacing


def _to_ants(data, affine):
    import ants

    origin, spacing, direction = _ants_geometry(affine)
    return ants.from_numpy(np.asarray(data, dtype=np.float32), origin=origin,
                           spacing=spacing, direction=direction)


def _like(data, ref):
    """``data`` as a NIfTI image with exactly ``ref``'s affine, qform and sform."""
    img = like(data, ref)
    img.header["cal_min"] = img.header["cal_max"] = 0  # the reference's display range is not ours
    return img


def _resample(image, fixed_affine, fixed_shape, transform, invert, interpolation):
    # In-process: ITK's thread count here is the process's, but resampling gives the
    # same voxels whatever it is, so no child process is needed.
    import ants

    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {INTERPOLATORS}, not {interpolation!r}")
    if not Path(transform).is_file():
        raise InputError(f"{transform}: transform file not found; run register_rigid first.")
    check_affine(image)
    data = np.asanyarray(image.dataobj)
    if data.ndim != 3:
        raise InputError(f"expected a 3-D image, got shape {data.shape}")
    # The fixed image only gives the grid; it must be float, ANTs casts the output to its type.
    fixed = _to_ants(np.zeros(fixed_shape, np.float32), fixed_affine)
    out = ants.apply_transforms(fixed, _to_ants(data, _affine(image)), [str(transform)],
                                interpolator=interpolation, whichtoinvert=[invert],
                                singleprecision=True).numpy()
    if interpolation != "linear" and np.issubdtype(data.dtype, np.integer):
        return np.rint(out).astype(data.dtype)  # labels and HU come back exactly
    return out.astype(np.float32, copy=False)


def to_template(native, template, transform, interpolation="nearestNeighbor"):
    """Resample a native-space image onto the template grid (result has the template's header)."""
    check_template_grid(template)
    out = _resample(native, _affine(template), template.shape[:3], transform, False, interpolation)
    return _like(out, template)


def to_native(template_space, reference, transform, interpolation="linear"):
    """Resample a template-grid image onto the reference's native grid (and header)."""
    check_template_grid(template_space)
    check_affine(reference)
    out = _resample(template_space, _affine(reference), reference.shape[:3], transform, True,
                    interpolation)
    return _like(out, reference)


# ---------------------------------------------------------------- registration


def _block_mean(data, affine, zooms):
    """Average blocks of voxels finer than MOVING_VOXEL_MM (a voxel-space step: pose-independent)."""
    return _block_mean_by(data, affine, [max(1, int(MOVING_VOXEL_MM // z)) for z in zooms])


def _principal_frame(mask, affine):
    """Centre (LPS mm), SDs and axes of the non-zero voxels of a mask."""
    lps = _LPS @ affine
    ijk = np.array(np.nonzero(mask), dtype=float)
    xyz = lps[:3, :3] @ ijk + lps[:3, 3:4]
    centre = xyz.mean(axis=1)
    xyz -= centre[:, None]
    # Elementwise sums, not a BLAS product: the same bits whatever BLAS's thread count.
    cov = np.array([[np.sum(xyz[i] * xyz[j]) for j in range(3)] for i in range(3)]) / xyz.shape[1]
    var, axes = np.linalg.eigh(cov)
    return centre, np.sqrt(np.maximum(var, 0)), axes


def _axes_pairings(moving_mask, moving_affine, fixed_mask, fixed_affine):
    """The proper rotations (LPS, fixed->moving) that pair the principal axes of the two brains,
    smallest first (the first is :func:`_initial_pose`'s); none if the moving brain's axes are
    ambiguous. A brain cut at the top or bottom can swap which axis is longest, so the pairing
    with the smallest rotation is not always the right one (88 deg off on a benchmark case)."""
    _, _, vf = _principal_frame(fixed_mask, fixed_affine)
    _, sd, vm = _principal_frame(moving_mask, moving_affine)
    if not np.all(sd[1:] / np.maximum(sd[:-1], 1e-9) >= AXES_MIN_RATIO):
        return []
    candidates = [(vm[:, perm] * signs) @ vf.T
                  for perm in itertools.permutations(range(3))
                  for signs in itertools.product((1, -1), repeat=3)]
    candidates = [c for c in candidates if np.linalg.det(c) > 0]
    order = sorted(range(len(candidates)), key=lambda k: (-np.trace(candidates[k]), k))
    return [candidates[k] for k in order]


def _initial_pose(moving_mask, moving_affine, fixed_mask, fixed_affine):
    """Fixed->moving rigid map (LPS 4x4) that aligns brain centres and principal axes.

    Axes are paired by the smallest overall rotation, so a head is never
    turned over; if the moving brain's axes are ambiguous only centres are aligned.
    """
    cf, _, _ = _principal_frame(fixed_mask, fixed_affine)
    cm, _, _ = _principal_frame(moving_mask, moving_affine)
    pairings = _axes_pairings(moving_mask, moving_affine, fixed_mask, fixed_affine)
    rot = pairings[0] if pairings else np.eye(3)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = cm - rot @ cf
    return pose


def _rotation_deg(matrix):
    return float(np.degrees(np.arccos(np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1, 1))))


def _ras_pose(rot, shift, fixed_centre, moving_centre):
    """Fixed->moving RAS map: rotate about the fixed brain centre, land on the moving one + shift."""
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = moving_centre + shift - rot @ fixed_centre
    return pose


def _rotation(angles_deg):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.radians(angles_deg)).as_matrix()


def _grid_rotation(angles_deg):
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


def _template_samples(fixed, fixed_affine, margin, block, stride):
    """Points (RAS mm, 3 x N) and values of the template on a ``block``-voxel grid within
    the metric margin, every ``stride``-th one (regular sampling: deterministic)."""
    f, f_aff = _block_mean_by(fixed, fixed_affine, (block,) * 3)
    inside = _block_mean_by(margin.astype(np.float32), fixed_affine, (block,) * 3)[0] >= 0.5
    ijk = np.array(np.nonzero(inside), float)
    return (f_aff[:3, :3] @ ijk + f_aff[:3, 3:4])[:, ::stride], f[inside][::stride]


def _moving_grid(moving, moving_affine, moving_mm, smooth_mm):
    """The moving brain block-averaged to about ``moving_mm``, smoothed by ``smooth_mm``;
    with its RAS-to-voxel affine."""
    zooms = np.linalg.norm(moving_affine[:3, :3], axis=0)
    blocks = [max(1, int(round(moving_mm / z))) for z in zooms]
    m, m_aff = _block_mean_by(moving, moving_affine, blocks)
    if smooth_mm > 0:
        m = ndi.gaussian_filter(m, smooth_mm / np.linalg.norm(m_aff[:3, :3], axis=0))
    return m, np.linalg.inv(m_aff)


def _voxels(inv_moving, pose, points):
    """Moving voxel coordinates of template points under a fixed->moving RAS pose."""
    # Elementwise, not BLAS: threaded BLAS on 3 x N products is slow and load-dependent.
    vox = inv_moving @ pose
    return sum(vox[:3, k:k + 1] * points[k] for k in range(3)) + vox[:3, 3:4]


class _Level:
    """Pearson r of HU between the template and the moving brain at one resolution.

    Fixed points: template voxels of a ``block``-voxel grid within MASK_MARGIN_MM of its
    brain; moving: the brain block-averaged to about ``moving_mm`` and smoothed by
    ``smooth_mm``. Both are clipped to CLIP_HU, so a hematoma (40-100 HU) weighs no more
    than grey matter does. Sums in float64, single thread, in a fixed order: the same
    score whatever the machine's thread count.
    """

    def __init__(self, fixed, fixed_affine, margin, moving, moving_affine, block, moving_mm,
                 smooth_mm=0.0, stride=1):
        self.points, values = _template_samples(np.clip(fixed, *CLIP_HU), fixed_affine, margin,
                                                block, stride)
        self.values = values.astype(np.float64)
        self.values -= self.values.mean()
        self.f_ss = float(np.sum(self.values * self.values))
        m, self.inv_moving = _moving_grid(np.clip(moving, *CLIP_HU), moving_affine, moving_mm,
                                          smooth_mm)
        self.moving = m.astype(np.float32)

    def score(self, pose):
        """Pearson r between template and moving brain under a fixed->moving RAS pose."""
        ijk = _voxels(self.inv_moving, pose, self.points)
        # Every point counts, 0 (no brain) outside the scanned field of view. Unlike
        # ITK's metrics (unscanned points do not count), this cannot gain by moving hard
        # parts of the template out of a scan cut at the top or bottom: measured on
        # benchmark cases cut by 20-30 %, the true pose scored below a pose 9-23 mm off
        # when unscanned points were left out, above it when they count as 0.
        m = ndi.map_coordinates(self.moving, ijk, order=1, mode="constant", cval=0.0,
                                prefilter=False).astype(np.float64)
        m -= m.mean()
        f = self.values
        norm = np.sqrt(np.sum(m * m) * self.f_ss)
        return float(np.sum(f * m) / norm) if norm > 0 else -1.0


class _MILevel:
    """Mutual information of HU between the template and the moving brain (numpy, Mattes-like).

    Fixed: template voxels of a ``block``-voxel grid within MASK_MARGIN_MM of its brain,
    binned once. Moving: the brain-extracted CT (0 outside the brain and outside the
    scanned field of view), block-averaged to about ``moving_mm``, smoothed by
    ``smooth_mm``, linearly interpolated, its value shared between the two nearest bins
    (a linear Parzen window: the metric is continuous in the pose). Fixed and moving
    ranges: MI_HU. Sums in a fixed order, single-threaded: the same value on every machine.
    """

    def __init__(self, fixed, fixed_affine, margin, moving, moving_affine, block, moving_mm,
                 smooth_mm=0.0, bins=MI_BINS_NUMPY, stride=1):
        self.bins = int(bins)
        self.points, f = _template_samples(fixed, fixed_affine, margin, block, stride)
        lo, hi = MI_HU
        fb = np.clip((f - lo) / (hi - lo) * (self.bins - 1), 0, self.bins - 1)
        self.fixed_bin = np.rint(fb).astype(np.int64) * self.bins
        m, self.inv_moving = _moving_grid(moving, moving_affine, moving_mm, smooth_mm)
        self.moving = np.clip((m - lo) / (hi - lo) * (self.bins - 1), 0, self.bins - 1.000001)
        self.moving = self.moving.astype(np.float32)
        self.zero = np.float32((0.0 - lo) / (hi - lo) * (self.bins - 1))  # "no brain"

    CHUNKS = 4  # fixed, whatever the threads: the sums always run in the same order

    def score(self, pose, pool=None):
        ijk = _voxels(self.inv_moving, pose, self.points)
        parts = np.array_split(ijk, self.CHUNKS, axis=1)
        sample = lambda c: ndi.map_coordinates(self.moving, c, order=1, mode="constant",  # noqa: E731
                                               cval=self.zero, prefilter=False)
        u = np.concatenate((pool or _pool(1)).map(sample, parts)).astype(np.float64)
        low = np.floor(u)
        w = u - low
        idx = self.fixed_bin + low.astype(np.int64)
        n = self.bins * self.bins
        joint = np.bincount(idx, weights=1.0 - w, minlength=n + 1)[:n]
        joint += np.bincount(idx + 1, weights=w, minlength=n + 1)[:n]
        joint = joint.reshape(self.bins, self.bins) / u.size
        pf = joint.sum(axis=1, keepdims=True)
        pm = joint.sum(axis=0, keepdims=True)
        nz = joint > 0
        return float(np.sum(joint[nz] * np.log(joint[nz] / (pf @ pm)[nz])))


def _moved(base, params, centre):
    """``base`` (fixed->moving RAS) after a rotation (rotation vector, deg) about the fixed
    brain centre and a shift (mm), both in the fixed (template) frame: the same search
    whatever the scan's pose. Parameters 7-9 scale the template along its axes about that
    centre (percent, log scale): the MI stage fits them and keeps only the rigid part (see
    :data:`FINE_MI`)."""
    step = np.eye(4)
    step[:3, :3] = _rotation(params[:3])
    if len(params) > 6:  # scales along the template's axes, applied before the rotation
        step[:3, :3] = step[:3, :3] * np.exp(np.asarray(params[6:]) / 100.0)
    step[:3, 3] = centre + np.asarray(params[3:6]) - step[:3, :3] @ centre
    return base @ step


def _refine(level, base, centre, xtol, pool=None, start=None):
    """Local Powell search from ``base``: (pose, score, parameters); ``pool`` for levels that
    split a score; ``start``: the parameters to start from (6, or 9 with the scales)."""
    from scipy.optimize import minimize

    score = level.score if pool is None else (lambda pose: level.score(pose, pool))
    x0 = np.zeros(6) if start is None else np.asarray(start, float)
    res = minimize(lambda p: -score(_moved(base, p, centre)), x0, method="Powell",
                   options={"xtol": xtol, "ftol": 1e-6, "maxfev": 250 * len(x0)})
    return _moved(base, res.x, centre), -float(res.fun), res.x


def _mean_disp(a, b, points):
    """Mean distance (mm) between two fixed->moving maps over fixed points (3 x N)."""
    d = (a[:3, :3] - b[:3, :3]) @ points + (a[:3, 3:4] - b[:3, 3:4])
    return float(np.sqrt((d * d).sum(axis=0)).mean())


def _align(fixed, fixed_affine, margin, moving, moving_affine, axes_rot=None, threads=1,
           finish="pearson"):
    """Global search and local refinement, all in numpy: (pose RAS fixed->moving, info).

    1. Grid: 125 rotations (SEARCH_ANGLES_DEG about each axis, around each of the
       SEARCH_PAIRINGS best principal-axes pairings ``axes_rot`` (a list of RAS rotations;
       each scored as it stands), so the grid moves with the scan) x SEARCH_SHIFTS_MM along
       the template's head-foot axis (a scan cut at the top or bottom has its centre of mass
       displaced) about the brains' centres of mass, scored on a 6 mm template grid.
    2. The SEARCH_REFINE best distinct grid poses refined with Powell on that grid.
    3. The FINE_STARTS best of those refined on a 3 mm grid; the best kept (a wrong
       start can win on the coarse grid only).
    4. ``finish``: "pearson", a Powell polish on all 3 mm points; "mi", Powell on mutual
       information and a scale (:class:`_MILevel`, :data:`FINE_MI`'s levels), the rigid
       part kept; None: neither (ANTs follows).
    ``threads`` workers score the grid and refine the starts side by side; every score is
    computed alone, in the same order, so the pose is the same bits whatever their number.
    info: start name, scores, and how far the runner-up landed (``runner_up_mm``).
    """
    with _pool(threads) as pool:
        return _align_in(pool, fixed, fixed_affine, margin, moving, moving_affine, axes_rot, finish)


class _pool:
    """A thread pool's ordered map (scipy's interpolation releases the GIL), or plain map."""

    def __init__(self, threads):
        from concurrent.futures import ThreadPoolExecutor

        self.ex = ThreadPoolExecutor(int(threads)) if int(threads) > 1 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.ex is not None:
            self.ex.shutdown()

    def map(self, fn, items):
        return list(self.ex.map(fn, items) if self.ex is not None else map(fn, items))


def _align_in(pool, fixed, fixed_affine, margin, moving, moving_affine, axes_rot, finish):
    t0 = time.perf_counter()
    bases = [np.eye(3)] if axes_rot is None or not len(axes_rot) else list(np.reshape(axes_rot, (-1, 3, 3)))
    fixed_centre = _centre_ras(fixed != 0, fixed_affine)
    moving_centre = _centre_ras(moving != 0, moving_affine)
    coarse = _Level(fixed, fixed_affine, margin, moving, moving_affine, 4, SEARCH_MOVING_MM)

    def at(rot, dz):
        return _moved(_ras_pose(rot, 0, fixed_centre, moving_centre), (0, 0, 0, 0, 0, dz), fixed_centre)

    pairings = list(range(len(bases)))
    if len(bases) > SEARCH_PAIRINGS:
        # each axis pairing scored as it stands; the grid goes around the best ones only
        pre = pool.map(lambda rot: max(coarse.score(at(rot, dz)) for dz in SEARCH_SHIFTS_MM), bases)
        pairings = sorted(pairings, key=lambda k: (-pre[k], k))[:SEARCH_PAIRINGS]
    starts = []
    for k in pairings:
        for a, b, c in itertools.product(SEARCH_ANGLES_DEG, repeat=3):
            rot = bases[k] @ _grid_rotation((a, b, c))
            for dz in SEARCH_SHIFTS_MM:
                starts.append((f"axes{k}+({a:+.0f},{b:+.0f},{c:+.0f})" + (f"+z{dz:+.0f}mm" if dz else ""),
                               at(rot, dz)))
    scores = pool.map(coarse.score, [p for _, p in starts])
    scored = sorted(((sc, i) for i, sc in enumerate(scores)), key=lambda t: (-t[0], t[1]))
    check = coarse.points[:, ::7]
    chosen = []
    for sc, i in scored:
        pose = starts[i][1]
        if all(_mean_disp(pose, starts[j][1], check) >= SEARCH_DISTINCT_MM for _, j in chosen):
            chosen.append((sc, i))
        if len(chosen) == SEARCH_REFINE:
            break
    done = pool.map(lambda c: _refine(coarse, starts[c[1]][1], fixed_centre, 0.5)[:2], chosen)
    refined = [{"pose": pose, "score": score, "grid_score": sc, "start": starts[i][0]}
               for (sc, i), (pose, score) in zip(chosen, done)]
    refined.sort(key=lambda r: -r["score"])
    grid_s = time.perf_counter() - t0
    medium = _Level(fixed, fixed_affine, margin, moving, moving_affine, 2, 1.5, 1.5, stride=3)
    picked = []
    for r in refined:
        if len(picked) == FINE_STARTS:
            break
        if any(_mean_disp(r["pose"], f["pose"], check) < 2.0 for f in picked):
            continue  # the same basin: refining it again gives the same pose
        picked.append(r)
    done = pool.map(lambda r: _refine(medium, r["pose"], fixed_centre, 0.1)[:2], picked)
    finals = [{**r, "coarse_pose": r["pose"], "pose": pose, "medium_score": score}
              for r, (pose, score) in zip(picked, done)]
    finals.sort(key=lambda r: -r["medium_score"])
    best = finals[0]
    pose, score = best["pose"], best["medium_score"]
    mi = {}
    if finish == "pearson":
        fine = _Level(fixed, fixed_affine, margin, moving, moving_affine, 2, 1.5, 1.5)
        pose, score, _ = _refine(fine, best["pose"], fixed_centre, 0.05)
    elif finish == "mi":
        t_mi = time.perf_counter()
        params = np.zeros(9)  # the rigid pose, then the template's scales along x, y, z
        for lv in FINE_MI["levels"]:
            level = _MILevel(fixed, fixed_affine, margin, moving, moving_affine,
                             int(round(lv["grid_mm"] / TEMPLATE_ZOOMS[0])), lv["moving_mm"],
                             lv["smoothing_mm"], FINE_MI["bins"], lv["stride"])
            _, mi_score, params = _refine(level, best["pose"], fixed_centre, lv["xtol"], pool, params)
        pose = _moved(best["pose"], params[:6], fixed_centre)  # the rigid part
        mi = {"mi_score": round(mi_score, 4), "mi_seconds": round(time.perf_counter() - t_mi, 2),
              # the template's size along its x, y, z that fitted this brain, about this centre (RAS)
              "mi_scale": [round(float(v), 4) for v in np.exp(params[6:] / 100.0)],
              "mi_scale_centre_mm": [round(float(v), 3) for v in fixed_centre]}
    others = [_mean_disp(pose, f["pose"], medium.points[:, ::4]) for f in finals[1:]]
    info = {"start": best["start"], "score": round(best["score"], 4),
            "grid_score": round(best["grid_score"], 4), "final_score": round(score, 4),
            "pairings": len(bases), "candidates": len(starts), "refined": len(refined),
            "fine_starts": len(finals),
            "runner_up_mm": round(min(others), 2) if others else None,
            "runner_up_score_gap": round(best["medium_score"] - finals[1]["medium_score"], 4)
            if len(finals) > 1 else None,
            "grid_seconds": round(grid_s, 2), **mi, "seconds": round(time.perf_counter() - t0, 2)}
    return pose, info


def _block_mean_by(data, affine, block):
    """Average ``block`` voxels along each axis (affine moved to the block centres)."""
    block = [int(k) for k in block]
    if block == [1, 1, 1]:
        return np.asarray(data, np.float32), affine
    pad = [(0, -n % k) for n, k in zip(data.shape, block)]
    d = np.pad(data, pad)
    shape = [(n // k, k) for n, k in zip(d.shape, block)]
    d = d.reshape([s for pair in shape for s in pair]).mean(axis=(1, 3, 5), dtype=np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(block)
    scale[:3, 3] = (np.array(block) - 1) / 2.0
    return d, affine @ scale


def _centre_ras(mask, affine):
    ijk = np.array(np.nonzero(mask), float)
    return affine[:3, :3] @ ijk.mean(axis=1) + affine[:3, 3]


def register_rigid(moving, template, out_prefix, seed=1, threads=1, search=True, fine="mi"):
    """Rigidly register a brain-extracted CT (0 outside the brain) to the template.

    Writes ``out_prefix + "0GenericAffine.mat"`` (ITK, template points -> native
    points) and returns {"transform", "similarity", "overlap", "coverage", "params"}
    (QC, computed here in numpy for every method): similarity: Pearson correlation of HU
    between the template and the registered brain where both are non-zero (higher is
    better); overlap: Dice of the two brain masks; coverage: share of the template brain
    inside the scanned field of view. search=True (default): the numpy global search on
    ``threads`` threads, the same pose whatever their number (params["global_search"]: the
    winning start, its scores, how far the runner-up start landed, the time).
    search=False: the former single principal-axes start and ANTs at 6-3-1.5 mm.
    fine="mi" (default): then Powell on mutual information in numpy (:data:`FINE_MI`);
    fine="ants": ANTs Mattes MI (:data:`FINE`) from the search's pose instead, in a child
    process with one ITK thread; fine=None: the search's pose as it is.
    """
    check_affine(moving)
    check_template_grid(template)
    if int(threads) < 1:
        raise ValueError("threads must be at least 1")
    data = np.asarray(moving.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise InputError(f"moving image: expected a 3-D CT, got shape {data.shape}")
    data = np.nan_to_num(data)
    brain = data != 0
    moving_affine = _affine(moving)
    zooms = np.linalg.norm(moving_affine[:3, :3], axis=0)
    volume_ml = brain.sum() * voxel_volume_ml(moving_affine)
    if volume_ml < 100:
        raise InputError(
            f"registration: the brain extraction kept only {volume_ml:.0f} mL (a head CT's brain is "
            "1000-2000 mL), so there is nothing to align to the template. Check that the image is a "
            "whole head CT in HU; for already brain-extracted input use --skull-stripped.")
    if np.mean(data[brain] < -100) > 0.05:
        raise InputError(
            "registration: more than 5 % of the extracted brain is below -100 HU (air or padding "
            "left inside the brain mask): registration needs a brain-extracted CT (0 outside the "
            "brain), so the brain extraction failed on this image. Check its HU values, or extract "
            "the brain yourself and use --skull-stripped.")

    fixed = np.nan_to_num(np.asarray(template.dataobj, dtype=np.float32))
    fixed_brain = fixed != 0
    margin = ndi.distance_transform_edt(~fixed_brain, sampling=TEMPLATE_ZOOMS) <= MASK_MARGIN_MM
    small, small_affine = _block_mean(data, moving_affine, zooms)
    start = time.perf_counter()
    settings = SEARCH if search else {**SINGLE_START, "sampling": "regular"}
    if fine not in FINE_STAGES:
        raise ValueError(f"fine must be one of {FINE_STAGES}, not {fine!r}")
    if search and fine == "ants":
        settings = {**SEARCH, "fine": {**FINE, "sampling": "regular", "threads": 1}}
    elif search and fine == "mi":
        settings = {**SEARCH, "fine": FINE_MI}
    params = {"transform": "Rigid", **{k: list(v) if isinstance(v, tuple) else v
                                        for k, v in settings.items()},
              "mask_margin_mm": MASK_MARGIN_MM,
              "moving_voxel_mm": [float(z) for z in np.linalg.norm(small_affine[:3, :3], axis=0)],
              "seed": int(seed), "threads": int(threads)}
    if search:
        pairings = _axes_pairings(small != 0, small_affine, fixed_brain, _affine(template))
        pose_ras, found = _align(fixed, _affine(template), margin, small, small_affine,
                                 axes_rot=[_LPS[:3, :3] @ r @ _LPS[:3, :3] for r in pairings],
                                 threads=threads,
                                 finish="mi" if fine == "mi" else "pearson")
        pose = _LPS @ pose_ras @ _LPS
        params["global_search"] = {**found, "angles_deg": list(SEARCH_ANGLES_DEG),
                                   "shifts_mm": list(SEARCH_SHIFTS_MM),
                                   "grid_mm": SEARCH_BLOCK * TEMPLATE_ZOOMS[0]}
        if fine != "ants":
            params["rotation_deg"] = round(_rotation_deg(pose), 2)
            out = Path(str(out_prefix) + "0GenericAffine.mat")
            out.parent.mkdir(parents=True, exist_ok=True)
            _write_transform(pose, out)
            result = _alignment_quality(fixed, _affine(template), small, small_affine, pose_ras)
            params["template_coverage"] = round(result["coverage"], 4)
            params["seconds"] = round(time.perf_counter() - start, 2)
            return {"transform": str(out), **result, "params": params}
        job = {**FINE, "seed": int(seed)}
        threads = 1
    else:
        pose = _initial_pose(small != 0, small_affine, fixed_brain, _affine(template))
        job = params
    params["initial_rotation_deg"] = round(_rotation_deg(pose), 2)
    # Re-pose the moving header by the start pose: ANTs then starts near identity.
    reposed_affine = _LPS @ np.linalg.inv(pose) @ _LPS @ small_affine

    out = Path(str(out_prefix) + "0GenericAffine.mat")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deepbleed-reg-") as tmp:
        np.savez(Path(tmp, "job.npz"), fixed=fixed, fixed_affine=_affine(template),
                 mask=margin.astype(np.float32), moving=small, moving_affine=reposed_affine,
                 pose=pose)
        Path(tmp, "job.json").write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in job.items()}))
        # the child must import this very package, also when it runs from a source tree
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(int(threads)),
                   ANTS_RANDOM_SEED=str(int(seed)),
                   PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
        code = "import sys; from deepbleed_bids.registration import _worker; _worker(sys.argv[1])"
        run = subprocess.run([sys.executable, "-c", code, tmp], env=env,
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"ANTs registration failed (exit {run.returncode}):\n"
                               f"{run.stderr[-2000:]}")
        result = json.loads(Path(tmp, "result.json").read_text())
        shutil.move(str(Path(tmp, "final.mat")), out)
    final = np.asarray(result["final"], float)
    params["rotation_deg"] = round(_rotation_deg(final), 2)
    params["ants_cpu_s"] = result["ants_cpu_s"]
    params["child_cpu_s"] = result["child_cpu_s"]
    # QC here, in numpy, from the child's matrix (this process need not import ANTs)
    found = _alignment_quality(fixed, _affine(template), small, small_affine, _LPS @ final @ _LPS)
    params["template_coverage"] = round(found["coverage"], 4)
    params["seconds"] = round(time.perf_counter() - start, 2)
    return {"transform": str(out), **found, "params": params}


def _write_transform(lps, path):
    """Write a 4x4 LPS fixed->moving map as an ITK affine transform file."""
    import ants

    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="double",
                                    dimension=3, matrix=lps[:3, :3], translation=lps[:3, 3])
    ants.write_transform(tx, str(path))


def _alignment_quality(fixed, fixed_affine, moving, moving_affine, pose):
    """QC of a fixed->moving RAS pose on the template grid: Pearson r of HU where both
    brains are non-zero ("similarity"), Dice of the brains ("overlap") and the share of
    the template brain inside the scanned field of view ("coverage")."""
    ijk = np.indices(fixed.shape, dtype=np.float32).reshape(3, -1)
    vox = np.linalg.inv(moving_affine) @ pose @ fixed_affine
    src = sum(vox[:3, k:k + 1] * ijk[k] for k in range(3)) + vox[:3, 3:4]
    warped = ndi.map_coordinates(moving, src, order=1, mode="constant", cval=0.0,
                                 prefilter=False).reshape(fixed.shape)
    f = fixed
    both = (f != 0) & (warped != 0)
    corr = 0.0
    if both.sum() > 100:
        a = f[both].astype(np.float64)
        b = warped[both].astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        corr = float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
    dice = 2.0 * both.sum() / max(1, (f != 0).sum() + (warped != 0).sum())
    # Share of the template brain inside the scanned field of view: a scan cut at the top
    # or bottom leaves the alignment of its missing part to the shape of the rest.
    top = np.array(moving.shape)[:, None] - 0.5
    scanned = np.all((src >= -0.5) & (src <= top), axis=0).reshape(fixed.shape)
    coverage = float(np.count_nonzero(scanned & (f != 0)) / max(1, np.count_nonzero(f)))
    return {"similarity": corr, "overlap": float(dice),
            "coverage": coverage}


def _matrix(transform_file):
    """4x4 LPS map of an ITK affine transform file."""
    import ants

    tx = ants.read_transform(str(transform_file))
    p = np.asarray(tx.parameters, float)
    centre = np.asarray(tx.fixed_parameters, float)
    mat = np.eye(4)
    mat[:3, :3] = p[:9].reshape(3, 3)
    mat[:3, 3] = p[9:] + centre - mat[:3, :3] @ centre
    return mat


def _worker(tmp):
    """Child process: run ANTs on the job in ``tmp`` and write final.mat and result.json."""
    import ants

    cpu = time.process_time()
    job = np.load(Path(tmp, "job.npz"))
    params = json.loads(Path(tmp, "job.json").read_text())
    fixed = _to_ants(job["fixed"], job["fixed_affine"])
    moving = _to_ants(job["moving"], job["moving_affine"])
    mask = _to_ants(job["mask"], job["fixed_affine"])
    # The ANTs output prefix lives in its own folder: ants.registration globs prefix*.
    reg = ants.registration(
        fixed=fixed, moving=moving, type_of_transform="Rigid", outprefix=str(Path(tmp, "ants_")),
        mask=mask, aff_metric=params["metric"], aff_sampling=params["bins"],
        aff_random_sampling_rate=params["sampling_rate"],
        aff_iterations=tuple(params["iterations"]),
        aff_shrink_factors=tuple(params["shrink_factors"]),
        aff_smoothing_sigmas=tuple(params["smoothing_mm"]), smoothing_in_mm=True)
    ants_cpu = time.process_time() - cpu
    final = job["pose"] @ _matrix(reg["fwdtransforms"][0])
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="double",
                                    dimension=3, matrix=final[:3, :3], translation=final[:3, 3])
    ants.write_transform(tx, str(Path(tmp, "final.mat")))

    Path(tmp, "result.json").write_text(json.dumps(
        {"final": final.tolist(), "ants_cpu_s": round(ants_cpu, 2),
         "child_cpu_s": round(time.process_time() - cpu, 2)}))
