"""How a run executes: the nipype plugin, and a process environment that writes
nothing outside the output and work folders.

:func:`plugin_settings` is pure (config in, plugin name and arguments out) so the
choice is tested without a cluster. :func:`runtime_environment` points every
cache that a dependency would otherwise put in ``$HOME`` or ``/tmp`` (Keras'
``keras.json``, Matplotlib's font cache, the CUDA JIT cache, temporary files)
into the work folder, so the app runs with an unwritable ``$HOME``, a read-only
package and asset cache, and in read-only containers (Docker ``--read-only``,
Singularity/Apptainer).
"""
import atexit
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

# nipype's execution plugins (nipype.pipeline.plugins.<Name>Plugin). Debug needs a
# Python callable and cannot be given on the command line.
PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc", "SLURM", "SLURMGraph", "SGE", "SGEGraph",
           "PBS", "PBSGraph", "LSF", "OAR", "Condor", "CondorDAGMan", "IPython", "SomaFlow")
# plugins that submit every node as a batch job: the work folder must be shared
BATCH_PLUGINS = ("SLURM", "SLURMGraph", "SGE", "SGEGraph", "PBS", "PBSGraph", "LSF", "OAR",
                 "Condor", "CondorDAGMan")


def canonical_plugin(name):
    """``slurm`` -> ``SLURM``; an unknown name is an :class:`InputError` listing the choices."""
    found = {p.lower(): p for p in PLUGINS}.get(str(name).strip().lower().removesuffix("plugin"))
    if found is None:
        raise InputError(f"--plugin {name}: not a nipype execution plugin; choose one of "
                         f"{', '.join(PLUGINS)}.")
    return found


def plugin_settings(config):
    """The nipype plugin and its ``plugin_args`` for a run, from the configuration.

    - MultiProc gets ``n_procs`` (``--nprocs``) and ``memory_gb`` (``--mem``); with one
      process it becomes Linear, which takes no arguments.
    - SLURM gets ``sbatch_args`` asking for ``--omp-nthreads`` CPUs and ``--mem`` per job,
      before the user's own ``sbatch_args`` (sbatch lets the last option win).
    - Every other plugin gets ``--plugin-args`` unchanged.
    Values given in ``--plugin-args`` always win over the ones derived here.
    """
    plugin = canonical_plugin(config.plugin)
    user = dict(config.plugin_args or {})
    if config.nprocs < 1:
        raise InputError(f"--nprocs {config.nprocs}: must be at least 1.")
    if config.mem_gb and config.mem_gb < 0:
        raise InputError(f"--mem {config.mem_gb}: must be a positive number of GB.")
    if plugin in BATCH_PLUGINS and not config.work_dir:
        raise InputError(f"--plugin {plugin} submits every step as a batch job: give --work-dir "
                         "on a file system that the compute nodes share.")
    if plugin == "MultiProc":
        n_procs = int(user.get("n_procs", config.nprocs))
        if n_procs == 1:
            return "Linear", {}
        args = {"n_procs": n_procs, "raise_insufficient": False}
        if config.mem_gb:
            args["memory_gb"] = float(config.mem_gb)
        return plugin, {**args, **user}
    if plugin == "Linear":
        return plugin, {}
    if plugin in ("SLURM", "SLURMGraph"):
        ours = [f"--cpus-per-task={max(1, int(config.omp_nthreads))}"]
        if config.mem_gb:
            ours.append(f"--mem={math.ceil(config.mem_gb * 1024)}M")
        sbatch = " ".join(ours + [str(user.get("sbatch_args", "")).strip()]).strip()
        return plugin, {**user, "sbatch_args": sbatch}
    return plugin, user


# What the nodes of a local run import (in this process, or in MultiProc workers forked from
# it): antspyx, which pulls in pandas, statsmodels, scikit-learn and matplotlib (~3 s on an
# AMD EPYC). TensorFlow is imported by the network worker (deepbleed_bids.worker) instead.
WARM_MODULES = ("ants",)


def warm_imports(modules=WARM_MODULES):
    """Import ``modules`` on a background thread; returns the thread.

    A failed import is left to the step that needs the module, which reports it.
    """
    import importlib
    import threading

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001,S110  the node importing it reports the error
                pass

    thread = threading.Thread(target=run, name="deepbleed-warm-imports", daemon=True)
    thread.start()
    return thread


