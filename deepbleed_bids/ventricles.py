"""Ventricle map of a scan and the split of the hemorrhage into intraventricular and parenchymal parts.

No IVH labels exist, so the split comes from anatomy (an ESTIMATE, labelled so in
every output until validated on labelled scans):

1. Prior: the BLAST-CT atlas ventricle label (31) on the template grid
   (:mod:`deepbleed_bids.atlas`).
2. Template-grid refinement on the scan's own density (the network input: the
   scan's HU on the template grid): CSF = Gaussian-smoothed (1 mm) HU in
   ``CSF_HU`` at least 6 mm inside the brain, within ``search_mm`` of the prior,
   in components touching the prior. Where blood fills a ventricle its shape can
   only come from the prior; but an atlas is an average head, and its ventricles
   may be larger than this scan's (here 58 vs 33 mL), which would call parenchymal
   blood beside a ventricle intraventricular. So the prior is trusted only where
   the other hemisphere's mirror image shows CSF or blood (a clot is mostly
   one-sided; ``mirror="restrict"``). Template-grid ventricles = visible CSF near
   the prior + hemorrhage within ``margin_mm`` of (visible CSF or the trusted prior).
   Mass effect: ``deform="SyN"``/``"Affine"`` first fits the prior to the visible
   CSF with ANTs, the hemorrhage (and a 3 mm margin) masked out of the metric; on
   the synthetic cases it shrank the prior away from the blood-filled ventricle and
   cost ~70 s, so it is off by default (README, benchmarks/bench_ivh_uncertainty.py).
3. Native refinement: the template-grid ventricles carried to the scan through
   the participant-level rigid transform (linear, >= 0.5), kept where the scan
   shows CSF or blood, plus CSF voxels within 1.5 mm of them.
4. Split: IVH = hemorrhage inside the ventricles; ICH (parenchymal) = the rest.

Pure numerics (numpy/scipy, antspyx for the registration and resampling): no nipype.
"""
import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

CSF_HU = (-5.0, 16.0)  # ventricular CSF after 1 mm smoothing; parenchyma is 20-45 HU
DSEG_LABELS = {1: ("ICH", "parenchymal hemorrhage (intracerebral, outside the ventricles) - estimate"),
               2: ("IVH", "intraventricular hemorrhage (inside the estimated ventricles) - estimate")}
METHOD = ("atlas ventricle prior (BLAST-CT label 31 on the DeepBleed template) fitted to the scan's CSF "
          "by ANTs SyN with the hemorrhage masked out, carried to the scan through the rigid transform "
          "and refined on its CSF density; ESTIMATE, not validated on labelled IVH")
METHOD_MIRROR = ("visible ventricular CSF (smoothed HU -5..16 near the BLAST-CT atlas ventricle label on the "
                 "DeepBleed template); blood is intraventricular where its mirror image across the scan's "
                 "ventricular mid-plane is ventricular CSF (the other side's ventricle gives the shape of the "
                 "filled one), or, where both sides hold blood, inside the atlas ventricle; native resolution; "
                 "ESTIMATE, not validated on labelled IVH")


def _zooms(affine):
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))


def _ball(radius_mm, zooms):
    r = np.floor(radius_mm / np.asarray(zooms)).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g * z) ** 2 for g, z in zip(grid, zooms)) <= radius_mm ** 2 + 1e-6


def _dilate(mask, radius_mm, zooms):
    """Dilation by a ball of radius_mm, via the distance transform (a large structuring element is
    seconds slower; same voxels)."""
    mask = np.asarray(mask, bool)
    if radius_mm <= 0 or not mask.any():
        return mask
    return ndi.distance_transform_edt(~mask, sampling=zooms) <= radius_mm + 1e-6


def csf_mask(hu, brain, zooms, hu_range=CSF_HU, sigma_mm=1.0, min_depth_mm=0.0):
    """CSF-dense voxels of the brain (smoothed HU within hu_range), optionally deep only."""
    smooth = ndi.gaussian_filter(np.asarray(hu, np.float32), sigma_mm / np.asarray(zooms))
    out = brain & (smooth >= hu_range[0]) & (smooth <= hu_range[1])
    if min_depth_mm > 0:
        out &= ndi.distance_transform_edt(brain, sampling=zooms) >= min_depth_mm
    return out


