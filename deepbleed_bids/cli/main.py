"""The ``deepbleed-bids`` console script: one subcommand per task.

Each subcommand lives in ``deepbleed_bids.cli.<name>`` and provides
``add_parser(subparsers)`` and ``run(args) -> int``; heavy imports stay inside
``run`` so that ``--help`` is fast.
"""
import argparse
import importlib
import sys

from .. import __version__

SUBCOMMANDS = ["run", "example", "dicom2bids", "train", "evaluate", "synthesize", "fetch"]


def _modules():
    for name in SUBCOMMANDS:
        try:
            yield importlib.import_module(f"deepbleed_bids.cli.{name}")
        except ModuleNotFoundError as err:  # subcommand not built yet
            if err.name != f"deepbleed_bids.cli.{name}":
                raise


def build_parser():
    parser = argparse.ArgumentParser(
        prog="deepbleed-bids",
        description="Intracerebral hemorrhage segmentation and volumetry on head CT.",
    )
    parser.add_argument("--version", action="version", version=f"deepbleed-bids {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _modules():
        module.add_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..errors import DeepBleedError

    try:
        return int(args.func(args) or 0)
    except DeepBleedError as err:
        print(f"deepbleed-bids {args.command}: error: {err}", file=sys.stderr)
        return 1


def quick_exit(code):
    """``code``, after freezing every live object: the interpreter's last garbage
    collection then skips them (~1 s after a participant run with TensorFlow loaded).
    Only for a process about to exit: frozen objects are never collected."""
    import gc

    gc.freeze()
    return code


def console():
    """The ``deepbleed-bids`` console script."""
    return quick_exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
