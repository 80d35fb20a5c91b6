"""The BIDS-App command line: ``run.py bids_dir output_dir {participant,group} [options]``."""
import argparse
import json
import os
from pathlib import Path

from .. import __version__


def _json_dict(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err.msg}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_bids_app_arguments(parser):
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset (raw CT)")
    parser.add_argument("output_dir", type=Path, help="where derivatives are written")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: segment every CT; group: cohort statistics")
    parser.add_argument("--version", action="version", version=f"deepbleed-bids {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                     metavar="LABEL", help="participants to process, with or without 'sub-'")
    sel.add_argument("--session-label", "--session_label", nargs="+", default=[], metavar="LABEL",
                     help="sessions to process, with or without 'ses-'")
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help='JSON pybids query for the CT images, e.g. {"ct": {"acquisition": "soft"}}')
    sel.add_argument("--kernels", choices=["soft", "all"], default="soft",
                     help="soft (default): skip bone-kernel series when the session has a soft-tissue "
                          "one; all: process every series")

    proc = parser.add_argument_group("processing")
    proc.add_argument("--model", default="deepbleed-mistie2", metavar="NAME|PATH",
                      help="weights: 'deepbleed-mistie2' (published, default; CC BY-NC-ND 4.0, downloaded "
                           "once), 'synthetic-demo' (bundled, offline, demonstration only), or a path to "
                           "a TF checkpoint, its zip, or a .weights.h5")
    proc.add_argument("--template", type=Path, metavar="FILE",
                      help="a local copy of the DeepBleed template (must be the 128^3 1.5 mm grid)")
    proc.add_argument("--brain-extraction", choices=["native", "fsl"], default="native",
                      help="native (default): built-in CT skull stripping; fsl: the paper's FSL protocol")
    proc.add_argument("--skull-stripped", action="store_true",
                      help="the CTs are already brain-extracted or windowed (bone and air set to a "
                           "constant): skip brain extraction, the brain mask is the non-background "
                           "voxels. Without it such CTs are detected from their intensities.")
    proc.add_argument("--mask-method", choices=["probability", "deepbleed"], default="probability",
                      help="probability (default): warp the probability map back (linear) and threshold "
                           "in native space; deepbleed: threshold on the template grid and warp the "
                           "binary mask with nearest neighbour, as the original DeepBleed")
    proc.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    proc.add_argument("--seed", type=int, default=1, help="random seed of the registration")
    proc.add_argument("--tta", choices=["auto", "none", "flip", "flip+mc"], default="auto",
                      help="test-time augmentation: flip also runs the network on the left-right mirrored "
                           "input and averages the probabilities; flip+mc adds 4 Monte-Carlo dropout passes "
                           "per orientation when the model has dropout. The pass agreement, a volume interval "
                           "and the uncertain volume (probability 0.2-0.8) go into the sidecar and the "
                           "'uncertain' QC flag. auto (default): flip on a GPU, none on the CPU")

    perf = parser.add_argument_group("performance")
    perf.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                      help="where the network runs; gpu falls back to the CPU with a warning")
    perf.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPU")
    perf.add_argument("--nprocs", "--nthreads", "--n_cpus", type=int, default=os.cpu_count() or 1,
                      help="processes nipype may run at once")
    perf.add_argument("--omp-nthreads", type=int, default=0,
                      help="threads per process (default: nprocs, capped at 8)")
    perf.add_argument("--mem", "--mem-gb", dest="mem_gb", type=float, default=0.0,
                      help="memory nipype may plan for, in GB")
    perf.add_argument("--plugin", default="MultiProc",
                      help="nipype plugin: MultiProc (default), Linear, SLURM, SGE, PBS, ...")
    perf.add_argument("--plugin-args", type=_json_dict, default={}, metavar="JSON",
                      help='nipype plugin arguments, e.g. {"sbatch_args": "-p short --mem 8G"}')
    perf.add_argument("-w", "--work-dir", type=Path,
                      help="nipype working folder; a re-run with the same one reuses finished steps "
                           "(default: a temporary folder removed at the end)")

    grp = parser.add_argument_group("group level")
    grp.add_argument("--group-by", nargs="+", default=[], metavar="COLUMN",
                     help="participants.tsv columns to summarise by (e.g. site arm)")
    grp.add_argument("--reference-masks", type=Path, metavar="DIR",
                     help="folder of reference hemorrhage masks for agreement statistics")
    grp.add_argument("--expansion-ml", type=float, default=6.0, metavar="ML",
                     help="hematoma expansion: growth from the first scan above this many mL (default 6)")
    grp.add_argument("--expansion-pct", type=float, default=33.0, metavar="PCT",
                     help="... or above this percent of the first scan's volume (default 33)")
    grp.add_argument("--post-treatment-sessions", nargs="+", default=[], metavar="LABEL",
                     help="sessions scanned after surgery, for the MISTIE III target (<= 15 mL or >= 70%% "
                          "reduction); default: the 'post_treatment' column of sub-*/sub-*_sessions.tsv")
    grp.add_argument("--qc-thresholds", type=_json_dict, default={}, metavar="JSON",
                     help='QC flag thresholds, e.g. {"skull_contact_cm2": 6}; used at the participant '
                          "level and re-applied to the stored measures at the group level")
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="deepbleed-bids: intracerebral hemorrhage segmentation and volumetry on "
                    "non-contrast head CT (DeepBleed VNet) as a BIDS-App.",
    )
    return add_bids_app_arguments(parser)
