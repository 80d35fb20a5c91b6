"""``deepbleed-bids synthesize``: a training set of synthetic hematomas in a real head CT."""
import sys
from pathlib import Path


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "synthesize", help="make a BIDS dataset of synthetic hematomas with reference masks",
        description="Insert synthetic hematomas (1-150 mL, 40-90 HU, deep/lobar/superficial/"
                    "intraventricular, 0-2 per head) into a real head CT under random rigid poses "
                    "and noise. Writes BIDS_DIR/sub-<prefix>NNN/ct/*_ct.nii.gz and the ground truth "
                    "MASKS_DIR/sub-<prefix>NNN/ct/*_desc-hemorrhage_mask.nii.gz, the layout "
                    "`deepbleed-bids train` and `evaluate` read. Case i depends only on (seed, i).")
    parser.add_argument("bids_dir", type=Path, help="output BIDS dataset")
    parser.add_argument("masks_dir", type=Path, help="output reference masks (derivatives layout)")
    parser.add_argument("--n", type=int, default=200, help="number of cases (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--start", type=int, default=1, help="index of the first case (default 1)")
    parser.add_argument("--prefix", default="synth", help="participant label prefix (default synth)")
    parser.add_argument("--source", type=Path, metavar="CT",
                        help="head CT (NIfTI, HU) without hemorrhage; default: the example head CT bundled "
                             "with the package (converted with dcm2niix)")
    parser.set_defaults(func=run)
    return parser


def run(args):
    import tempfile

    from ..synthdata import EXAMPLE_LABEL, example_source, synthesize

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="deepbleed-synth-") as tmp:
        source = args.source or example_source(tmp)
        label = None if args.source else EXAMPLE_LABEL
        rows = synthesize(source, args.bids_dir, args.masks_dir, args.n, seed=args.seed,
                          prefix=args.prefix, start=args.start, source_label=label, log=log)
    log(f"{len(rows)} cases in {args.bids_dir} (masks in {args.masks_dir})")
    return 0
