"""The BLAST-CT brain atlas on the DeepBleed template grid, and carrying template labels to a scan.

The atlas (Monteiro et al., Lancet Digital Health 2020; BLAST-CT repository,
Apache-2.0) is a 31-region partition of space around its own CT template, which
is not aligned with the DeepBleed template in world coordinates. It was brought
onto the 128^3, 1.5 mm DeepBleed grid ONCE by :func:`register_atlas` and the
result ships in ``deepbleed_bids/data/atlas/`` with the license and a JSON
sidecar recording how (``python -m deepbleed_bids.atlas SOURCE_DIR`` remakes it):

* moving: the atlas's brain mask (``ct_template_mask.nii.gz``) plus its
  ventricle label (31, Gaussian-smoothed); fixed: the DeepBleed template's brain
  (template != 0) plus the template's dark ventricles (smoothed HU < 12 at least
  8 mm inside the brain, largest component); ANTs ``SyN`` (affine then
  deformable), mean squares on both channels, seed 1;
* labels resampled with ``genericLabel`` and restricted to the template brain.

Measured at build time (see the sidecar): brain-mask Dice 0.99; Dice of label
31 with the template's dark ventricles 0.75 (mask alone gave 0.74). Label 31 is
the ventricle prior of :mod:`deepbleed_bids.ventricles`; the other labels serve
hemorrhage location.

Pure numerics plus antspyx: no nipype.
"""
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .nifti import voxel_volume_ml
from .utils import ants_seed, sha256_file

ATLAS_DIR = Path(__file__).parent / "data" / "atlas"
ATLAS_FILE = ATLAS_DIR / "tpl-DeepBleedCT_atlas-BLASTCT_dseg.nii.gz"
LABELS_FILE = ATLAS_DIR / "tpl-DeepBleedCT_atlas-BLASTCT_dseg.tsv"
VENTRICLE_LABEL = 31
SOURCE = ("BLAST-CT (github.com/biomedia-mira/blast-ct, commit ccfa6efb6ee269b97d971a96658d78953381c08e, "
          "blast_ct/data/localisation_files/); Monteiro M et al., Lancet Digital Health 2020;2:e314-22; "
          "Apache-2.0")



LICENSE_HEADER = """BLAST-CT atlas, registered onto the DeepBleed template grid (deepbleed-bids)

Source: biomedia-mira/blast-ct at commit ccfa6efb6ee269b97d971a96658d78953381c08e,
blast_ct/data/localisation_files/atlas_template_space.nii.gz (labels in atlas_labels.csv).
Copyright the BLAST-CT authors; cite Monteiro et al., Lancet Digital Health 2020.
Modified by deepbleed-bids: registered (ANTs SyN) and resampled onto the 128^3, 1.5 mm
DeepBleed template grid; how is recorded in tpl-DeepBleedCT_atlas-BLASTCT_dseg.json and
README.md beside this file. Distributed under the Apache License 2.0, whose text follows.

"""

def atlas_image():
    """The atlas labels on the DeepBleed template grid (int16 NIfTI)."""
    if not ATLAS_FILE.is_file():
        raise FileNotFoundError(f"{ATLAS_FILE}: the packaged atlas is missing; reinstall deepbleed-bids "
                                "or rebuild it with `python -m deepbleed_bids.atlas SOURCE_DIR`.")
    return nib.load(str(ATLAS_FILE))


def atlas_labels():
    """``{index: name}`` of the atlas labels."""
    with open(LABELS_FILE, newline="") as fh:
        return {int(r["index"]): r["name"] for r in csv.DictReader(fh, delimiter="\t")}


def ventricle_prior(atlas=None):
    """Boolean ventricle prior (atlas label 31) on the template grid."""
    atlas = atlas_image() if atlas is None else atlas
    return np.asanyarray(atlas.dataobj) == VENTRICLE_LABEL


