"""The bad-input corpus: every kind of bad input a user may give, generated from the real head.

Nothing is stored: each bad file is made here from the real GE head (dcm2niix), most
from a copy subsampled 2x in-plane to keep the corpus cheap. Cost: one participant run
of ~25 images (a good one, a float64 one and the bad ones, refused in preflight), a few
quick dataset-level runs in parallel, and one run stopped by SIGTERM, one by SIGINT and
its resume. Each image kind asserts: the exit code, a message naming the file and the
problem, no output files for that image, and that the good image of the same run still
completes with its normal volume.

``IMAGE_KINDS``, ``DATASET_KINDS`` and ``OTHER_KINDS`` also make the README's "What
happens with bad input" table: ``python tests/test_bad_inputs.py`` prints it and
:func:`test_readme_table_matches_the_corpus` checks that the README holds it.
"""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

TOP = Path(__file__).resolve().parent.parent
# each heavy fixture (the corpus run, the dataset-level runs, the stopped runs) runs once when
# the tests that share it stay on one xdist worker: pytest -n 2 --dist loadgroup
RUN_PY = TOP / "run.py"
GOOD = "sub-good/ct/sub-good_ct.nii.gz"
FLOAT64 = "sub-float64/ct/sub-float64_ct.nii.gz"
GOOD_ML = 25.0  # synthetic hematoma in the good image (held-out shape seed 7, as test_demo_model)


@dataclass
class Kind:
    name: str
    sees: str  # what the user sees (README)
    expect: str = ""  # part of the message (case-insensitive)
    make: object = None  # (small head, big head, path) -> writes the file
    filename: str = ""  # the source's file name when not sub-<label>_ct.nii.gz
    code: int = 1
    args: list = field(default_factory=list)


# ---------------------------------------------------------------- image makers


def _nib():
    import nibabel as nib

    return nib


def _save(data, affine, path, header=None):
    nib = _nib()
    img = nib.Nifti1Image(data, affine, header)
    nib.save(img, str(path))
    return img


def _hu(small):
    return np.asanyarray(small.dataobj)


def _bytes_of(small, path, compressed):
    nib = _nib()
    tmp = path.with_name("full" + (".nii.gz" if compressed else ".nii"))
    nib.save(small, str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def _truncated(compressed):
    def make(small, big, path):
        data = _bytes_of(small, path, compressed)
        path.write_bytes(data[: int(len(data) * 0.6)])
    return make


def _header_only(small, big, path):
    path.write_bytes(_bytes_of(small, path, False)[:352])


def _pixdim(values):
    def make(small, big, path):
        nib = _nib()
        nib.save(small, str(path))
        # nibabel fixes pixdim on save and load: patch the stored header bytes (gzip)
        raw = gzip.decompress(path.read_bytes())
        hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(raw), check=False)
        hdr["pixdim"][1:4] = values
        hdr["qform_code"] = 0 if min(values) == 0 else hdr["qform_code"]
        hdr["sform_code"] = 0 if min(values) == 0 else hdr["sform_code"]
        path.write_bytes(gzip.compress(hdr.binaryblock + raw[348:], compresslevel=1))
    return make


def _affine(small, diag=None, singular=False, shear=False):
    aff = small.affine.copy()
    if diag is not None:
        aff[:3, :3] = np.diag(diag)
    if singular:
        aff[:3, 2] = aff[:3, 1]  # two voxel axes along the same direction
    if shear:
        aff[1, 2] = aff[2, 2] * np.tan(np.radians(18.5))  # gantry tilt without tilt correction
    return aff


def _geometry(**kw):
    def make(small, big, path):
        _save(_hu(small), _affine(small, **kw), path)
    return make


def _data(func, dtype=None):
    def make(small, big, path):
        data = func(_hu(small).astype(np.float32))
        _save(np.asarray(data).astype(dtype or np.int16), small.affine, path)
    return make


