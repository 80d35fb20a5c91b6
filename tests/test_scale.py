"""Scale: the nipype plugin choice, scoped runtime caches, and concurrent jobs into one output folder."""
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deepbleed_bids.config import Config
from deepbleed_bids.errors import InputError
from deepbleed_bids.execution import PLUGINS, plugin_settings, runtime_environment, runtime_settings

TOP = Path(__file__).resolve().parent.parent


def _config(**kw):
    base = {"bids_dir": "/b", "output_dir": "/o", "work_dir": "/shared/work", "nprocs": 4,
            "omp_nthreads": 2, "mem_gb": 8.0}
    return Config(**{**base, **kw})


# ---------------------------------------------------------------- plugin selection

def test_multiproc_gets_processes_and_memory():
    assert plugin_settings(_config()) == ("MultiProc", {"n_procs": 4, "memory_gb": 8.0,
                                                        "raise_insufficient": False})
    assert plugin_settings(_config(mem_gb=0.0)) == ("MultiProc", {"n_procs": 4, "raise_insufficient": False})
    # --plugin-args wins over the derived values
    plugin, args = plugin_settings(_config(plugin_args={"n_procs": 3, "maxtasksperchild": 1}))
    assert plugin == "MultiProc" and args["n_procs"] == 3 and args["maxtasksperchild"] == 1


def test_one_process_or_linear_runs_linear_without_arguments():
    assert plugin_settings(_config(nprocs=1)) == ("Linear", {})
    assert plugin_settings(_config(plugin_args={"n_procs": 1})) == ("Linear", {})
    assert plugin_settings(_config(plugin="linear", plugin_args={"n_procs": 8})) == ("Linear", {})


def test_slurm_gets_sbatch_args_and_the_users_come_last():
    plugin, args = plugin_settings(_config(plugin="slurm", omp_nthreads=4, mem_gb=6.0,
                                           plugin_args={"sbatch_args": "-p short --mem=12G", "max_jobs": 50}))
    assert plugin == "SLURM"
    assert args == {"sbatch_args": "--cpus-per-task=4 --mem=6144M -p short --mem=12G", "max_jobs": 50}
    assert plugin_settings(_config(plugin="SLURM", mem_gb=0.0)) == \
        ("SLURM", {"sbatch_args": "--cpus-per-task=2"})
    # other schedulers: the user's arguments, unchanged
    assert plugin_settings(_config(plugin="SGE", plugin_args={"qsub_args": "-q all.q"})) == \
        ("SGE", {"qsub_args": "-q all.q"})


def test_bad_plugin_settings_are_clear_errors():
    with pytest.raises(InputError) as err:
        plugin_settings(_config(plugin="Slurmm"))
    assert "--plugin Slurmm" in str(err.value) and "MultiProc" in str(err.value) and "SLURM" in str(err.value)
    with pytest.raises(InputError, match="--work-dir on a file system that the compute nodes share"):
        plugin_settings(_config(plugin="SLURM", work_dir=""))
    with pytest.raises(InputError, match="--mem -1"):
        plugin_settings(_config(mem_gb=-1.0))


def test_every_plugin_name_is_a_nipype_plugin_that_takes_our_arguments():
    from nipype.pipeline import plugins

    for name in PLUGINS:
        assert hasattr(plugins, f"{name}Plugin"), name
    _, args = plugin_settings(_config(plugin="SLURM", plugin_args={"sbatch_args": "-p short"}))
    slurm = plugins.SLURMPlugin(plugin_args=args)
    assert slurm._sbatch_args == "--cpus-per-task=2 --mem=8192M -p short"
    _, args = plugin_settings(_config(nprocs=3, mem_gb=5.0))
    multiproc = plugins.MultiProcPlugin(plugin_args=args)
    try:
        assert (multiproc.processors, multiproc.memory_gb, multiproc.raise_insufficient) == (3, 5.0, False)
    finally:
        multiproc.pool.shutdown()


def test_bad_plugin_fails_before_any_work(tmp_path, capsys):
    from deepbleed_bids.cli.run import main

    bids = tmp_path / "bids"
    bids.mkdir()
    assert main([str(bids), str(tmp_path / "out"), "participant", "--plugin", "Torque"]) == 1
    err = capsys.readouterr().err
    assert "not a nipype execution plugin" in err and "Linear, MultiProc" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- runtime environment

