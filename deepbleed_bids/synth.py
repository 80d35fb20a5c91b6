"""Synthetic intracerebral hematomas of known volume, inserted into a real head CT.

No head CT with an expert hemorrhage mask is available, so tests, benchmarks and
the demo-network training set insert synthetic hematomas into real heads.

Shape: a lobulated body (union of 1-4 ellipsoids radiating from the centre) whose
boundary is perturbed by a smooth random field, all defined in world millimetres,
so a lesion looks the same whatever the voxel size or orientation.  The lesion is
the sublevel set ``{f <= t}`` of one fixed function ``f`` (the shape's gauge
times the perturbation; infinite outside the brain mask), restricted to the
connected component holding the centre.  ``t`` is found so the voxel count matches
the requested volume.  One ``f`` thresholded at several levels gives nested
lesions: that is how growth and post-surgical residuals of one hematoma are made.

Placement (coarse ~2 mm maps of the brain mask and image): "deep" near the
brain's centroid beside the lateral ventricles (basal ganglia/thalamus),
"lobar" 10-25 mm deep in the periphery, "superficial" centred inside the radius
where bone lies just beyond the brain border (touches the inner table),
"ventricle" in the parenchyma next to the ventricles (the 0-15 HU region deep
in the brain mask), where ``f`` is multiplied by 0.6 so blood spreads along
them.  Intensity: a mean of 55-80 HU plus texture correlated over 0.5-4 mm,
clipped to 40-90 HU; partial-volume blending just outside the truth mask;
optional hypodense edema rim.  Training helpers: rigid pose by affine only,
noise, and ``random_case``.

Pure numpy/scipy/nibabel: no nipype here.
"""
import numpy as np
import nibabel as nib
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from .nifti import bbox, like, voxel_sizes, voxel_volume_ml

LOCATIONS = ("deep", "lobar", "superficial", "ventricle")
# Mix for location="random": deep (basal ganglia/thalamus) is the commonest ICH.
LOCATION_P = {"deep": 0.35, "lobar": 0.30, "superficial": 0.15, "ventricle": 0.20}

BONE_HU = 300.0
VENTRICLE_HU = (0.0, 15.0)
PADDING_HU = -1000.0  # below this a voxel is outside the field of view

_VENT_COST = 0.6  # inside ventricles blood reaches 1/0.6 = 1.7x farther
_PERTURB = 0.22  # log-amplitude of the boundary perturbation (relative)
_PERTURB_MM = 5.0  # its correlation scale
_GRID_MM = 2.0  # spacing of the world grid holding the perturbation
_GRID_N = 96  # that grid spans +-96 mm around the centre
_COARSE_MM = 2.0  # resolution of the placement maps


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _to_world(affine, ijk):
    return np.asarray(ijk, float) @ affine[:3, :3].T + affine[:3, 3]


def _to_voxel(affine, xyz):
    inv = np.linalg.inv(affine)
    return np.asarray(xyz, float) @ inv[:3, :3].T + inv[:3, 3]


# ---------------------------------------------------------------- shape