def _nan(d):
    d[d.shape[0] // 2, d.shape[1] // 2, :] = np.nan
    return d


def _inf(d):
    d[10, 10, 10] = np.inf
    return d


def _rgb(small, big, path):
    hu = np.clip(_hu(small), 0, 80) * 3
    rgb = np.zeros(hu.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for c in "RGB":
        rgb[c] = hu.astype(np.uint8)
    _save(rgb, small.affine, path)


def _four_d(small, big, path):
    d = _hu(small)
    _save(np.stack([d, d], -1), small.affine, path)


def _scout(small, big, path):
    _save(_hu(small)[:, :, 28:29], small.affine, path)


def _partial(small, big, path):
    _save(_hu(small)[:, :, 30:50], small.affine, path)  # 20 slices of 2.6 mm: the top of the head


def _mri(small, big, path):
    d = _hu(small).astype(np.float32)
    _save(np.where(d < -300, 0, np.clip(d, 0, 80) * 10 + 100).astype(np.int16), small.affine, path)


def _not_nifti(small, big, path):
    path.write_bytes(np.random.default_rng(0).bytes(50_000))


def _empty_file(small, big, path):
    path.write_bytes(b"")


def _float64(small, big, path):
    _save(_hu(small).astype(np.float64), small.affine, path)


IMAGE_KINDS = [
    Kind("truncated .nii.gz", "refused: the data cannot be read, the file is truncated or damaged",
         "truncated or damaged", _truncated(True)),
    Kind("truncated .nii", "refused: the data cannot be read, the file is truncated or damaged",
         "truncated or damaged", _truncated(False), filename="_ct.nii"),
    Kind("header-only .nii", "refused: the data cannot be read, the file is truncated or damaged",
         "truncated or damaged", _header_only, filename="_ct.nii"),
    Kind("empty file", "refused: cannot be read as NIfTI", "cannot be read as NIfTI", _empty_file),
    Kind("not a NIfTI file", "refused: cannot be read as NIfTI", "cannot be read as NIfTI", _not_nifti),
    Kind("pixdim 0, no qform/sform", "refused: no orientation and voxel size 0, no volume can be measured",
         "true voxel size is unknown", _pixdim([0, 0, 0])),
    Kind("negative pixdim", "refused: zero or negative voxel size in the header",
         "negative voxel size", _pixdim([-0.98, 0.98, 2.6])),
    Kind("NaN pixdim", "refused: voxel sizes are not numbers", "are not numbers", _pixdim([np.nan] * 3)),
    Kind("huge voxel size (1e6 mm)", "refused: voxel size implausible for a head CT (0.1-10 mm)",
         "implausible for a head CT", _geometry(diag=[1e6, 1e6, 1e6])),
    Kind("tiny voxel size (0.001 mm)", "refused: voxel size implausible for a head CT (0.1-10 mm)",
         "implausible for a head CT", _geometry(diag=[0.001, 0.001, 0.001])),
    Kind("singular affine", "refused: the voxel-to-world affine is singular", "affine is singular",
         _geometry(singular=True)),
    Kind("sheared affine (gantry tilt, no tilt correction)",
         "refused: sheared affine; use dcm2niix's tilt-corrected image", "not orthogonal", _geometry(shear=True)),
    Kind("NaN in the data", "refused: NaN or infinite values", "NaN or infinite", _data(_nan, np.float32)),
    Kind("Inf in the data", "refused: NaN or infinite values", "NaN or infinite", _data(_inf, np.float32)),
    Kind("int8 data", "refused: not a head CT in Hounsfield units", "does not look like a head CT",
         _data(lambda d: d.astype(np.int16).astype(np.int8), np.int8)),
    Kind("uint8 data (0-255 export)", "refused: not a head CT in Hounsfield units",
         "does not look like a head CT", _data(lambda d: (np.clip(d, -1024, 3071) + 1024) / 16, np.uint8)),
    Kind("RGB data", "refused: a colour (RGB) image, not CT", "colour (RGB)", _rgb),
    Kind("constant image", "refused: not a head CT in Hounsfield units", "does not look like a head CT",
         _data(lambda d: np.full_like(d, 40))),
    Kind("all air", "refused: not a head CT in Hounsfield units", "does not look like a head CT",
         _data(lambda d: np.full_like(d, -1000))),
    Kind("4D image", "refused: one 3D volume per file is needed", "4D image with 2 volumes", _four_d),
    Kind("2D image (scout)", "refused: a 2D image such as a scout, not a head CT volume",
         "scout/localizer", _scout),
    Kind("MRI-like intensities", "refused: not a head CT in Hounsfield units (an MRI?)", "an MRI or another modality?", _mri),
    Kind("CT without rescale (air at 0)", "refused, with the hint that RescaleIntercept is missing",
         "without RescaleIntercept", _data(lambda d: np.clip(d, -1024, 3071) + 1024, np.uint16)),
    Kind("partial coverage (5 cm)", "refused: partial coverage, not the whole brain", "partial coverage",
         _partial),
    Kind("not a valid BIDS name (space in a label)", "refused: not a valid BIDS file name, rename it",
         "not a valid BIDS file name", _data(lambda d: d), filename="_acq-soft copy_ct.nii.gz"),
]
ACCEPTED_KINDS = [
    Kind("float64 data", "processed normally", make=_float64, code=0),
]

DATASET_KINDS = [
    Kind("empty dataset", "error: no CT images found, with where it looked", "no CT images found"),
    Kind("unknown --participant-label", "error: participant not found, with the ones that exist",
         "not found in", args=["--participant-label", "nobody"]),
    Kind("bad --bids-filter-file", "error: not valid JSON, with line and column", "not valid JSON"),
    Kind("missing --template", "error: no such file", "no such file"),
    Kind("corrupt --template", "error: template cannot be read as NIfTI", "cannot be read as NIfTI"),
    Kind("corrupt weights (random .weights.h5)", "error: weights damaged or truncated, copy them again",
         "cannot be read as a Keras .weights.h5"),
    Kind("truncated weights (half-copied .weights.h5)", "error: weights damaged or truncated, copy them again",
         "truncated"),
    Kind("mismatched weights (not a VNet)", "error: the weights do not fit the VNet", "do not fit the VNet"),
    Kind("corrupt weights (random .zip)", "error: cannot be opened as a zip archive, download again",
         "cannot be opened as a zip"),
    Kind("output inside the input", "error: write outputs outside it or under derivatives/",
         "inside the BIDS folder"),
    Kind("output folder not writable", "error: output folder cannot be written, with what to do",
         "cannot be written"),
]
OTHER_KINDS = [
    Kind("SIGTERM (docker stop, scancel) mid-run", "one line, exit 143, no worker or temporary folder "
         "left; a re-run resumes"),
    Kind("SIGINT (Ctrl-C) mid-run", "one line, exit 130, no worker or temporary folder left"),
    Kind("source replaced by a bad file, re-run", "group level: the old outputs are stale, not counted; "
         "missing.tsv gives the failure"),
    Kind("outputs whose source left the dataset", "group level: not counted, listed as a problem"),
    Kind("participants.tsv ragged, Latin-1, comma-separated, header-less, empty, ids without sub-, "
         "duplicates", "group level: a warning naming the file and line; usable rows are still used"),
]


def label(kind):
    return "".join(c for c in kind.name if c.isalnum())[:40].lower()


def relpath(kind):
    sub = label(kind)
    return f"sub-{sub}/ct/sub-{sub}{kind.filename or '_ct.nii.gz'}"


def readme_table():
    """The README's table: kind of bad input -> what the user sees."""
    lines = ["| Bad input | Stops | What you see |", "|---|---|---|"]
    for kind in IMAGE_KINDS + ACCEPTED_KINDS + DATASET_KINDS + OTHER_KINDS:
        stops = ("nothing" if kind in ACCEPTED_KINDS else "that image" if kind in IMAGE_KINDS
                 else "the run" if kind in DATASET_KINDS else "-")
        lines.append(f"| {kind.name} | {stops} | {kind.sees} |")
    return "\n".join(lines) + "\n"


def test_readme_table_matches_the_corpus():
    text = (TOP / "README.md").read_text()
    assert readme_table() in text, "regenerate the README table: python tests/test_bad_inputs.py"
    assert len(IMAGE_KINDS) + len(ACCEPTED_KINDS) + len(DATASET_KINDS) + len(OTHER_KINDS) >= 25
    labels = [label(k) for k in IMAGE_KINDS + DATASET_KINDS]
    assert len(set(labels)) == len(labels)


# ---------------------------------------------------------------- running run.py


def _env(asset_home):
    env = {**os.environ, "DEEPBLEED_HOME": str(asset_home)}
    env.pop("TMPDIR", None)  # temporary files go to <work>/tmp/run-*, checked after a stop
    return env


def _cmd(bids, out, *args):
    return [sys.executable, str(RUN_PY), str(bids), str(out), "participant", "--model", "synthetic-demo", *args]


@pytest.fixture(scope="module")
def heads(head_and_brain):
    """The good head (with a 25 mL hematoma) and a 2x in-plane subsampled copy for the bad kinds."""
    from deepbleed_bids import synth
    from deepbleed_bids.nifti import like

    nib = _nib()
    head, brain = head_and_brain
    big, _, info = synth.insert_hematoma(head, brain, GOOD_ML, rng=np.random.default_rng(1007),
                                             location="deep", shape_seed=7)
    aff = big.affine.copy()
    aff[:3, :2] *= 2
    small = nib.Nifti1Image(np.asanyarray(big.dataobj)[::2, ::2], aff)
    small.set_qform(aff, 1)
    small.set_sform(aff, 1)
    return like(np.asanyarray(big.dataobj), big), small, info


@pytest.fixture(scope="module")
def corpus(heads, asset_home, tmp_path_factory):
    from deepbleed_bids.testing import write_bids_dataset

    nib = _nib()
    nib.openers.Opener.default_compresslevel = 1  # the corpus is written, not archived
    big, small, info = heads
    root = tmp_path_factory.mktemp("badcorpus")
    bids = write_bids_dataset(root / "bids", {GOOD: big})
    for kind in IMAGE_KINDS + ACCEPTED_KINDS:
        path = bids / (FLOAT64 if kind in ACCEPTED_KINDS else relpath(kind))
        path.parent.mkdir(parents=True, exist_ok=True)
        kind.make(small, big, path)
    out, work = root / "out", root / "work"
    proc = subprocess.run(_cmd(bids, out, "--work-dir", str(work), "--nprocs", "2"), env=_env(asset_home),
                          capture_output=True, text=True, timeout=1800)
    return {"root": root, "bids": bids, "out": out, "proc": proc, "info": info, "work": work}


def _failed_line(stderr, rel):
    lines = [line for line in stderr.splitlines() if f"FAILED  {rel}: " in line]
    assert len(lines) == 1, stderr[-4000:]
    return lines[0].split(f"FAILED  {rel}: ", 1)[1]


def _outputs_of(out, rel):
    prefix = Path(rel).name.split("_ct.nii")[0]
    return [p for p in (out / Path(rel).parent).glob(prefix + "_*") if p.is_file()]


def _volume(out, rel):
    side = out / rel.replace("_ct.nii.gz", "_desc-hemorrhage_mask.json")
    return json.loads(side.read_text())


@pytest.mark.xdist_group("bad_corpus")
def test_good_images_complete_with_their_normal_volume(corpus):
    proc, out = corpus["proc"], corpus["out"]
    assert proc.returncode == 1, proc.stderr[-4000:]  # some images failed
    assert "Traceback" not in proc.stderr
    good = _volume(out, GOOD)
    assert good["HemorrhageVolume"] == pytest.approx(corpus["info"]["volume_ml"], rel=0.10)
    assert 1000 < good["BrainVolume"] < 1800
    f64 = _volume(out, FLOAT64)  # float64 is an ordinary CT (here the 2x subsampled head)
    assert f64["HemorrhageVolume"] == pytest.approx(corpus["info"]["volume_ml"], rel=0.15)
    ok = [line for line in proc.stderr.splitlines() if "  ok      " in line]
    assert len(ok) == 2 and all("QC pass" in line or "QC flags:" in line for line in ok), ok
    assert f"{len(IMAGE_KINDS)} failed" in proc.stderr


@pytest.mark.xdist_group("bad_corpus")
@pytest.mark.parametrize("kind", IMAGE_KINDS, ids=[label(k) for k in IMAGE_KINDS])
def test_bad_image_refused_alone(corpus, kind):
    rel = relpath(kind)
    reason = _failed_line(corpus["proc"].stderr, rel)
    assert kind.expect.lower() in reason.lower(), reason
    assert Path(rel).name in reason, f"the message does not name the file: {reason}"
    assert "/work/" not in reason and "deepbleed_wf" not in reason  # no work-folder paths
    assert _outputs_of(corpus["out"], rel) == []  # nothing written for it ...
    assert not list((corpus["out"] / Path(rel).parent).glob(".*"))  # ... not even a temporary file
    record = json.loads((corpus["out"] / Path(rel).parts[0] / "log" /
                         (Path(rel).name.split("_ct.nii")[0] + "_failure.json")).read_text())
    assert record["Source"] == rel and kind.expect.lower() in record["Reason"].lower()


# ---------------------------------------------------------------- the group level


@pytest.mark.xdist_group("bad_corpus")
def test_group_reads_current_successful_outputs_only(corpus, asset_home, tmp_path):
    """Stale outputs (a failed re-run) and outputs of sources no longer in the dataset are not counted;
    missing.tsv gives each refusal's reason; a ragged participants.tsv still gives its columns."""
    import pandas as pd

    from deepbleed_bids.cli.run import main

    bids, out = tmp_path / "bids", tmp_path / "out"
    shutil.copytree(corpus["bids"], bids)
    shutil.copytree(corpus["out"], out)
    # a ghost: outputs of a participant that is not in the dataset
    shutil.copytree(out / "sub-good", out / "sub-ghost")
    for path in (out / "sub-ghost").rglob("*"):
        if path.is_file() and "sub-good" in path.name:
            path.rename(path.with_name(path.name.replace("sub-good", "sub-ghost")))
    for side in (out / "sub-ghost").rglob("*.json"):
        side.write_text(side.read_text().replace("sub-good", "sub-ghost"))
    # the good image's source is replaced by a damaged copy and re-run: it fails
    src = bids / GOOD
    src.write_bytes(src.read_bytes()[:100_000])
    proc = subprocess.run(_cmd(bids, out, "--participant-label", "good"), env=_env(asset_home),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "truncated or damaged" in proc.stderr, proc.stderr[-3000:]
    assert _volume(out, GOOD)["HemorrhageVolume"] > 0  # earlier outputs are kept, never deleted
    (bids / "participants.tsv").write_text("participant_id\tsite\tage\nfloat64\tA\t61\nsub-good\tB\n"
                                           "sub-float64\tC\t70\n")
    assert main([str(bids), str(out), "group", "--group-by", "site"]) == 0
    vol = pd.read_csv(out / "group" / "volumes.tsv", sep="\t")
    assert list(vol["source"]) == [FLOAT64]  # not the stale sub-good, not the ghost
    assert list(vol["site"]) == ["A"]  # id without sub- normalised; the duplicate reported below
    missing = pd.read_csv(out / "group" / "missing.tsv", sep="\t")
    reasons = dict(zip(missing["source"], missing["reason"]))
    assert "last run failed" in reasons[GOOD] and "truncated or damaged" in reasons[GOOD]
    for kind in IMAGE_KINDS:
        assert kind.expect.lower() in reasons[relpath(kind)].lower()
    problems = json.loads((out / "group" / "summary.json").read_text())["problems"]
    text = "\n".join(f"{p['file']}: {p['problem']}" for p in problems)
    assert "stale" in text and "sub-ghost" in text and "not among the CT images" in text
    assert "participants.tsv" in text and "line 3: 2 field(s)" in text and "line 4: sub-float64 is listed again" in text


PARTICIPANTS = {
    "ragged": (b"participant_id\tsite\nsub-01\tA\textra\nsub-02\n", "line 2: 3 field(s)", ["A", None]),
    "latin-1": ("participant_id\tsite\nsub-01\tZürich\nsub-02\tB\n".encode("latin-1"), "line 2: not UTF-8",
                ["Zürich", "B"]),
    "comma-separated": (b"participant_id,site\nsub-01,A\nsub-02,B\n", "line 1: comma-separated", ["A", "B"]),
    "header-less": (b"sub-01\tA\nsub-02\tB\n", "no header line", None),
    "empty": (b"", "empty", None),
    "ids without sub-": (b"participant_id\tsite\n01\tA\n02\tB\n", "line 2: participant_id '01' lacks", ["A", "B"]),
    "duplicates": (b"participant_id\tsite\nsub-01\tA\nsub-02\tB\nsub-01\tC\n", "line 4: sub-01 is listed again",
                   ["A", "B"]),
}


@pytest.mark.parametrize("case", sorted(PARTICIPANTS))
def test_participants_tsv_problems_are_warnings_naming_file_and_line(tmp_path, case):
    from deepbleed_bids.group import read_participants

    raw, warning, sites = PARTICIPANTS[case]
    path = tmp_path / "participants.tsv"
    path.write_bytes(raw)
    problems = []
    table = read_participants(path, problems)
    assert any(p["file"] == str(path) and warning in p["problem"] for p in problems), problems
    if sites is None:
        assert table is None
    else:
        assert list(table["participant_id"]) == ["sub-01", "sub-02"]
        assert [None if isinstance(s, float) and np.isnan(s) else s for s in table["site"]] == sites


# ---------------------------------------------------------------- dataset-level failures


@pytest.fixture(scope="module")
def dataset_runs(heads, asset_home, template_path, tmp_path_factory):
    """Every dataset-level failure: small runs started two at a time."""
    import h5py

    from deepbleed_bids.testing import write_bids_dataset

    _, small, _ = heads
    root = tmp_path_factory.mktemp("baddatasets")
    bids = write_bids_dataset(root / "bids", {"sub-01/ct/sub-01_ct.nii.gz": small})
    empty = write_bids_dataset(root / "empty", {})
    (root / "filter.json").write_text('{"ct": {"session": 1,}}')
    (root / "template.nii.gz").write_bytes(np.random.default_rng(1).bytes(4000))
    (root / "rand.weights.h5").write_bytes(np.random.default_rng(2).bytes(5000))
    demo = TOP / "deepbleed_bids" / "data" / "models" / "synthetic-demo.weights.h5"
    (root / "half.weights.h5").write_bytes(demo.read_bytes()[: demo.stat().st_size // 2])
    with h5py.File(root / "dense.weights.h5", "w") as h5:
        h5["layers/dense/vars/0"] = np.zeros((3, 4), np.float32)
    (root / "rand.zip").write_bytes(np.random.default_rng(3).bytes(5000))
    (root / "a-file").write_text("not a folder")
    readonly = root / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    # as root every folder is writable: an output path through a file cannot be created either
    unwritable = (root / "a-file" / "out") if os.getuid() == 0 else (readonly / "out")
    out = root / "out"
    plan = {
        "empty dataset": _cmd(empty, out),
        "unknown --participant-label": _cmd(bids, out, "--participant-label", "nobody"),
        "bad --bids-filter-file": _cmd(bids, out, "--bids-filter-file", str(root / "filter.json")),
        "missing --template": _cmd(bids, out, "--template", str(root / "nope.nii.gz")),
        "corrupt --template": _cmd(bids, out, "--template", str(root / "template.nii.gz")),
        "corrupt weights (random .weights.h5)": _cmd(bids, out)[:-1] + [str(root / "rand.weights.h5")],
        "truncated weights (half-copied .weights.h5)": _cmd(bids, out)[:-1] + [str(root / "half.weights.h5")],
        "mismatched weights (not a VNet)": _cmd(bids, out)[:-1] + [str(root / "dense.weights.h5")],
        "corrupt weights (random .zip)": _cmd(bids, out)[:-1] + [str(root / "rand.zip")],
        "output inside the input": _cmd(bids, bids / "out"),
        "output folder not writable": _cmd(bids, unwritable),
    }
    assert set(plan) == {k.name for k in DATASET_KINDS}
    env = _env(asset_home)
    results, running = {}, {}
    for name, cmd in plan.items():
        while len(running) >= 2:
            for key, proc in list(running.items()):
                if proc.poll() is not None:
                    results[key] = (proc.returncode, proc.communicate()[1])
                    del running[key]
            time.sleep(0.2)
        running[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
    for key, proc in running.items():
        _, err = proc.communicate(timeout=600)
        results[key] = (proc.returncode, err)
    readonly.chmod(0o755)
    return {"results": results, "out": out, "bids": bids}


@pytest.mark.xdist_group("bad_datasets")
@pytest.mark.parametrize("kind", DATASET_KINDS, ids=[label(k) for k in DATASET_KINDS])
def test_dataset_level_failure_is_one_clear_error(dataset_runs, kind):
    code, err = dataset_runs["results"][kind.name]
    assert code == kind.code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("deepbleed-bids: error: ")]
    assert len(lines) == 1 and kind.expect.lower() in err.lower(), err[-3000:]
    assert not list(Path(dataset_runs["out"]).glob("sub-*/**/*.nii.gz"))  # nothing was produced
    assert not (Path(dataset_runs["bids"]) / "out").exists()


# ---------------------------------------------------------------- stopping


def _descendants(pid):
    """Every descendant of ``pid`` that is not a zombie (read from /proc)."""
    kids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z":
            kids.setdefault(int(ppid), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        more = kids.get(todo.pop(), [])
        out += more
        todo += more
    return out


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_mid_run(cmd, env, work, signum):
    """Start run.py, wait until its workers run nipype nodes, send ``signum``; return what is left."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        started = list((work / "deepbleed_wf").glob("**/_node.pklz")) if (work / "deepbleed_wf").is_dir() else []
        if len(started) >= 2 and _descendants(proc.pid):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    tree = _descendants(proc.pid)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    time.sleep(0.5)
    return proc.returncode, err, tree


@pytest.fixture(scope="module")
def stopped_runs(heads, asset_home, tmp_path_factory):
    from deepbleed_bids.testing import write_bids_dataset

    _, small, _ = heads
    root = tmp_path_factory.mktemp("stops")
    bids = write_bids_dataset(root / "bids", {GOOD: small})
    out, work = root / "out", root / "work"
    cmd = _cmd(bids, out, "--work-dir", str(work), "--nprocs", "2")
    env = _env(asset_home)
    runs = {"SIGTERM": _stop_mid_run(cmd, env, work, signal.SIGTERM)}
    runs["SIGTERM_tmp"] = sorted(p.name for p in (work / "tmp").iterdir())
    runs["SIGINT"] = _stop_mid_run(cmd, env, work, signal.SIGINT)
    runs["SIGINT_tmp"] = sorted(p.name for p in (work / "tmp").iterdir())
    runs["resume"] = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    return {"runs": runs, "out": out}


@pytest.mark.xdist_group("bad_stops")
@pytest.mark.parametrize("name,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_stops_workers_and_cleans_up(stopped_runs, name, code):
    rc, err, tree = stopped_runs["runs"][name]
    assert rc == code, err[-3000:]
    assert tree, "the run had no worker processes when it was stopped"
    assert not [pid for pid in tree if _alive(pid)], "worker processes survived the stop"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    stops = [line for line in err.splitlines() if f"stopped by {name}" in line]
    assert len(stops) == 1, err[-3000:]
    assert stopped_runs["runs"][f"{name}_tmp"] == []  # <work>/tmp/run-* removed
    assert not list(stopped_runs["out"].glob("sub-good/ct/*.nii.gz.*"))  # no half-written file


@pytest.mark.xdist_group("bad_stops")
def test_rerun_after_stop_resumes(stopped_runs, heads):
    proc = stopped_runs["runs"]["resume"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    vol = _volume(stopped_runs["out"], GOOD)["HemorrhageVolume"]
    assert vol == pytest.approx(heads[2]["volume_ml"], rel=0.15)


def test_failure_messages_hide_work_folder_paths(tmp_path):
    from deepbleed_bids.preflight import user_reason

    work = tmp_path / "work"
    reason = f"InputError: {work}/deepbleed_wf/sub_01_wf/clamp/sub-01_ct_clamped.nii.gz: no brain found"
    assert user_reason(reason, str(work)) == "InputError: sub-01_ct_clamped.nii.gz: no brain found"
    assert user_reason(reason, "") == reason


if __name__ == "__main__":
    sys.stdout.write(readme_table())
