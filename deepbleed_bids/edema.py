"""Perihematomal edema (PHE), label-free: an automated version of Volbers et al. 2018.

Volbers B et al. (Eur J Neurol 2018; semi-automatic PHE volumetry) count the voxels of
5-33 HU adjacent to the hematoma inside a reader-drawn region. Here the region is made
automatically:

1. the CT is smoothed (Gaussian, ``sigma_mm`` = 1 mm, the clot left out) to tame scanner noise;
2. candidates: brain voxels of ``HU_RANGE`` (5-33 HU) within ``max_distance_mm`` of the
   clot, not the clot itself, not CSF (smoothed HU < 10 anywhere and 1.5 mm around it;
   the ventricles given, dilated 2 mm, where darker than 15 HU) and, when the mid-sagittal plane is known, at least ``min_contrast_hu``
   darker than the mirror-image parenchyma across the plane (normal white matter is
   25-32 HU, inside Volbers' window: this contralateral check keeps normal tissue out);
3. the edema is the candidates connected (26-neighbourhood) to the clot's 1.5 mm shell.

``EdemaVolume`` (mL) and the relative edema (edema / clot volume). An ESTIMATE: validated
only on synthetic hypodense rims in a real head (benchmarks/bench_trial_measures.py);
old infarcts, leukoaraiosis or beam hardening next to the clot are counted as edema;
edema farther than ``max_distance_mm`` from the clot is not.

Pure numpy/scipy: no nipype.
"""
import numpy as np
from scipy import ndimage as ndi

from .nifti import bbox, voxel_sizes, voxel_volume_ml
from .qc import distance_mm

HU_RANGE = (5.0, 33.0)  # Volbers et al. 2018
MAX_DISTANCE_MM = 10.0
MIN_CONTRAST_HU = 4.0
REFERENCE_SIGMA_MM = 2.0  # the contralateral reference is a local tissue mean, not one noisy voxel
CSF_HU = 10.0  # smoothed CSF; edema stays above ~12 HU
CSF_BORDER_MM = 1.5
PARENCHYMA_HU = (15.0, 60.0)  # what a mirror voxel must be to serve as the reference
REFERENCE = ("Volbers B et al. Semi-automatic volumetric assessment of perihemorrhagic edema with "
             "computed tomography. Eur J Neurol 2018")


def _mirror_values(smooth_full, affine, box_lo, shape, normal, offset):
    """The smoothed HU at the mirror image (across the plane) of every voxel of the box."""
    affine = np.asarray(affine, float)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1) + np.asarray(box_lo, np.float32)[:, None]
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    world -= 2.0 * (normal @ world - offset)[None] * normal[:, None]
    inv = np.linalg.inv(affine)
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    return ndi.map_coordinates(smooth_full, vox, order=1, mode="constant", cval=-1000.0).reshape(shape)


def perihematomal_edema(hu, brain, clot, affine, ventricles=None, plane=None, hu_range=HU_RANGE,
                        max_distance_mm=MAX_DISTANCE_MM, min_contrast_hu=MIN_CONTRAST_HU, sigma_mm=1.0):
    """(edema mask, record) on the scan's grid; see the module docstring.

    hu, brain, clot: native arrays; ventricles: optional boolean CSF-space map; plane:
    optional (normal, offset) of the mid-sagittal plane (deepbleed_bids.midline.skull_plane).
    """
    affine = np.asarray(affine, float)
    zooms = voxel_sizes(affine)
    brain = np.asarray(brain, bool)
    clot = np.asarray(clot, bool) & brain
    edema = np.zeros(brain.shape, bool)
    vml = voxel_volume_ml(affine)
    clot_ml = float(clot.sum() * vml)
    record = {"EdemaVolume": 0.0, "EdemaVolumeUnits": "mL", "RelativeEdema": None,
              "ClotVolume": round(clot_ml, 3),
              "Method": {"HURange": list(hu_range), "MaxDistanceMM": max_distance_mm,
                         "SmoothingMM": sigma_mm,
                         "ContralateralContrastHU": min_contrast_hu if plane is not None else None,
                         "CSFExcluded": ventricles is not None, "Reference": REFERENCE},
              "Estimate": True}
    if not clot.any():
        return edema, record
    pad = np.ceil((max_distance_mm + 4 * sigma_mm + 2) / zooms).astype(int)
    box = bbox(clot, pad)
    lo = np.array([s.start for s in box])
    hu_f = np.asarray(hu, np.float32)
    c, b = clot[box], brain[box]
    # smoothing leaves the clot out (normalised convolution): blood must not brighten the rim
    keep = (~c).astype(np.float32)
    smooth_box = ndi.gaussian_filter(hu_f[box] * keep, sigma_mm / zooms) / np.maximum(
        ndi.gaussian_filter(keep, sigma_mm / zooms), 1e-3)
    dist = distance_mm(~c, zooms)  # the edt package: ~5x scipy's time, same distances
    cand = b & ~c & (dist <= max_distance_mm) & (smooth_box >= hu_range[0]) & (smooth_box <= hu_range[1])
    # CSF anywhere (sulci, cisterns, ventricles: smoothed < CSF_HU) and its partial-volume
    # border; the ventricles given (atlas / split), dilated, where darker than 15 HU
    csf = b & (smooth_box < CSF_HU)
    cand &= distance_mm(~csf, zooms) > CSF_BORDER_MM
    if ventricles is not None:
        v = np.asarray(ventricles, bool)[box]
        v = distance_mm(~v, zooms) <= 2.0
        cand &= ~(v & (smooth_box < 15.0))
    if plane is not None and min_contrast_hu is not None:
        smooth_full = ndi.gaussian_filter(hu_f, REFERENCE_SIGMA_MM / zooms)
        mirror = _mirror_values(smooth_full, affine, lo, c.shape, np.asarray(plane[0], float), float(plane[1]))
        tissue = b & ~c & (smooth_box >= PARENCHYMA_HU[0]) & (smooth_box <= PARENCHYMA_HU[1]) & (dist > 20)
        fallback = float(np.median(smooth_box[tissue])) if tissue.sum() > 100 else 30.0
        # mirror darker than parenchyma (CSF, sulci, cisterns): symmetric low density is no
        # edema, so the mirror stays the reference; brighter than parenchyma (clot crossing
        # the midline, bone) or outside the image: the scan's distant parenchyma instead
        reference = np.where((mirror >= -50) & (mirror <= PARENCHYMA_HU[1]), mirror, fallback)
        cand &= reference - smooth_box >= min_contrast_hu
    shell = b & ~c & (dist <= 1.5)
    lab, n = ndi.label(cand, structure=np.ones((3, 3, 3)))
    if n:
        keep = np.unique(lab[shell & cand])
        edema[box] = np.isin(lab, keep[keep > 0])
    edema_ml = float(edema.sum() * vml)
    record.update(EdemaVolume=round(edema_ml, 3),
                  RelativeEdema=round(edema_ml / clot_ml, 3) if clot_ml > 0 else None)
    return edema, record