class _Shape:
    """A random lobulated shape around the origin, in millimetres (unit size)."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.lobes = []  # (A, A @ centre): inside when |A (p - c)| <= 1
        main = Rotation.random(random_state=rng).as_matrix()
        axes = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.85)])
        self.lobes.append((np.diag(1 / axes) @ main.T, np.zeros(3)))
        radius = axes.max()
        for _ in range(rng.integers(0, 4)):
            # A prolate lobe along a random direction; it contains the origin,
            # so the union stays star-shaped and its gauge is well defined.
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            rho = rng.uniform(0.25, 0.5)
            long_axis = rho + rng.uniform(0.3, 0.5)
            short = rng.uniform(0.4, 0.65, 2)
            frame = np.linalg.qr(np.column_stack([d, rng.normal(size=(3, 2))]))[0]
            frame[:, 0] = d
            a = np.diag(1 / np.array([long_axis, *short])) @ frame.T
            c = rho * d
            self.lobes.append((a, a @ c))
            radius = max(radius, rho + long_axis)
        self.radius = radius  # the shape lies inside this ball
        # Perturbation field on a world-axis grid centred on the lesion.
        field = ndi.gaussian_filter(
            rng.standard_normal((_GRID_N,) * 3), _PERTURB_MM / _GRID_MM, mode="wrap")
        field /= field.std()
        self.field = field.astype(np.float32)
        # Volume of the unit shape (no perturbation), from a fixed point set.
        pts = np.random.default_rng(0).uniform(-radius, radius, size=(3, 20000))
        self.volume = (self.gauge(pts.astype(np.float32)) <= 1).mean() * (2 * radius) ** 3

    def gauge(self, p):
        """Smallest t with p (3 x n, mm) inside t * shape: the Minkowski gauge of the union."""
        out = np.full(p.shape[1], np.inf, np.float32)
        for a, ac in self.lobes:
            # Solve |A p / t - A c| = 1 for t > 0 (one root: the origin is inside).
            u = [float(a[r, 0]) * p[0] + float(a[r, 1]) * p[1] + float(a[r, 2]) * p[2]
                 for r in range(3)]
            b = float(ac[0]) * u[0] + float(ac[1]) * u[1] + float(ac[2]) * u[2]
            q = 1.0 - float(ac @ ac)
            t = (np.sqrt(b * b + (u[0] * u[0] + u[1] * u[1] + u[2] * u[2]) * q) - b) / q
            np.minimum(out, t, out=out)
        return out

    def level(self, p):
        """The function whose sublevel sets are the lesion: gauge x perturbation."""
        g = p / np.float32(_GRID_MM) + np.float32(_GRID_N / 2 - 0.5)
        n = ndi.map_coordinates(self.field, g, order=1, mode="nearest")
        return self.gauge(p) * np.exp(np.float32(_PERTURB) * n)


# ---------------------------------------------------------------- placement maps


def _coarse_grid(shape, affine):
    zooms = voxel_sizes(affine)
    step = np.maximum(1, np.round(_COARSE_MM / zooms)).astype(int)
    start = step // 2
    caff = affine @ np.vstack([np.column_stack([np.diag(step), start]), [0, 0, 0, 1]])
    sl = tuple(slice(s0, None, s) for s0, s in zip(start, step))
    return sl, step, caff, zooms * step


class _Maps:
    """Coarse (~2 mm) maps used to place lesions: depth, bone, ventricles."""

    def __init__(self, brain, affine, image=None):
        self.sl, self.step, self.affine, self.zooms = _coarse_grid(brain.shape, affine)
        self.brain = brain[self.sl]
        self.depth = ndi.distance_transform_edt(self.brain, sampling=self.zooms)
        self.centroid = _to_world(self.affine, np.argwhere(self.brain).mean(0))
        idx = np.indices(self.brain.shape, sparse=True)
        a = self.affine
        # World offsets from the brain's centroid, broadcast over the grid.
        off = [a[r, 3] - self.centroid[r] + sum(a[r, c] * idx[c] for c in range(3))
               for r in range(3)]
        self.dist_c = np.sqrt(off[0] ** 2 + off[1] ** 2 + off[2] ** 2)
        self.dist_xy = np.sqrt(off[0] ** 2 + off[1] ** 2)  # within the axial plane
        self.dz = off[2]
        self.bone_dist = self.vent = self.vent_dist = None
        if image is None:
            return
        hu = ndi.uniform_filter(np.asarray(image, np.float32), size=self.step)[self.sl]
        self.bone_dist = ndi.distance_transform_edt(hu < BONE_HU, sampling=self.zooms)
        # 2 mm block means are quiet enough for a tight CSF window: 0-10 HU
        # keeps the ventricles and drops hypodense white matter.
        csf = self.brain & (hu >= VENTRICLE_HU[0]) & (hu <= 10.0) & (self.depth >= 15)
        lab, _ = ndi.label(csf)
        sizes = np.bincount(lab.ravel()) * voxel_volume_ml(self.affine)
        keep = np.flatnonzero(sizes >= 0.5)
        self.vent = np.isin(lab, keep[keep > 0])
        if self.vent.any():
            self.vent_dist = ndi.distance_transform_edt(~self.vent, sampling=self.zooms)

    def candidates(self, location, radius_mm):
        """Coarse voxels where a lesion of this equivalent radius may be centred."""
        b, depth, dist_c = self.brain, self.depth, self.dist_c
        away = self.vent_dist >= 4 if self.vent_dist is not None else True
        if location == "deep":
            # Basal ganglia/thalamus: central, at or a little below the brain's
            # centroid (world z is taken as superior, as in any head CT).
            ok = b & (self.dist_xy <= 30) & (self.dz >= -18) & (self.dz <= 6) & (depth >= 20) & away
            if self.vent_dist is not None:  # they border the lateral ventricles
                ok &= self.vent_dist <= 20
        elif location == "lobar":
            ok = b & (depth >= 10) & (depth <= 25) & (dist_c >= 35) & away
        elif location == "superficial":
            # Centre inside the radius, where the nearest brain border is the
            # inner table (bone just beyond it), not the skull base openings.
            target = np.clip(radius_mm * 0.45, 2.0, 20.0)
            ok = b & (np.abs(depth - target) <= max(1.5, self.zooms.max()))
            if self.bone_dist is not None and ok.any():
                gap = self.bone_dist - depth
                ok &= gap <= gap[ok].min() + 2.0
        elif location == "ventricle":
            if self.vent_dist is None:
                raise ValueError("location='ventricle' needs the image (no ventricles found)")
            # Parenchymal centre close enough that the bleed breaks into a ventricle.
            vd = self.vent_dist
            near = (vd >= 0.25 * radius_mm + 1) & (vd <= 0.6 * radius_mm + 2)
            ok = b & ~self.vent & near & (depth >= 12)
        else:
            raise ValueError(f"unknown location {location!r}; use one of {LOCATIONS} or 'random'")
        return np.argwhere(ok)


def _place(maps, brain, affine, location, radius_mm, rng, avoid_mm=None):
    """Draw a centre (world mm) for a lesion at this location."""
    cand = maps.candidates(location, radius_mm)
    if len(cand) == 0:
        raise ValueError(f"no room for a {location} lesion in this brain mask")
    for _ in range(50):
        cijk = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, 3)
        xyz = _to_world(maps.affine, cijk)
        vox = np.rint(_to_voxel(affine, xyz)).astype(int)
        if np.any(vox < 0) or np.any(vox >= brain.shape) or not brain[tuple(vox)]:
            continue
        if avoid_mm is not None and any(np.linalg.norm(xyz - c) < d for c, d in avoid_mm):
            continue
        return xyz
    raise ValueError(f"could not place a {location} lesion")


def _pick_location(location, rng, have_image):
    if location != "random":
        return location
    names = [n for n in LOCATIONS if have_image or n != "ventricle"]
    p = np.array([LOCATION_P[n] for n in names])
    return names[rng.choice(len(names), p=p / p.sum())]


# ---------------------------------------------------------------- the mask


def _ventricles_in_box(image, affine, maps, box):
    """Full-resolution ventricles in a box: smoothed HU in 0-15 next to the coarse ventricles."""
    zooms = voxel_sizes(affine)
    sigma = 0.8 / zooms
    # Smooth a padded box so the result never depends on the box size.
    pad = np.ceil(4 * sigma).astype(int) + 1
    lo = [max(b.start - p, 0) for b, p in zip(box, pad)]
    hi = [min(b.stop + p, n) for b, p, n in zip(box, pad, image.shape)]
    hu = ndi.gaussian_filter(np.asarray(image[tuple(map(slice, lo, hi))], np.float32), sigma)
    hu = hu[tuple(slice(b.start - a, b.stop - a) for b, a in zip(box, lo))]
    near = ndi.binary_dilation(maps.vent, iterations=1)
    idx = np.indices(hu.shape, sparse=True)
    ci = [np.clip((ix + b.start) // s, 0, n - 1)
          for ix, b, s, n in zip(idx, box, maps.step, maps.vent.shape)]
    return near[ci[0], ci[1], ci[2]] & (hu >= VENTRICLE_HU[0]) & (hu <= VENTRICLE_HU[1])


def _level_in_box(shape, brain, affine, center, half_mm, vent=None):
    """f on a box holding the ball of half_mm around the centre (inf outside the brain)."""
    inv = np.linalg.inv(affine)
    c_vox = _to_voxel(affine, center)
    half = half_mm * np.linalg.norm(inv[:3, :3], axis=1)  # voxels per axis for a ball
    lo = np.maximum(np.floor(c_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(c_vox + half).astype(int) + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    inside = brain[box]
    ijk = np.nonzero(inside)
    # World offsets from the centre, row by row (cheaper than an n x 3 matmul).
    p = np.empty((3, len(ijk[0])), np.float32)
    for r in range(3):
        p[r] = float(affine[r, 3] - center[r])
        for c in range(3):
            p[r] += np.float32(affine[r, c]) * (ijk[c] + lo[c]).astype(np.float32)
    f = np.full(inside.shape, np.inf, np.float32)
    f[inside] = shape.level(p)
    if vent is not None:
        f[vent(box)] *= _VENT_COST
    # Faces of the box inside the image: a lesion touching them may be cut.
    inner = [(lo[i] > 0, hi[i] < brain.shape[i]) for i in range(3)]
    return f, box, inner


def _touches(comp, inner):
    for axis, (low, high) in enumerate(inner):
        face = np.moveaxis(comp, axis, 0)
        if (low and face[0].any()) or (high and face[-1].any()):
            return True
    return False


def _select(f, seed_vox, n_target):
    """Connected sublevel set of f around seed_vox with a voxel count closest to n_target."""
    finite = np.sort(f[np.isfinite(f)])
    if len(finite) == 0:
        return np.zeros(f.shape, bool), np.inf

    def grow(rank):
        t = finite[rank - 1]
        lab, _ = ndi.label(f <= t)
        comp = lab == lab[seed_vox]
        return comp, int(comp.sum()), t

    # Bisect on the rank of the threshold; count(rank) is non-decreasing but may
    # jump (an island joins, or float ties), so stop at adjacent ranks.
    under, over = (0, np.zeros(f.shape, bool), 0, -np.inf), None
    rank = min(n_target, len(finite))
    for _ in range(60):
        comp, count, t = grow(rank)
        if count == n_target:
            return comp, t
        if count < n_target:
            under = (rank, comp, count, t)
            if rank == len(finite):
                break
            if over is None:
                rank = min(rank + n_target - count, len(finite))
            else:
                rank = (rank + over[0]) // 2
        else:
            over = (rank, comp, count, t)
            rank = (under[0] + rank) // 2
        if over is not None and over[0] - under[0] <= 1:
            break
    best = min([x for x in (under, over) if x is not None], key=lambda x: abs(x[2] - n_target))
    return best[1], best[3]


def _grow(brain, affine, volume_ml, location, center, shape_seed, image, maps):
    """The mask of one lesion whose centre and shape are fixed."""
    seed_vox = tuple(np.rint(_to_voxel(affine, center)).astype(int))
    if np.any(np.array(seed_vox) < 0) or np.any(np.array(seed_vox) >= brain.shape) \
            or not brain[seed_vox]:
        raise ValueError(f"center_mm {center.tolist()} is outside the brain mask")
    shape = _Shape(shape_seed)
    vent = None
    if location == "ventricle":
        if maps is None:
            maps = _Maps(brain, affine, image)
        if maps.vent_dist is None:
            raise ValueError("location='ventricle' needs the image (no ventricles found)")
        cache = {}

        def vent(box):
            key = tuple((b.start, b.stop) for b in box)
            if key not in cache:
                cache.clear()
                cache[key] = _ventricles_in_box(image, affine, maps, box)
            return cache[key]

    n_target = max(1, int(round(volume_ml / voxel_volume_ml(affine))))
    # Box for the shape scaled to the volume, with room for clipping by the brain.
    t_guess = 1.3 * (volume_ml * 1000 / shape.volume) ** (1 / 3)
    half = t_guess * shape.radius * (1.0 if vent is None else 1.0 / _VENT_COST)
    while True:
        f, box, inner = _level_in_box(shape, brain, affine, center, half, vent)
        local_seed = tuple(s - b.start for s, b in zip(seed_vox, box))
        comp, t = _select(f, local_seed, n_target)
        # A component clear of the box's inner faces is the same as on the whole
        # image, so the box size never changes the answer.
        if not _touches(comp, inner):
            break
        half *= 1.5
    mask = np.zeros(brain.shape, bool)
    mask[box] = comp
    info = {
        "requested_ml": float(volume_ml),
        "volume_ml": float(comp.sum() * voxel_volume_ml(affine)),
        "center_mm": [float(x) for x in center],
        "location": location,
        "shape_seed": int(shape_seed),
        "level": float(t),
    }
    if vent is not None:
        info["ventricle_ml"] = float((comp & vent(box)).sum() * voxel_volume_ml(affine))
    return mask, info


def _radius(volume_ml):
    """Radius (mm) of the ball of this volume."""
    return (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)


def _setup(brain_mask, affine, volume_ml, rng, location, center_mm, shape_seed, image):
    rng = _rng(rng)
    brain = np.asarray(brain_mask, bool)
    affine = np.asarray(affine, float)
    location = _pick_location(location, rng, image is not None)
    if location not in LOCATIONS:
        raise ValueError(f"unknown location {location!r}; use one of {LOCATIONS} or 'random'")
    if shape_seed is None:
        shape_seed = int(rng.integers(2**31))
    maps = None
    if center_mm is None or location == "ventricle":
        maps = _Maps(brain, affine, image)
    if center_mm is None:
        center_mm = _place(maps, brain, affine, location, _radius(volume_ml), rng)
    return brain, affine, location, np.asarray(center_mm, float), shape_seed, maps


def hematoma_mask(brain_mask, affine, volume_ml, rng=None, location="random",
                  center_mm=None, shape_seed=None, image=None):
    """Binary mask of a synthetic hematoma of the requested volume inside brain_mask.

    brain_mask: 3-D bool array; affine: its voxel-to-world (mm) matrix.
    location: "deep" (basal ganglia/thalamus), "lobar", "superficial" (touching
    the inner table), "ventricle" (breaks into the ventricles: needs ``image``),
    or "random" (LOCATION_P).  center_mm: world centre, else drawn for the
    location; shape_seed: the shape, else drawn from rng.  The same centre,
    shape_seed and location at several volumes give nested masks.  image: HU
    array on the same grid, to find bone and ventricles.
    Returns (mask, info); info["volume_ml"] is the achieved volume.
    """
    brain, affine, location, center, shape_seed, maps = _setup(
        brain_mask, affine, volume_ml, rng, location, center_mm, shape_seed, image)
    return _grow(brain, affine, volume_ml, location, center, shape_seed, image, maps)


def hematoma_series(brain_mask, affine, volumes_ml, rng=None, location="random",
                    center_mm=None, shape_seed=None, image=None):
    """Nested hematomas at one place, one per volume (growth, or residual after surgery).

    A larger volume's mask always contains a smaller one's.  The centre is placed
    for the largest volume.  Returns a list of (mask, info) in the order given.
    """
    brain, affine, location, center, shape_seed, maps = _setup(
        brain_mask, affine, max(volumes_ml), rng, location, center_mm, shape_seed, image)
    return [_grow(brain, affine, v, location, center, shape_seed, image, maps)
            for v in volumes_ml]


# ---------------------------------------------------------------- intensities


def _smooth_noise(shape, zooms, sigma_mm, rng):
    """Unit-SD Gaussian noise correlated over sigma_mm (isotropic in world space)."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                            sigma_mm / np.asarray(zooms))
    return n / max(float(n.std()), 1e-6)


