"""A participant run in a read-only container writes only to its output and work folders.

The run is set up like ``docker run --read-only -u UID -v out -v work`` or an
Apptainer/Singularity image (read-only image, the host's /tmp mounted):

- a private mount namespace (``unshare -m``) makes the whole root file system read-only
  (the package, the Python environment, $HOME, the asset cache, the BIDS input), lays a
  writable overlay over /tmp whose upper layer records every change, and re-mounts only
  out/ and work/ writable;
- the app runs as an unprivileged user (``setpriv``; tests run as root, which ignores
  permissions) with an unwritable $HOME as its working folder, no TMPDIR, an empty
  read-only $DEEPBLEED_HOME (the template is bundled in the package), and no environment
  beyond a few variables (``env -i``);
- afterwards, any change to /tmp, any file of that user left in /dev/shm (the two places
  besides out/ and work/ where it could write), and any write that a library tried, failed
  and only reported (EACCES/EROFS, Matplotlib's "temporary cache directory") fail the test.

The user gets read access to every file (CAP_DAC_READ_SEARCH) because this machine's
Python interpreter lives under /root; it gets no write access anywhere. The real /tmp is
never changed: the overlay and every mount vanish with the namespace.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import deepbleed_bids
from deepbleed_bids.testing import sandbox_script, sandbox_unavailable, sandbox_user

TOP = Path(__file__).resolve().parent.parent
UID = 40000 + os.getpid() % 20000  # no account, so any file it owns comes from this test


_REASON = sandbox_unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_REASON), reason=_REASON or "")]


@pytest.fixture
def sandbox(ge_head):
    """Inputs owned by root and outputs owned by the test user, outside /tmp."""
    from deepbleed_bids.model.vnet import build_vnet
    from deepbleed_bids.testing import write_bids_dataset

    base = Path(tempfile.mkdtemp(prefix="deepbleed-readonly-", dir="/var/tmp"))
    try:
        os.chmod(base, 0o755)
        write_bids_dataset(base / "bids", {"sub-01/ct/sub-01_ct.nii.gz": ge_head})
        (base / "deepbleed_home").mkdir()  # empty: the template is bundled in the (read-only) package
        (base / "model").mkdir()
        build_vnet(width=4).save_weights(str(base / "model" / "tiny.weights.h5"))
        (base / "home").mkdir(mode=0o555)
        os.chmod(base / "home", 0o555)
        for name in ("out", "work"):
            (base / name).mkdir()
            os.chown(base / name, UID, UID)
        (base / "logs").mkdir()
        (base / "overlay").mkdir()
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_participant_run_writes_only_to_output_and_work(sandbox):
    base = sandbox
    package = Path(deepbleed_bids.__file__).resolve().parent
    env = {"HOME": str(base / "home"), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "LANG": "C.UTF-8", "DEEPBLEED_HOME": str(base / "deepbleed_home"),
           "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")})
    as_user = sandbox_user(UID, env)
    # the harness itself: the user cannot write to the package, $HOME or the asset cache
    check = ("import json, os, sys\nfound = {}\nfor d in sys.argv[1:]:\n"
             "    try:\n        open(d + '/probe', 'w').close()\n    except OSError as e:\n"
             "        found[d] = e.strerror\n    else:\n        found[d] = 'writable'\n"
             "        os.unlink(d + '/probe')\nprint(json.dumps(found))\n")
    run = [sys.executable, str(TOP / "run.py"), str(base / "bids"), str(base / "out"), "participant",
           "--model", str(base / "model" / "tiny.weights.h5"), "--work-dir", str(base / "work"),
           "--nprocs", "2"]
    q = shlex.join
    script = sandbox_script(base) + f"""
find /dev/shm -uid {UID} > {base}/logs/shm-before.txt 2>/dev/null || true
cd {base}/home
{q(as_user)} {q([sys.executable, '-c', check, str(package), str(base / 'home'),
                 str(base / 'deepbleed_home'), str(base / 'out')])} > {base}/logs/check.txt 2>&1
rc=0
{q(as_user)} {q(run)} > {base}/logs/run.log 2>&1 || rc=$?
find {base}/overlay/upper -mindepth 1 > {base}/logs/tmp-after.txt
find /dev/shm -uid {UID} > {base}/logs/shm-after.txt 2>/dev/null || true
exit $rc
"""
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=1500)
    logs = base / "logs"
    log = (logs / "run.log").read_text() if (logs / "run.log").exists() else ""
    assert result.returncode == 0, f"{result.stderr}\n{log[-4000:]}"

    checked = json.loads((logs / "check.txt").read_text().splitlines()[-1])
    assert checked[str(base / "out")] == "writable"
    for ro in (package, base / "home", base / "deepbleed_home"):
        assert checked[str(ro)] != "writable", f"the test user can write to {ro}: the test proves nothing"

    # nothing left behind in /tmp or /dev/shm, no write tried elsewhere
    assert (logs / "tmp-after.txt").read_text().split() == [], "written to /tmp"
    shm = set((logs / "shm-after.txt").read_text().split()) - set((logs / "shm-before.txt").read_text().split())
    assert not shm, f"files left in /dev/shm: {shm}"
    for symptom in ("Permission denied", "Read-only file system", "temporary cache directory"):
        assert symptom not in log, f"a write outside out/ and work/ was attempted:\n{log[-4000:]}"

    # the outputs are complete, with no staging leftovers; temporary files were removed
    out = base / "out"
    meta = json.loads((out / "sub-01/ct/sub-01_desc-hemorrhage_mask.json").read_text())
    assert meta["BrainVolume"] > 500
    assert not [p for p in out.rglob(".*") if p.name != ".bidsignore"], "staging leftovers in out/"
    assert {"dataset_description.json", "sub-01"} <= {p.name for p in out.iterdir()}
    assert not list((base / "work" / "tmp").iterdir()), "temporary files left in work/tmp"
    assert all(p.stat().st_uid == UID for p in out.rglob("*")), "out/ holds files not written by the run"
