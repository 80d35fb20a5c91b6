"""The run's network worker (deepbleed_bids.worker): TensorFlow imported and the network run
in a process of its own, with the same result as in this process, errors raised here."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deepbleed_bids import worker


def refuse(message):
    raise ValueError(message)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def test_calls_run_in_the_worker_and_their_errors_come_back_with_its_traceback():
    with worker.started(modules=("json",)) as w:
        assert worker.active() is w
        assert worker.run(os.getpid) == w.pid != os.getpid()
        with pytest.raises(ValueError, match="no such scan") as err:
            worker.run(refuse, message="no such scan")
        notes = "\n".join(getattr(err.value, "__notes__", []))
        assert f"network worker process (pid {w.pid})" in notes and "in refuse" in notes
        assert worker.run(os.getpid) == w.pid  # an error does not end the worker
    assert worker.active() is None and not w.alive()
    assert worker.run(os.getpid) == os.getpid()  # no worker: in this process


def test_a_dead_worker_fails_its_call_clearly_and_later_calls_run_here():
    with worker.started(modules=()):
        with pytest.raises(worker.WorkerDied, match=r"exit code -9 \(killed: out of memory\?\)"):
            worker.run(die)
        assert worker.active() is None
        assert worker.run(os.getpid) == os.getpid()


def test_disabled_means_no_process():
    with worker.started(enabled=False) as w:
        assert w is None and worker.active() is None


SCRIPT = """
import hashlib, json, sys
from pathlib import Path
from deepbleed_bids import worker
from deepbleed_bids.interfaces.segment import VNetSegment
from deepbleed_bids.model.zoo import resolve_model

spec = resolve_model("synthetic-demo").provenance()
image, out = Path(sys.argv[1]), Path(sys.argv[2])
with worker.started() as w:
    (out / "worker").mkdir()
    node = VNetSegment(in_file=str(image), model_spec=spec, model_sha256=spec["sha256"], num_threads=2)
    import os
    os.chdir(out / "worker")
    res = node.run().outputs
    print(json.dumps({"tf_here": "tensorflow" in sys.modules, "pid": w.pid,
                      "sha": hashlib.sha256(Path(res.out_probseg).read_bytes()).hexdigest(),
                      "agreement": res.agreement, "plan": res.device_plan}))
"""


def test_the_network_node_gives_the_same_bits_in_the_worker_and_imports_no_tensorflow_here(
        tmp_path, template_path):
    """The VNet node (synthetic-demo model) on the template with a small clot:
    through the worker, this process never imports TensorFlow, and the probability map is
    the one the node writes in-process, bit for bit."""
    import hashlib
    import json

    import nibabel as nib
    import numpy as np

    from deepbleed_bids.interfaces.segment import VNetSegment
    from deepbleed_bids.model.zoo import resolve_model

    tpl = nib.load(template_path)  # skull-stripped CT template: raw HU, 0 outside the brain
    data = np.asanyarray(tpl.dataobj).astype(np.float32)
    i, j, k = np.ogrid[:128, :128, :128]
    data[((i - 50) ** 2 + (j - 70) ** 2 + (k - 60) ** 2 < 100) & (data > 0)] = 65.0  # a small clot
    image = tmp_path / "ct_space-DeepBleedCT.nii.gz"
    nib.save(nib.Nifti1Image(data, tpl.affine), image)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(image), str(tmp_path)], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["tf_here"] is False, "the run's process imported TensorFlow"
    spec = resolve_model("synthetic-demo").provenance()
    (tmp_path / "here").mkdir()
    cwd = Path.cwd()
    os.chdir(tmp_path / "here")
    try:
        res = VNetSegment(in_file=str(image), model_spec=spec, model_sha256=spec["sha256"], num_threads=2).run()
    finally:
        os.chdir(cwd)
    assert hashlib.sha256(Path(res.outputs.out_probseg).read_bytes()).hexdigest() == out["sha"]
    assert res.outputs.agreement == out["agreement"]
    assert res.outputs.device_plan == out["plan"]


@pytest.mark.parametrize("settings, expected", [
    ({"nprocs": 1}, True),
    ({"nprocs": 1, "skip_bids_validation": True}, True),
    ({"nprocs": 2}, False),  # pool processes import TensorFlow themselves
    ({"nprocs": 1, "boilerplate_only": True}, False),  # no network runs
])
def test_worker_for_in_process_runs_only(tmp_path, settings, expected):
    from deepbleed_bids.config import Config
    from deepbleed_bids.runner import uses_network_worker

    config = Config(bids_dir=str(tmp_path), output_dir=str(tmp_path / "out"), **settings)
    assert uses_network_worker(config) is expected


def test_a_worker_that_cannot_start_leaves_the_network_here(monkeypatch):
    """A process limit (or any OSError starting it) is a warning, not a failed run."""
    said = []

    def refuse(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(worker, "Worker", refuse)
    with worker.started(log=said.append) as w:
        assert w is None and worker.run(os.getpid) == os.getpid()
    assert "network worker not started" in said[0] and "Resource temporarily unavailable" in said[0]
