"""Helpers for tests and benchmarks: the real head CT, the shared real data.

The real GE head CT and the DeepBleed template ship inside the package
(:mod:`deepbleed_bids.assets`), so everything built on them runs on a fresh clone.
The other real series (Philips phantom and scout, other templates, the atlas) are
read in place from ``../shared/data`` beside the project, or ``$DEEPBLEED_TEST_DATA``,
and never copied into the project; tests that need them skip without them.
"""
import os
import shutil
import subprocess
from pathlib import Path

_TOP = Path(__file__).resolve().parent.parent


def shared_data_dir():
    """Folder of the shared real test data, or None when it is absent."""
    env = os.environ.get("DEEPBLEED_TEST_DATA")
    path = Path(env) if env else _TOP.parent / "shared" / "data"
    return path if (path / "README.md").is_file() else None


def dcm2niix_binary():
    """The dcm2niix executable (the PyPI ``dcm2niix`` package ships one)."""
    found = shutil.which("dcm2niix")
    if found:
        return found
    try:
        import dcm2niix  # noqa: F401

        from dcm2niix import bin as _bin  # type: ignore[attr-defined]

        return str(_bin)
    except Exception:  # pragma: no cover
        return None


def shared_data_reason():
    """Why shared-data tests skip: where the data was looked for and how to point to it."""
    env = os.environ.get("DEEPBLEED_TEST_DATA")
    where = Path(env) if env else _TOP.parent / "shared" / "data"
    return (f"needs the shared real data (phantom, scout, templates, atlas), not found at {where}: "
            "set DEEPBLEED_TEST_DATA to that folder. The bundled head CT and template need nothing.")


def ge_head_dicom(dest):
    """The real GE head's 28 DICOM files in the folder ``dest`` (unpacked from the bundled copy)."""
    from .assets import unpack_example_ct

    return unpack_example_ct(dest)


def convert_ge_head(out_dir, data_dir=None, dicom_dir=None):
    """Convert the real GE head (gantry tilt, variable spacing) with dcm2niix.

    Returns the tilt-corrected, equidistant image (``*_Tilt_Eq_1.nii.gz``) and its
    JSON sidecar; only that output has correct geometry. The DICOM comes from
    ``dicom_dir``, else ``data_dir/dicom/ge-head-tilt``, else the copy bundled in the
    package (the same files).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nii = out_dir / "gehead_Tilt_Eq_1.nii.gz"
    if not nii.exists():
        if dicom_dir:
            dicom = Path(dicom_dir)
        elif data_dir:
            dicom = Path(data_dir) / "dicom" / "ge-head-tilt"
        else:
            dicom = ge_head_dicom(out_dir / "dicom")
        subprocess.run(
            [dcm2niix_binary(), "-z", "y", "-b", "y", "-ba", "y", "-f", "gehead",
             "-o", str(out_dir), str(dicom)],
            check=True, capture_output=True,
        )
    return nii, out_dir / "gehead.json"


def bench_head_and_template(work_dir):
    """What the benchmarks start from: the real GE head (bundled DICOM through dcm2niix,
    tilt-corrected), clamped to HU as int16 on its own grid, and the bundled DeepBleed
    template read into memory once; (head image, template image). Nothing is downloaded."""
    import nibabel as nib
    import numpy as np

    from .assets import fetch_template
    from .ct import clamp_hu, load_ct
    from .nifti import like

    nii, _ = convert_ge_head(Path(work_dir) / "head")
    img = load_ct(nii)
    head = like(clamp_hu(np.asanyarray(img.dataobj)).astype(np.int16), img)
    tpl = nib.load(str(fetch_template()))
    template = nib.Nifti1Image(np.asanyarray(tpl.dataobj), tpl.affine, tpl.header)
    return head, template


class StageTimes(dict):
    """Benchmarks' per-stage wall times: ``timed(name, func)`` runs ``func()`` and adds its
    seconds to ``self[name]`` (a stage run many times is summed)."""

    def timed(self, name, func):
        import time

        start = time.perf_counter()
        result = func()
        self[name] = self.get(name, 0.0) + time.perf_counter() - start
        return result


def write_bids_dataset(root, images, sidecars=None):
    """A minimal raw BIDS dataset: ``images`` maps relpath -> nibabel image or source path."""
    import json

    import nibabel as nib

    from .bids import BIDS_VERSION

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "deepbleed-bids test data", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw"}))
    subjects = set()
    for rel, img in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, (str, Path)):
            shutil.copyfile(img, path)
        else:
            nib.save(img, path)
        meta = (sidecars or {}).get(rel)
        if meta is not None:
            Path(str(path).replace(".nii.gz", ".json")).write_text(json.dumps(meta))
        subjects.add(Path(rel).parts[0])
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"{s}\n" for s in sorted(subjects)))
    return root


def not_a_brain():
    """A CT-like image (air, bone, soft tissue) with no skull enclosing anything: brain extraction fails."""
    import nibabel as nib
    import numpy as np

    data = np.full((96, 96, 40), -1000, np.int16)
    data[20:76, 20:76, 5:35] = 35
    data[20:24, 20:76, 5:35] = 1100
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))


# ---------------------------------------------------------------- read-only sandbox (tests)
# A run set up like `docker run --read-only -u UID` or an Apptainer image: a private mount
# namespace makes the whole root file system read-only, lays a writable overlay over /tmp
# whose upper layer records every change, and re-mounts only the given folders writable;
# the app then runs as an unprivileged user with `env -i`. Needs root (tests run as root
# here; the user gets CAP_DAC_READ_SEARCH because this machine's Python lives under /root).

def sandbox_script(base, writable=("out", "work", "logs")):
    """Shell lines run as root in a new mount namespace: root file system read-only, /tmp
    an overlay whose changes land in <base>/overlay/upper, <base>/<writable> writable."""
    folders = " ".join(f"{base}/{name}" for name in writable)
    return f"""set -e
