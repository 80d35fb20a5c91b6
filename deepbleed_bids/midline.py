"""Midline shift on the native scan: the septum pellucidum (or third ventricle) against the
mid-sagittal plane of the skull.

1. Mid-sagittal plane (MSP) of the skull: the plane about which the bone (HU > 300 within
   20 mm of the brain, ~1 mm grid) is most symmetric. Each bone point is mirrored about a
   candidate plane and the mean distance of the mirrored points to the nearest bone (capped
   at 15 mm) is minimised: a coarse search over tilts (+-8 deg) and offsets (+-16 mm) on a
   fifth of the points, then Powell on all of them. Start: the template's mid-sagittal plane carried through the rigid transform
   when given, else the scanner's left-right axis through the brain's centroid. Bone does
   not move with a mass effect, so the plane is that of the head before any shift.
2. Midline structures: a slab +-30 mm about the plane is resampled on a plane-aligned
   0.5 mm (across) x 1 mm grid within the ventricle zone (the ventricles given, dilated by
   10 mm). Along every line across the plane, ventricular CSF (smoothed HU < 15, connected to
   the given ventricles: not the interhemispheric fissure beside the falx) forms runs;
   the septum pellucidum is a gap of 0.5-6 mm between two runs of >= 2 mm each (the two
   frontal horns / bodies). Where fewer than ``MIN_LINES`` such gaps exist (septum
   effaced or thick slices), isolated CSF slits 1.5-8 mm wide (the third ventricle) are
   used. One midpoint per line (the one nearest the median of all) and only those within
   5 mm of that median are kept (gaps between a ventricle and a sulcus are outliers); the
   shift is their median signed distance from the plane.

Sign: positive towards the patient's right (the plane normal points to world +x, RAS).
An ESTIMATE with limits: needs the frontal horns or the third ventricle in the field of
view; a septum pushed more than 25 mm, or ventricles fully effaced, give no value.

Pure numpy/scipy: no nipype.
"""
import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize

from .nifti import voxel_sizes
from .qc import distance_mm

BONE_HU = 300.0
CSF_HU = 15.0
MIN_LINES = 5
MAX_SHIFT_MM = 25.0
CONSENSUS_MM = 5.0


def _coarse(shape, affine, target_mm=1.0):
    zooms = voxel_sizes(affine)
    step = np.maximum(1, np.floor(target_mm / zooms)).astype(int)
    sl = tuple(slice(0, None, s) for s in step)
    caff = np.asarray(affine, float) @ np.diag([*step, 1.0])
    return sl, step, caff


def _world(affine, ijk):
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _centroid(mask):
    """Mean voxel index of a mask, from its axis projections (np.argwhere lists every voxel)."""
    total = mask.sum()
    return np.array([(np.arange(n) * mask.sum(axis=tuple(a for a in range(mask.ndim) if a != ax))).sum() / total
                     for ax, n in enumerate(mask.shape)])


def reflect(points, normal, offset):
    """Mirror world points about the plane {x : normal . x = offset}."""
    points = np.asarray(points, float)
    return points - 2.0 * (points @ normal - offset)[..., None] * normal


