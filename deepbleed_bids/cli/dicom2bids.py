"""``deepbleed-bids dicom2bids``: DICOM head CT exams -> BIDS (logic in deepbleed_bids.dicom)."""
import sys

HELP = """\
Convert DICOM head CT to BIDS with dcm2niix: one exam folder
  deepbleed-bids dicom2bids DICOM_DIR BIDS_DIR --participant-label 01 [--session-label 1]
or many, listed in a tab-separated table (columns dicom_dir, participant, session;
relative dicom_dir paths are read relative to the table's folder):
  deepbleed-bids dicom2bids --batch exams.tsv BIDS_DIR

Writes sub-X/[ses-Y/]ct/sub-X[_ses-Y]_acq-<soft|bone|unknown>[_run-<n>]_ct.nii.gz with
JSON sidecars, dataset_description.json (if absent), participants.tsv, and a log in
sourcedata/dicom2bids/. Scouts, reports, secondary captures and non-CT series are
skipped; gantry tilt and variable slice spacing are corrected by dcm2niix. Patient
identifiers are removed. Exit status 1 when nothing usable was converted or a series failed.
"""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "dicom2bids", help="convert DICOM head CT exams to a BIDS dataset",
        description=HELP, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("dicom_dir", nargs="?", help="folder with the DICOM files of one exam (omit with --batch)")
    parser.add_argument("bids_dir", help="BIDS dataset folder to write into (created if absent)")
    parser.add_argument("--participant-label", help="participant label, e.g. 01 (sub- prefix optional)")
    parser.add_argument("--session-label", help="session label, e.g. 1 (ses- prefix optional)")
    parser.add_argument("--batch", metavar="TABLE", help="TSV with columns dicom_dir, participant[, session]")
    parser.set_defaults(func=run)
    return parser


def run(args):
    from ..dicom import convert_batch, convert_session
    from ..errors import InputError

    if args.batch:
        if args.dicom_dir or args.participant_label or args.session_label:
            raise InputError("--batch takes only the BIDS folder; the table gives dicom_dir, participant and session.")
        results = convert_batch(args.batch, args.bids_dir)
    else:
        if not args.dicom_dir:
            raise InputError("give DICOM_DIR and BIDS_DIR, or --batch TABLE BIDS_DIR.")
        if not args.participant_label:
            raise InputError("--participant-label is required (e.g. --participant-label 01).")
        results = [convert_session(args.dicom_dir, args.bids_dir, args.participant_label, args.session_label)]
    for result in results:
        stream = sys.stdout if result.ok else sys.stderr
        stream.write(result.report() + (f"  log: {result.log}\n" if result.log else ""))
    bad = [r for r in results if not r.ok]
    if bad:
        print(f"dicom2bids: {len(bad)} of {len(results)} exam(s) had failures or nothing usable; see above.",
              file=sys.stderr)
    return 1 if bad else 0