def while_importing(func, modules=WARM_MODULES):
    """``func()`` while ``modules`` are imported on a thread; returns when both are done.

    For a ``func`` that waits on a subprocess (the BIDS validator): it holds neither the
    GIL nor an import lock, so the imports cost no wall time up to its length.
    Measured on 2 cores, imports beside a Python-heavy node slowed it by more than they
    took alone (GIL). Joined before returning, so no node ever imports a package while
    this thread does, and nothing forks during the import.
    """
    thread = warm_imports(modules)
    try:
        return func()
    finally:
        thread.join()


def poll_seconds(plugin):
    """How often nipype's scheduler looks for finished nodes (its default: every 2 s).

    A local pool (MultiProc) is polled every 0.1 s: a chain of 8 nodes per image
    otherwise waits ~1 s after each one. Batch plugins keep nipype's 2 s: each poll
    there asks the scheduler (squeue, qstat) about every job.
    """
    return 0.1 if plugin in ("MultiProc", "LegacyMultiProc") else 2.0


# Environment variables of the caches that are moved into the work folder.
CACHE_VARIABLES = {
    "MPLCONFIGDIR": "matplotlib",  # font cache (keras imports matplotlib)
    "KERAS_HOME": "keras",  # keras.json; else ~/.keras, or /tmp/.keras when $HOME is read-only
    "CUDA_CACHE_PATH": "cuda",  # the driver's PTX JIT cache, else ~/.nv/ComputeCache
}


# Thread pools sized per process from --omp-nthreads, so that --nprocs processes
# never run more threads than cores (OpenMP/MKL/OpenBLAS in numpy and scipy, ITK
# in ANTs; TensorFlow's pools are sized in model.device.configure).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "NUMEXPR_NUM_THREADS")


def thread_settings(omp_nthreads, environ):
    """Thread-count variables for ``omp_nthreads`` threads per process (pure).

    A variable the user already set is kept (e.g. a scheduler's OMP_NUM_THREADS).
    """
    if not omp_nthreads:
        return {}
    return {name: str(int(omp_nthreads)) for name in THREAD_VARIABLES if not environ.get(name)}


def runtime_settings(work_dir, environ, omp_nthreads=None):
    """The variables :func:`runtime_environment` sets (pure; the caller creates folders).

    A variable the user already set is kept. ``TMPDIR`` is moved into the work folder
    only when it is unset: a scheduler's job-local ``$TMPDIR`` is respected.
    """
    base = Path(work_dir)
    out = {name: str(base / "cache" / sub) for name, sub in CACHE_VARIABLES.items()
           if not environ.get(name)}
    if not environ.get("TMPDIR"):
        out["TMPDIR"] = str(base / "tmp")
    if not environ.get("MPLBACKEND"):
        out["MPLBACKEND"] = "Agg"  # headless: no display in containers and batch jobs
    # the network is TensorFlow code: a user's ~/.keras/keras.json or KERAS_BACKEND
    # naming another backend must not change it
    out["KERAS_BACKEND"] = "tensorflow"
    out.update(thread_settings(omp_nthreads, environ))
    return out