def _paint(data, brain, mask, affine, rng, hu_range=(40, 90), mean_hu=None,
           texture_sd=6.0, edema_mm=0.0, edema_hu=20.0):
    """Write a textured hematoma (and optional edema rim) into data (float32) in place."""
    zooms = voxel_sizes(affine)
    if mean_hu is None:
        mean_hu = rng.uniform(55, 80)
    pad = np.ceil((max(edema_mm, 0.0) * 1.5 + 3.0) / zooms).astype(int)
    box = bbox(mask, pad)
    m, b, orig = mask[box], brain[box], data[box]
    # Texture: fine grain (~scanner noise) + clot heterogeneity over a few mm.
    tex = (0.55 * _smooth_noise(m.shape, zooms, 0.5, rng)
           + 0.65 * _smooth_noise(m.shape, zooms, 1.5, rng)
           + 0.5 * _smooth_noise(m.shape, zooms, 4.0, rng))
    tex /= tex.std()
    blood = np.clip(mean_hu + texture_sd * tex, *hu_range)
    out = orig.copy()
    if edema_mm > 0:
        dist = ndi.distance_transform_edt(~m, sampling=zooms)
        # Uneven width, capped so the rim stays inside the padded box.
        thick = edema_mm * np.minimum(np.exp(0.3 * _smooth_noise(m.shape, zooms, 4.0, rng)), 1.5)
        tissue = ((orig > 10) & (orig < 55)).astype(np.float32)
        # Full strength over the inner half of the rim, fading over the outer half;
        # only parenchyma (not CSF, bone or other blood) turns oedematous.
        taper = np.clip(2.0 * (1.0 - dist / thick), 0.0, 1.0) * (~m & b & (tissue > 0))
        # Shift the local parenchymal mean (not each voxel) so the scanner's noise stays.
        local = ndi.gaussian_filter(orig * tissue, 1.5 / zooms) / np.maximum(
            ndi.gaussian_filter(tissue, 1.5 / zooms), 1e-3)
        out -= taper * np.clip(local - edema_hu, 0.0, None)
    # Partial volume just outside the mask: the mask holds voxels that are >= half blood.
    w = ndi.gaussian_filter(m.astype(np.float32), 0.5 / zooms)
    edge = ~m & b & (w > 0.02)
    out[edge] += w[edge] * (blood[edge] - out[edge])
    out[m] = blood[m]
    data[box] = out
    return float(mean_hu)


