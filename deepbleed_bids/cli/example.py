"""``deepbleed-bids example OUT``: the whole product on a real head CT, with no network.

The example head CT ships inside the package (28 DICOM files of a real GE head with
gantry tilt, from dcm_qa_ct, BSD-2-Clause; sha256-checked), as does the DeepBleed
template. The steps: unpack the DICOM into OUT/dicom/, convert it to BIDS with dcm2niix
(OUT/bids/), run the participant level with the bundled synthetic-demo model and then
the group level (OUT/derivatives/deepbleed/), with nipype's cache and every temporary
file in OUT/work/. Nothing is written anywhere else, so the package folder and $HOME
may be read-only. A re-run reuses what is already there.
"""
import sys
from pathlib import Path


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "example", help="run the whole pipeline on the bundled example head CT (no network needed)",
        description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for dicom/, bids/, derivatives/ and work/")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="weights (default: the bundled synthetic-demo model)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.set_defaults(func=run)
    return parser


def run(args):
    from .. import assets
    from ..execution import runtime_environment
    from .run import main as bids_app

    out = args.out_dir.absolute()
    bids_dir, derivatives, work = out / "bids", out / "derivatives" / "deepbleed", out / "work"
    # everything inside: importing TensorFlow/Keras already writes caches (keras.json)
    with runtime_environment(str(work)):  # also makes OUT and OUT/work, or says why it cannot
        from ..dicom import convert_session
        from ..model.zoo import DEFAULT_MODEL, bundled_models

        dicom = assets.unpack_example_ct(out / "dicom" / "ge-head-tilt")
        print(f"deepbleed-bids example: {len(assets.EXAMPLE_CT['members'])} DICOM files in {dicom} "
              f"({assets.EXAMPLE_CT['license']})", file=sys.stderr)
        if not (bids_dir / "sub-example").exists():
            result = convert_session(dicom, bids_dir, "example")
            print(result.report(), file=sys.stderr)
            if not result.ok:
                return 1
        model = args.model or ("synthetic-demo" if "synthetic-demo" in bundled_models() else DEFAULT_MODEL)
        common = ["--work-dir", str(work), "--nprocs", str(args.nprocs)]
        code = bids_app([str(bids_dir), str(derivatives), "participant", "--model", model, *common])
        if code:
            return code
        code = bids_app([str(bids_dir), str(derivatives), "group", *common])
        if code:
            return code
    group = derivatives / "group"
    print("\n".join([
        f"deepbleed-bids example: done ({model} model).",
        f"  BIDS input:     {bids_dir}",
        f"  report:         {derivatives / 'sub-example.html'}",
        f"  masks, volumes: {derivatives / 'sub-example' / 'ct'}",
        f"  tables:         {group / 'volumes.tsv'}  {group / 'summary.tsv'}",
        f"  group report:   {group / 'index.html'}",
    ]))
    return 0