def template_brain(scan_t):
    """The brain on the template grid: the network input is 0 outside it, but CSF voxels of
    exactly 0 HU are 0 too; filling the holes keeps them (else the ventricles look shallow)."""
    return ndi.binary_fill_holes(np.asarray(scan_t) != 0)


def _touching(mask, seeds):
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    keep = np.unique(lab[seeds & mask])
    return np.isin(lab, keep[keep > 0])


def fit_prior(prior, target, affine, exclude=None, seed=1, transform="SyN"):
    """Deform ``prior`` onto ``target`` (both boolean, template grid) with ANTs SyN; ``exclude`` is
    left out of the metric. Returns the fitted boolean prior (the prior itself if ANTs fails)."""
    import ants

    from .registration import _to_ants

    fixed = _to_ants(ndi.gaussian_filter(target.astype(np.float32), 1.0), affine)
    moving = _to_ants(ndi.gaussian_filter(prior.astype(np.float32), 1.0), affine)
    kwargs = {}
    if exclude is not None and exclude.any():
        kwargs["mask"] = _to_ants((~exclude).astype(np.float32), affine)
    reg = ants.registration(fixed, moving, type_of_transform=transform, random_seed=seed,
                            aff_metric="meansquares", syn_metric="meansquares",
                            reg_iterations=(40, 20, 0), **kwargs)
    warped = ants.apply_transforms(fixed, _to_ants(prior.astype(np.float32), affine), reg["fwdtransforms"],
                                   interpolator="linear").numpy()
    return warped >= 0.5


def mirror_lr(mask, brain, c2=None):
    """Mirror a template-grid mask about the scan's own mid-sagittal plane (x -> c2 - x; default
    c2: twice the brain centroid in x)."""
    if c2 is None:
        c2 = int(round(2 * np.argwhere(brain)[:, 0].mean())) if brain.any() else mask.shape[0] - 1
    src = np.arange(mask.shape[0])
    dst = c2 - src
    ok = (dst >= 0) & (dst < mask.shape[0])
    out = np.zeros_like(mask)
    out[dst[ok]] = mask[src[ok]]
    return out


def template_ventricles(scan_t, hemorrhage_t, prior_t, affine_t, search_mm=10.0, plane=False, **options):
    """Ventricles of the scan on the template grid (step 2 of the module docstring); (mask, info).

    Computed in the box around the prior (+ search_mm + 10 mm, and its mirror image), which
    holds every voxel the result can reach: 5-10x fewer voxels than the 128^3 grid."""
    scan_t = np.asarray(scan_t, np.float32)
    brain = template_brain(scan_t)
    prior = np.asarray(prior_t, bool) & brain
    zooms = _zooms(affine_t)
    c2 = int(round(2 * np.argwhere(brain)[:, 0].mean())) if brain.any() else scan_t.shape[0] - 1
    out = np.zeros(scan_t.shape, bool)
    if not prior.any():
        return out, {"PriorFit": "none (no prior inside the brain)", "PriorVolume": 0.0,
                     "FittedPriorVolume": 0.0, "VisibleCSFVolume": 0.0}
    box = list(_box_of(prior, np.ceil((search_mm + 10.0) / zooms).astype(int), scan_t.shape))
    x0 = max(0, min(box[0].start, c2 - box[0].stop + 1))
    x1 = min(scan_t.shape[0], max(box[0].stop, c2 - box[0].start + 1))
    box[0] = slice(x0, x1)
    box = tuple(box)
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    vent, info = _template_ventricles(scan_t[box], np.asarray(hemorrhage_t, bool)[box], prior[box], brain[box],
                                      np.asarray(affine_t, float) @ shift, c2 - 2 * x0, search_mm=search_mm,
                                      **options)
    out[box] = vent
    if plane:
        c2_box, score = mirror_offset(info.pop("_csf"), np.asarray(hemorrhage_t, bool)[box], brain[box], zooms,
                                      start=c2 - 2 * x0)
        info.update(MirrorIndexSum=int(c2_box + 2 * x0), MirrorOverlap=round(score, 3))
    else:
        info.pop("_csf")
    return out, info


