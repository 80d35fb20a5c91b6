"""BIDS-App entry point (``run.py`` and ``deepbleed-bids run``): parse, then dispatch."""
import sys

from .parser import add_bids_app_arguments, build_parser


def add_parser(subparsers):
    parser = subparsers.add_parser("run", help="the BIDS-App: participant or group level",
                                   description="Same as run.py bids_dir output_dir {participant,group}.")
    add_bids_app_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args):
    from ..bids import load_filters
    from ..config import Config

    nprocs = max(1, args.nprocs)
    return Config(
        bids_dir=str(args.bids_dir.absolute()), output_dir=str(args.output_dir.absolute()),
        analysis_level=args.analysis_level,
        participant_label=list(args.participant_label), session_label=list(args.session_label),
        bids_filters=load_filters(args.bids_filter_file) if args.bids_filter_file else {},
        work_dir=str(args.work_dir.absolute()) if args.work_dir else "", nprocs=nprocs,
        omp_nthreads=args.omp_nthreads or min(nprocs, 8), mem_gb=args.mem_gb,
        plugin=args.plugin, plugin_args=args.plugin_args, device=args.device,
        mixed_precision=args.mixed_precision, model=args.model,
        template=str(args.template.absolute()) if args.template else "",
        brain_extraction=args.brain_extraction, skull_stripped=args.skull_stripped,
        mask_method=args.mask_method, threshold=args.threshold, kernels=args.kernels, seed=args.seed,
        tta=getattr(args, "tta", "auto"),
        verbose=args.verbose, group_by=list(args.group_by),
        reference_masks=str(args.reference_masks or ""),
        expansion_ml=args.expansion_ml, expansion_pct=args.expansion_pct,
        post_treatment_sessions=list(args.post_treatment_sessions), qc_thresholds=args.qc_thresholds,
    )


def run(args):
    from .. import runner
    from ..execution import plugin_settings, runtime_environment

    config = config_from_args(args)
    plugin_settings(config)  # a bad --plugin/--nprocs/--mem fails here, before any work
    # caches and temporary files in the work folder: nothing written to $HOME or /tmp
    with runtime_environment(config.work_dir):
        if config.analysis_level == "group":
            return runner.run_group(config)
        return runner.run_participant(config)


def main(argv=None):
    from ..errors import DeepBleedError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DeepBleedError as err:
        print(f"deepbleed-bids: error: {err}", file=sys.stderr)
        return 1
