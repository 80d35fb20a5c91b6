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
   may be larger than this scan's (here 58 vs 37 mL), which would call parenchymal
   blood beside a ventricle intraventricular. So the prior is trusted only where
   the other hemisphere's mirror image shows CSF or blood (a clot is mostly
   one-sided; ``mirror="restrict"``). Template-grid ventricles = visible CSF near
   the prior + hemorrhage within ``margin_mm`` of (visible CSF or the trusted prior).
   The template-grid brain is the network input's non-zero voxels with holes filled (CSF
   voxels of exactly 0 HU are 0 there too; unfilled, they made the ventricles look shallow
   and the depth rule dropped over half of the visible ventricular CSF).
   Mass effect: a large clot pushes the ventricles aside and the rigid prior then lies on the
   clot. With ``deform="auto"`` (default) the prior is first fitted to the visible CSF with ANTs
   SyN, the hemorrhage (and a 3 mm margin) masked out of the metric, when >= ``AUTO_DEFORM_ML``
   of blood lies outside the prior (only a large mass displaces; ~20 s then, ~2 s otherwise).
   Work is done in a box around the prior, not on the whole 128^3 grid. The fit is the weak spot
   (inside the masked clot its shape is only extrapolated): when it runs, the split also fits the
   prior with the blood read as not-ventricle (it only pushed them) and reports both IVH volumes
   (info["IntraventricularVolumeRange"]) with a Caution; the masked reading is the one reported.
3. Native refinement: the template-grid ventricles carried to the scan through
   the participant-level rigid transform (linear, >= 0.5), kept where the scan
   shows CSF or blood, plus CSF voxels within 1.5 mm of them.
4. Split: IVH = hemorrhage inside the ventricles; ICH (parenchymal) = the rest.