def _as_float(img):
    return np.asarray(img.dataobj, dtype=np.float32)


def _like(img, data):
    """A new image with img's affine and header; integer input stays integer."""
    dtype = np.asanyarray(img.dataobj[:1, :1, :1]).dtype
    if np.issubdtype(dtype, np.integer):
        lim = np.iinfo(dtype)
        data = np.clip(np.rint(data), lim.min, lim.max).astype(dtype)
    out = like(data, img)
    out.set_data_dtype(img.get_data_dtype())  # written as the source was
    return out


def insert_hematoma(img, brain_mask, volume_ml, rng=None, location="random", center_mm=None,
                    shape_seed=None, hu_range=(40, 90), mean_hu=None, texture_sd=6.0,
                    edema_mm=0.0, edema_hu=20.0):
    """Insert a synthetic hematoma into a head CT (HU).  The input is not modified.

    Returns (new image with the same affine/header and dtype, truth mask (bool,
    native grid), info).  mean_hu defaults to a draw from 55-80 HU; texture_sd is
    the SD of the spatially correlated texture; values are clipped to hu_range.
    edema_mm > 0 adds a hypodense rim (towards edema_hu) of about that width.
    """
    rng = _rng(rng)
    data = _as_float(img)
    mask, info = hematoma_mask(brain_mask, img.affine, volume_ml, rng, location,
                               center_mm, shape_seed, image=data)
    info["mean_hu"] = _paint(data, np.asarray(brain_mask, bool), mask, img.affine, rng,
                             hu_range, mean_hu, texture_sd, edema_mm, edema_hu)
    return _like(img, data), mask, info


# ---------------------------------------------------------------- augmentation


def random_pose(img, rng, max_rotation_deg=10, max_shift_mm=10):
    """Rigidly move the image in world space by changing only its affine (no resampling).

    Rotation about the image centre: random axis, angle up to max_rotation_deg;
    shift up to max_shift_mm per axis.  Voxel data are shared, untouched.
    """
    rng = _rng(rng)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    rot = Rotation.from_rotvec(axis * np.deg2rad(rng.uniform(0, max_rotation_deg))).as_matrix()
    centre = _to_world(img.affine, (np.array(img.shape[:3]) - 1) / 2)
    move = np.eye(4)
    move[:3, :3] = rot
    move[:3, 3] = centre + rng.uniform(-max_shift_mm, max_shift_mm, 3) - rot @ centre
    return nib.Nifti1Image(img.dataobj, move @ img.affine, img.header.copy())


