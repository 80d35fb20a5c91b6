#!/usr/bin/env python3
"""Wall time and peak memory of the DICOM outputs (SEG + SR) for the real tilted GE head.

    python benchmarks/bench_dicom_output.py [--volume ML]

Converts the GE head with dicom2bids, puts a synthetic hematoma into its native
space (no network), then times each stage of deepbleed_bids.dicom.results:
reading the source headers, sampling the masks on the source slabs, building the
SEG, building the SR, writing both; and prints the SEG's read-back volumes next
to the NIfTI's. Target on a 2-core CPU: <= 20 s per CT, peak <= 1.5 GB.
"""
import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", type=float, default=25.0, help="hematoma volume in mL (25)")
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

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
               platform.processor())
    print(f"CPU: {cpu} ({os.cpu_count()} cores visible)")
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        convert_session(Path(shared_data_dir()) / "dicom" / "ge-head-tilt", bids, "ge")
        rel = "sub-ge/ct/sub-ge_acq-soft_ct.nii.gz"
        img = nib.load(bids / rel)
        hu = np.asanyarray(img.dataobj)
        brain = np.asarray(extract_brain(clamp_hu(hu), img.affine)) > 0
        hem, _ = synth.hematoma_mask(brain, img.affine, args.volume, rng=np.random.default_rng(3),
                                     location="lobar", image=hu)
        vox = voxel_volume_ml(img)
        times = {}
        t = time.perf_counter()
        datasets = S.read_series(find_source(bids, rel))
        times["read source headers"] = time.perf_counter() - t
        t = time.perf_counter()
        frames = {k: S.binarize_slabs(S.resample_to_slices(m, img.affine, datasets))
                  for k, m in (("hemorrhage", hem), ("brain", brain))}
        times["sample masks on source slabs"] = time.perf_counter() - t
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
        print(f"hemorrhage: NIfTI {hem.sum() * vox:.2f} mL, SEG {vol['Hemorrhage (ICH+IVH)']:.2f} mL; "
              f"brain: NIfTI {brain.sum() * vox:.1f} mL, SEG {vol['Brain']:.1f} mL")


if __name__ == "__main__":
    main()
