"""A run's logs: its id, the log file in ``output_dir/logs/``, per-participant log folders
(``sub-X/log/<run-id>/``: crash files and the resolved configuration), progress lines
per image, the resource monitor and the work folder's version stamp.

Kept out of runner.py so that the run itself stays readable; runner calls these.
"""
import logging
import os
import re
import shutil
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

from . import __version__
from .errors import InputError

_STATE = {"file": None}
WORK_STAMP = "deepbleed-bids.version"
WORK_OWNED = ("deepbleed_wf", "crash")  # what --clean-workdir may remove: only our own folders


def new_run_id():
    """fMRIPrep-style: sortable by time, unique across jobs started together."""
    return f"{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"


def emit(msg):
    line = f"[deepbleed-bids {datetime.now():%H:%M:%S}] {msg}"
    _PROGRESS.clear()
    print(line, file=sys.stderr, flush=True)
    if _STATE["file"] is not None:
        _STATE["file"].write(line + "\n")
        _STATE["file"].flush()
    elif _STATE.get("buffer") is not None:  # kept until the run is sure to write outputs
        _STATE["buffer"].append(line)
    _PROGRESS.redraw()


def buffer_log():
    """Keep log lines in memory until :func:`start_log_file`: a run refused before it
    writes anything leaves no output folder behind."""
    _STATE["buffer"] = []


def log_folder(out_dir):
    return Path(out_dir) / "logs"


def start_log_file(config):
    """``output_dir/logs/deepbleed-bids_<run-id>.log``: our messages and nipype's."""
    folder = log_folder(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"deepbleed-bids_{config.run_id}.log"
    buffered = _STATE.pop("buffer", None) or []
    stop_log_file()
    _STATE["buffer"] = buffered
    _STATE["file"] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by stop_log_file
    for line in _STATE.pop("buffer", None) or []:
        _STATE["file"].write(line + "\n")
    handler = logging.StreamHandler(_STATE["file"])
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    handler.set_name("deepbleed-bids-logfile")
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).addHandler(handler)
    _STATE["handler"] = handler
    return path


def stop_log_file():
    handler = _STATE.pop("handler", None)
    if handler is not None:
        for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
            logging.getLogger(name).removeHandler(handler)
    _STATE.pop("buffer", None)
    if _STATE["file"] is not None:
        _STATE["file"].close()
        _STATE["file"] = None


def participant_log_dir(out_dir, subject, run_id):
    """``sub-X/log/<run-id>/``: one folder per run, so a report links only its run's files."""
    return Path(out_dir) / f"sub-{subject}" / "log" / run_id


def write_config(config, folder):
    """The resolved configuration as TOML, usable again with ``--config-file``."""
    import tomli_w

    from .provenance import software_versions
    from .utils import write_text_atomic

    data = config.to_dict()
    record = {k: data.pop(k) for k in ("bids_dir", "output_dir", "analysis_level", "template_sha256",
                                       "model_spec", "run_id", "config_file")}
    record["software_versions"] = software_versions()
    options = {k: v for k, v in data.items() if v is not None}
    options["bids_filters"] = options.get("bids_filters") or {}
    for key in ("reports_only", "boilerplate_only", "clean_workdir"):  # one-off actions, not settings
        options.pop(key, None)
    text = (f"# deepbleed-bids {__version__}, run {config.run_id}: the resolved configuration.\n"
            "# Re-run with: run.py BIDS_DIR OUTPUT_DIR participant --config-file THIS_FILE\n"
            + tomli_w.dumps({**options, "provenance": _toml_safe(record)}))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(text, folder / "config.toml")
    return folder / "config.toml"


def _toml_safe(value):
    """TOML has no null: drop None (the record is for people, not re-read)."""
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value if v is not None]
    return value