Pure numerics (numpy/scipy, antspyx for the registration and resampling): no nipype.
"""
import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .nifti import voxel_sizes, voxel_volume_ml
from .utils import ants_seed

AUTO_DEFORM_ML = 20.0  # deform="auto": SyN fit of the prior when this much blood lies outside it
CSF_HU = (-5.0, 16.0)  # ventricular CSF after 1 mm smoothing; parenchyma is 20-45 HU
DSEG_LABELS = {1: ("ICH", "parenchymal hemorrhage (intracerebral, outside the ventricles) - estimate"),
               2: ("IVH", "intraventricular hemorrhage (inside the estimated ventricles) - estimate")}
METHOD = ("atlas ventricle prior (BLAST-CT label 31 on the DeepBleed template), trusted where the other "
          "hemisphere shows CSF or blood, fitted to the scan's visible CSF by ANTs SyN with the hemorrhage "
          "masked out when >= 20 mL of blood lies outside it (mass effect; then also fitted with the blood as "
          "not-ventricle, the lower IVH reading), carried to the scan through the rigid transform and refined "
          "on its CSF density; ESTIMATE, not validated on labelled IVH")


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
    # seeded: the same fit on every re-run with the same thread count (--omp-nthreads)
    with ants_seed(seed):
        reg = ants.registration(fixed, moving, type_of_transform=transform,
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


def template_ventricles(scan_t, hemorrhage_t, prior_t, affine_t, search_mm=10.0, **options):
    """Ventricles of the scan on the template grid (step 2 of the module docstring); (mask, info).

    Computed in the box around the prior (+ search_mm + 10 mm, and its mirror image), which
    holds every voxel the result can reach: 5-10x fewer voxels than the 128^3 grid."""
    scan_t = np.asarray(scan_t, np.float32)
    brain = template_brain(scan_t)
    prior = np.asarray(prior_t, bool) & brain
    zooms = voxel_sizes(affine_t)
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
    return out, info


def _template_ventricles(scan_t, hem, prior, brain, affine_t, c2, search_mm=10.0, deform=False, seed=1,
                         mirror="restrict", margin_mm=1.5, max_gap_mm=None, mask_blood=True):
    zooms = voxel_sizes(affine_t)
    zone = _dilate(prior, search_mm, zooms) & brain
    csf = csf_mask(scan_t, brain, zooms, min_depth_mm=6.0) & zone & ~hem
    csf = _touching(csf, prior)
    fitted, how = prior, "rigid"
    if deform == "auto":
        # mass effect needs a mass: a deformable fit only when much blood lies outside the prior
        outside = float(np.count_nonzero(hem & ~_dilate(prior, 3.0, zooms)) * voxel_volume_ml(affine_t))
        deform = "SyN" if outside >= AUTO_DEFORM_ML else False
        how = f"rigid ({outside:.0f} mL of blood outside the prior < {AUTO_DEFORM_ML:g} mL: no mass effect fit)"
    if deform and csf.any():
        try:
            kind = deform if isinstance(deform, str) else "SyN"
            # mask_blood: the blood may fill ventricle (left out of the metric); else it reads as
            # not-ventricle, i.e. it only pushed the ventricles aside
            exclude = _dilate(hem, 3.0, zooms) if mask_blood else None
            fitted = fit_prior(prior, csf, affine_t, exclude=exclude, seed=seed, transform=kind) & brain
            how = kind if mask_blood else f"{kind} (blood as not-ventricle)"
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
    vml = voxel_volume_ml(affine_t)
    info = {"PriorFit": how, "PriorVolume": round(float(prior.sum() * vml), 2),
            "FittedPriorVolume": round(float(fitted.sum() * vml), 2),
            "VisibleCSFVolume": round(float(csf.sum() * vml), 2)}
    if fitted is not prior:
        # measured on synthetic pushes (README): the fitted prior can still lie on the clot
        info["Caution"] = "mass-effect fit ran: review the IVH part"
    return vent, info


def native_ventricles(vent_t_img, reference, transform, hu, brain, hemorrhage):
    """Step 3: carry the template-grid ventricles to the scan and refine them on its density."""
    from .atlas import carry_labels

    zooms = voxel_sizes(reference.affine)
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


def _box_of(mask, pad, shape):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def split_hemorrhage(scan_t_img, prob_t, reference, transform, hu, brain, hemorrhage, threshold=0.5,
                     prior_t=None, deform="auto", seed=1, **options):
    """The whole split for one scan; returns (dseg array on the native grid, ventricles, info).

    scan_t_img: the network input (template grid); prob_t: the hemorrhage probability on the
    template grid; reference/transform: native CT image and the rigid native -> template transform;
    hu, brain, hemorrhage: native arrays (the hemorrhage mask is the one the volumes report).
    deform: "auto" (a SyN fit of the prior when >= AUTO_DEFORM_ML of blood lies outside it),
    "SyN"/"Affine" (always) or False (never). When that fit runs, info holds a "Caution" and
    "IntraventricularVolumeRange": the IVH read with the blood masked out of the fit (may fill
    the displaced ventricles; the reported one) and read as not-ventricle (only pushed them).
    """
    from .atlas import ventricle_prior

    scan_t = np.asanyarray(scan_t_img.dataobj).astype(np.float32)
    prior = ventricle_prior() if prior_t is None else np.asarray(prior_t, bool)
    hem_t = np.asarray(prob_t) >= threshold

    def native_split(fit, **how):
        """Template-grid ventricles with this fit, carried to the scan: (dseg, ventricles, info)."""
        vent_t, info_t = template_ventricles(scan_t, hem_t, prior, scan_t_img.affine, deform=fit, seed=seed,
                                             **how, **options)
        vent_img = nib.Nifti1Image(vent_t.astype(np.float32), scan_t_img.affine)
        vent_n = native_ventricles(vent_img, reference, transform, hu, brain, hemorrhage)
        return split(hemorrhage, vent_n), vent_n, info_t

    dseg, vent, info = native_split(deform)
    vml = voxel_volume_ml(reference)
    info = {**split_volumes(dseg, vml), "VentricleVolume": round(float(vent.sum() * vml), 3),
            "Method": METHOD, "Estimate": True, **info}
    if "Caution" in info:
        # the mass-effect fit ran (PriorFit names its transform): the same blood read the other
        # way (it pushed the ventricles aside and fills none of them); neither reading can be told
        # from the image here (README: each fails on its own synthetic cases)
        alt = split_volumes(native_split(info["PriorFit"], mask_blood=False)[0], vml)["IntraventricularVolume"]
        ivh = info["IntraventricularVolume"]
        info["IntraventricularVolumeRange"] = [min(ivh, alt), max(ivh, alt)]
        info["Caution"] = (f"mass-effect fit ran: IVH {ivh:.1f} mL if the blood beside the displaced ventricles "
                           f"fills them (reported), {alt:.1f} mL if it only pushed them aside; on synthetic "
                           "cases either reading can be wrong (README); review the IVH part")
    return dseg, vent, info
