"""``deepbleed-bids example OUT`` as a new user meets it: from the built wheel, installed
outside the source tree, with no network at all, a read-only package and a read-only $HOME.

The wheel is built once from the build inputs only (what the Dockerfile copies) and must
carry the example DICOM archive, the template and the demo model within 12 MB. The example
then runs from that installation: bundled DICOM -> dicom2bids (dcm2niix) -> participant
(synthetic-demo) -> group. Where the read-only sandbox of deepbleed_bids.testing is
available (root, mount and network namespaces) it runs there as an unprivileged user in an
empty network namespace, with everything but OUT read-only and /tmp watched for writes;
elsewhere it runs with the installed package and $HOME made unwritable by permissions.
"""
import csv
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from packaging.version import Version

from deepbleed_bids import assets
from deepbleed_bids.testing import sandbox_script, sandbox_unavailable, sandbox_user

TOP = Path(__file__).resolve().parent.parent
MAX_WHEEL_BYTES = 12 * 1024 * 1024
UID = 40000 + (os.getpid() + 7) % 20000  # no account: any file it owns comes from this test
BUILD_INPUTS = ("pyproject.toml", "version", "README.md", "LICENSE", "deepbleed_bids")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the build inputs (the source tree is not touched).

    Offline with the installed setuptools when it is recent enough (the test extra asks for
    it), else in pip's isolated build environment (setuptools from the package index)."""
    src = tmp_path_factory.mktemp("wheel_src")
    for name in BUILD_INPUTS:
        if (TOP / name).is_dir():
            shutil.copytree(TOP / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(TOP / name, src / name)
    out = src.parent / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(src)]
    offline = Version(version("setuptools")) >= Version("77")
    if offline:
        cmd[4:4] = ["--no-build-isolation", "--no-index"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 and not offline:
        pytest.skip("cannot build the wheel: setuptools<77 here and no package index reachable "
                    f"(pip install '.[test]'): {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (path,) = out.glob("deepbleed_bids-*.whl")
    return path


def test_wheel_ships_example_template_and_demo_model(wheel):
    assert wheel.stat().st_size <= MAX_WHEEL_BYTES, f"wheel is {wheel.stat().st_size / 2**20:.1f} MB"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        digest = {n: hashlib.sha256(zf.read(n)).hexdigest() for n in names if "/data/" in n}
    data = "deepbleed_bids/data/"
    assert digest[data + assets.EXAMPLE_CT["path"]] == assets.EXAMPLE_CT["sha256"]
    assert digest[data + assets.TEMPLATE["path"]] == assets.TEMPLATE["sha256"]
    assert {data + assets.EXAMPLE_CT["license_file"], data + assets.TEMPLATE["license_file"]} <= names
    assert {data + "models/synthetic-demo.weights.h5", data + "models/synthetic-demo.json"} <= names
    assert not [n for n in names if n.endswith(".dcm") or n.startswith("tests/")]
    # the wheel's metadata names all three licenses and carries their texts
    meta = zf_text(wheel, "METADATA")
    assert "License-Expression: Apache-2.0 AND BSD-2-Clause AND CC-BY-NC-ND-4.0" in meta
    assert {n.rpartition("/")[2] for n in names if "/licenses/" in n} >= {"LICENSE", "LICENSE-dcm_qa_ct", "LICENSE.md"}


def zf_text(wheel, name):
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/" + name))).decode()


def test_example_refuses_a_foreign_dicom_folder(tmp_path, capsys):
    from deepbleed_bids.cli.main import main

    mine = tmp_path / "ex" / "dicom" / "ge-head-tilt"
    mine.mkdir(parents=True)
    (mine / "IM0001").write_bytes(b"a user's own file")
    assert main(["example", str(tmp_path / "ex")]) == 1
    err = capsys.readouterr().err
    assert f"{mine} already exists and does not hold the example head CT" in err
    assert [p.name for p in mine.iterdir()] == ["IM0001"] and not (tmp_path / "ex" / "bids").exists()


_SANDBOX = sandbox_unavailable(unshare=("--mount", "--net"))


@pytest.fixture(scope="module")
def example_run(wheel):
    """Install the wheel into a folder of its own and run the example from there."""
    base = Path(tempfile.mkdtemp(prefix="deepbleed-example-", dir="/var/tmp"))
    try:
        os.chmod(base, 0o755)
        site = base / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
                        "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=600)
        for name in ("home", "out", "logs", "overlay"):
            (base / name).mkdir()
        os.chmod(base / "home", 0o555)
        env = {"HOME": str(base / "home"), "LANG": "C.UTF-8", "PYTHONPATH": str(site),
               "PATH": f"{site / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
               "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.update({k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")})
        where = [sys.executable, "-c", "import deepbleed_bids; print(deepbleed_bids.__file__)"]
        example = [str(site / "bin" / "deepbleed-bids"), "example", str(base / "out" / "ex")]
        logs = base / "logs"
        if not _SANDBOX:
            os.chown(base / "out", UID, UID)
            user, q = sandbox_user(UID, env), shlex.join
            script = sandbox_script(base, writable=("out", "logs")) + f"""
cd {base}/home
{q(user + where)} > {logs}/where.txt 2>&1
rc=0
{q(user + example)} > {logs}/stdout.txt 2> {logs}/stderr.txt || rc=$?
find {base}/overlay/upper -mindepth 1 > {logs}/tmp-after.txt
exit $rc
"""
            proc = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
                                  capture_output=True, text=True, timeout=1800)
        else:  # no namespaces here: read-only by permissions (binding for a non-root user only)
            subprocess.run(["chmod", "-R", "a-w", str(site)], check=True)
            kw = {"env": env, "cwd": base / "home", "text": True, "timeout": 1800}
            (logs / "where.txt").write_text(subprocess.run(where, capture_output=True, **kw).stdout)
            with open(logs / "stdout.txt", "w") as out, open(logs / "stderr.txt", "w") as err:
                proc = subprocess.run(example, stdout=out, stderr=err, **kw)
        yield base, proc
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_example_runs_from_the_wheel_offline_and_read_only(example_run):
    base, proc = example_run
    logs, ex = base / "logs", base / "out" / "ex"
    stdout, stderr = (logs / "stdout.txt").read_text(), (logs / "stderr.txt").read_text()
    assert proc.returncode == 0, f"{proc.stderr}\n{stderr[-4000:]}"
    site = base / "site" / "deepbleed_bids"
    assert (logs / "where.txt").read_text().strip() == str(site / "__init__.py"), "not the installed wheel"
    assert f"template {site / 'data' / assets.TEMPLATE['path']}" in stderr  # the bundled copy
    if not _SANDBOX:  # nothing written to /tmp, no write tried outside OUT
        assert (logs / "tmp-after.txt").read_text().split() == [], "written to /tmp"
        for symptom in ("Permission denied", "Read-only file system", "temporary cache directory"):
            assert symptom not in stderr, f"a write outside OUT was attempted:\n{stderr[-4000:]}"
        assert all(p.stat().st_uid == UID for p in ex.rglob("*"))
    else:
        print(f"read-only sandbox unavailable ({_SANDBOX}): ran with permissions only")

    # unpacked DICOM -> BIDS: the tilt-corrected GE head
    assert sorted(p.name for p in (ex / "dicom" / "ge-head-tilt").iterdir()) == sorted(assets.EXAMPLE_CT["members"])
    ct = ex / "bids" / "sub-example" / "ct" / "sub-example_acq-soft_ct.nii.gz"
    side = json.loads(ct.with_suffix("").with_suffix(".json").read_text())
    assert side["TiltCorrected"] is True and side["KernelType"] == "soft"
    # participant level: native-space mask on the CT's grid, plausible brain, no hemorrhage
    deriv = ex / "derivatives" / "deepbleed"
    out = deriv / "sub-example" / "ct"
    mask = nib.load(out / "sub-example_acq-soft_desc-hemorrhage_mask.nii.gz")
    assert np.array_equal(mask.affine, nib.load(ct).affine)
    meta = json.loads((out / "sub-example_acq-soft_desc-hemorrhage_mask.json").read_text())
    assert 1150 < meta["BrainVolume"] < 1700
    assert meta["Model"]["Name"] == "synthetic-demo"
    assert meta["HemorrhageVolume"] < 1.0  # a head without hemorrhage
    # group level: the tables the printout points to
    with open(deriv / "group" / "volumes.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["participant_id"] for r in rows] == ["sub-example"]
    assert float(rows[0]["brain_volume_ml"]) == pytest.approx(meta["BrainVolume"], abs=0.1)
    for path in (deriv / "sub-example.html", deriv / "group" / "volumes.tsv", deriv / "group" / "summary.tsv",
                 deriv / "group" / "index.html"):
        assert str(path) in stdout and path.is_file()