def _template_ventricles(scan_t, hem, prior, brain, affine_t, c2, search_mm=10.0, deform=False, seed=1,
                         mirror="restrict", margin_mm=1.5, max_gap_mm=None):
    zooms = _zooms(affine_t)
    zone = _dilate(prior, search_mm, zooms) & brain
    csf = csf_mask(scan_t, brain, zooms, min_depth_mm=6.0) & zone & ~hem
    csf = _touching(csf, prior)
    fitted, how = prior, "rigid"
    if deform and csf.any():
        try:
            kind = deform if isinstance(deform, str) else "SyN"
            fitted = fit_prior(prior, csf, affine_t, exclude=_dilate(hem, 3.0, zooms), seed=seed,
                               transform=kind) & brain
            how = kind
        except Exception as err:  # noqa: BLE001  fall back on the rigidly aligned prior, and say so
            how = f"rigid (SyN failed: {err})"
    expected = fitted | csf
    if mirror == "restrict":
        # the prior is trusted where the other side's ventricle is visible (a clot is mostly
        # one-sided), or where both sides hold blood; an atlas larger than this scan's ventricles
        # would otherwise call parenchymal blood beside a ventricle intraventricular
        other = _dilate(mirror_lr(csf | hem, brain, c2), 3.0, zooms)
        expected = csf | (fitted & other)
    elif mirror:  # the other side's ventricle shows the blood-filled one
        expected |= mirror_lr(csf, brain, c2)
    blood = hem & _dilate(expected, margin_mm, zooms)
    if max_gap_mm is not None and csf.any():
        # blood in a ventricle stays continuous with that ventricle's remaining CSF
        blood &= ndi.distance_transform_edt(~csf, sampling=zooms) <= max_gap_mm
    vent = (csf & _dilate(fitted, 3.0, zooms)) | blood
    vml = float(np.prod(zooms)) / 1000
    return vent, {"_csf": csf, "PriorFit": how, "PriorVolume": round(float(prior.sum() * vml), 2),
                  "FittedPriorVolume": round(float(fitted.sum() * vml), 2),
                  "VisibleCSFVolume": round(float(csf.sum() * vml), 2)}


def native_ventricles(vent_t_img, reference, transform, hu, brain, hemorrhage):
    """Step 3: carry the template-grid ventricles to the scan and refine them on its density."""
    from .atlas import carry_labels

    zooms = _zooms(reference.affine)
    carried = np.asanyarray(carry_labels(vent_t_img, reference, transform, "linear").dataobj) >= 0.5
    brain = np.asarray(brain, bool)
    hem = np.asarray(hemorrhage, bool)
    out = np.zeros(carried.shape, bool)
    if not carried.any():
        return out
    box = _box_of(carried, np.ceil(4.0 / zooms).astype(int), carried.shape)  # only around the ventricles
    c, b = carried[box], brain[box]
    csf = csf_mask(np.asarray(hu[box], np.float32), b, zooms)
    out[box] = ((c & (csf | hem[box])) | (csf & _dilate(c, 1.5, zooms))) & b
    return out


