"""The BIDS-App command line: ``run.py bids_dir output_dir {participant,group} [options]``."""
import argparse
import json
import os
from pathlib import Path

from .. import __version__
from ..model.predict import TTA_CHOICES


def _json_dict(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err.msg}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


_UNITS = {"": None, "k": 1e-6, "m": 1e-3, "g": 1.0, "t": 1e3}
MEM_MIN_GB, MEM_MAX_GB = 0.5, 8192.0


def memory_gb(text, bare="m"):
    """``16G``, ``16GB``, ``16000M``, ``16GiB``, ``0.5T`` -> GB. A bare number is in MB
    (``bare="m"``, fMRIPrep's ``--mem``) or in GB (``bare="g"``, ``--mem-gb``)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size: use e.g. 16G, 16GB or 16000M")
    number, unit = float(match.group(1)), match.group(2).lower()
    gb = number * (_UNITS[unit] if unit else _UNITS[bare])
    if gb == 0:
        return 0.0  # 0: no limit (nipype's default)
    if not MEM_MIN_GB <= gb <= MEM_MAX_GB:
        hint = f"; did you mean {text}G?" if not unit and bare == "m" and number < 1024 else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} = {gb:g} GB is implausible (allowed {MEM_MIN_GB:g} GB to {MEM_MAX_GB:g} GB){hint}")
    return round(gb, 6)


def memory_gb_bare_gb(text):
    return memory_gb(text, bare="g")


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
                      help="another template on the DeepBleed grid (128^3, 1.5 mm); "
                           "default: the bundled DeepBleed template")
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
    proc.add_argument("--dicom-output", action=argparse.BooleanOptionalAction, default=None,
                      help="write a DICOM SEG and SR per CT into sub-X/[ses-Y/]dicom/ (default: on for "
                           "datasets made by dicom2bids, which records the source series)")
    proc.add_argument("--dicom-deidentify", action="store_true",
                      help="leave patient/study identifiers out of the DICOM outputs")
    proc.add_argument("--tta", choices=list(TTA_CHOICES), default="auto",
                      help="test-time augmentation: flip also runs the network on the left-right mirrored "
                           "input and averages the probabilities; flip+mc adds 4 Monte-Carlo dropout passes "
                           "per orientation when the model has dropout; +hu adds two passes with the brain's "
                           "HU shifted by -4 and +4 (not averaged in: the volume's dependence on the scanner's "
                           "calibration, which reveals confident misses of faint blood). The pass agreement, "
                           "the volume intervals and the uncertain volume (probability 0.2-0.8) go into the "
                           "sidecar and the 'uncertain' QC flag. auto (default): flip on a GPU, none on the CPU")

    perf = parser.add_argument_group("performance")
    perf.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                      help="where the network runs; gpu falls back to the CPU with a warning")
    perf.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default=None,
                      help="network arithmetic: fp32 (default), bf16 (CPUs with AVX512-BF16/AMX, "
                           "GPUs >= Ampere), fp16 (GPUs), auto (bf16 where the hardware has it, else "
                           "fp16 on older GPUs, else fp32); unsupported choices fall back to fp32")
    perf.add_argument("--mixed-precision", action="store_true",
                      help="same as --precision fp16 (float16 compute on GPU)")
    perf.add_argument("--nprocs", "--nthreads", "--n_cpus", type=int, default=os.cpu_count() or 1,
                      help="processes nipype may run at once")
    perf.add_argument("--omp-nthreads", type=int, default=0,
                      help="threads per process (default: nprocs, capped at 8)")
    perf.add_argument("--mem", "--mem-mb", "--mem_mb", dest="mem_gb", type=memory_gb, default=0.0,
                      metavar="SIZE", help="memory nipype may plan for: 16G, 16GB or 16000M; a bare number "
                                           "is in MB, as in fMRIPrep (--mem 16000 = 16 GB)")
    perf.add_argument("--mem-gb", dest="mem_gb", type=memory_gb_bare_gb, default=0.0, metavar="GB",
                      help="the same in GB (--mem-gb 16 = --mem 16G)")
    perf.add_argument("--plugin", default="MultiProc",
                      help="nipype plugin: MultiProc (default), Linear, SLURM, SGE, PBS, ...")
    perf.add_argument("--plugin-args", type=_json_dict, default={}, metavar="JSON",
                      help='nipype plugin arguments, e.g. {"sbatch_args": "-p short --mem 8G"}')
    perf.add_argument("-w", "--work-dir", type=Path,
                      help="nipype working folder; a re-run with the same one reuses finished steps "
                           "(default: a temporary folder removed at the end)")

    run = parser.add_argument_group("run options (the same meaning as in fMRIPrep)")
    run.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                     help="do not run the BIDS validator on the input (by default its errors stop the run)")
    run.add_argument("--notrack", action="store_true",
                     help="accepted for compatibility; does nothing: deepbleed-bids never sends usage data")
    run.add_argument("--stop-on-first-crash", action="store_true",
                     help="stop at the first failing step instead of processing the other images")
    run.add_argument("--write-graph", action="store_true",
                     help="write the workflow graph (graphviz .dot, and .svg when `dot` is installed) "
                          "into output_dir/logs/<run-id>/")
    run.add_argument("--resource-monitor", action="store_true",
                     help="record each step's run time, peak memory and CPU use into "
                          "output_dir/logs/<run-id>/resources.tsv")
    run.add_argument("--clean-workdir", action="store_true",
                     help="remove this app's cached steps from --work-dir before starting (other files "
                          "there are left alone)")
    run.add_argument("--config-file", type=Path, metavar="FILE",
                     help="TOML file of options (names as on the command line, e.g. model = \"synthetic-demo\", "
                          "nprocs = 4, mem = \"16G\"); the command line wins. Each run writes its resolved "
                          "configuration as such a file into its log folders")
    run.add_argument("--reports-only", action="store_true",
                     help="rebuild the reports and the methods text from existing derivatives; process nothing")
    run.add_argument("--boilerplate-only", "--boilerplate_only", action="store_true",
                     help="write the methods text (logs/CITATION.md, .bib, .html) and stop")

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


# ---------------------------------------------------------------- --config-file (TOML)

# Keys of a written configuration that record the run rather than set options
CONFIG_RECORD_TABLE = "provenance"
# Config fields that are written but are not command-line options as such
_CONFIG_ONLY = {"bids_filters"}


def _action_for(parser, key):
    name = key.replace("_", "-")
    action = parser._option_string_actions.get(f"--{name}")
    if action is None:
        action = next((a for a in parser._actions if a.dest == key and a.option_strings), None)
    return action


def _convert(action, value, key, path):
    def one(item):
        if isinstance(item, dict) or action.type is None:
            return item
        if action.type is float and isinstance(item, (int, float)) and not isinstance(item, bool):
            return float(item)
        return action.type(str(item))

    if isinstance(action, argparse._CountAction):  # -v, -vv
        return int(value)
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if action.nargs in ("+", "*"):
        value = [one(v) for v in (value if isinstance(value, list) else [value])]
        bad = [v for v in value if action.choices and v not in action.choices]
    else:
        value = one(value)
        bad = [value] if action.choices and value not in action.choices else []
    if bad:
        raise ValueError(f"{bad[0]!r} is not one of {list(action.choices)}")
    return value


def apply_config_file(args, parser=None):
    """Fill ``args`` from ``args.config_file``: every option the command line left at its
    default takes the file's value. Raises ValueError with the file and key at fault."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    path = getattr(args, "config_file", None)
    if not path:
        return args
    parser = parser or build_parser()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"--config-file {path}: no such file") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config-file {path}: not valid TOML ({err})") from err
    data.pop(CONFIG_RECORD_TABLE, None)
    for key, value in data.items():
        key = key.replace("-", "_")
        if key in _CONFIG_ONLY:
            if getattr(args, key, None) is None:
                setattr(args, key, value)
            continue
        action = _action_for(parser, key)
        if action is None or action.dest in ("help", "version", "config_file"):
            known = sorted(a.dest for a in parser._actions if a.option_strings and a.dest not in ("help", "version"))
            raise ValueError(f"--config-file {path}: unknown option '{key}'; known: {', '.join(known)}")
        if value == "" and action.default is None:
            continue
        try:
            value = _convert(action, value, key, path)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
            raise ValueError(f"--config-file {path}: '{key}': {err}") from err
        if getattr(args, action.dest, None) == action.default:  # the command line wins
            setattr(args, action.dest, value)
    return args