mount --rbind / /
mount -o remount,bind,ro /
mount -t tmpfs -o mode=0700 tmpfs {base}/overlay
mkdir {base}/overlay/upper {base}/overlay/work
chmod 1777 {base}/overlay/upper
mount -t overlay overlay -o lowerdir=/tmp,upperdir={base}/overlay/upper,workdir={base}/overlay/work /tmp
for d in {folders}; do mount --bind "$d" "$d"; mount -o remount,bind,rw "$d"; done
"""


def sandbox_user(uid, env):
    """The command prefix that runs as ``uid`` with only ``env`` in the environment."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
            "env", "-i", *[f"{k}={v}" for k, v in env.items()]]


def sandbox_unavailable(unshare=("--mount",)):
    """Why the read-only sandbox cannot run here, or None when it can."""
    import sys
    import tempfile

    if os.geteuid() != 0:
        return "needs root to create a mount namespace and switch to an unprivileged user"
    for tool in ("unshare", "setpriv", "mount", "find"):
        if not shutil.which(tool):
            return f"{tool} (util-linux/findutils) is not installed"
    if not os.access("/var/tmp", os.W_OK):
        return "/var/tmp is not writable"
    base = Path(tempfile.mkdtemp(prefix="deepbleed-probe-", dir="/var/tmp"))
    try:
        for name in ("overlay", "out", "work", "logs"):
            (base / name).mkdir()
        import shlex

        probe = subprocess.run(
            ["unshare", *unshare, "--propagation", "private", "sh", "-c",
             sandbox_script(base) + shlex.join(sandbox_user(40000, {}) + [sys.executable, "-c", "pass"])],
            capture_output=True, text=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if probe.returncode != 0:
        return ("mount namespaces, overlayfs or ambient capabilities are not available here: "
                + probe.stderr.strip()[-300:])
    return None


def cpu_model():
    """The CPU's model name, printed with every benchmark table (machines differ between runs)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bids_app(bids, out, *args, level="participant", model="synthetic-demo", home=None,
                 env=None, timeout=1800, **kwargs):
    """``run.py bids out level --model model *args`` in a new process, as users run it.

    A separate process also because nipype's MultiProc forks its workers, and a fork of a
    test process whose TensorFlow threads already run can hang. ``home``: DEEPBLEED_HOME;
    ``model=None`` leaves --model out. Returns the CompletedProcess (text output).
    """
    import sys

    env = dict(os.environ if env is None else env)
    if home is not None:
        env["DEEPBLEED_HOME"] = str(home)
    cmd = [sys.executable, str(_TOP / "run.py"), str(bids), str(out), level]
    cmd += ["--model", str(model)] if model is not None else []
    return subprocess.run(cmd + [str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