def side_budget(ivh, vis, side, zooms=(1.0, 1.0, 1.0)):
    """Blood can only be intraventricular where ventricle is missing. ``side``: -1/+1 (left/right
    of the ventricular mid-plane, 0 off the map). On a side, the ventricle expected is the other
    side's (visible + intraventricular blood), so the IVH there is capped at that minus the side's
    own visible ventricle; a clot that only pushes a ventricle aside (mass effect: still fully
    visible) gets no IVH. Over the cap, the blood nearest the visible ventricle is kept.
    Returns (ivh, info)."""
    ivh = ivh.copy()
    n = {}
    for s in (-1, 1):
        n[s] = (int(np.count_nonzero(vis & (side == s))), int(np.count_nonzero(ivh & (side == s))))
    capped = {}
    for s in (-1, 1):
        other = -s
        budget = max(0, n[other][0] + n[other][1] - n[s][0])
        cand = ivh & (side == s)
        if n[s][1] > budget:
            dist = ndi.distance_transform_edt(~vis, sampling=zooms) if vis.any() else np.zeros(vis.shape)
            order = np.argsort(dist[cand], kind="stable")
            idx = np.flatnonzero(cand)
            drop = idx[order[budget:]]
            ivh.flat[drop] = False
            capped[s] = int(len(drop))
    return ivh, capped


def split(hemorrhage, ventricles):
    """dseg of the hemorrhage: 0 none, 1 ICH (parenchymal), 2 IVH (intraventricular)."""
    hem = np.asarray(hemorrhage, bool)
    out = np.zeros(hem.shape, np.uint8)
    out[hem] = 1
    out[hem & np.asarray(ventricles, bool)] = 2
    return out


def split_volumes(dseg, voxel_ml):
    dseg = np.asarray(dseg)
    return {"IntraventricularVolume": round(float(np.count_nonzero(dseg == 2) * voxel_ml), 3),
            "ParenchymalVolume": round(float(np.count_nonzero(dseg == 1) * voxel_ml), 3)}


# ------------------------------------------------- mirror method (default): native resolution


def template_to_native_ras(transform):
    """4x4 map of template world (RAS mm) to the scan's world, from the rigid ``*_xfm.mat``
    (ITK maps fixed = template points to moving = native points, in LPS)."""
    from .registration import _matrix

    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    return lps @ _matrix(transform) @ lps


def mirror_offset(csf_t, hem_t, brain_t, zooms, search=6, start=None):
    """The template-grid x index sum ``c2`` (x -> c2 - x) of the scan's ventricular mirror plane:
    the reflection that best overlays the visible ventricular CSF on itself, blood (and 3 mm
    around it) left out. Starts at the brain's centroid; searched +- ``search`` voxels (half
    voxel steps)."""
    if start is None:
        start = int(round(2 * np.argwhere(brain_t)[:, 0].mean())) if brain_t.any() else csf_t.shape[0] - 1
    keep = ~_dilate(hem_t, 3.0, zooms) & ~mirror_lr(_dilate(hem_t, 3.0, zooms), brain_t, start)
    a = csf_t & keep
    best, best_score = start, -1.0
    for c2 in range(start - 2 * search, start + 2 * search + 1):
        b = mirror_lr(csf_t, brain_t, c2) & keep
        total = a.sum() + b.sum()
        score = 2.0 * (a & b).sum() / total if total else 0.0
        if score > best_score:
            best, best_score = c2, score
    return best, float(best_score)


def _box_of(mask, pad, shape):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _native_box(mask_t, affine_t, native_affine, t2n, shape, pad_mm=4.0):
    """The native voxel box holding a template-grid mask (its corners mapped, plus pad_mm)."""
    idx = np.argwhere(mask_t)
    lo, hi = idx.min(0) - 1, idx.max(0) + 1
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    vox = (np.linalg.inv(native_affine) @ t2n @ np.asarray(affine_t, float) @ corners.T)[:3].T
    pad = pad_mm / _zooms(native_affine)
    a = np.maximum(np.floor(vox.min(0) - pad), 0).astype(int)
    b = np.minimum(np.ceil(vox.max(0) + pad) + 1, shape).astype(int)
    return tuple(slice(int(x), int(y)) for x, y in zip(a, b))


def _sample(volume, matrix, box, order=1, cval=0.0):
    """``volume`` sampled at ``matrix`` @ (voxel of the native box) for every voxel of ``box``."""
    grid = np.indices(tuple(s.stop - s.start for s in box), dtype=np.float32).reshape(3, -1)
    grid += np.array([s.start for s in box], np.float32)[:, None]
    pts = (np.asarray(matrix, float)[:3, :3] @ grid) + np.asarray(matrix, float)[:3, 3:4]
    out = ndi.map_coordinates(np.asarray(volume, np.float32), pts, order=order, mode="constant", cval=cval)
    return out.reshape(tuple(s.stop - s.start for s in box))


