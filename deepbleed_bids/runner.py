"""Run the participant and group levels: check inputs, resolve assets, run nipype, report."""
import os
import shutil
import tempfile
import time
from pathlib import Path

from . import bids as B
from .errors import InputError
from .preflight import preflight, record_outcomes, user_reason


def log(msg):
    from .logs import emit  # stderr, the run's log file, and the progress bar kept below

    emit(msg)


def check_dirs(config):
    bids_dir = Path(config.bids_dir).resolve()
    out_dir = Path(config.output_dir).resolve()
    if not bids_dir.is_dir():
        raise InputError(f"BIDS folder {config.bids_dir} does not exist.")
    if not (bids_dir / "dataset_description.json").is_file():
        log(f"warning: {bids_dir} has no dataset_description.json; is it a BIDS dataset?")
    inside = bids_dir == out_dir or bids_dir in out_dir.parents
    if inside and not (bids_dir / "derivatives") in [out_dir, *out_dir.parents]:
        raise InputError(
            f"output folder {config.output_dir} is inside the BIDS folder {config.bids_dir}; "
            f"write outputs outside it or under {bids_dir / 'derivatives'}/ (e.g. derivatives/deepbleed)."
        )
    if bids_dir / "derivatives" == out_dir:
        raise InputError(f"write outputs to a folder inside {out_dir} (e.g. {out_dir / 'deepbleed'}), "
                         "not to derivatives/ itself.")
    existing = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise InputError(f"output folder {config.output_dir} cannot be written: {existing} is a file, not a "
                         "folder. Choose another output folder.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"output folder {config.output_dir} cannot be written ({existing} is not writable by this "
            f"user, uid {os.getuid()}). Create it with the right owner first (with Docker: "
            "`mkdir -p out` before `docker run -u $(id -u):$(id -g) ...`).")


def resolve_assets(config):
    """Template and model: resolved once, before nipype runs, so failures are clear.
    Returns the Config fields they fill: template, template_sha256, model_spec."""
    from .utils import sha256_file
    from .model.zoo import resolve_model
    from .template import resolve_template

    path = resolve_template(config.template)
    return {"template": str(path.resolve()), "template_sha256": sha256_file(path),
            "model_spec": resolve_model(config.model).provenance()}


def _run_workflow(config, images):
    from . import logs as L
    from .execution import configure_nipype, plugin_settings, poll_seconds, run_workflow
    from .workflows.base import init_deepbleed_wf

    plugin, args = plugin_settings(config)
    ncfg, crash_dir = configure_nipype(config.work_dir, config.verbose, poll_seconds(plugin),
                                       config.stop_on_first_crash)
    wf = init_deepbleed_wf(config, images)

    progress = L.attach(config, wf, images, ncfg)  # progress lines, graph, resource monitor
    try:
        return run_workflow(wf, plugin, args, crash_dir, callbacks=[progress])
    finally:
        L.detach(config, progress)


def _keep_crash_logs(config, crashes):
    from .logs import keep_crash_files

    keep_crash_files(config, crashes)  # into sub-X/log/<run-id>/


def run_participant(config):
    """Participant level; returns the exit code (non-zero if any image failed, 143/130 when stopped)."""
    from .signals import run_stoppable

    return run_stoppable(_run_bidsapp, config, log=log)


def _run_bidsapp(config):
    from . import bidsapp

    check_dirs(config)
    with bidsapp.run_logs(config, now=config.reports_only):
        if config.reports_only:
            return bidsapp.reports_only(config, write_reports)
        from . import worker

        with worker.started(uses_network_worker(config), log=log):
            _validate(config)
            if config.work_dir:  # its version stamp is checked before anything is written
                bidsapp.prepare_work_dir(config)
            return _run_participant(config)


def uses_network_worker(config):
    """Whether the run starts a network worker (deepbleed_bids.worker) that imports TensorFlow
    on another core from the start: only when the nodes run in this process (Linear plugin)
    and a network will run. MultiProc and cluster workers import it in their own processes."""
    from .execution import plugin_settings

    return not config.boilerplate_only and plugin_settings(config)[0] == "Linear"


def imports_during_validation(config):
    """Whether the nodes' modules (execution.WARM_MODULES) are imported while the validator
    runs: for local runs, whose nodes run in this process or in workers forked from it."""
    from .execution import plugin_settings

    return not (config.skip_bids_validation or config.boilerplate_only) \
        and plugin_settings(config)[0] in ("Linear", "MultiProc", "LegacyMultiProc")


def _validate(config):
    """The validator on the input; its subprocess leaves this process idle, so the nodes'
    modules are imported meanwhile (see :func:`imports_during_validation`)."""
    from . import bidsapp
    from .execution import while_importing

    if imports_during_validation(config):
        return while_importing(lambda: bidsapp.validate_input(config))
    return bidsapp.validate_input(config)


def _run_participant(config):
    from .kernels import select_series

    start = time.perf_counter()
    from .qc import check_thresholds

    try:
        check_thresholds(config.qc_thresholds)
    except ValueError as err:
        raise InputError(f"--qc-thresholds: {err}") from err
    images = B.collect_ct(config.bids_dir, config.participant_label, config.session_label,
                          config.bids_filters)
    images, skipped = select_series(images, config.kernels)
    for relpath, reason in skipped:
        log(f"skipping {relpath}: {reason}")
    images, failures = preflight(images, config.skull_stripped)
    if not images:
        for relpath, reason in failures:
            log(f"FAILED {relpath}: {reason}")
        if Path(config.output_dir).is_dir():  # earlier outputs: keep their reports in step
            record_outcomes(config.output_dir, [], failures)
            write_reports(config, [], failures, skipped)
        raise InputError("no usable CT image: " + "; ".join(r for _, r in failures))
    for key, value in resolve_assets(config).items():
        setattr(config, key, value)
    log(f"{len(images)} CT image(s); model {config.model_spec['id']} "
        f"(sha256 {config.model_spec['sha256'][:12]}...), template {config.template}")
    notice = config.model_spec.get("notice")
    if notice:  # e.g. the demonstration model: say it in the log, every sidecar and report
        log(f"WARNING: {notice}")
        for source in images:
            source["warnings"] = [*source.get("warnings", []), notice]
    from . import bidsapp

    if bidsapp.after_assets(config, images):  # dataset files, methods text, configs
        return 0  # --boilerplate-only

    tmp_work = None
    if not config.work_dir:
        tmp_work = tempfile.mkdtemp(prefix="deepbleed-work-")
        config.work_dir = tmp_work
    try:
        crashes = _run_workflow(config, images)
        _keep_crash_logs(config, crashes)
    finally:
        if tmp_work:
            shutil.rmtree(tmp_work, ignore_errors=True)

    from .derivatives import plan_outputs, sidecar_path
    from .execution import workflow_name

    ok = []
    for source in images:
        wf_name = workflow_name(source["relpath"])
        target = sidecar_path(plan_outputs(config.output_dir, source["relpath"])["hemorrhage_mask"])
        if wf_name in crashes:
            failures.append((source["relpath"], user_reason(crashes[wf_name][0], config.work_dir)))
        elif not target.is_file():
            failures.append((source["relpath"], "no outputs were written (see the nipype log)"))
        else:
            ok.append((source["relpath"], target))
    record_outcomes(config.output_dir, [rel for rel, _ in ok], failures)
    _summary(ok, failures, time.perf_counter() - start)
    write_reports(config, images, failures, skipped)
    return 1 if failures else 0


def write_reports(config, images, failures, skipped=()):
    """One HTML report per participant of this run; a report that fails is logged, never fatal."""
    from .reports.participant import write_participant_report

    subjects = sorted({Path(rel).parts[0] for rel in [i["relpath"] for i in images]
                       + [r for r, _ in failures] + [r for r, _ in skipped]})
    # reports come after every workflow: all the run's threads are free for their figures
    threads = max(1, int(config.nprocs or 1) * int(config.omp_nthreads or 1))
    for sub in subjects:
        try:
            path = write_participant_report(config.output_dir, config.bids_dir, sub, failures, skipped,
                                            threads=threads)
        except Exception as err:  # noqa: BLE001
            log(f"report for {sub} could not be written: {err}")
            continue
        if path:
            log(f"report: {path}")


def _summary(ok, failures, elapsed):
    import json

    log(f"done in {elapsed:.0f} s: {len(ok)} image(s) processed, {len(failures)} failed")
    for relpath, sidecar in ok:
        meta = json.loads(Path(sidecar).read_text())
        flags = list((meta.get("QC") or {}).get("Flags") or [])
        log(f"  ok      {relpath}: hemorrhage {meta['HemorrhageVolume']:.1f} mL, "
            f"brain {meta['BrainVolume']:.0f} mL, " + (f"QC flags: {', '.join(flags)}" if flags else "QC pass"))
    for relpath, reason in failures:
        log(f"  FAILED  {relpath}: {reason}")


def run_group(config):
    """Group level (deepbleed_bids.group); non-zero only when there is nothing to summarise."""
    from contextlib import nullcontext

    from .bidsapp import run_logs
    from .group import run_group as _run_group

    # the group run's log file in output_dir/logs/ too (a missing folder is group's error)
    with run_logs(config) if Path(config.output_dir).is_dir() else nullcontext():
        _run_group(config, log=log)
    return 0