def add_noise(img, rng, sd_hu=2.0, offset_hu=0.0):
    """Add Gaussian noise (and a constant calibration offset) to voxels in the field of view."""
    rng = _rng(rng)
    data = _as_float(img)
    fov = data > PADDING_HU
    data[fov] += offset_hu + sd_hu * rng.standard_normal(int(fov.sum()), dtype=np.float32)
    return _like(img, data)


def random_case(img, brain_mask, rng, volume_range_ml=(1.0, 150.0), p_empty=0.1, p_two=0.15,
                pose=True, max_noise_hu=3.0, max_offset_hu=3.0):
    """One training example: (image, truth mask, info), fully determined by rng.

    Lesion count: none with p_empty (teaches the network that normal heads exist),
    two with p_two (multiple bleeds occur), else one.  Each volume is log-uniform
    over volume_range_ml; location from LOCATION_P; mean 55-80 HU, texture SD
    4-8 HU; a mild edema rim (1-4 mm) half of the time.  Then whole-image noise
    (SD up to max_noise_hu), a calibration offset, and a random rigid pose
    (affine only; the mask stays on the same voxel grid).  For speed pass an
    image already in memory, not a lazily loaded compressed file.
    """
    rng = _rng(rng)
    brain = np.asarray(brain_mask, bool)
    data = _as_float(img)
    hu = data.copy()  # placement looks at the original anatomy
    u = rng.uniform()
    n_lesions = 0 if u < p_empty else (2 if u < p_empty + p_two else 1)
    truth = np.zeros(brain.shape, bool)
    lesions = []
    avoid = []
    for _ in range(n_lesions):
        vol = float(np.exp(rng.uniform(*np.log(volume_range_ml))))
        location = _pick_location("random", rng, True)
        radius = _radius(vol)
        allowed = brain & ~truth
        maps = _Maps(allowed, img.affine, hu)
        try:
            center = _place(maps, allowed, img.affine, location, radius, rng,
                            avoid_mm=[(c, r + radius) for c, r in avoid])
        except ValueError:
            continue  # no room left for a second lesion: keep one
        mask, info = _grow(allowed, np.asarray(img.affine, float), vol, location, center,
                           int(rng.integers(2**31)), hu, maps)
        edema = rng.uniform(1.0, 4.0) if rng.uniform() < 0.5 else 0.0
        info["mean_hu"] = _paint(data, allowed, mask, img.affine, rng,
                                 texture_sd=rng.uniform(4.0, 8.0), edema_mm=edema)
        info["edema_mm"] = edema
        truth |= mask
        avoid.append((center, radius))
        lesions.append(info)
    noise, offset = rng.uniform(0, max_noise_hu), rng.uniform(-max_offset_hu, max_offset_hu)
    fov = data > PADDING_HU
    data[fov] += offset + noise * rng.standard_normal(int(fov.sum()), dtype=np.float32)
    out = _like(img, data)
    if pose:
        out = random_pose(out, rng)
    info = {
        "lesions": lesions,
        "volume_ml": float(truth.sum() * voxel_volume_ml(img.affine)),
        "noise_sd_hu": float(noise),
        "offset_hu": float(offset),
        "pose": (out.affine @ np.linalg.inv(img.affine)).tolist(),
    }
    return out, truth, info


# ---------------------------------------------------------------- intraventricular extension

VENTRICULAR_KINDS = ("extension", "cast", "pure", "mass_effect")


def ventricle_truth(image, brain_mask, affine, mask, maps=None):
    """The part of ``mask`` inside the generator's ventricles (smoothed HU 0-15 next to the
    coarse ventricle map) of the ORIGINAL image: the truth IVH of a synthetic lesion."""
    brain = np.asarray(brain_mask, bool)
    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    if maps is None:
        maps = _Maps(brain, np.asarray(affine, float), np.asarray(image, np.float32))
    if maps.vent is None or not maps.vent.any():
        return out
    box = bbox(mask, 2)
    out[box] = mask[box] & _ventricles_in_box(np.asarray(image, np.float32), np.asarray(affine, float),
                                              maps, box)
    return out


