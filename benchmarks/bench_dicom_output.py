#!/usr/bin/env python3
"""Wall time and peak memory of the DICOM outputs (SEG + SR) for the real tilted GE head.

    python benchmarks/bench_dicom_output.py [--volume ML] [--location deep|lobar|...] [--seed N]

Converts the GE head with dicom2bids, puts a synthetic hematoma into its native
space (no network), then times each stage of deepbleed_bids.dicom.results:
reading the source headers, sampling each mask on the source slabs, building the
SEG, building the SR, writing both; and prints the SEG's read-back volumes next
to the NIfTI's. For comparison it also times the general sub-plane sampling
(used when the slab normal is oblique to the NIfTI grid) on the same masks.
Target on a 2-core CPU: <= 3 s sampling per CT, <= 20 s in all, peak <= 1.5 GB;
read-back within 2 % of the NIfTI volume (issue 16).
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))

from deepbleed_bids.testing import cpu_model  # noqa: E402


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", type=float, default=25.0, help="hematoma volume in mL (25)")
    parser.add_argument("--location", default="deep", help="synth location (deep: across the 4->7 mm change)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the hematoma (7)")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np

    from deepbleed_bids import synth
    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.ct import clamp_hu
    from deepbleed_bids.dicom import convert_session
    from deepbleed_bids.dicom import seg as S
    from deepbleed_bids.dicom.sources import find_source
    from deepbleed_bids.dicom.sr import build_report
    from deepbleed_bids.nifti import voxel_volume_ml
    from deepbleed_bids.testing import shared_data_dir

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores visible)")
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        convert_session(Path(shared_data_dir()) / "dicom" / "ge-head-tilt", bids, "ge")
        rel = "sub-ge/ct/sub-ge_acq-soft_ct.nii.gz"
        img = nib.load(bids / rel)
        hu = np.asanyarray(img.dataobj)
        brain = np.asarray(extract_brain(clamp_hu(hu), img.affine)) > 0
        hem, _ = synth.hematoma_mask(brain, img.affine, args.volume, rng=np.random.default_rng(args.seed),
                                     location=args.location, image=hu)
        vox = voxel_volume_ml(img)
        masks = {"hemorrhage": hem, "brain": brain}
        times = {}
        t = time.perf_counter()
        datasets = S.read_series(find_source(bids, rel))
        times["read source headers"] = time.perf_counter() - t
        frames = {}
        for kind, mask in masks.items():
            t = time.perf_counter()
            frames[kind] = S.binarize_slabs(S.resample_to_slices(mask, img.affine, datasets))
            times[f"sample {kind} on source slabs"] = time.perf_counter() - t
        t = time.perf_counter()
        seg = S.build_segmentation(datasets, frames, {"id": "benchmark", "sha256": "0"})
        times["build SEG"] = time.perf_counter() - t
        t = time.perf_counter()
        sr = build_report(seg, {"volumes": {"hemorrhage": hem.sum() * vox, "brain": brain.sum() * vox}},
                          {"id": "benchmark", "sha256": "0"})
        times["build SR"] = time.perf_counter() - t
        t = time.perf_counter()
        seg.save_as(Path(tmp) / "seg.dcm")
        sr.save_as(Path(tmp) / "sr.dcm")
        times["write both"] = time.perf_counter() - t
        for stage, seconds in times.items():
            print(f"{stage:32s} {seconds:7.2f} s")
        print(f"{'total':32s} {sum(times.values()):7.2f} s   peak memory {peak_gb():.2f} GB")
        vol = S.segment_volumes(seg, datasets)
        for kind, label in (("hemorrhage", "Hemorrhage (ICH+IVH)"), ("brain", "Brain")):
            ref = masks[kind].sum() * vox
            print(f"{kind:10s} NIfTI {ref:8.2f} mL   SEG read-back {vol[label]:8.2f} mL   "
                  f"({100 * (vol[label] / ref - 1):+.3f} %)")
        exact = S._grid_axis
        S._grid_axis = lambda *a: None  # the general path, for comparison
        try:
            for kind, mask in masks.items():
                t = time.perf_counter()
                S.resample_to_slices(mask, img.affine, datasets)
                print(f"sub-plane path (oblique grids), {kind}: {time.perf_counter() - t:.2f} s")
        finally:
            S._grid_axis = exact


if __name__ == "__main__":
    main()
