"""``deepbleed-bids train`` end to end: pairs -> cached preprocessing -> split -> loop -> export."""
import json
from pathlib import Path

from ..errors import InputError
from ..template import resolve_template
from .data import collect_pairs, load_case, log, prepare_cases, split_participants


def write_split(cases, train_ids, val_ids, out_dir, seed, val_fraction):
    """split.tsv (one row per scan) and split.json (participants per set); returns the JSON content."""
    import pandas as pd

    from ..utils import write_json_atomic, write_tsv_atomic

    rows = [{"participant_id": "sub-" + c["meta"]["subject"], "scan": c["meta"]["relpath"],
             "set": "validation" if c["meta"]["subject"] in val_ids else "training"} for c in cases]
    table = pd.DataFrame(rows).sort_values(["set", "scan"])
    write_tsv_atomic(table, Path(out_dir) / "split.tsv", float_format=None)
    split = {"by": "participant", "seed": seed, "val_fraction": val_fraction,
             "training": ["sub-" + s for s in train_ids], "validation": ["sub-" + s for s in val_ids],
             "training_scans": int((table["set"] == "training").sum()),
             "validation_scans": int((table["set"] == "validation").sum())}
    write_json_atomic(split, Path(out_dir) / "split.json")
    return split


def _split(cases, cfg, params, out_dir):
    """The participant split; a resumed run must find the same one."""
    subjects = [c["meta"]["subject"] for c in cases]
    train_ids, val_ids = split_participants(subjects, cfg.val_fraction, params.seed, cfg.validation)
    previous = Path(out_dir) / "split.json"
    if (Path(out_dir) / "checkpoints" / "latest.json").is_file() and previous.is_file():
        old = json.loads(previous.read_text())
        if sorted(old["validation"]) != ["sub-" + s for s in val_ids]:
            raise InputError(f"{out_dir}: the validation participants differ from the interrupted run's "
                             f"({previous}); resume with the same data and options or use a new folder.")
    return train_ids, val_ids, write_split(cases, train_ids, val_ids, out_dir, params.seed, cfg.val_fraction)


def train_from_bids(cfg, params, command=""):
    """Train on ``cfg`` (:class:`deepbleed_bids.config.TrainConfig`) with ``params``
    (:class:`deepbleed_bids.training.loop.TrainParams`); returns the exit code."""
    from ..bids import load_filters
    from .card import export_weights, model_card, write_card
    from .loop import train

    params.check()
    out_dir = Path(cfg.output_dir).absolute()
    work_dir = Path(cfg.work_dir or out_dir / "work").absolute()
    template = str(resolve_template(cfg.template))
    filters = load_filters(cfg.bids_filter_file) if cfg.bids_filter_file else None
    pairs, skipped = collect_pairs(cfg.bids_dir, cfg.masks_dir, cfg.participant_label, filters)
    for rel, why in skipped:
        log(f"skipping {rel}: {why}")
    log(f"preprocessing {len(pairs)} CT(s) with their masks (cache: {work_dir})")
    files, failures = prepare_cases(pairs, template, work_dir, cfg.brain_extraction,
                                    cfg.registration_seed, cfg.nprocs, cfg.omp_nthreads, cfg.verbose)
    for rel, why in failures:
        log(f"skipping {rel}: preprocessing failed: {why}")
    if cfg.prepare_only:
        log(f"{len(files)} case(s) ready in {work_dir / 'cases'}")
        return 1 if failures else 0
    if not files:
        raise InputError("no case could be preprocessed; see the messages above.")
    cases = [load_case(f) for f in files]
    out_dir.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, split = _split(cases, cfg, params, out_dir)
    train_cases = [c for c in cases if c["meta"]["subject"] in train_ids]
    val_cases = [c for c in cases if c["meta"]["subject"] in val_ids]
    log(f"training on {len(train_cases)} scan(s) of {len(train_ids)} participant(s), validating on "
        f"{len(val_cases)} scan(s) of {len(val_ids)}")
    try:
        state = train(train_cases, val_cases, out_dir, params, stop_after=cfg.stop_after, log=log)
    except KeyboardInterrupt:
        log("interrupted: the last complete epoch is saved in checkpoints/; run the same command to resume.")
        return 130
    if not state["finished"]:
        log(f"stopped after epoch {state['epoch']} (--stop-after); run the same command to resume.")
        return 0
    model = state["model"]
    best = Path(out_dir) / "checkpoints" / "best.weights.h5"
    if best.is_file():
        model.load_weights(str(best))  # the epoch with the lowest validation loss
    weights = out_dir / f"{cfg.name}.weights.h5"
    weights, n_params = export_weights(model, params, weights)
    data = {"bids_dir": str(Path(cfg.bids_dir).absolute()), "masks_dir": str(Path(cfg.masks_dir).absolute()),
            "scans": len(cases), "participants": len(set(train_ids) | set(val_ids)),
            "skipped": [{"scan": r, "reason": w} for r, w in skipped + failures],
            "preprocessing": {"brain_extraction": cfg.brain_extraction, "template": template,
                              "registration_seed": cfg.registration_seed,
                              "mask_to_template": "linear interpolation, then >= 0.5"}}
    card = model_card(cfg.name, params, state, data, split, weights, n_params, command,
                      cfg.description, cfg.license_text)
    write_card(card, out_dir / f"{cfg.name}.json")
    log(f"model: {weights} ({n_params:,} parameters, exported epoch {card['epochs']['exported']}); "
        f"card: {out_dir / (cfg.name + '.json')}")
    return 0