def keep_crash_files(config, crashes):
    """Copy each failed image's crash file into ``sub-X/log/<run-id>/``."""
    for wf_name, (_, crash) in crashes.items():
        sub = re.match(r"ct_sub_([a-zA-Z0-9]+)_", wf_name)
        dest = (participant_log_dir(config.output_dir, sub.group(1), config.run_id) if sub
                else log_folder(config.output_dir) / config.run_id)
        dest.mkdir(parents=True, exist_ok=True)
        if Path(crash).is_file():
            shutil.copy(crash, dest / Path(crash).name)


# ---------------------------------------------------------------- work folder

def prepare_work_dir(work_dir, clean=False, log=emit):
    """Stamp the work folder with this version; refuse one made by another version
    (its cached steps were computed by other code). ``clean``: remove our own cached
    steps first (``--clean-workdir``); nothing else in the folder is touched."""
    work = Path(work_dir)
    stamp = work / WORK_STAMP
    if clean and work.is_dir():
        for name in WORK_OWNED:
            if (work / name).is_dir():
                shutil.rmtree(work / name)
        stamp.unlink(missing_ok=True)
        log(f"--clean-workdir: removed the cached steps in {work}")
    found = stamp.read_text().strip() if stamp.is_file() else None
    cached = any((work / name).exists() for name in WORK_OWNED[:1])
    if found and found != __version__ or (found is None and cached):
        raise InputError(
            f"work folder {work} holds steps computed by deepbleed-bids {found or 'of an older version'}; "
            f"this is {__version__}, and reusing them could mix results of different code. Give another "
            "--work-dir, or add --clean-workdir to remove the cached steps.")
    work.mkdir(parents=True, exist_ok=True)
    if found is None:
        from .utils import write_text_atomic

        write_text_atomic(__version__ + "\n", stamp)


# ---------------------------------------------------------------- progress

def _image_of(node):
    """The per-image workflow name (``ct_<id>_wf``) a nipype node belongs to."""
    from .execution import workflow_of

    return workflow_of(getattr(node, "fullname", "") or str(node))


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One line per image as it starts and ends (n/N, elapsed, remaining estimate), and a
    redrawn bar on an interactive terminal. Used as nipype's ``status_callback``."""

    def __init__(self, names=(), labels=None, stream=None, resources=None):
        self.names = list(names)
        self.labels = labels or {}
        self.stream = stream or sys.stderr
        self.started, self.finished, self.failed = {}, set(), set()
        self.t0 = time.monotonic()
        self.resources = resources  # a list collecting node resource records, or None
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = False

    @property
    def total(self):
        return len(self.names)

    def eta(self):
        done = len(self.finished)
        if not done:
            return None
        return (time.monotonic() - self.t0) / done * (self.total - done)

    def __call__(self, node, status):
        image = _image_of(node)
        if status == "end" and self.resources is not None:
            self._record(node)
        if image is None or image not in self.names:
            return
        label = self.labels.get(image, image)
        # cached steps (a re-run with the same --work-dir) report their end only
        if image not in self.started:
            self.started[image] = time.monotonic()
            emit(f"start {len(self.started)}/{self.total} {label} (elapsed {_duration(time.monotonic() - self.t0)})")
        if status == "exception" and image not in self.finished:
            self.failed.add(image)
            self._end(image, label, f"FAILED at {getattr(node, 'name', node)}")
        elif status == "end" and getattr(node, "name", "") == "ds_outputs" and image not in self.finished:
            self._end(image, label, "done")

    def _end(self, image, label, what):
        self.finished.add(image)
        took = time.monotonic() - self.started.get(image, self.t0)
        eta = self.eta()
        emit(f"{what} {len(self.finished)}/{self.total} {label} in {_duration(took)} "
             f"(elapsed {_duration(time.monotonic() - self.t0)}"
             + (f", about {_duration(eta)} left)" if eta is not None and len(self.finished) < self.total else ")"))

    def _record(self, node):
        runtime = getattr(getattr(node, "result", None), "runtime", None)
        get = (lambda k: getattr(runtime, k, None)) if runtime is not None else (lambda k: None)
        self.resources.append({"node": getattr(node, "fullname", str(node)), "duration_s": get("duration"),
                               "mem_peak_gb": get("mem_peak_gb"), "cpu_percent": get("cpu_percent"),
                               "startTime": get("startTime"), "endTime": get("endTime")})

    def bar(self):
        width = 30
        done = len(self.finished)
        filled = int(width * done / self.total) if self.total else width
        eta = self.eta()
        return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} images"
                + (f", about {_duration(eta)} left" if eta is not None and done < self.total else ""))

    def clear(self):
        if self.tty and self._bar:
            self.stream.write("\r\033[K")
            self._bar = False

    def redraw(self):
        if self.tty and self.total:
            self.stream.write("\r" + self.bar())
            self.stream.flush()
            self._bar = True

    def close(self):
        self.clear()