def insert_ventricular_hematoma(img, brain_mask, volume_ml, rng=None, kind="extension", mean_hu=None,
                                texture_sd=6.0, hu_range=(40, 90)):
    """A hematoma with a known intraventricular part, inserted into a head CT (HU).

    kind "extension": a parenchymal clot centred next to a ventricle that breaks into it
    (the generator's "ventricle" location: blood spreads 1.7x farther inside the
    ventricles); "cast": centred inside a ventricle (mostly intraventricular blood);
    "pure": confined to the ventricles (primary IVH, no parenchymal part); "mass_effect":
    a deep (basal ganglia/thalamus) clot beside the ventricles that first pushes the brain
    (:func:`mass_effect`: the ventricle is displaced) and grows around the pushed ventricles,
    never into them (its IVH is 0: the case a split must not call intraventricular).
    Returns (new image, truth mask, truth IVH mask, info) with info["intraventricular_ml"]
    and info["parenchymal_ml"] measured on the image's grid (for "mass_effect" the truth
    is taken on the pushed anatomy; info["max_shift_mm"] is the push).
    """
    if kind not in VENTRICULAR_KINDS:
        raise ValueError(f"kind must be one of {VENTRICULAR_KINDS}, not {kind!r}")
    rng = _rng(rng)
    data = _as_float(img)
    brain = np.asarray(brain_mask, bool)
    affine = np.asarray(img.affine, float)
    maps = _Maps(brain, affine, data)
    if maps.vent is None or not maps.vent.any():
        raise ValueError("no ventricles found in this image: cannot place an intraventricular hematoma")
    if kind == "mass_effect":
        original = brain
        for _ in range(5):  # a centre that the push leaves outside the ventricles
            centre = _place(maps, original, affine, "deep", _radius(volume_ml), rng)
            pushed, brain, effect = mass_effect(img, original, centre, volume_ml)
            data = _as_float(pushed)
            pushed_maps = _Maps(brain, affine, data)
            # near but not in: the clot grows around the pushed ventricles, not into them
            room = brain & ~ndi.binary_dilation(ventricle_truth(data, brain, affine, brain, pushed_maps))
            vox = tuple(np.rint(_to_voxel(affine, centre)).astype(int))
            if all(0 <= v < n for v, n in zip(vox, room.shape)) and room[vox]:
                break
        else:
            raise ValueError("could not place a deep clot outside the pushed ventricles")
        maps = pushed_maps
        mask, info = _grow(room, affine, volume_ml, "deep", np.asarray(centre, float),
                           int(rng.integers(2**31)), data, maps)
        ivh = ventricle_truth(data, brain, affine, mask, maps)
        info["max_shift_mm"] = effect["max_shift_mm"]
        return _finish_ventricular(img, data, brain, affine, mask, ivh, info, kind, rng, hu_range, mean_hu,
                                   texture_sd)
    grow_in = brain
    if kind == "pure":  # grown inside the ventricles only: the whole clot is intraventricular
        grow_in = ventricle_truth(data, brain, affine, brain, maps)
    if kind in ("cast", "pure"):
        cand = np.argwhere(maps.vent & (maps.depth >= 15))
        if len(cand) == 0:
            cand = np.argwhere(maps.vent)
        center = None
        for _ in range(50):
            xyz = _to_world(maps.affine, cand[rng.integers(len(cand))])
            vox = np.rint(_to_voxel(affine, xyz)).astype(int)
            if np.all(vox >= 0) and np.all(vox < brain.shape) and grow_in[tuple(vox)]:
                center = xyz
                break
        if center is None:
            raise ValueError("could not place an intraventricular hematoma")
    else:
        center = _place(maps, brain, affine, "ventricle", _radius(volume_ml), rng)
    mask, info = _grow(grow_in, affine, volume_ml, "ventricle", np.asarray(center, float),
                       int(rng.integers(2**31)), data, maps)
    ivh = ventricle_truth(data, brain, affine, mask, maps)
    return _finish_ventricular(img, data, brain, affine, mask, ivh, info, kind, rng, hu_range, mean_hu,
                               texture_sd)


def _finish_ventricular(img, data, brain, affine, mask, ivh, info, kind, rng, hu_range, mean_hu, texture_sd):
    info["kind"] = kind
    info["mean_hu"] = _paint(data, brain, mask, affine, rng, hu_range, mean_hu, texture_sd)
    vml = voxel_volume_ml(affine)
    info["intraventricular_ml"] = float(ivh.sum() * vml)
    info["parenchymal_ml"] = float((mask & ~ivh).sum() * vml)
    return _like(img, data), mask, ivh, info


# ------------------------------------------------- registration cases with a known pose
# One generator for the registration benchmark, its test and midline-shift checks:
# a hematoma with mass effect, noise, a rigid pose, and re-slicing (thick, tilted,
# partial coverage). World coordinates of the anatomy move only by the pose, so the
# true native pose is known exactly.


def rigid_motion(rng, max_rotation_deg=35.0, max_shift_mm=40.0, centre=(0.0, 0.0, 0.0)):
    """RAS 4x4 world motion: rotations up to max_rotation_deg about each axis (about
    ``centre``) and shifts up to max_shift_mm along each axis, uniform."""
    rng = _rng(rng)
    rot = Rotation.from_euler("xyz", rng.uniform(-max_rotation_deg, max_rotation_deg, 3),
                              degrees=True).as_matrix()
    centre = np.asarray(centre, float)
    move = np.eye(4)
    move[:3, :3] = rot
    move[:3, 3] = centre + rng.uniform(-max_shift_mm, max_shift_mm, 3) - rot @ centre
    return move


def mass_effect(img, brain_mask, centre_mm, volume_ml, reach_mm=35.0):
    """Push brain tissue radially away from ``centre_mm`` as a mass of ``volume_ml`` would.

    The radial map r -> (r^3 + R^3)^(1/3) of an incompressible medium around a sphere of
    radius R, faded out with distance (Gaussian, ``reach_mm``) and restricted to the brain
    (smoothly, so skull and scalp do not move). Returns (image, brain mask, info) on the
    same grid; the displaced brain mask follows the tissue (nearest neighbour).
    """
    data = _as_float(img)
    brain = np.asarray(brain_mask, bool)
    affine = np.asarray(img.affine, float)
    zooms = voxel_sizes(affine)
    radius = _radius(volume_ml)
    centre = np.asarray(centre_mm, float)
    half = radius + 2.5 * reach_mm
    ijk_c = _to_voxel(affine, centre)
    lo = np.maximum(np.floor(ijk_c - half / zooms).astype(int), 0)
    hi = np.minimum(np.ceil(ijk_c + half / zooms).astype(int) + 1, data.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    soft_brain = ndi.gaussian_filter(brain[box].astype(np.float32), 2.0 / zooms)
    inv = np.linalg.inv(affine)
    out, moved = data.copy(), brain.copy()
    max_shift = 0.0
    for k0 in range(lo[2], hi[2], 4):  # a few slices at a time: memory stays small
        k1 = min(k0 + 4, hi[2])
        grid = np.stack(np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]),
                                    np.arange(k0, k1), indexing="ij")).astype(np.float32)
        rel = np.einsum("ij,j...->i...", affine[:3, :3], grid) \
            + (affine[:3, 3] - centre)[:, None, None, None]
        rho = np.sqrt((rel ** 2).sum(axis=0)) + 1e-6
        # where a displaced point came from: invert r -> cbrt(r^3 + R^3), faded with distance
        source = np.cbrt(np.maximum(rho ** 3 - radius ** 3, 0.0))
        weight = np.exp(-0.5 * (np.maximum(rho - radius, 0) / reach_mm) ** 2)
        weight *= soft_brain[..., k0 - lo[2]:k1 - lo[2]]
        back = rho - weight * (rho - source)
        src_world = centre[:, None, None, None] + rel * (back / rho)
        src = np.einsum("ij,j...->i...", inv[:3, :3], src_world) + inv[:3, 3, None, None, None]
        sub = (box[0], box[1], slice(k0, k1))
        out[sub] = ndi.map_coordinates(data, src, order=1, mode="nearest")
        moved[sub] = ndi.map_coordinates(brain.view(np.uint8), src, order=0, mode="nearest") > 0
        inside = brain[sub]
        if inside.any():
            max_shift = max(max_shift, float((rho - back)[inside].max()))
    info = {"centre_mm": centre.tolist(), "radius_mm": float(radius),
            "max_shift_mm": max_shift}
    return _like(img, out), moved, info