@contextmanager
def runtime_environment(work_dir=None, omp_nthreads=None):
    """Run the enclosed code with caches and temporary files inside ``work_dir``.

    Without a work folder they go to a private temporary folder removed on exit.
    Temporary files get a folder of their own (``<work>/tmp/run-*``), removed on
    exit, so concurrent runs sharing a work folder do not clean up each other's.
    With ``omp_nthreads``, thread pools are sized to it (:func:`thread_settings`).
    Child processes (nipype's MultiProc workers) inherit the settings. The
    previous environment is restored on exit.
    """
    private = run_tmp = None
    try:
        if not work_dir:
            private = tempfile.mkdtemp(prefix="deepbleed-runtime-")
        settings = runtime_settings(work_dir or private, os.environ, omp_nthreads)
        if "TMPDIR" in settings:
            Path(settings["TMPDIR"]).mkdir(parents=True, exist_ok=True)
            run_tmp = tempfile.mkdtemp(prefix="run-", dir=settings["TMPDIR"])
            settings["TMPDIR"] = run_tmp
        for name in CACHE_VARIABLES:
            if name in settings:
                Path(settings[name]).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if private:
            shutil.rmtree(private, ignore_errors=True)
        where = f"the work folder {work_dir}" if work_dir else "the temporary folder"
        raise InputError(f"cannot write to {where} ({err.strerror}: {err.filename}); give --work-dir "
                         "a writable folder (in a container: a bind-mounted one).") from err
    saved = {name: os.environ.get(name) for name in settings}
    saved_tempdir = tempfile.tempdir
    owner = os.getpid()

    def cleanup():
        if os.getpid() != owner:  # a forked worker inherits atexit handlers
            return
        for path in (run_tmp, private):
            if path:
                shutil.rmtree(path, ignore_errors=True)

    atexit.register(cleanup)  # also on sys.exit() inside the block
    os.environ.update(settings)
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        yield settings
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = saved_tempdir
        cleanup()
        atexit.unregister(cleanup)


# ---------------------------------------------------------------- running a workflow

def workflow_name(relpath, kind="ct"):
    """The nipype workflow of one image: ``ct_<id>_wf`` (participant runs), ``case_<id>_wf`` (training)."""
    from .bids import image_id

    return f"{kind}_{image_id(relpath)}_wf"


def workflow_of(node_name, kind="ct"):
    """The per-image workflow (``<kind>_<id>_wf``) in a nipype node's dotted name, or None."""
    return next((p for p in str(node_name).split(".") if p.startswith(kind + "_") and p.endswith("_wf")),
                None)


def crashed_workflows(crash_dir, kind="ct"):
    """Map per-image workflow name -> (last error line, crash file), from nipype's crash files."""
    import re

    out = {}
    for crash in sorted(Path(crash_dir).glob("crash-*")):
        text = crash.read_text(errors="replace")
        node = re.search(r"Node: (\S+)", text)
        name = node.group(1) if node else crash.name
        wf = workflow_of(name, kind) or name
        errors = [line.strip() for line in text.splitlines()
                  if re.match(r"\s*[\w.]*(Error|Exception)\b.*:", line)]
        reason = errors[-1] if errors else "see " + str(crash)
        out.setdefault(wf, (re.sub(r"^[\w.]*\.(\w+(Error|Exception))", r"\1", reason), crash))
    return out


def configure_nipype(work_dir, verbose=0, poll=2.0, stop_on_first_crash=False):
    """nipype's execution and logging settings for a run; returns (nipype config, a new crash folder
    ``work_dir/crash/<time>``) so that this run's crash files are told apart from earlier runs'."""
    from datetime import datetime

    from nipype import config as ncfg
    from nipype import logging as nlogging

    crash_dir = Path(work_dir) / "crash" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    crash_dir.mkdir(parents=True, exist_ok=True)
    ncfg.update_config({
        "execution": {"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                      "poll_sleep_duration": poll,
                      "stop_on_first_crash": bool(stop_on_first_crash), "remove_unnecessary_outputs": False,
                      "hash_method": "content", "check_version": False, "create_report": False,
                      "write_provenance": False},
        "logging": {"workflow_level": "INFO" if verbose else "WARNING",
                    "interface_level": "INFO" if verbose > 1 else "WARNING"},
    })
    nlogging.update_logging(ncfg)
    return ncfg, crash_dir


def run_workflow(wf, plugin, plugin_args, crash_dir, kind="ct", callbacks=()):
    """Run ``wf``; a failing image does not stop the others. Returns :func:`crashed_workflows`.

    nipype raises once at the end when nodes failed (Linear: the node's own error or a
    RuntimeError, MultiProc: RuntimeError); each failure left a crash file, so the error is
    swallowed when there is one, and raised when there is none."""
    args = dict(plugin_args)
    if callbacks:
        def status(node, state):
            for callback in callbacks:
                callback(node, state)

        args["status_callback"] = status
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except Exception:  # noqa: BLE001
        if not any(Path(crash_dir).glob("crash-*")):
            raise
    return crashed_workflows(crash_dir, kind)