def mirror_split(scan_t, hem_t, prior_t, affine_t, reference, transform, hu, brain, hemorrhage,
                 search_mm=10.0):
    """Native ventricles by the mirror method; returns (ventricles, ivh) native masks and info.

    1. Template grid: visible ventricular CSF (as :func:`template_ventricles`, blood left out)
       and the mirror plane that best overlays it on itself (:func:`mirror_offset`).
    2. Native grid, in a box around the ventricles only: visible ventricular CSF = CSF-dense
       voxels (smoothed HU in ``CSF_HU``) where the carried template CSF (dilated 3 mm) lies.
    3. A blood voxel is intraventricular when its mirror image across that plane (the other
       hemisphere, at the scan's own resolution, linear interpolation >= 0.5) is visible
       ventricular CSF: the other side's ventricle shows the shape of the blood-filled one.
       Where the mirror image is blood too (both sides filled, or a midline ventricle), the
       atlas prior decides.
    """
    zooms_t = _zooms(affine_t)
    brain_t = template_brain(scan_t)
    prior = np.asarray(prior_t, bool) & brain_t
    hem_t = np.asarray(hem_t, bool)
    zone = _dilate_edt(prior, search_mm, zooms_t) & brain_t
    csf_t = _touching(csf_mask(scan_t, brain_t, zooms_t, min_depth_mm=6.0) & zone & ~hem_t, prior)
    c2, score = mirror_offset(csf_t, hem_t, brain_t, zooms_t)
    near_t = _dilate_edt(csf_t, 3.0, zooms_t)
    hem_n = np.asarray(hemorrhage, bool)
    brain_n = np.asarray(brain, bool)
    naff = np.asarray(reference.affine, float)
    shape = hem_n.shape
    t2n = template_to_native_ras(transform)
    n2t_vox = np.linalg.inv(np.asarray(affine_t, float)) @ np.linalg.inv(t2n) @ naff
    box = _native_box(near_t | prior, affine_t, naff, t2n, shape)
    zooms_n = _zooms(naff)
    # native maps in the box: visible ventricular CSF, the prior, blood
    near = _sample(near_t, n2t_vox, box) >= 0.5
    hem_b = hem_n[box]
    vis = csf_mask(np.asarray(hu[box], np.float32), brain_n[box], zooms_n) & near & ~hem_b
    # reflection across the template-grid plane x = c2 / 2 (voxels), as a native voxel map
    refl = np.eye(4)
    refl[0, 0], refl[0, 3] = -1.0, float(c2)
    n2n = np.linalg.inv(naff) @ t2n @ np.asarray(affine_t, float) @ refl @ n2t_vox
    ivh = np.zeros(shape, bool)
    vent = np.zeros(shape, bool)
    vent[box] = vis
    hb = hem_b & brain_n[box]
    if hb.any():
        sub = _box_of(hb, 1, hb.shape)
        full = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub))
        # vis and blood of the whole image sampled at the mirror points of this sub-box
        vis_full = np.zeros(shape, np.float32)
        vis_full[box] = vis
        mirrored = _sample(vis_full, n2n, full)
        mirrored_blood = _sample(hem_n.astype(np.float32), n2n, full)
        prior_here = _sample(prior, n2t_vox, full)
        inside = hem_n[full] & ((mirrored >= 0.5) | ((mirrored_blood >= 0.5) & (prior_here >= 0.5)))
        ivh[full] = inside
        vent[full] |= inside
    vml = float(np.prod(zooms_t)) / 1000
    return vent, ivh, {"PriorFit": "mirror", "MirrorPlaneX": round(float(c2) / 2, 1),
                       "MirrorOverlap": round(score, 3), "PriorVolume": round(float(prior.sum() * vml), 2),
                       "VisibleCSFVolume": round(float(csf_t.sum() * vml), 2)}


