"""Run the participant and group levels: check inputs, resolve assets, run nipype, report."""
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from . import bids as B
from .errors import InputError


def log(msg):
    print(f"[deepbleed-bids {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


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
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"output folder {config.output_dir} cannot be written ({existing} is not writable by this "
            f"user, uid {os.getuid()}). Create it with the right owner first (with Docker: "
            "`mkdir -p out` before `docker run -u $(id -u):$(id -g) ...`).")


def preflight(images, skull_stripped=False):
    """Read and check every image before any processing; return (good, failures)."""
    from .ct import check_hounsfield, load_ct

    good, failures = [], []
    for source in images:
        try:
            img = load_ct(source["path"])
            check_hounsfield(img.get_fdata(dtype="float32"), source["relpath"],
                             skull_stripped=skull_stripped or None, zooms=img.header.get_zooms()[:3])
            from .registration import check_affine

            check_affine(img, source["relpath"])
        except InputError as err:
            failures.append((source["relpath"], str(err)))
            continue
        good.append(source)
    return good, failures


def resolve_assets(config):
    """Template and model: resolved once, before nipype runs, so failures are clear."""
    import nibabel as nib

    from . import assets
    from .model.weights import sha256_file
    from .model.zoo import resolve_model
    from .registration import check_template_grid

    if config.template:
        path = Path(config.template)
        if not path.is_file():
            raise InputError(f"--template {path}: no such file.")
    else:
        path = assets.fetch_template()
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"template {path} cannot be read as NIfTI: {err}") from err
    check_template_grid(img, path)
    config.template = str(Path(path).resolve())
    config.template_sha256 = sha256_file(path)
    config.model_spec = resolve_model(config.model).provenance()


def _crashed_images(crash_dir):
    """Map image workflow name -> last error line, from nipype's crash files."""
    out = {}
    for crash in sorted(Path(crash_dir).glob("crash-*")):
        text = crash.read_text(errors="replace")
        node = re.search(r"Node: (\S+)", text)
        name = node.group(1) if node else crash.name
        wf = next((part for part in name.split(".") if part.startswith("ct_") and part.endswith("_wf")), name)
        errors = [line.strip() for line in text.splitlines()
                  if re.match(r"\s*[\w.]*(Error|Exception)\b.*:", line)]
        reason = errors[-1] if errors else "see " + str(crash)
        out.setdefault(wf, (re.sub(r"^[\w.]*\.(\w+(Error|Exception))", r"\1", reason), crash))
    return out


def _run_workflow(config, images):
    from nipype import config as ncfg
    from nipype import logging as nlogging

    from .workflows.base import init_deepbleed_wf

    crash_dir = Path(config.work_dir) / "crash" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    crash_dir.mkdir(parents=True, exist_ok=True)
    ncfg.update_config({
        "execution": {"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                      "stop_on_first_crash": False, "remove_unnecessary_outputs": False,
                      "hash_method": "content", "check_version": False, "create_report": False,
                      "write_provenance": False},
        "logging": {"workflow_level": "INFO" if config.verbose else "WARNING",
                    "interface_level": "INFO" if config.verbose > 1 else "WARNING"},
    })
    nlogging.update_logging(ncfg)
    wf = init_deepbleed_wf(config, images)
    from .execution import plugin_settings

    plugin, args = plugin_settings(config)
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except RuntimeError:
        # nipype raises once at the end when nodes failed; each failure left a crash file
        if not any(crash_dir.glob("crash-*")):
            raise
    return _crashed_images(crash_dir)


def _keep_crash_logs(config, crashes):
    for wf_name, (_, crash) in crashes.items():
        sub = re.match(r"ct_sub_([a-zA-Z0-9]+)_", wf_name)
        dest = Path(config.output_dir) / (f"sub-{sub.group(1)}" if sub else "") / "log"
        dest.mkdir(parents=True, exist_ok=True)
        if Path(crash).is_file():
            shutil.copy(crash, dest / Path(crash).name)


def run_participant(config):
    """Participant level; returns the exit code (non-zero if any image failed)."""
    from .kernels import select_series

    start = time.perf_counter()
    check_dirs(config)
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
            write_reports(config, [], failures, skipped)
        raise InputError("no usable CT image: " + "; ".join(r for _, r in failures))
    resolve_assets(config)
    log(f"{len(images)} CT image(s); model {config.model_spec['id']} "
        f"(sha256 {config.model_spec['sha256'][:12]}...), template {config.template}")
    notice = config.model_spec.get("notice")
    if notice:  # e.g. the demonstration model: say it in the log, every sidecar and report
        log(f"WARNING: {notice}")
        for source in images:
            source["warnings"] = [*source.get("warnings", []), notice]
    B.write_dataset_description(config.output_dir, config.bids_dir)

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

    ok = []
    for source in images:
        wf_name = f"ct_{B.image_id(source['relpath'])}_wf"
        target = sidecar_path(plan_outputs(config.output_dir, source["relpath"])["hemorrhage_mask"])
        if wf_name in crashes:
            failures.append((source["relpath"], crashes[wf_name][0]))
        elif not target.is_file():
            failures.append((source["relpath"], "no outputs were written (see the nipype log)"))
        else:
            ok.append((source["relpath"], target))
    _summary(ok, failures, time.perf_counter() - start)
    write_reports(config, images, failures, skipped)
    return 1 if failures else 0


def write_reports(config, images, failures, skipped=()):
    """One HTML report per participant of this run; a report that fails is logged, never fatal."""
    from .reports.participant import write_participant_report

    subjects = sorted({Path(rel).parts[0] for rel in [i["relpath"] for i in images]
                       + [r for r, _ in failures] + [r for r, _ in skipped]})
    for sub in subjects:
        try:
            path = write_participant_report(config.output_dir, config.bids_dir, sub, failures, skipped)
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
        log(f"  ok      {relpath}: hemorrhage {meta['HemorrhageVolume']:.1f} mL, "
            f"brain {meta['BrainVolume']:.0f} mL")
    for relpath, reason in failures:
        log(f"  FAILED  {relpath}: {reason}")


def run_group(config):
    """Group level (deepbleed_bids.group); non-zero only when there is nothing to summarise."""
    from .group import run_group as _run_group

    _run_group(config, log=log)
    return 0