def carry_labels(labels_template, reference, transform, interpolation="genericLabel", within=None):
    """Carry a template-grid image (labels by default) onto a scan's native grid.

    ``labels_template``: NIfTI on the template grid (array + the template's affine is
    enough: wrap it with nibabel); ``reference``: the native CT; ``transform``: the
    rigid native -> template transform written by the participant level (``*_xfm.mat``).
    ``within``: a native boolean mask (e.g. the brain); only its bounding box is
    resampled and everything outside the mask is 0. Each output voxel depends only on
    its own position, so inside the mask the values are those of the whole grid;
    genericLabel costs seconds per million voxels and a brain fills ~1/6 of a head CT's grid.
    Returns a NIfTI with exactly the reference's affine and header.
    """
    from .nifti import bbox_bounds, like
    from .registration import to_native

    if not isinstance(labels_template, nib.Nifti1Image):
        raise TypeError("labels_template must be a NIfTI image on the template grid")
    data = np.asanyarray(labels_template.dataobj)
    if interpolation != "linear" and data.dtype == bool:
        labels_template = nib.Nifti1Image(data.astype(np.uint8), labels_template.affine)
    if within is None:
        return to_native(labels_template, reference, transform, interpolation)
    within = np.asarray(within, bool)
    if within.shape != reference.shape[:3]:
        raise ValueError(f"within: shape {within.shape} is not the reference's {reference.shape[:3]}")
    dtype = np.float32 if interpolation == "linear" else np.asanyarray(labels_template.dataobj).dtype
    out = np.zeros(within.shape, dtype)
    if within.any():
        lo, hi = bbox_bounds(within)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        aff = np.asarray(reference.affine, float).copy()
        aff[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
        sub = nib.Nifti1Image(np.zeros(tuple(hi - lo), np.uint8), aff)
        part = np.asanyarray(to_native(labels_template, sub, transform, interpolation).dataobj)
        out[box] = np.where(within[box], part, 0)
    return like(out, reference, dtype=dtype)


# ---------------------------------------------------------------- building (once)


def template_ventricles(template_data, zooms=1.5):
    """The template's dark ventricles: smoothed HU < 12, >= 8 mm deep, largest component."""
    brain = template_data != 0
    depth = ndi.distance_transform_edt(brain, sampling=zooms)
    dark = (ndi.gaussian_filter(template_data.astype(np.float32), 0.7) < 12) & (depth > 8) & brain
    lab, n = ndi.label(dark)
    if n == 0:
        return dark
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == sizes.argmax()


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def register_atlas(source_dir, template_path, out_dir=ATLAS_DIR, seed=1):
    """Register the BLAST-CT atlas onto the template grid and write it (see the module docstring)."""
    import ants

    from .utils import write_json_atomic, write_text_atomic

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    tpl = nib.load(str(template_path))
    td = np.asarray(tpl.dataobj, np.float32)
    brain = (td != 0).astype(np.float32)
    dark = template_ventricles(td, float(tpl.header.get_zooms()[0]))
    fixed = ants.image_read(str(template_path))
    f_brain = fixed.new_image_like(brain)
    f_vent = fixed.new_image_like(ndi.gaussian_filter(dark.astype(np.float32), 1.0))
    m_brain = ants.image_read(str(source_dir / "ct_template_mask.nii.gz"))
    atlas = ants.image_read(str(source_dir / "atlas_template_space.nii.gz"))
    m_vent = atlas.new_image_like(ndi.gaussian_filter((atlas.numpy() == VENTRICLE_LABEL).astype(np.float32),
                                                      1.5))
    with ants_seed(seed):
        reg = ants.registration(f_brain, m_brain, type_of_transform="SyN",
                                aff_metric="meansquares", syn_metric="meansquares",
                                multivariate_extras=[("meansquares", f_vent, m_vent, 1, 0)])
    labels = ants.apply_transforms(f_brain, atlas, reg["fwdtransforms"], interpolator="genericLabel").numpy()
    labels = np.rint(labels).astype(np.int16) * (brain > 0)
    warped_brain = ants.apply_transforms(f_brain, m_brain, reg["fwdtransforms"]).numpy() > 0.5
    hdr = tpl.header.copy()
    hdr.set_data_dtype(np.int16)
    hdr.set_slope_inter(None, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    from .utils import atomic_path

    with atomic_path(out_dir / ATLAS_FILE.name) as tmp:
        nib.save(nib.Nifti1Image(labels, tpl.affine, hdr), str(tmp))
    names = {}
    with open(source_dir / "atlas_labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            names[int(row["ROIIndex"])] = row["ROIName"]
    write_text_atomic("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in sorted(names.items())),
                      out_dir / LABELS_FILE.name)
    vent = labels == VENTRICLE_LABEL
    record = {
        "Description": "BLAST-CT 31-region atlas registered onto the DeepBleed CT template grid",
        "Sources": [SOURCE, f"template sha256 {sha256_file(template_path)}"],
        "License": "Apache-2.0 (see LICENSE-BLAST-CT.txt); modified: registered and resampled",
        "Registration": {"Software": f"ANTs (antspyx {getattr(ants, '__version__', '?')})",
                         "Type": "SyN (affine + deformable)", "Metric": "meansquares",
                         "Channels": ["atlas brain mask -> template brain (template != 0)",
                                      "atlas label 31 (Gaussian 1.5 mm) -> template dark ventricles "
                                      "(Gaussian 1 voxel)"],
                         "Interpolation": "genericLabel", "RandomSeed": seed},
        "Checks": {"BrainDice": round(dice(warped_brain, brain > 0), 4),
                   "VentricleDiceWithTemplateCSF": round(dice(vent, dark), 4),
                   "VentricleVolume": round(float(vent.sum() * voxel_volume_ml(tpl)), 2),
                   "TemplateDarkVentricleVolume": round(float(dark.sum() * voxel_volume_ml(tpl)), 2),
                   "VolumeUnits": "mL"},
    }
    write_json_atomic(record, out_dir / ATLAS_FILE.name.replace(".nii.gz", ".json"))
    license_src = source_dir / "LICENSE.txt"
    if license_src.is_file():
        write_text_atomic(LICENSE_HEADER + license_src.read_text(), out_dir / "LICENSE-BLAST-CT.txt")
    return record


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Register the BLAST-CT atlas onto the DeepBleed template grid.")
    parser.add_argument("source_dir", help="folder with atlas_template_space.nii.gz, ct_template_mask.nii.gz, "
                                           "atlas_labels.csv, LICENSE.txt")
    parser.add_argument("--template", help="DeepBleed template (default: the pinned one)")
    parser.add_argument("--out-dir", default=str(ATLAS_DIR))
    args = parser.parse_args()
    template = args.template
    if not template:
        from .assets import fetch_template

        template = fetch_template()
    print(json.dumps(register_atlas(args.source_dir, template, args.out_dir), indent=2))