def reslice(img, motion=None, slice_mm=None, inplane_mm=0.9, tilt_deg=0.0, keep=(0.0, 1.0),
            pad_hu=-1024.0, order=1, slab=True):
    """The head re-acquired on a new grid: moved by ``motion`` (RAS 4x4, world), axial
    slices ``slice_mm`` thick (averaged over the slab; None keeps the source spacing),
    the slice plane tilted by ``tilt_deg`` about the left-right axis, and only the
    fraction ``keep`` = (bottom, top) of the head's cranio-caudal extent covered.
    ``slab=False`` samples each slice at its centre instead of averaging its thickness:
    the same head merely moved and resampled (with ``order`` 3, little blur), rather
    than re-acquired with thicker slices.

    Returns (image, motion): world point x of the source is world point motion @ x of the
    new image; the new grid's axes are orthogonal (a tilt-corrected stack).
    """
    motion = np.eye(4) if motion is None else np.asarray(motion, float)
    src_aff = np.asarray(img.affine, float)
    data = _as_float(img)
    zooms = voxel_sizes(src_aff)
    slice_mm = float(slice_mm or zooms[2])
    # head extent (above air) in the moved world, in the tilted frame
    head = data > -300
    ijk = np.array(np.nonzero(head[::4, ::4, ::2]), float) * np.array([[4], [4], [2]])
    frame = Rotation.from_euler("x", tilt_deg, degrees=True).as_matrix()
    pts = frame.T @ (motion[:3, :3] @ (src_aff[:3, :3] @ ijk + src_aff[:3, 3:4]) + motion[:3, 3:4])
    lo, hi = pts.min(axis=1) - 5.0, pts.max(axis=1) + 5.0
    span = hi[2] - lo[2]
    lo[2], hi[2] = lo[2] + keep[0] * span, lo[2] + keep[1] * span
    step = np.array([inplane_mm, inplane_mm, slice_mm])
    shape = np.maximum(np.ceil((hi - lo) / step).astype(int), 1)
    new_aff = np.eye(4)
    new_aff[:3, :3] = frame @ np.diag(step)
    new_aff[:3, 3] = frame @ lo
    # new voxel -> source voxel
    to_src = np.linalg.inv(src_aff) @ np.linalg.inv(motion) @ new_aff
    n_sub = max(1, int(np.ceil(slice_mm / max(zooms.min(), 1.0)))) if slab else 1
    out = np.zeros(tuple(shape), np.float32)
    for k in range(n_sub):  # slab average: a thick slice integrates its thickness
        offset = np.array([0, 0, (k + 0.5) / n_sub - 0.5, 1.0])
        m = to_src.copy()
        m[:3, 3] = (to_src @ offset)[:3]
        out += ndi.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape),
                                    order=order, mode="constant", cval=pad_hu)
    out /= n_sub
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    res = nib.Nifti1Image(np.clip(np.rint(out), -1024, 3071).astype(np.int16), new_aff, hdr)
    res.set_qform(new_aff, 1)
    res.set_sform(new_aff, 1)
    return res, motion


def registration_case(img, brain_mask, rng, max_rotation_deg=35.0, max_shift_mm=40.0,
                      volume_range_ml=(20.0, 100.0), p_hematoma=0.8, p_thick=0.5, p_tilt=0.4,
                      p_partial=0.4, max_noise_hu=6.0):
    """One registration test case from a real head: (image, info), fully determined by rng.

    A hematoma of 20-100 mL with mass effect (p_hematoma), noise, a random rigid pose
    (rotations up to max_rotation_deg about each axis, shifts up to max_shift_mm), then
    re-slicing: 5-7 mm slices (p_thick), a 10-25 deg tilted stack (p_tilt), 20-30 % of
    the head missing at the top or bottom (p_partial). info["motion"] (RAS 4x4) maps the
    source's world onto the case's world: the true pose.
    """
    rng = _rng(rng)
    brain = np.asarray(brain_mask, bool)
    affine = np.asarray(img.affine, float)
    info = {"hematoma_ml": 0.0}
    work = img
    if rng.uniform() < p_hematoma:
        vol = float(rng.uniform(*volume_range_ml))
        location = str(rng.choice(["deep", "lobar"]))
        maps = _Maps(brain, affine, _as_float(img))
        centre = _place(maps, brain, affine, location, _radius(vol), rng)
        work, brain, effect = mass_effect(work, brain, centre, vol)
        work, truth, lesion = insert_hematoma(work, brain, vol, rng, location, center_mm=centre)
        info.update(hematoma_ml=float(truth.sum() * voxel_volume_ml(affine)), location=location,
                    mass_effect_mm=effect["max_shift_mm"])
    centre = _to_world(affine, np.array(np.nonzero(brain[::4, ::4, ::2]), float).mean(axis=1)
                       * np.array([4, 4, 2]))
    motion = rigid_motion(rng, max_rotation_deg, max_shift_mm, centre)
    thick = float(rng.uniform(5.0, 7.0)) if rng.uniform() < p_thick else None
    tilt = float(rng.uniform(10.0, 25.0) * rng.choice([-1, 1])) if rng.uniform() < p_tilt else 0.0
    keep = (0.0, 1.0)
    if rng.uniform() < p_partial:
        cut = float(rng.uniform(0.2, 0.3))
        keep = (cut, 1.0) if rng.uniform() < 0.5 else (0.0, 1.0 - cut)
    noise = float(rng.uniform(0.0, max_noise_hu))
    if noise > 0:
        work = add_noise(work, rng, sd_hu=noise)
    case, _ = reslice(work, motion, slice_mm=thick, tilt_deg=tilt, keep=keep)
    euler = Rotation.from_matrix(motion[:3, :3]).as_euler("xyz", degrees=True)
    info.update(motion=motion.tolist(), rotation_deg=[round(float(a), 2) for a in euler],
                shift_mm=[round(float(a), 2) for a in motion[:3, 3]], slice_mm=thick,
                tilt_deg=tilt, keep=list(keep), noise_sd_hu=noise, shape=list(case.shape))
    return case, info


