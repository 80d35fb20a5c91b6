"""``deepbleed-bids example OUT``: the whole product on a real public head CT.

Downloads (pooch, pinned commit and sha256) the GE head CT of dcm_qa_ct,
converts it to BIDS with dcm2niix, and runs the participant level on it.
With a pre-populated ``$DEEPBLEED_HOME`` and the bundled model this runs offline.
"""
import sys
from pathlib import Path


def add_parser(subparsers):
    parser = subparsers.add_parser("example", help="run the participant level on a public example head CT",
                                   description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for bids/, derivatives/ and work/")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="weights (default: synthetic-demo when bundled, else the published ones)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.set_defaults(func=run)
    return parser


def run(args):
    from .. import assets
    from ..dicom import convert_session
    from ..model.zoo import DEFAULT_MODEL, bundled_models
    from .run import main as bids_app

    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bids_dir = out / "bids"
    dicom = assets.fetch_example_ct()
    if not (bids_dir / "sub-example").exists():
        result = convert_session(dicom, bids_dir, "example")
        print(result.report(), file=sys.stderr)
        if not result.ok:
            return 1
    model = args.model or ("synthetic-demo" if "synthetic-demo" in bundled_models() else DEFAULT_MODEL)
    return bids_app([str(bids_dir), str(out / "derivatives" / "deepbleed"), "participant",
                     "--model", model, "--nprocs", str(args.nprocs), "--work-dir", str(out / "work")])