class _NoProgress(Progress):
    def clear(self):
        pass

    def redraw(self):
        pass


_PROGRESS = _NoProgress()


def start_progress(images, stream=None, resources=None):
    """The progress tracker of this run (also keeps the bar below log lines)."""
    global _PROGRESS
    from .execution import workflow_name

    names = [workflow_name(s["relpath"]) for s in images]
    _PROGRESS = Progress(names, {n: s["relpath"] for n, s in zip(names, images)}, stream, resources)
    return _PROGRESS


def stop_progress():
    global _PROGRESS
    _PROGRESS.close()
    _PROGRESS = _NoProgress()


def write_resources(config, records):
    """``--resource-monitor``: one row per finished step."""
    import pandas as pd

    from .utils import write_tsv_atomic

    path = run_folder(config) / "resources.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tsv_atomic(pd.DataFrame(records, columns=["node", "startTime", "endTime", "duration_s",
                                                    "mem_peak_gb", "cpu_percent"]), path)
    return path


# ---------------------------------------------------------------- nipype hooks

def run_folder(config):
    """``output_dir/logs/<run-id>/``: the run's configuration, graph and resource table."""
    return log_folder(config.output_dir) / config.run_id


def attach(config, wf, images, nipype_config):
    """Before ``wf.run``: progress lines, ``--write-graph``, ``--resource-monitor``.
    Returns the nipype ``status_callback``."""
    if config.resource_monitor:
        nipype_config.update_config({"monitoring": {"enabled": True, "sample_frequency": "0.5"}})
        nipype_config.enable_resource_monitor()
        # nipype's monitor writes .proc-* files into the current folder: make that the work folder
        _STATE["cwd"] = os.getcwd()
        os.chdir(config.work_dir)
    if config.write_graph:
        write_graph(config, wf)
    return start_progress(images, resources=[] if config.resource_monitor else None)


def detach(config, progress):
    """After ``wf.run`` (also when it failed)."""
    stop_progress()
    if _STATE.get("cwd"):
        os.chdir(_STATE.pop("cwd"))
    if config.resource_monitor and progress.resources is not None:
        path = write_resources(config, progress.resources)
        emit(f"resource monitor: {path}")


def write_graph(config, wf):
    """The workflow graph as graphviz .dot (and .svg when graphviz's ``dot`` is installed)."""
    folder = run_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "graph.dot"
    if shutil.which("dot"):
        try:
            wf.write_graph(dotfilename=str(target), graph2use="colored", format="svg", simple_form=True)
            emit(f"workflow graph: {target} (.svg beside it)")
            return target
        except Exception as err:  # noqa: BLE001 - a graph is a convenience, never fatal
            emit(f"warning: the workflow graph could not be drawn ({err}); writing the .dot only")
    from .utils import write_text_atomic

    graph = wf._create_flat_graph()  # the executable graph, one node per step
    lines = ["digraph deepbleed {"] + [f'  "{n.fullname}";' for n in graph.nodes()] + \
        [f'  "{a.fullname}" -> "{b.fullname}";' for a, b in graph.edges()] + ["}"]
    write_text_atomic("\n".join(lines) + "\n", target)
    emit(f"workflow graph: {target} (install graphviz for an .svg)")
    return target
