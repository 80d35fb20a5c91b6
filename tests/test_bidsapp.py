"""BIDS-App conventions (issue #12): fMRIPrep's flags, --config-file, --mem units, input
validation with the official validator, dataset_description.json, the work-folder stamp,
progress lines and the methods boilerplate. The end-to-end checks on a real run are in
test_participant.py (derivatives validated, logs, reports-only) and test_dicom2bids.py."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepbleed_bids import __version__
from deepbleed_bids.cli.parser import apply_config_file, build_parser, memory_gb
from deepbleed_bids.cli.run import config_from_args
from deepbleed_bids.config import Config
from deepbleed_bids.errors import InputError
from deepbleed_bids.testing import not_a_brain, write_bids_dataset

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"
FLAGS = ["--skip-bids-validation", "--notrack", "--stop-on-first-crash", "--write-graph", "--resource-monitor",
         "--clean-workdir", "--reports-only", "--boilerplate-only"]


def _args(*extra):
    return build_parser().parse_args(["bids", "out", "participant", *extra])


# ---------------------------------------------------------------- flags and --mem

@pytest.mark.parametrize("flag", FLAGS)
def test_fmriprep_flag_is_accepted_and_reaches_the_config(flag):
    config = config_from_args(_args(flag))
    field = flag[2:].replace("-", "_")
    assert getattr(config, field) is True
    others = [f[2:].replace("-", "_") for f in FLAGS if f != flag]
    assert not any(getattr(config, f) for f in others)


def test_underscore_spellings_of_fmriprep():
    assert _args("--skip_bids_validation").skip_bids_validation
    assert _args("--mem_mb", "16000").mem_gb == 16.0


@pytest.mark.parametrize("text, gb", [("16G", 16.0), ("16GB", 16.0), ("16g", 16.0), ("16000M", 16.0),
                                      ("16000MB", 16.0), ("16GiB", 16.0), ("0.5T", 500.0), ("16000", 16.0),
                                      ("2048", 2.048), ("0", 0.0)])
def test_mem_units(text, gb):
    assert memory_gb(text) == pytest.approx(gb)
    assert _args("--mem", text).mem_gb == pytest.approx(gb)


def test_mem_gb_bare_number_is_gb():
    assert _args("--mem-gb", "16").mem_gb == 16.0
    assert _args("--mem-gb", "16000M").mem_gb == 16.0


@pytest.mark.parametrize("text, why", [("16", "did you mean 16G"), ("16 furlongs", "not a memory size"),
                                       ("20T", "implausible"), ("100K", "implausible"), ("-4G", "not a memory")])
def test_mem_implausible_or_malformed_is_refused(text, why):
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        memory_gb(text)


def test_mem_refused_at_the_command_line(capsys):
    with pytest.raises(SystemExit) as exc:
        _args("--mem", "16")
    assert exc.value.code == 2 and "did you mean 16G" in capsys.readouterr().err


# ---------------------------------------------------------------- --config-file

def test_config_file_sets_options_and_the_command_line_wins(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "synthetic-demo"\nnprocs = 3\nmem = "12G"\nthreshold = 0.4\n'
                    'participant-label = ["01", "02"]\nwrite_graph = true\nplugin_args = {n_procs = 3}\n'
                    'qc_thresholds = {skull_contact_cm2 = 6}\nbids_filters = {acquisition = "soft"}\n')
    args = apply_config_file(_args("--config-file", str(toml), "--threshold", "0.6"))
    config = config_from_args(args)
    assert config.model == "synthetic-demo" and config.nprocs == 3 and config.mem_gb == 12.0
    assert config.threshold == 0.6  # the command line wins
    assert config.participant_label == ["01", "02"] and config.write_graph is True
    assert config.plugin_args == {"n_procs": 3} and config.qc_thresholds == {"skull_contact_cm2": 6}
    assert config.bids_filters == {"acquisition": "soft"}


@pytest.mark.parametrize("text, why", [
    ('modle = "x"\n', "unknown option 'modle'"),
    ('mask_method = "blobs"\n', "'blobs' is not one of"),
    ('write_graph = "yes"\n', "must be true or false"),
    ('mem = "16"\n', "did you mean 16G"),
    ('model = \n', "not valid TOML"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path, text, why):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ValueError, match=why) as exc:
        apply_config_file(_args("--config-file", str(toml)))
    assert str(toml) in str(exc.value)


def test_written_config_is_a_valid_config_file(tmp_path):
    """Every option of a run survives write -> --config-file -> Config."""
    from deepbleed_bids.logs import write_config

    original = config_from_args(_args("--model", "synthetic-demo", "--mem", "6G", "--threshold", "0.3",
                                      "--mask-method", "deepbleed", "--session-label", "1", "--write-graph",
                                      "--qc-thresholds", '{"skull_contact_cm2": 5}', "-vv"))
    original.run_id = "20260101-000000_abc"
    original.model_spec = {"id": "synthetic-demo", "sha256": "0" * 64, "notice": None}
    path = write_config(original, tmp_path)
    again = config_from_args(apply_config_file(_args("--config-file", str(path))))
    skip = {"config_file", "run_id", "model_spec", "template_sha256", "bids_dir", "output_dir"}
    assert {k: v for k, v in again.to_dict().items() if k not in skip} == \
        {k: v for k, v in original.to_dict().items() if k not in skip}


def test_config_file_subprocess_error(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('nprocs = "many"\n')
    proc = subprocess.run([sys.executable, str(RUN_PY), str(tmp_path), str(tmp_path / "out"), "participant",
                           "--config-file", str(toml)], capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.toml" in proc.stderr and "nprocs" in proc.stderr


# ---------------------------------------------------------------- validation of the input

@pytest.fixture(scope="module")
def valid_bids(tmp_path_factory):
    root = write_bids_dataset(tmp_path_factory.mktemp("valid") / "bids",
                              {"sub-01/ct/sub-01_ct.nii.gz": not_a_brain()})
    (root / "README.md").write_text("test\n")
    return root


def test_validator_accepts_ct_with_a_note(valid_bids):
    from deepbleed_bids.validation import validate_input

    lines = []
    validate_input(valid_bids, lines.append)
    assert "BEP024" in lines[0] and "0 error(s)" in lines[-1]


def test_validator_stops_on_errors_and_skip_skips(valid_bids, tmp_path):
    import shutil

    bad = tmp_path / "bids"
    shutil.copytree(valid_bids, bad)
    (bad / "dataset_description.json").write_text(json.dumps({"Name": "no BIDSVersion"}))
    (bad / "sub-01" / "anat").mkdir()
    (bad / "sub-01" / "anat" / "sub-01_T1x.nii.gz").write_bytes(b"not an image")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, str(RUN_PY), str(bad), str(tmp_path / "out"), "participant", "--model", "synthetic-demo"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "is not a valid BIDS dataset" in proc.stderr and "--skip-bids-validation" in proc.stderr
    assert "sub-01_T1x.nii.gz" in proc.stderr
    assert not list((tmp_path / "out").glob("sub-*"))
    # skipped: the run goes past validation (and fails later, on the image itself)
    proc = subprocess.run(cmd + ["--skip-bids-validation"], capture_output=True, text=True, env=env)
    assert "validation of the input skipped" in proc.stderr and "not a valid BIDS dataset" not in proc.stderr


# ---------------------------------------------------------------- dataset_description.json

def _config(tmp_path, sha, name="synthetic-demo", license="Apache-2.0"):
    config = Config(bids_dir=str(tmp_path / "bids"), output_dir=str(tmp_path / "out"), model=name)
    config.model_spec = {"id": name, "sha256": sha, "license": license, "format": "keras-h5"}
    return config


def test_dataset_description_warns_and_records_another_model_or_version(tmp_path, monkeypatch):
    from deepbleed_bids import bids as B

    messages = []
    B.write_dataset_description(_config(tmp_path, "a" * 64), messages.append)
    B.write_dataset_description(_config(tmp_path, "a" * 64), messages.append)
    assert messages == []  # the same version and model: quiet
    B.write_dataset_description(_config(tmp_path, "b" * 64, "mine", "CC BY-NC-ND 4.0"), messages.append)
    assert len(messages) == 1 and "other weights (synthetic-demo)" in messages[0]
    monkeypatch.setattr(B, "__version__", "9.9.9")
    B.write_dataset_description(_config(tmp_path, "b" * 64, "mine", "CC BY-NC-ND 4.0"), messages.append)
    assert any("made by deepbleed-bids " + __version__ + "; this run is 9.9.9" in m for m in messages[-2:])
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert [g["Version"] for g in desc["GeneratedBy"]] == ["9.9.9", __version__, __version__]
    assert [m["WeightsSHA256"][0] for m in desc["DeepBleedModels"]] == ["b", "b", "a"]
    assert "CC BY-NC-ND 4.0 (mine)" in desc["License"] and "Apache-2.0 (synthetic-demo)" in desc["License"]
    assert desc["GeneratedBy"][0]["CodeURL"].endswith("/tree/9.9.9")


# ---------------------------------------------------------------- work folder

def test_work_dir_is_stamped_and_another_version_refused(tmp_path):
    from deepbleed_bids import logs as L

    work = tmp_path / "work"
    L.prepare_work_dir(work)
    assert (work / L.WORK_STAMP).read_text().strip() == __version__
    (work / "deepbleed_wf").mkdir()
    L.prepare_work_dir(work)  # same version: reused
    (work / L.WORK_STAMP).write_text("0.0.1\n")
    (work / "user-notes.txt").write_text("mine")
    with pytest.raises(InputError, match="deepbleed-bids 0.0.1; this is " + __version__):
        L.prepare_work_dir(work)
    L.prepare_work_dir(work, clean=True, log=lambda m: None)  # --clean-workdir
    assert not (work / "deepbleed_wf").exists() and (work / "user-notes.txt").read_text() == "mine"
    assert (work / L.WORK_STAMP).read_text().strip() == __version__


def test_unstamped_cache_of_an_older_version_is_refused(tmp_path):
    from deepbleed_bids import logs as L

    (tmp_path / "deepbleed_wf").mkdir()
    with pytest.raises(InputError, match="older version"):
        L.prepare_work_dir(tmp_path)


# ---------------------------------------------------------------- progress

class _Node:
    def __init__(self, image, name):
        self.fullname = f"deepbleed_wf.sub_01_wf.ct_sub_01_{image}_wf.{name}"
        self.name = name


def test_progress_lines_and_bar(capsys):
    import io

    from deepbleed_bids import logs as L

    images = [{"relpath": "sub-01/ct/sub-01_run-1_ct.nii.gz"}, {"relpath": "sub-01/ct/sub-01_run-2_ct.nii.gz"}]
    tty = io.StringIO()
    tty.isatty = lambda: True
    progress = L.start_progress(images, stream=tty)
    try:
        progress(_Node("run_1", "clamp"), "start")
        progress(_Node("run_1", "register"), "start")  # not a new image
        progress(_Node("run_2", "clamp"), "start")
        progress(_Node("run_1", "ds_outputs"), "end")
        progress(_Node("run_2", "segment"), "exception")
    finally:
        L.stop_progress()
    err = capsys.readouterr().err
    lines = [line.split("] ", 1)[1] for line in err.splitlines()]
    assert lines[0].startswith("start 1/2 sub-01/ct/sub-01_run-1_ct.nii.gz (elapsed 0:0")
    assert lines[1].startswith("start 2/2 sub-01/ct/sub-01_run-2_ct.nii.gz")
    assert lines[2].startswith("done 1/2 sub-01/ct/sub-01_run-1_ct.nii.gz in ") and "left)" in lines[2]
    assert lines[3].startswith("FAILED at segment 2/2 sub-01/ct/sub-01_run-2_ct.nii.gz") and "left" not in lines[3]
    assert len(lines) == 4
    assert "[###############...............] 1/2 images" in tty.getvalue()


def test_no_bar_without_a_terminal(capsys):
    import io

    from deepbleed_bids import logs as L

    pipe = io.StringIO()
    progress = L.start_progress([{"relpath": "sub-01/ct/sub-01_ct.nii.gz"}], stream=pipe)
    progress(_Node("x", "clamp"), "start")
    L.stop_progress()
    assert pipe.getvalue() == ""


# ---------------------------------------------------------------- methods boilerplate

def test_boilerplate_follows_the_parameters(tmp_path):
    from deepbleed_bids.boilerplate import write_citation

    config = _config(tmp_path, "c" * 64)
    config.threshold, config.mask_method, config.brain_extraction, config.seed = 0.35, "deepbleed", "fsl", 7
    config.template_sha256, config.run_id = "d" * 64, "20260101-000000_x"
    paths = write_citation(config)
    md = paths["md"].read_text()
    assert "c" * 64 in md and "d" * 64 in md and "thresholded at 0.35 on the template grid" in md
    assert "random seed 7" in md and "FSL BET" in md and __version__ in md
    assert "[1]" in md and "doi:10.1016/j.neuroimage.2015.03.074" in md  # Muschelli 2015
    html = paths["html"].read_text()
    assert "<!-- methods -->" in html and "0.35" in html
    bib = paths["bib"].read_text()
    for key in ("deepbleed", "muschelli2015", "ants", "nipype", "dcm2niix", "tensorflow"):
        assert f"{{{key},\n" in bib


def test_boilerplate_describes_uncertainty_and_the_trial_measures(tmp_path):
    """The measures beyond the volume (#15, #19) are in the methods text, with their references."""
    from deepbleed_bids.boilerplate import write_citation

    config = _config(tmp_path, "c" * 64)
    config.tta, config.run_id = "flip", "20260101-000000_x"
    paths = write_citation(config)
    md = paths["md"].read_text()
    assert "left-right mirrored input" in md and "Monte-Carlo" not in md
    for text in ("intraventricular and parenchymal", "perihematomal edema", "midline shift", "ICH score",
                 "not validated against expert labels"):
        assert text in md, text
    config.tta = "none"
    assert "single forward pass" in write_citation(config)["md"].read_text()
    config.tta = "flip+hu"
    md = write_citation(config)["md"].read_text()
    assert "left-right mirrored input" in md and "shifted by -4 and +4 HU" in md
    bib = paths["bib"].read_text()
    for key in ("blastct", "volbers2018", "hemphill2001"):
        assert f"{{{key},\n" in bib


def test_boilerplate_only_writes_the_methods_and_stops(ge_head, asset_home, tmp_path):
    bids = write_bids_dataset(tmp_path / "bids", {"sub-01/ct/sub-01_ct.nii.gz": ge_head})
    (bids / "README.md").write_text("test\n")
    env = {**os.environ, "DEEPBLEED_HOME": str(asset_home)}
    proc = subprocess.run([sys.executable, str(RUN_PY), str(bids), str(tmp_path / "out"), "participant",
                           "--model", "synthetic-demo", "--boilerplate-only", "--threshold", "0.45"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "thresholded there at 0.45" in (tmp_path / "out/logs/CITATION.md").read_text()
    assert not (tmp_path / "out" / "sub-01").exists()


def test_readme_usage_table_lists_every_option():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    usage = readme[readme.index("## Usage"):readme.index("## Input")]
    options = {s for a in build_parser()._actions for s in a.option_strings
               if s.startswith("--") and "_" not in s and s not in ("--help", "--version", "--nthreads",
                                                                     "--n_cpus", "--mem-mb")}
    missing = sorted(o for o in options if f"`{o}" not in usage)
    assert set(FLAGS) | {"--config-file", "--mem"} <= options
    assert not [m for m in missing if m in set(FLAGS) | {"--config-file", "--mem", "--mem-gb"}], missing


def test_stop_on_first_crash(tmp_path, asset_home):
    """Two images that both fail: with the flag the run stops at the first failure, so
    only one crash is recorded and the other image is never finished."""
    bids = write_bids_dataset(tmp_path / "bids", {"sub-01/ct/sub-01_ct.nii.gz": not_a_brain(),
                                                  "sub-02/ct/sub-02_ct.nii.gz": not_a_brain()})
    env = {**os.environ, "DEEPBLEED_HOME": str(asset_home)}
    proc = subprocess.run([sys.executable, str(RUN_PY), str(bids), str(tmp_path / "out"), "participant",
                           "--model", "synthetic-demo", "--nprocs", "1", "--skip-bids-validation",
                           "--stop-on-first-crash", "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.count("] FAILED at ") == 1
    assert "FAILED  sub-01/ct/sub-01_ct.nii.gz" in proc.stderr
    assert "FAILED  sub-02/ct/sub-02_ct.nii.gz: no outputs were written" in proc.stderr
    assert len(list((tmp_path / "out").glob("sub-*/log/*/crash-*"))) == 1


def test_work_dir_of_another_version_is_refused_before_any_output(valid_bids, tmp_path):
    from deepbleed_bids.logs import WORK_STAMP

    work = tmp_path / "work"
    (work / "deepbleed_wf").mkdir(parents=True)
    (work / WORK_STAMP).write_text("0.0.1\n")
    cmd = [sys.executable, str(RUN_PY), str(valid_bids), str(tmp_path / "out"), "participant",
           "--model", "synthetic-demo", "--work-dir", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and "holds steps computed by deepbleed-bids 0.0.1" in proc.stderr
    assert "--clean-workdir" in proc.stderr and not (tmp_path / "out").exists()
    assert (work / "deepbleed_wf").is_dir()  # nothing removed without --clean-workdir


def test_log_lines_before_the_outputs_reach_the_log_file(tmp_path):
    from deepbleed_bids import bidsapp
    from deepbleed_bids import logs as L

    config = Config(bids_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    with bidsapp.run_logs(config, now=False):
        L.emit("validated before any output")
        assert not (tmp_path / "out").exists()
        path = bidsapp.open_log(config)
        L.emit("after")
    text = path.read_text()
    assert path.name == f"deepbleed-bids_{config.run_id}.log"
    assert text.index("validated before any output") < text.index("log file:") < text.index("after")