def test_runtime_environment_keeps_caches_and_temporary_files_in_the_work_dir(tmp_path, monkeypatch):
    for name in ("TMPDIR", "MPLCONFIGDIR", "KERAS_HOME", "CUDA_CACHE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    before = tempfile.gettempdir()
    work = tmp_path / "work"
    with runtime_environment(str(work)) as settings:
        run_tmp = Path(os.environ["TMPDIR"])
        assert run_tmp.parent == work / "tmp" and run_tmp.is_dir()
        assert Path(tempfile.mkdtemp()).parent == run_tmp
        for name in ("MPLCONFIGDIR", "KERAS_HOME", "CUDA_CACHE_PATH"):
            assert Path(os.environ[name]).is_dir() and Path(os.environ[name]).is_relative_to(work)
        assert os.environ["KERAS_BACKEND"] == "tensorflow"
        # child processes (nipype's workers) see the same
        child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == str(run_tmp)
        assert settings["TMPDIR"] == str(run_tmp)
    assert not run_tmp.exists(), "the run's temporary folder is removed at the end"
    assert "TMPDIR" not in os.environ and "MPLCONFIGDIR" not in os.environ
    assert os.environ["KERAS_BACKEND"] == "jax" and tempfile.gettempdir() == before


def test_runtime_environment_respects_the_users_settings(tmp_path):
    env = {"TMPDIR": "/scratch/job42", "MPLCONFIGDIR": "/home/u/.mpl"}
    settings = runtime_settings(tmp_path, env)
    assert "TMPDIR" not in settings and "MPLCONFIGDIR" not in settings
    assert settings["KERAS_HOME"] == str(tmp_path / "cache" / "keras")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write to the work folder"):
        with runtime_environment(str(blocker / "work")):
            pass


def test_thread_pools_sized_per_process_from_omp_nthreads():
    settings = runtime_settings("/w", {"OMP_NUM_THREADS": "3"}, omp_nthreads=1)
    assert settings["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
    assert settings["OPENBLAS_NUM_THREADS"] == settings["MKL_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in settings, "a scheduler's own setting is kept"
    assert not any(k.endswith("THREADS") for k in runtime_settings("/w", {}))


# ---------------------------------------------------------------- concurrent writers

def _describe(args):
    out_dir, bids_dir, tag, barrier = args
    os.environ["DEEPBLEED_CONTAINER"] = "test"
    os.environ["DEEPBLEED_CONTAINER_TAG"] = tag
    from deepbleed_bids.bids import write_dataset_description
    from deepbleed_bids.config import Config

    config = Config(bids_dir=bids_dir, output_dir=out_dir, model="synthetic-demo")
    config.model_spec = {"id": "synthetic-demo", "sha256": "0" * 64, "license": "Apache-2.0"}
    barrier.wait()
    target = write_dataset_description(config, log=lambda msg: None)
    return os.stat(target).st_ino, target.read_text()


def test_dataset_description_written_once_by_racing_jobs(tmp_path):
    """Eight jobs start at the same instant: one complete file, never replaced, no leftovers."""
    ctx = mp.get_context("fork")
    n = 8
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            seen = pool.map(_describe, [(str(tmp_path / "out"), str(tmp_path), f"job-{i}", barrier)
                                        for i in range(n)], chunksize=1)
    assert len({ino for ino, _ in seen}) == 1, "dataset_description.json was replaced by a later job"
    assert len({text for _, text in seen}) == 1
    desc = json.loads(seen[0][1])
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Container"]["Tag"] in {f"job-{i}" for i in range(n)}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".bidsignore", "README.md",
                                                                    "dataset_description.json"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from deepbleed_bids.model.vnet import build_vnet

    path = tmp_path_factory.mktemp("model") / "tiny.weights.h5"
    build_vnet(width=4).save_weights(str(path))
    return path


def _array_task(task, **env):
    """docs/slurm_array.sh as SLURM would start one array task."""
    full = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "CUDA_VISIBLE_DEVICES": "",
            "PATH": f"{Path(sys.executable).parent}:{TOP}:{os.environ.get('PATH', '/usr/bin:/bin')}", **env}
    return ["bash", str(TOP / "docs" / "slurm_array.sh")], full


def test_slurm_array_script_picks_one_participant_per_task(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-b2").mkdir(parents=True)
    (bids / "sub-a1").mkdir()
    for task, label in ((1, "a1"), (2, "b2")):  # no participants.tsv: sorted sub-* folders
        cmd, env = _array_task(task, BIDS_DIR=str(bids), DRY_RUN="1", SLURM_CPUS_PER_TASK="4",
                               SLURM_MEM_PER_NODE="16384", SIF="/images/deepbleed.sif")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        assert f"--participant-label {label} " in out and f"/sub-{label} " in out
        assert "--nprocs 4 --omp-nthreads 4 --mem 16" in out and " --cleanenv " in out
        assert "--nv" not in out and "/images/deepbleed.sif" in out
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-07\t50\nsub-03\t61\n")
    cmd, env = _array_task(2, BIDS_DIR=str(bids), DRY_RUN="1", CUDA_VISIBLE_DEVICES="0",
                           SIF="/images/deepbleed.sif")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert "--participant-label 03 " in out and " --nv " in out and "--mem" not in out
    cmd, env = _array_task(3, BIDS_DIR=str(bids), DRY_RUN="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "array task 3 has no participant" in result.stderr


@pytest.mark.slow
def test_two_participant_jobs_into_one_output_folder(ge_head, asset_home, tiny_model, tmp_path):
    """Two SLURM array tasks (docs/slurm_array.sh; different participants, own work
    folders) write into one output folder at the same time: both succeed, with one valid
    dataset_description.json and no staging leftovers."""
    from deepbleed_bids.testing import write_bids_dataset

    bids = write_bids_dataset(tmp_path / "bids", {"sub-01/ct/sub-01_ct.nii.gz": ge_head,
                                                  "sub-02/ct/sub-02_ct.nii.gz": ge_head})
    out, work_root = tmp_path / "out", tmp_path / "work"
    procs = {}
    for task in (1, 2):
        cmd, env = _array_task(task, BIDS_DIR=str(bids), OUT_DIR=str(out), WORK_ROOT=str(work_root),
                               EXTRA=f"--model {tiny_model}", DEEPBLEED_HOME=str(asset_home),
                               DEEPBLEED_CONTAINER="test", DEEPBLEED_CONTAINER_TAG=f"task-{task}")
        log = open(tmp_path / f"task-{task}.log", "w")
        procs[task] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    for task, (proc, log) in procs.items():
        rc = proc.wait(timeout=1200)
        log.close()
        assert rc == 0, (tmp_path / f"task-{task}.log").read_text()[-3000:]

    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Container"]["Tag"] in {"task-1", "task-2"}
    assert os.stat(out / "dataset_description.json").st_nlink == 1
    assert {"dataset_description.json", "sub-01", "sub-02"} <= {p.name for p in out.iterdir()}
    leftovers = [p for p in out.rglob(".*") if p.name != ".bidsignore"]
    assert not leftovers, f"staging leftovers: {leftovers}"
    for label in ("01", "02"):
        meta = json.loads((out / f"sub-{label}/ct/sub-{label}_desc-hemorrhage_mask.json").read_text())
        assert meta["BrainVolume"] > 500 and "HemorrhageVolume" in meta
        assert (out / f"sub-{label}/ct/sub-{label}_desc-hemorrhage_mask.nii.gz").is_file()
    assert not list(work_root.iterdir()), "each task removes its work folder after success"


def test_local_pool_polled_often_batch_schedulers_not():
    from deepbleed_bids.execution import poll_seconds

    assert poll_seconds("MultiProc") <= 0.2
    assert poll_seconds("SLURM") == poll_seconds("SGE") == 2.0


def test_node_hash_identifies_the_weights_by_sha256_not_by_reading_them(tmp_path):
    """The cache key of the network step names the model by its sha256: hashing a 100 MB
    weights file by content on every cache check cost seconds per image."""
    from deepbleed_bids.interfaces.segment import VNetSegment

    image = tmp_path / "ct.nii.gz"
    image.write_bytes(b"not read here")
    weights = tmp_path / "m.weights.h5"
    weights.write_bytes(b"a" * 1000)

    def hashval(sha):
        node = VNetSegment(in_file=str(image), model_spec={"path": str(weights), "sha256": sha},
                           model_sha256=sha)
        hashed, value = node.inputs.get_hashval(hash_method="content")
        return value, [name for name, _ in hashed]

    first, names = hashval("abc")
    assert "model_spec" not in names and "model_sha256" in names
    weights.write_bytes(b"b" * 1000)  # same sha256 recorded: same cache entry
    assert hashval("abc")[0] == first
    assert hashval("def")[0] != first  # other weights: the step runs again


def test_sink_hashes_its_work_files_by_size_and_time(tmp_path, template_path):
    """The derivatives sink of a CT's workflow identifies its (large) input files by size and
    modification time, not by reading them: a step that runs again writes new files, so the
    sink runs again; files left as they are cost no hashing."""
    import os

    from deepbleed_bids.config import Config
    from deepbleed_bids.workflows.ct import init_ct_wf

    config = Config(bids_dir=str(tmp_path), output_dir=str(tmp_path / "out"), template=str(template_path),
                    model_spec={"id": "m", "path": "m.weights.h5", "sha256": "abc"})
    source = {"path": str(tmp_path / "sub-01_ct.nii.gz"), "relpath": "sub-01/ct/sub-01_ct.nii.gz",
              "entities": {"subject": "01"}, "metadata": {}}
    (tmp_path / "sub-01_ct.nii.gz").write_bytes(b"the source exists; it is not read here")
    sink = init_ct_wf(config, source).get_node("ds_outputs")
    assert sink.config["execution"]["hash_method"] == "timestamp"
    probseg = tmp_path / "probseg.nii.gz"
    probseg.write_bytes(b"a" * 1000)
    os.utime(probseg, (1e9, 1e9))
    sink.inputs.hemorrhage_probseg = str(probseg)

    def hashval():
        return sink.inputs.get_hashval(hash_method=sink.config["execution"]["hash_method"])[1]

    first = hashval()
    probseg.write_bytes(b"b" * 1000)  # same size and time: not read
    os.utime(probseg, (1e9, 1e9))
    assert hashval() == first
    os.utime(probseg, (1e9 + 5, 1e9 + 5))  # written again by a step that ran again
    assert hashval() != first