def _dilate_edt(mask, radius_mm, zooms):
    """Dilation by a ball, via the distance transform (much faster than a large structuring element)."""
    if radius_mm <= 0 or not mask.any():
        return mask
    return ndi.distance_transform_edt(~mask, sampling=zooms) <= radius_mm


def _budget_native(vent, hemorrhage, c2, affine_t, native_affine, transform):
    """:func:`side_budget` on the native grid, in the box holding the ventricles and the blood."""
    hem = np.asarray(hemorrhage, bool)
    ivh = vent & hem
    if not ivh.any():
        return vent, {}
    zooms = _zooms(native_affine)
    box = _box_of(vent | hem, 2, vent.shape)
    grid = np.indices(tuple(b.stop - b.start for b in box), dtype=np.float32)
    for axis, b in enumerate(box):
        grid[axis] += b.start
    n2t = np.linalg.inv(np.asarray(affine_t, float)) @ np.linalg.inv(template_to_native_ras(transform)) \
        @ np.asarray(native_affine, float)
    x_t = sum(float(n2t[0, c]) * grid[c] for c in range(3)) + float(n2t[0, 3])
    dx = x_t - 0.5 * c2
    side = np.where(dx <= -1.0, -1, np.where(dx >= 1.0, 1, 0)).astype(np.int8)  # midline: no budget
    vis = vent[box] & ~hem[box]
    kept, capped = side_budget(ivh[box], vis, side, zooms)
    out = vent.copy()
    out[box] = vis | kept
    return out, capped


def split_hemorrhage(scan_t_img, prob_t, reference, transform, hu, brain, hemorrhage, threshold=0.5,
                     prior_t=None, deform=False, seed=1, method="prior", budget=False, **options):
    """The whole split for one scan; returns (dseg array on the native grid, ventricles, info).

    scan_t_img: the network input (template grid); prob_t: the hemorrhage probability on the
    template grid; reference/transform: native CT image and the rigid native -> template transform;
    hu, brain, hemorrhage: native arrays (the hemorrhage mask is the one the volumes report).
    method: "prior" (default: the atlas prior refined on density, :func:`template_ventricles` +
    :func:`native_ventricles`, ``deform`` applies there; then, with ``budget``, the side budget of
    :func:`side_budget`) or "mirror" (:func:`mirror_split`, kept for comparison).
    """
    from .atlas import ventricle_prior

    scan_t = np.asanyarray(scan_t_img.dataobj).astype(np.float32)
    prior = ventricle_prior() if prior_t is None else np.asarray(prior_t, bool)
    hem_t = np.asarray(prob_t) >= threshold
    if method == "mirror":
        vent, ivh, info = mirror_split(scan_t, hem_t, prior, scan_t_img.affine, reference, transform, hu,
                                       brain, hemorrhage, **options)
        how = METHOD_MIRROR
    elif method == "prior":
        vent_t, info = template_ventricles(scan_t, hem_t, prior, scan_t_img.affine, deform=deform, seed=seed,
                                           plane=budget, **options)
        vent_img = nib.Nifti1Image(vent_t.astype(np.float32), scan_t_img.affine)
        vent = native_ventricles(vent_img, reference, transform, hu, brain, hemorrhage)
        if budget:
            vent, capped = _budget_native(vent, hemorrhage, info.pop("MirrorIndexSum"), scan_t_img.affine,
                                          reference.affine, transform)
            info["CappedBySide"] = {("left" if k < 0 else "right"): v for k, v in capped.items()}
        how = METHOD
    else:
        raise ValueError(f"method must be 'mirror' or 'prior', not {method!r}")
    dseg = split(hemorrhage, vent)
    vml = float(np.prod(_zooms(reference.affine))) / 1000
    info = {**split_volumes(dseg, vml), "VentricleVolume": round(float(vent.sum() * vml), 3),
            "Method": how, "Estimate": True, **info}
    return dseg, vent, info
