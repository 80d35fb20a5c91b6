"""The measures a stroke trial reports beside the clot volume, for one scan.

Location (deepbleed_bids.location), perihematomal edema (deepbleed_bids.edema), midline
shift (deepbleed_bids.midline) and the ICH score (deepbleed_bids.ichscore), from the native
CT, its brain and hemorrhage masks, the BLAST-CT atlas carried to the scan and, when the
IVH split ran, its intraventricular part. Every measure is an ESTIMATE, validated only on
synthetic cases in a real head (benchmarks/bench_trial_measures.py); a measure that cannot
be made (e.g. no skull in the field of view) is None with the reason, never fatal.

Pure numerics: no nipype.
"""
import numpy as np

from . import edema as E
from . import ichscore as S
from . import location as L
from . import midline as M
from .atlas import SOURCE as ATLAS_SOURCE
from .atlas import VENTRICLE_LABEL
from .nifti import voxel_volume_ml


def trial_measures(hu, affine, brain, hemorrhage, labels, names, ivh=None, transform=None, clinical=None,
                   ivh_ml=None):
    """(edema mask, record) of one scan; record keys: Location, Edema, Midline, ICHScore, Problems."""
    hu = np.asarray(hu, np.float32)
    brain = np.asarray(brain, bool)
    hem = np.asarray(hemorrhage, bool)
    labels = np.asarray(labels)
    vml = voxel_volume_ml(affine)
    volume_ml = round(float(np.count_nonzero(hem) * vml), 3)  # the reported HemorrhageVolume
    problems = []
    location = L.hemorrhage_location(hem, labels, brain, vml, names, ivh)
    location.update(Atlas=ATLAS_SOURCE, Estimate=True)
    ventricles = labels == VENTRICLE_LABEL
    plane = None
    try:
        init = M.plane_from_transform(transform) if transform is not None else None
        plane = M.skull_plane(hu, affine, brain, init)
    except (ValueError, RuntimeError) as err:
        problems.append(f"mid-sagittal plane: {err}")
    edema, edema_rec = E.perihematomal_edema(hu, brain, hem, affine, ventricles=ventricles, plane=plane)
    if plane is not None:
        midline = M.midline_shift(hu, affine, brain, ventricles, plane=plane)
        if midline["MidlineShift"] is None:
            problems.append("midline shift: no septum pellucidum or third ventricle found near the "
                            "mid-sagittal plane (effaced ventricles, or out of the field of view)")
    else:
        midline = {"MidlineShift": None, "MidlineShiftUnits": "mm"}
    midline["Estimate"] = True
    clinical = clinical or {}
    if ivh_ml is None:
        ivh_ml = location["ClassVolumes"]["intraventricular"]
    try:
        score = S.ich_score(volume_ml, ivh_ml, location["Class"], clinical.get("gcs"), clinical.get("age"))
    except ValueError as err:  # an off-scale gcs / age: the imaging items stay
        problems.append(f"ICH score: {err}")
        score = S.ich_score(volume_ml, ivh_ml, location["Class"])
    return edema, {"Location": location, "Edema": edema_rec, "Midline": midline, "ICHScore": score,
                   "Problems": problems}


def sidecar_fields(record):
    """The hemorrhage sidecar's fields for the trial measures (empty when they did not run)."""
    if not record:
        return {}
    loc, ed, mid, score = (record.get(k) or {} for k in ("Location", "Edema", "Midline", "ICHScore"))
    return {
        "LocationClass": loc.get("Class"),
        "LargestRegion": loc.get("LargestRegion"),
        "HemorrhageLocation": {**loc, "Note": "ESTIMATE: BLAST-CT atlas carried rigidly to the scan"},
        "EdemaVolume": ed.get("EdemaVolume"), "EdemaVolumeUnits": "mL",
        "RelativeEdema": ed.get("RelativeEdema"),
        "PerihematomalEdema": {**{k: v for k, v in ed.items() if k not in ("EdemaVolume", "RelativeEdema")},
                               "Note": "ESTIMATE (label-free, after Volbers et al. 2018); validated on "
                                       "synthetic rims only"},
        "MidlineShift": mid.get("MidlineShift"), "MidlineShiftUnits": "mm",
        "MidlineShiftDirection": mid.get("MidlineShiftDirection"),
        "MidlineShiftMeasurement": {k: v for k, v in mid.items()
                                    if k not in ("MidlineShift", "MidlineShiftUnits", "MidlineShiftDirection")},
        "ICHScore": score,
        "TrialMeasuresProblems": record.get("Problems", []),
    }
