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

from .nifti import voxel_sizes, voxel_volume_ml

CSF_HU = (-5.0, 16.0)  # ventricular CSF after 1 mm smoothing; parenchyma is 20-45 HU
DSEG_LABELS = {1: ("ICH", "parenchymal hemorrhage (intracerebral, outside the ventricles) - estimate"),
               2: ("IVH", "intraventricular hemorrhage (inside the estimated ventricles) - estimate")}
METHOD = ("atlas ventricle prior (BLAST-CT label 31 on the DeepBleed template) fitted to the scan's CSF "
          "by ANTs SyN with the hemorrhage masked out, carried to the scan through the rigid transform "
          "and refined on its CSF density; ESTIMATE, not validated on labelled IVH")


def _ball(radius_mm, zooms):
    r = np.floor(radius_mm / np.asarray(zooms)).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g * z) ** 2 for g, z in zip(grid, zooms)) <= radius_mm ** 2 + 1e-6


def _dilate(mask, radius_mm, zooms):
    if radius_mm <= 0:
        return mask
    return ndi.binary_dilation(mask, _ball(radius_mm, zooms))


def csf_mask(hu, brain, zooms, hu_range=CSF_HU, sigma_mm=1.0, min_depth_mm=0.0):
    """CSF-dense voxels of the brain (smoothed HU within hu_range), optionally deep only."""
    smooth = ndi.gaussian_filter(np.asarray(hu, np.float32), sigma_mm / np.asarray(zooms))
    out = brain & (smooth >= hu_range[0]) & (smooth <= hu_range[1])
    if min_depth_mm > 0:
        out &= ndi.distance_transform_edt(brain, sampling=zooms) >= min_depth_mm
    return out


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


def mirror_lr(mask, brain):
    """Mirror a template-grid mask about the scan's own mid-sagittal plane (brain centroid in x)."""
    c2 = int(round(2 * np.argwhere(brain)[:, 0].mean())) if brain.any() else mask.shape[0] - 1
    src = np.arange(mask.shape[0])
    dst = c2 - src
    ok = (dst >= 0) & (dst < mask.shape[0])
    out = np.zeros_like(mask)
    out[dst[ok]] = mask[src[ok]]
    return out


def template_ventricles(scan_t, hemorrhage_t, prior_t, affine_t, search_mm=10.0, deform=False, seed=1,
                        mirror="restrict", margin_mm=1.5, max_gap_mm=None):
    """Ventricles of the scan on the template grid (step 2 of the module docstring); (mask, info)."""
    zooms = voxel_sizes(affine_t)
    brain = np.asarray(scan_t) != 0
    prior = np.asarray(prior_t, bool) & brain
    hem = np.asarray(hemorrhage_t, bool)
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
        other = _dilate(mirror_lr(csf | hem, brain), 3.0, zooms)
        expected = csf | (fitted & other)
    elif mirror:  # the other side's ventricle shows the blood-filled one
        expected |= mirror_lr(csf, brain)
    blood = hem & _dilate(expected, margin_mm, zooms)
    if max_gap_mm is not None and csf.any():
        # blood in a ventricle stays continuous with that ventricle's remaining CSF
        blood &= ndi.distance_transform_edt(~csf, sampling=zooms) <= max_gap_mm
    vent = (csf & _dilate(fitted, 3.0, zooms)) | blood
    vml = voxel_volume_ml(affine_t)
    return vent, {"PriorFit": how, "PriorVolume": round(float(prior.sum() * vml), 2),
                  "FittedPriorVolume": round(float(fitted.sum() * vml), 2),
                  "VisibleCSFVolume": round(float(csf.sum() * vml), 2)}


def native_ventricles(vent_t_img, reference, transform, hu, brain, hemorrhage):
    """Step 3: carry the template-grid ventricles to the scan and refine them on its density."""
    from .atlas import carry_labels

    zooms = voxel_sizes(reference.affine)
    carried = np.asanyarray(carry_labels(vent_t_img, reference, transform, "linear").dataobj) >= 0.5
    brain = np.asarray(brain, bool)
    hem = np.asarray(hemorrhage, bool)
    csf = csf_mask(hu, brain, zooms)
    return ((carried & (csf | hem)) | (csf & _dilate(carried, 1.5, zooms))) & brain


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


def split_hemorrhage(scan_t_img, prob_t, reference, transform, hu, brain, hemorrhage, threshold=0.5,
                     prior_t=None, deform=False, seed=1, **options):
    """The whole split for one scan; returns (dseg array on the native grid, ventricles, info).

    scan_t_img: the network input (template grid); prob_t: the hemorrhage probability on the
    template grid; reference/transform: native CT image and the rigid native -> template transform;
    hu, brain, hemorrhage: native arrays (the hemorrhage mask is the one the volumes report).
    """
    from .atlas import ventricle_prior

    scan_t = np.asanyarray(scan_t_img.dataobj).astype(np.float32)
    prior = ventricle_prior() if prior_t is None else np.asarray(prior_t, bool)
    vent_t, info = template_ventricles(scan_t, np.asarray(prob_t) >= threshold, prior, scan_t_img.affine,
                                       deform=deform, seed=seed, **options)
    vent_img = nib.Nifti1Image(vent_t.astype(np.float32), scan_t_img.affine)
    vent = native_ventricles(vent_img, reference, transform, hu, brain, hemorrhage)
    dseg = split(hemorrhage, vent)
    vml = voxel_volume_ml(reference)
    info = {**split_volumes(dseg, vml), "VentricleVolume": round(float(vent.sum() * vml), 3),
            "Method": METHOD, "Estimate": True, **info}
    return dseg, vent, info