def plane_from_transform(transform):
    """The template's mid-sagittal plane (x = 0, MNI) in the scan's world: (normal, offset)."""
    from .registration import _matrix

    lps = _matrix(transform)  # template points -> native points, LPS
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    ras = flip @ lps @ flip
    normal = ras[:3, :3] @ np.array([1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    point = ras[:3, 3]  # the image of the template origin (on x = 0)
    return normal, float(normal @ point)


def _orient(normal, offset):
    if normal[0] < 0:
        return -normal, -offset
    return normal, offset


def _basis(normal):
    helper = np.array([0.0, 1.0, 0.0]) if abs(normal[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = helper - (helper @ normal) * normal
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def skull_plane(hu, affine, brain, init=None, max_points=20000, seed=0):
    """Mid-sagittal plane of the skull: (normal, offset, info); normal points to world +x."""
    affine = np.asarray(affine, float)
    sl, step, caff = _coarse(hu.shape, affine)
    czooms = voxel_sizes(caff)
    smooth = ndi.uniform_filter(np.asarray(hu, np.float32), size=step)[sl]
    b = np.asarray(brain, bool)[sl]
    near = distance_mm(~b, czooms) <= 20.0
    bone = (smooth > BONE_HU) & near
    if bone.sum() < 500 or not b.any():
        raise ValueError("too little skull in the image to find the mid-sagittal plane")
    dist = np.minimum(distance_mm(~bone, czooms), 15.0).astype(np.float32)
    ijk = np.argwhere(bone).astype(float)
    rng = np.random.default_rng(seed)
    if len(ijk) > max_points:
        ijk = ijk[rng.choice(len(ijk), max_points, replace=False)]
    pts = _world(caff, ijk)
    inv = np.linalg.inv(caff)
    centre = _world(caff, _centroid(b))
    if init is None:
        n0, d0 = np.array([1.0, 0.0, 0.0]), float(centre[0])
    else:
        n0, d0 = _orient(np.asarray(init[0], float) / np.linalg.norm(init[0]), float(init[1]))
    e1, e2 = _basis(n0)
    c0 = float(n0 @ centre)  # offsets are measured at the brain's centre

    def plane(p):
        a, b_, off = np.deg2rad(p[0]), np.deg2rad(p[1]), p[2]
        n = n0 + np.tan(a) * e1 + np.tan(b_) * e2
        n /= np.linalg.norm(n)
        # the plane passes through the point of the initial plane nearest the centre, moved by off
        anchor = centre - (c0 - d0) * n0 + off * n0
        return n, float(n @ anchor)

    # mirroring is affine: the mirrored voxel of x is vox(x) - 2 (n.x - d) inv3 n, so the
    # points' voxel coordinates are computed once, not per candidate plane
    vox_pts = (pts @ inv[:3, :3].T + inv[:3, 3]).T  # (3, N)

    def cost(p, sub=slice(None)):
        n, d = plane(p)
        vox = vox_pts[:, sub] - np.outer(2.0 * inv[:3, :3] @ n, pts[sub] @ n - d)
        return float(ndi.map_coordinates(dist, vox, order=1, mode="constant", cval=15.0).mean())

    # coarse to fine: the 425-plane grid on every 5th point (a mean over 4,000 bone points
    # ranks the starts as 20,000 do), then Powell on all points from the best start
    coarse = slice(None, None, 5)
    best = min(((a, b_, o) for a in (-8, -4, 0, 4, 8) for b_ in (-8, -4, 0, 4, 8)
                for o in np.arange(-16, 17, 2.0)), key=lambda p: cost(p, coarse))
    res = minimize(cost, np.array(best, float), method="Powell",
                   options={"xtol": 0.05, "ftol": 1e-4, "maxfev": 400})
    n, d = plane(res.x)
    n, d = _orient(n, d)
    return n, d, {"SymmetryCost": round(float(res.fun), 3), "BonePoints": len(pts),
                  "Start": "template plane (rigid transform)" if init is not None else "scanner axes",
                  "TiltFromStartDeg": round(float(np.degrees(np.arccos(min(1.0, abs(n @ n0))))), 2)}


def _line_candidates(lines, us, vs, ws, du):
    """Septum gaps and third-ventricle slits on every line across the plane (axis 0 of
    ``lines``): lists of (centre u, v, w, j, k) in line order (j, k), then along u.

    Vectorised over all lines at once: the runs of every line come from one diff."""
    n_u = lines.shape[0]
    runs_first = np.moveaxis(lines, 0, -1)  # (v, w, u): nonzero() then walks line by line
    padded = np.zeros(runs_first.shape[:2] + (n_u + 2,), np.int8)
    padded[..., 1:-1] = runs_first
    j, k, edge = np.nonzero(np.diff(padded, axis=-1))
    j, k, a0, a1 = j[::2], k[::2], edge[::2], edge[1::2]  # each run: start, stop (exclusive)
    same = (j[1:] == j[:-1]) & (k[1:] == k[:-1])  # run i and i+1 on one line
    min_run = int(round(2.0 / du))
    septum, slits = [], []
    # septum: a 0.5-6 mm gap between two runs of >= 2 mm on one line
    gap = (a0[1:] - a1[:-1]) * du
    centre = 0.5 * (us[np.maximum(a1[:-1] - 1, 0)] + us[np.minimum(a0[1:], n_u - 1)])
    ok = same & (gap >= 0.5) & (gap <= 6.0) & (a1[:-1] - a0[:-1] >= min_run) & (a1[1:] - a0[1:] >= min_run) \
        & (np.abs(centre) <= MAX_SHIFT_MM)
    for i in np.flatnonzero(ok):
        septum.append((centre[i], vs[j[i]], ws[k[i]], j[i], k[i]))
    # slits: a 1.5-8 mm run with no other CSF within 5 mm on either side
    free = int(round(5.0 / du))
    width = (a1 - a0) * du
    centre = 0.5 * (us[a0] + us[a1 - 1])
    prev_end = np.where(np.concatenate([[False], same]), np.concatenate([[0], a1[:-1]]), -n_u)
    next_start = np.where(np.concatenate([same, [False]]), np.concatenate([a0[1:], [0]]), 2 * n_u)
    ok = (width >= 1.5) & (width <= 8.0) & (np.abs(centre) <= MAX_SHIFT_MM) & (a0 >= free) \
        & (a1 + free <= n_u) & (prev_end <= a0 - free) & (next_start >= a1 + free)
    for i in np.flatnonzero(ok):
        slits.append((centre[i], vs[j[i]], ws[k[i]], j[i], k[i]))
    return septum, slits


def _consensus(found, keep_mm=CONSENSUS_MM):
    """One midpoint per line, the one nearest the median of all, and only those within keep_mm
    of it: gaps between a ventricle and a sulcus or a cistern are outliers."""
    if not found:
        return []
    m0 = float(np.median([f[0] for f in found]))
    best = {}
    for f in found:
        key = (f[3], f[4])
        if key not in best or abs(f[0] - m0) < abs(best[key][0] - m0):
            best[key] = f
    return [f for f in best.values() if abs(f[0] - m0) <= keep_mm]


def midline_points(hu, affine, brain, ventricles, normal, offset, du=0.5, dv=1.0, zone_mm=10.0):
    """Septum / third-ventricle midpoints: (signed distances from the plane (mm), world points, kind)."""
    affine = np.asarray(affine, float)
    zooms = voxel_sizes(affine)
    vent = np.asarray(ventricles, bool)
    empty = (np.zeros(0), np.zeros((0, 3)), "none")
    if not vent.any():
        return empty
    idx = np.argwhere(vent)
    lo, hi = np.maximum(idx.min(0) - np.ceil(zone_mm / zooms) - 1, 0).astype(int), \
        np.minimum(idx.max(0) + np.ceil(zone_mm / zooms) + 2, vent.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub_aff = affine.copy()
    sub_aff[:3, 3] = _world(affine, lo.astype(float))
    zone = distance_mm(~vent[box], zooms) <= zone_mm
    smooth = ndi.gaussian_filter(np.asarray(hu, np.float32)[box], 0.6 / zooms)
    csf = zone & np.asarray(brain, bool)[box] & (smooth < CSF_HU) & (smooth > -20)
    # only CSF connected to the ventricles: the interhemispheric fissure beside the falx (which
    # does not shift) and sulci would otherwise give gaps too
    lab, n = ndi.label(csf)
    if n:
        keep = np.unique(lab[csf & vent[box]])
        csf = np.isin(lab, keep[keep > 0])
    e1, e2 = _basis(normal)
    # the extremes of a linear function over the zone are reached on its surface voxels
    corners = _world(sub_aff, np.argwhere(zone & ~ndi.binary_erosion(zone)))
    pv, pw = corners @ e1, corners @ e2
    us = np.arange(-30.0, 30.0 + du / 2, du)
    vs = np.arange(pv.min(), pv.max() + dv, dv)
    ws = np.arange(pw.min(), pw.max() + dv, dv)
    U, V, W = np.meshgrid(us, vs, ws, indexing="ij")
    world = (offset * normal)[:, None] + np.outer(normal, U.ravel()) + np.outer(e1, V.ravel()) \
        + np.outer(e2, W.ravel())
    inv = np.linalg.inv(sub_aff)
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    sampled = ndi.map_coordinates(csf.astype(np.uint8), vox, order=0, mode="constant", cval=0)
    lines = sampled.reshape(U.shape).astype(bool)  # (u, v, w)
    septum, slits = _line_candidates(lines, us, vs, ws, du)
    kind = "septum pellucidum"
    found = _consensus(septum)
    if len(found) < MIN_LINES:
        found, kind = _consensus(slits), "third ventricle"
    if len(found) < MIN_LINES:
        return empty
    arr = np.asarray(found, float)[:, :3]
    pts = (offset * normal)[None] + arr[:, :1] * normal + arr[:, 1:2] * e1 + arr[:, 2:3] * e2
    return arr[:, 0], pts, kind


def midline_shift(hu, affine, brain, ventricles, transform=None, plane=None):
    """The midline-shift record of one scan (see the module docstring)."""
    if plane is None:
        init = plane_from_transform(transform) if transform is not None else None
        normal, offset, plane_info = skull_plane(hu, affine, brain, init)
    else:
        normal, offset, plane_info = plane
    dist, pts, kind = midline_points(hu, affine, brain, ventricles, normal, offset)
    record = {"MidlineShift": None, "MidlineShiftUnits": "mm", "MidlineShiftDirection": None,
              "MidlineStructure": kind if len(dist) else None, "MidlineLines": len(dist),
              "MidSagittalPlane": {"Normal": [round(float(x), 5) for x in normal],
                                   "Offset": round(float(offset), 3), "Units": "mm, scanner RAS world",
                                   **plane_info}}
    if len(dist):
        shift = float(np.median(dist))
        point = pts[np.argmin(np.abs(dist - shift))]
        record.update(MidlineShift=round(abs(shift), 2),
                      MidlineShiftSigned=round(shift, 2),
                      MidlineShiftDirection="right" if shift > 0 else "left",
                      MidlineShiftSpread=round(float(np.percentile(dist, 75) - np.percentile(dist, 25)), 2),
                      MidlinePoint=[round(float(x), 2) for x in point])
    return record
