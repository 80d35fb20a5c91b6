"""``deepbleed-bids train``: retrain the DeepBleed VNet on a BIDS dataset with reference masks."""
import argparse
from dataclasses import fields
from functools import partial
from pathlib import Path

HELP = """\
Reference masks: one binary mask per CT, on the CT's own grid, named like this
project's outputs:
  MASKS_DIR/sub-X/[ses-Y/]ct/<CT name without _ct.nii.gz>_desc-hemorrhage_mask.nii.gz
e.g. bids/sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz ->
     masks/sub-01/ses-1/ct/sub-01_ses-1_desc-hemorrhage_mask.nii.gz
(anat/ instead of ct/ works too). A CT without a mask is skipped with a note; a
mask on another grid is skipped with the reason.

Outputs in OUTPUT_DIR: NAME.weights.h5 and its card NAME.json (use them with
--model OUTPUT_DIR/NAME.weights.h5), training_log.tsv, loss_curve.png,
split.tsv/split.json, checkpoints/ (every epoch). Run the same command again
to resume after an interruption. Preprocessing is cached in --work-dir.
"""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "train", help="train the VNet on your own CT and reference masks",
        description="Train the DeepBleed 3D VNet with the paper's recipe (Dice loss, Adam, flips, "
                    "elastic x/y deformation, dropout in the deepest blocks, early stopping on the "
                    "moving average of the validation loss), on the same preprocessing as inference.",
        epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bids_dir", type=Path, help="BIDS dataset with the CT images")
    parser.add_argument("masks_dir", type=Path, help="reference hemorrhage masks (see below)")
    parser.add_argument("output_dir", type=Path, help="where the model, logs and checkpoints go")
    parser.add_argument("--name", default="model", help="model id and file name (default: model)")
    parser.add_argument("--work-dir", type=Path, help="preprocessing cache (default: OUTPUT_DIR/work)")

    data = parser.add_argument_group("data")
    data.add_argument("--participant-label", nargs="+", default=[], metavar="LABEL")
    data.add_argument("--bids-filter-file", type=Path, metavar="FILE", help="pybids query for the CTs")
    data.add_argument("--validation", nargs="+", default=[], metavar="LABEL",
                      help="validation participants (default: a seeded --val-fraction of them)")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="share of participants kept for validation (default 0.2; 0: none)")
    data.add_argument("--template", type=Path, metavar="FILE",
                      help="another template on the DeepBleed grid (default: the bundled one)")
    data.add_argument("--brain-extraction", choices=["native", "fsl"], default="native")
    data.add_argument("--registration-seed", type=int, default=1)

    net = parser.add_argument_group("network")
    net.add_argument("--width", type=int, default=16, help="input block channels (16 published)")
    net.add_argument("--kernel-size", type=int, default=5, help="convolution kernel (5 published)")
    net.add_argument("--dropout", type=float, default=0.1, help="dropout in the deepest blocks (0.1)")
    net.add_argument("--patch-size", type=int, default=0, choices=[0, 64, 32],
                     help="0: whole 128^3 volumes (default, the paper's best); 64 or 32: patches "
                          "sampled with a bias to lesions")
    net.add_argument("--inference-patch-size", type=int, default=-1, choices=[-1, 0, 64, 32],
                     help="patch size recorded in the model card for inference (default: --patch-size; "
                          "0: whole volumes, the network is fully convolutional)")

    rec = parser.add_argument_group("recipe")
    rec.add_argument("--loss", choices=["dice", "dice+bce"], default="dice")
    rec.add_argument("--learning-rate", type=float, default=1e-4)
    rec.add_argument("--batch-size", type=int, default=2)
    rec.add_argument("--min-epochs", type=int, default=200)
    rec.add_argument("--max-epochs", type=int, default=1000)
    rec.add_argument("--patience", type=int, default=10,
                     help="epochs without a better moving-average validation loss before stopping")
    rec.add_argument("--average-window", type=int, default=5, help="moving average length (epochs)")
    rec.add_argument("--samples-per-epoch", type=int, default=0, help="default: one per training CT")
    rec.add_argument("--lesion-fraction", type=float, default=0.5,
                     help="share of patches centred on a lesion (patch training)")
    rec.add_argument("--no-flip", action="store_true", help="no random left-right flips")
    rec.add_argument("--no-elastic", action="store_true", help="no elastic x/y deformation")
    rec.add_argument("--elastic-sd-mm", type=float, default=3.0)
    rec.add_argument("--elastic-sigma-mm", type=float, default=15.0)
    rec.add_argument("--seed", type=int, default=0, help="split, initialisation, sampling (default 0)")

    run_ = parser.add_argument_group("running")
    run_.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                      help="several visible GPUs train with MirroredStrategy")
    run_.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPU")
    run_.add_argument("--threads", type=int, default=0, help="TensorFlow CPU threads (default: all)")
    run_.add_argument("--nprocs", type=int, default=1, help="preprocessing processes")
    run_.add_argument("--omp-nthreads", type=int, default=1, help="threads per preprocessing process")
    run_.add_argument("--prepare-only", action="store_true", help="only preprocess (fill the cache)")
    run_.add_argument("--stop-after", type=int, metavar="N",
                      help="end after N more epochs (resumable: run the same command again)")
    run_.add_argument("-v", "--verbose", action="count", default=0)

    card = parser.add_argument_group("model card")
    card.add_argument("--description", help="model card description")
    card.add_argument("--license", dest="license_text", help="model card license text")
    parser.set_defaults(func=partial(run, parser=parser))
    return parser


NOT_RECORDED = {"stop_after", "prepare_only", "verbose", "nprocs", "omp_nthreads", "work_dir"}


def command(args, parser):
    """The command that reproduces the model: positionals and every non-default option
    (options that only change speed or stop early are left out)."""
    import shlex

    words = ["deepbleed-bids", "train"]
    for action in parser._actions:
        dest = action.dest
        if dest in NOT_RECORDED or dest == "help" or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if not action.option_strings:
            words.append(str(value))
        elif value != action.default:
            flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
            if action.nargs == 0:
                words.append(flag)
            elif isinstance(value, list):
                words += [flag, *map(str, value)]
            else:
                words += [flag, str(value)]
    return shlex.join(words)


def params_from_args(args):
    from ..training.loop import TrainParams

    return TrainParams(
        width=args.width, kernel_size=args.kernel_size, dropout=args.dropout, patch_size=args.patch_size,
        inference_patch_size=args.inference_patch_size, batch_size=args.batch_size,
        learning_rate=args.learning_rate, loss=args.loss, min_epochs=args.min_epochs,
        max_epochs=args.max_epochs, patience=args.patience, average_window=args.average_window,
        samples_per_epoch=args.samples_per_epoch, lesion_fraction=args.lesion_fraction,
        flip=not args.no_flip, elastic=not args.no_elastic, elastic_sd_mm=args.elastic_sd_mm,
        elastic_sigma_mm=args.elastic_sigma_mm, seed=args.seed, device=args.device,
        mixed_precision=args.mixed_precision, threads=args.threads)


def config_from_args(args):
    """The TrainConfig of the parsed command line (nothing below cli/ sees the Namespace)."""
    from ..config import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def run(args, parser):
    from ..training.run import train_from_bids

    return train_from_bids(config_from_args(args), params_from_args(args), command(args, parser))