# ------------------------------------------- trial measures: edema rim, location, shift
# Cases for the location / perihematomal edema / midline-shift benchmark: a hematoma with a
# known hypodense rim (the truth edema mask is returned), optionally pushing the brain
# (mass_effect above) by a known displacement.


def insert_hematoma_with_edema(img, brain_mask, volume_ml, rng=None, location="random", center_mm=None,
                               edema_mm=4.0, edema_hu=20.0, mean_hu=None, texture_sd=6.0,
                               hu_range=(40, 90)):
    """A hematoma with a hypodense edema rim of about ``edema_mm`` and its truth masks.

    The rim is the one of :func:`insert_hematoma` (towards ``edema_hu`` in parenchyma,
    full strength over its inner half, fading outwards). The truth edema is every voxel
    outside the clot whose HU was lowered by at least half the full edema drop (the clot
    painted twice from the same random state, with and without the rim, tells exactly
    what the rim changed). Returns (image, clot mask, edema mask, info) with
    info["edema_ml"].
    """
    import copy

    rng = _rng(rng)
    data = _as_float(img)
    brain = np.asarray(brain_mask, bool)
    affine = np.asarray(img.affine, float)
    mask, info = hematoma_mask(brain, affine, volume_ml, rng, location, center_mm, image=data)
    mean_hu = float(rng.uniform(55, 80)) if mean_hu is None else float(mean_hu)
    state = copy.deepcopy(rng.bit_generator.state)
    with_rim, plain = data.copy(), data.copy()
    _paint(with_rim, brain, mask, affine, rng, hu_range, mean_hu, texture_sd, edema_mm, edema_hu)
    twin = np.random.default_rng()
    twin.bit_generator.state = state
    _paint(plain, brain, mask, affine, twin, hu_range, mean_hu, texture_sd, 0.0, edema_hu)
    edema = np.zeros(mask.shape, bool)
    if edema_mm > 0 and mask.any():
        zooms = voxel_sizes(affine)
        box = bbox(mask, np.ceil((edema_mm * 1.5 + 3.0) / zooms).astype(int))
        orig = data[box]
        tissue = ((orig > 10) & (orig < 55)).astype(np.float32)
        local = ndi.gaussian_filter(orig * tissue, 1.5 / zooms) / np.maximum(
            ndi.gaussian_filter(tissue, 1.5 / zooms), 1e-3)
        full = np.clip(local - edema_hu, 0.0, None)
        drop = plain[box] - with_rim[box]
        edema[box] = ~mask[box] & brain[box] & (full >= 2.0) & (drop >= 0.5 * full)
    info.update(mean_hu=mean_hu, edema_mm=float(edema_mm), edema_hu=float(edema_hu),
                edema_ml=float(edema.sum() * voxel_volume_ml(affine)))
    return _like(img, with_rim), mask, edema, info


def mass_effect_shift(points_mm, centre_mm, volume_ml, reach_mm=35.0):
    """Where :func:`mass_effect` moves world points of the brain (deep inside it): the forward
    displacement vectors (mm), solving its radial backward map numerically."""
    points = np.atleast_2d(np.asarray(points_mm, float))
    centre = np.asarray(centre_mm, float)
    radius = _radius(volume_ml)
    rel = points - centre
    rho_s = np.linalg.norm(rel, axis=1) + 1e-9

    def back(rho):
        source = np.cbrt(np.maximum(rho ** 3 - radius ** 3, 0.0))
        weight = np.exp(-0.5 * (np.maximum(rho - radius, 0) / reach_mm) ** 2)
        return rho - weight * (rho - source)

    lo, hi = rho_s.copy(), rho_s + radius + 1.0
    for _ in range(60):  # bisection: back() is increasing in rho
        mid = 0.5 * (lo + hi)
        below = back(mid) < rho_s
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    rho_t = 0.5 * (lo + hi)
    return rel * ((rho_t - rho_s) / rho_s)[:, None]


def trial_case(img, brain_mask, rng, volume_ml, location="deep", center_mm=None, edema_mm=4.0,
               edema_hu=20.0, push=True, reach_mm=35.0):
    """One case for the trial-measures benchmark: (image, clot, edema, brain mask, info).

    A hematoma of ``volume_ml`` at ``location`` (or ``center_mm``), with mass effect when
    ``push`` (the brain pushed as by a mass of that volume; info["centre_mm"] and
    ``mass_effect_shift`` give the truth displacement of any point) and an edema rim of
    ``edema_mm``. Everything stays on the source grid.
    """
    rng = _rng(rng)
    brain = np.asarray(brain_mask, bool)
    affine = np.asarray(img.affine, float)
    if center_mm is None:
        maps = _Maps(brain, affine, _as_float(img))
        center_mm = _place(maps, brain, affine, location, _radius(volume_ml), rng)
    centre = np.asarray(center_mm, float)
    work, info = img, {"centre_mm": centre.tolist(), "location": location, "pushed": bool(push),
                       "reach_mm": reach_mm, "requested_ml": float(volume_ml)}
    if push:
        work, brain, effect = mass_effect(img, brain, centre, volume_ml, reach_mm)
        info["max_shift_mm"] = effect["max_shift_mm"]
    grow_as = location if location in LOCATIONS else "lobar"
    case, clot, edema, lesion = insert_hematoma_with_edema(work, brain, volume_ml, rng, grow_as, centre,
                                                           edema_mm, edema_hu)
    info.update(volume_ml=lesion["volume_ml"], edema_ml=lesion["edema_ml"], edema_mm=float(edema_mm),
                mean_hu=lesion["mean_hu"])
    return case, clot, edema, brain, info
