"""``deepbleed-bids evaluate``: agreement of predicted and reference hemorrhage masks."""
import argparse
import sys
from pathlib import Path

HELP = """\
Both folders hold native-space masks named like this project's outputs:
  sub-X/[ses-Y/]ct/<CT name without _ct.nii.gz>_desc-hemorrhage_mask.nii.gz
Per scan: Dice, predicted and reference volume (mL), their difference. Per cohort
and per --group-by column (from participants.tsv): Dice mean/SD/median/min/max,
percent failed (Dice < 0.5), volume Pearson r, RMSE, percent within 5 mL, mean
difference and limits of agreement. Two empty masks have Dice 1.0.
Writes evaluation_scans.tsv, evaluation_by-<column>.tsv, evaluation.json,
dice_distribution.png, volume_scatter.png, bland_altman.png into OUTPUT_DIR.
"""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="compare predicted masks with reference masks (Dice, volumes, plots)",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path, help="deepbleed-bids output folder")
    parser.add_argument("references", type=Path, help="reference masks folder (same naming)")
    parser.add_argument("output_dir", type=Path, help="where the tables and plots go")
    parser.add_argument("--participants", type=Path, metavar="TSV",
                        help="participants.tsv with grouping columns (default: the one of the BIDS "
                             "dataset the predictions were made from, if found)")
    parser.add_argument("--group-by", nargs="+", default=[], metavar="COLUMN",
                        help="participants.tsv columns to break the statistics down by (e.g. subtype)")
    parser.set_defaults(func=run)
    return parser


def run(args):
    from ..evaluation import evaluate

    result = evaluate(args.predictions, args.references, args.output_dir, args.participants, args.group_by)
    c = {k: ("n/a" if v is None else f"{v:.3g}") for k, v in result["cohort"].items()}
    print(f"{c['n']} scan(s): Dice {c['dice_mean']} (median {c['dice_median']}), {c['percent_failed']} % "
          f"failed; volume r {c['volume_r']}, RMSE {c['volume_rmse_ml']} mL, {c['percent_within_5ml']} % "
          f"within 5 mL -> {args.output_dir}", file=sys.stderr)
    for path in result["missing_predictions"]:
        print(f"no prediction for reference {path}", file=sys.stderr)
    for err in result["errors"]:
        print(f"{err['scan']}: {err['error']}", file=sys.stderr)
    return 1 if result["errors"] or result["missing_predictions"] or not result["cohort"]["n"] else 0
