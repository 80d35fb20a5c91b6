"""Stop cleanly on SIGTERM (``docker stop``, ``scancel``, Kubernetes) and SIGINT (Ctrl-C).

The first signal stops every worker process of this run (nipype's MultiProc
workers and anything they started), then unwinds normally so that temporary
folders are removed; the run ends with one line and exit code 128 + signal
(143 for SIGTERM, 130 for SIGINT). A second signal exits at once.
"""
import logging
import os
import signal
import time
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Raised in the main process by the first SIGTERM/SIGINT (BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def descendants(pid):
    """Process ids of every descendant of ``pid`` (from /proc; empty where there is none)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_processes(pids, grace=3.0):
    """SIGTERM, then SIGKILL whatever is still running after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def run_stoppable(func, *args, log=print):
    """``func(*args)``; on SIGTERM/SIGINT stop the workers, unwind and return 128 + signal."""
    owner = os.getpid()

    def second(signum, frame):
        os._exit(128 + signum)

    def first(signum, frame):
        if os.getpid() != owner:  # a forked worker inherited this handler: just die
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for sig in SIGNALS:
            signal.signal(sig, second)
        # the pool reports its killed workers with a traceback: expected here, not news
        logging.getLogger("concurrent.futures").disabled = True
        stop_processes(descendants(owner))
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, first) for sig in SIGNALS}
    try:
        return func(*args)
    except Interrupted as stop:
        log(f"stopped by {signal.Signals(stop.signum).name}: workers stopped, temporary files removed; "
            "outputs already written are complete. Run the same command again to resume "
            "(with the same --work-dir, finished steps are reused).")
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
