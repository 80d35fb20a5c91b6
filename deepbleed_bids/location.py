"""Where the hemorrhage is: volume per BLAST-CT atlas region and a location class.

The atlas (deepbleed_bids.atlas, on the template grid) is carried to the scan through
the participant-level rigid transform (``carry_labels``) and intersected with the
scan's brain mask. Per scan: hemorrhage volume in every region, the region holding
the largest share, the side, and a class:

* ``deep``: basal ganglia, lentiform nucleus, caudate, thalamus, basal forebrain and
  the insula label (in this atlas it covers the claustrum / external capsule beside
  the putamen, where "deep" bleeds extend);
* ``lobar``: frontal, parietal, temporal, occipital lobes and hippocampus;
* ``infratentorial``: brain stem and cerebellum;
* ``intraventricular``: when less than ``PRIMARY_IVH_PARENCHYMA`` of the hemorrhage lies
  outside the ventricles (primary IVH); otherwise the class of the parenchymal part
  holding the most blood (an IVH extension does not change the origin).

The ventricles are the IVH part of the hemorrhage split when given (deepbleed_bids.ventricles),
else the atlas ventricle label. Hemorrhage in the brain but in no atlas region (the
atlas is registered rigidly to the scan: its border misses a few mm) is counted as
``Unlabelled`` and takes no part in the class. An ESTIMATE: the atlas follows the
brain rigidly, not the mass effect of a large clot.

Pure numpy: no nipype.
"""
import numpy as np

DEEP = ("BasalForebrain", "BasalGanglia", "lentiform", "Caudate", "Thalamus", "Insula")
INFRATENTORIAL = ("BrainStem", "Cerebellum")
LOBAR = ("Lobe", "Hippocampus")
CLASSES = ("deep", "lobar", "infratentorial", "intraventricular")
PRIMARY_IVH_PARENCHYMA = 0.2  # < 20 % outside the ventricles: primary intraventricular


def region_class(name):
    """The location class of an atlas region name."""
    if name == "Ventricle":
        return "intraventricular"
    low = name.lower()
    for keys, cls in ((INFRATENTORIAL, "infratentorial"), (DEEP, "deep"), (LOBAR, "lobar")):
        if any(k.lower() in low for k in keys):
            return cls
    raise ValueError(f"atlas region {name!r} has no location class")


def region_side(name):
    return "left" if name.startswith("Left") else ("right" if name.startswith("Right") else "midline")


def hemorrhage_location(hemorrhage, labels, brain, voxel_ml, names, ivh=None):
    """The location record of one scan (see the module docstring).

    hemorrhage, brain: boolean arrays of the native grid; labels: the atlas carried to it
    (int); names: {index: name}; ivh: optional boolean IVH part (overrides the atlas
    ventricle label for the intraventricular share).
    """
    hem = np.asarray(hemorrhage, bool) & np.asarray(brain, bool)
    labels = np.asarray(labels)
    total = float(np.count_nonzero(hem) * voxel_ml)
    vent_index = next((i for i, n in names.items() if n == "Ventricle"), None)
    vent = np.asarray(ivh, bool) & hem if ivh is not None else (labels == vent_index) & hem
    counts = np.bincount(labels[hem & ~vent].ravel().astype(np.int64), minlength=max(names) + 1)
    regions = {names[i]: round(float(c * voxel_ml), 3) for i, c in enumerate(counts)
               if c and i in names and i != vent_index}
    # with the split's IVH, blood on the atlas ventricle label but outside the IVH part has no
    # parenchymal region: it is unlabelled, not lost
    stray = counts[vent_index] if vent_index is not None and vent_index < len(counts) else 0
    unlabelled = round(float((counts[0] + stray) * voxel_ml), 3)
    regions = dict(sorted(regions.items(), key=lambda kv: -kv[1]))
    vent_ml = round(float(np.count_nonzero(vent) * voxel_ml), 3)
    if vent_ml:
        regions["Ventricle"] = vent_ml
    per_class = {c: 0.0 for c in CLASSES}
    for name, ml in regions.items():
        per_class[region_class(name)] += ml
    record = {"HemorrhageInBrainVolume": round(total, 3), "RegionVolumes": regions, "UnlabelledVolume": unlabelled,
              "ClassVolumes": {c: round(v, 3) for c, v in per_class.items()},
              "LargestRegion": None, "LargestRegionShare": None, "Class": None, "Side": None}
    if total == 0 or not regions:
        record["Class"] = "none" if total == 0 else None
        return record
    largest = max(regions, key=regions.get)
    record["LargestRegion"] = largest
    record["LargestRegionShare"] = round(regions[largest] / total, 3)
    parenchymal = {c: v for c, v in per_class.items() if c != "intraventricular"}
    if sum(parenchymal.values()) < PRIMARY_IVH_PARENCHYMA * (sum(parenchymal.values()) + vent_ml):
        record["Class"] = "intraventricular"
    else:
        record["Class"] = max(parenchymal, key=parenchymal.get)
    sides = {"left": 0.0, "right": 0.0}
    for name, ml in regions.items():
        side = region_side(name)
        if side in sides:
            sides[side] += ml
    if sum(sides.values()):
        left_share = sides["left"] / sum(sides.values())
        record["Side"] = "left" if left_share >= 0.8 else ("right" if left_share <= 0.2 else "bilateral")
    return record
