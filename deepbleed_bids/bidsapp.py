"""The BIDS-App conventions around a participant-level run (fMRIPrep-style): input
validation, the run id and its log file, the dataset files and methods text of the
derivatives, each participant's resolved configuration, the work folder's version
stamp and ``--reports-only``. runner.py calls these at a few points."""
from contextlib import contextmanager
from pathlib import Path

from . import bids as B
from . import logs as L


@contextmanager
def run_logs(config, now=True):
    """Give the run its id and its log file ``output_dir/logs/deepbleed-bids_<run-id>.log``.
    ``now=False``: lines are kept in memory until :func:`open_log` (a participant run
    refused on its inputs then leaves no output folder behind)."""
    config.run_id = config.run_id or L.new_run_id()
    L.buffer_log()
    L.emit(f"deepbleed-bids {config.analysis_level} run {config.run_id}")
    if now:
        open_log(config)
    try:
        yield
    finally:
        L.stop_log_file()


def open_log(config):
    path = L.start_log_file(config)
    L.emit(f"log file: {path}")
    return path


def validate_input(config):
    """The official BIDS validator on the input, unless ``--skip-bids-validation``."""
    if config.skip_bids_validation:
        L.emit("BIDS validation of the input skipped (--skip-bids-validation)")
        return None
    from .validation import validate_input as _validate

    return _validate(config.bids_dir, L.emit)


def after_assets(config, images):
    """Once the model and template are known: dataset_description.json, .bidsignore,
    README, the template copy, the methods text and the resolved configurations.
    Returns True when the run should stop here (``--boilerplate-only``)."""
    from .boilerplate import write_citation

    open_log(config)
    paths = write_citation(config)
    L.emit(f"methods text: {paths['md']} (.bib, .html beside it)")
    if config.boilerplate_only:
        return True
    B.write_dataset_description(config, L.emit)
    B.copy_template(config)
    L.write_config(config, L.run_folder(config))
    for subject in sorted({s["entities"]["subject"] for s in images}):
        L.write_config(config, L.participant_log_dir(config.output_dir, subject, config.run_id))
    return False


def prepare_work_dir(config):
    L.prepare_work_dir(config.work_dir, clean=config.clean_workdir, log=L.emit)


def reports_only(config, write_reports):
    """``--reports-only``: rebuild the reports (and the methods text of the last run)
    from the derivatives on disk; nothing is processed."""
    out = Path(config.output_dir)
    if not out.is_dir():
        from .errors import InputError

        raise InputError(f"--reports-only: {out} does not exist; run the participant level first.")
    wanted = {B.strip_label(p, "sub-") for p in config.participant_label}
    subjects = sorted(p.name for p in out.glob("sub-*") if p.is_dir()
                      and (not wanted or B.strip_label(p.name, "sub-") in wanted))
    if not subjects:
        from .errors import InputError

        raise InputError(f"--reports-only: no participant outputs (sub-*/) in {out}.")
    images = [{"relpath": f"{sub}/"} for sub in subjects]
    write_reports(config, images, [], [])
    L.emit(f"--reports-only: {len(subjects)} report(s) rebuilt")
    return 0
