"""A process that imports TensorFlow when a run starts and runs the network for it.

In an in-process (Linear) run, ``import tensorflow`` (2.5 s on an Intel Xeon, 8-10 s on an
AMD EPYC, most of it holding the GIL) would sit on the run's critical path: on a thread it
slows the Python-heavy nodes beside it by more than its own length. In a process of its
own it runs on another core while this one validates, indexes and runs brain extraction
and registration, and this process never imports TensorFlow at all.

The worker runs functions named by module and name with picklable keyword arguments
(files in, files out); an error there is raised here with the worker's traceback. If the
worker dies (killed, out of memory), the call that was running fails with a clear error
and later calls run in this process, so one scan does not stop the others.
"""
import importlib
import os
import signal
import threading
import traceback

# What the worker imports while it waits for its first job.
MODULES = ("tensorflow", "keras", "deepbleed_bids.model.vnet", "deepbleed_bids.model.segment")

_active = None  # the run's worker, if any (see :func:`started`)


class WorkerDied(RuntimeError):
    """The worker process ended while it ran a call."""


def _import_all(modules):
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001,S110  the call that needs the module reports it
            pass


def _serve(conn, modules):
    # Ctrl-C reaches the whole process group; the run's owner stops this process itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _import_all(modules)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the run's process is gone
            break
        if job is None:
            break
        module, name, kwargs = job
        try:
            reply = (True, getattr(importlib.import_module(module), name)(**kwargs), "")
        except BaseException as err:  # noqa: BLE001  sent back, raised in the caller
            reply = (False, err, traceback.format_exc())
        try:
            conn.send(reply)
        except Exception as err:  # noqa: BLE001  e.g. an exception that cannot be pickled
            conn.send((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}"),
                       reply[2] or repr(err)))
    conn.close()
    os._exit(0)  # skip TensorFlow's slow interpreter teardown


class Worker:
    """One worker process (``multiprocessing`` spawn: no fork of a threaded process)."""

    def __init__(self, modules=MODULES):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, tuple(modules)), daemon=True,
                                 name="deepbleed-network")
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self.dead = False
        self.owner = os.getpid()  # a forked child inherits this object, not the pipe's other end

    @property
    def pid(self):
        return self._proc.pid

    def alive(self):
        return not self.dead and self._proc.is_alive()

    def call(self, func, **kwargs):
        """``func(**kwargs)`` in the worker; its exception, with the worker's traceback as a note."""
        with self._lock:
            try:
                self._conn.send((func.__module__, func.__qualname__, kwargs))
                ok, value, tb = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as err:
                self.dead = True
                self._proc.join(5)
                code = self._proc.exitcode
                why = " (killed: out of memory?)" if code == -signal.SIGKILL else ""
                raise WorkerDied(
                    f"the network's worker process (pid {self.pid}) ended with exit code {code}{why} "
                    f"while running {func.__name__}; later images run the network in the main "
                    "process. The network needs ~1.5 GB at 128^3 on the CPU: if memory is short, "
                    "give the run (or the container) more."
                ) from err
        if ok:
            return value
        if tb and isinstance(value, BaseException):
            value.add_note(f"in the network worker process (pid {self.pid}):\n{tb}")
        raise value

    def close(self, timeout=2.0):
        """Ask the worker to end; stop it if it does not (e.g. still importing TensorFlow
        when a run ends early: no need to wait for it)."""
        if self._proc.is_alive():
            try:
                with self._lock:
                    self._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout)
        self._conn.close()
        self.dead = True


class started:
    """``with started():`` a worker for this process's calls to :func:`run`; closed on exit."""

    def __init__(self, enabled=True, modules=MODULES, log=print):
        self.enabled = enabled
        self.modules = modules
        self.log = log
        self.worker = None

    def __enter__(self):
        global _active
        if self.enabled:
            try:
                self.worker = _active = Worker(self.modules)
            except OSError as err:  # e.g. a process limit: run the network here
                self.log(f"warning: network worker not started ({err}); the network runs in the "
                         "main process")
        return self.worker

    def __exit__(self, *exc):
        global _active
        if self.worker is not None:
            if _active is self.worker:
                _active = None
            self.worker.close()
        return False


def active():
    """The worker :func:`run` sends calls to from this process, or None."""
    if _active is not None and _active.alive() and os.getpid() == _active.owner:
        return _active
    return None


def run(func, **kwargs):
    """``func(**kwargs)``: in the run's worker when there is a live one, else here."""
    worker = active()
    if worker is None:
        return func(**kwargs)
    return worker.call(func, **kwargs)
