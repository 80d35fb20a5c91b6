"""Participant level end to end on the real gantry-tilted head, with a synthetic hematoma.

The network here has random weights (its mask is meaningless), so the geometry of
the way back to native space is checked separately with a known mask.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids.assets import TEMPLATE
from deepbleed_bids.model.vnet import build_vnet
from deepbleed_bids.model.weights import sha256_file
from deepbleed_bids.nifti import like, voxel_volume_ml
from deepbleed_bids.synth import insert_hematoma
from deepbleed_bids.testing import not_a_brain, write_bids_dataset

RUN_PY = Path(__file__).resolve().parent.parent / "run.py"
LESION_ML = 25.0
NATIVE = ("desc-brain_mask", "desc-hemorrhage_mask", "desc-hemorrhage_probseg")
TEMPLATE_SPACE = ("space-DeepBleedCT_desc-preproc_ct", "space-DeepBleedCT_desc-hemorrhage_probseg")


@pytest.fixture(scope="module")
def case(ge_head, head_and_brain, asset_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("participant")
    head, brain = head_and_brain
    bleed, lesion, info = insert_hematoma(head, brain, LESION_ML, rng=np.random.default_rng(7),
                                          location="deep")
    bids = write_bids_dataset(tmp / "bids", {
        "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz": ge_head,
        "sub-01/ses-2/anat/sub-01_ses-2_acq-axial_CT.nii.gz": bleed,
        "sub-02/ct/sub-02_ct.nii.gz": not_a_brain(),
    })
    model = tmp / "random.weights.h5"
    build_vnet(width=4).save_weights(model)
    env = {**os.environ, "DEEPBLEED_HOME": str(asset_home)}
    cmd = [sys.executable, str(RUN_PY), str(bids), str(tmp / "out"), "participant", "--model", str(model),
           "--nprocs", "2", "--omp-nthreads", "1", "--work-dir", str(tmp / "work"),
           "--write-graph", "--resource-monitor", "--notrack", "--mem", "8G", "--tta", "flip+hu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
    return {"tmp": tmp, "bids": bids, "out": tmp / "out", "proc": proc, "lesion": lesion, "info": info,
            "model": model, "cmd": cmd, "env": env}


def _outputs(out, stem, folder):
    base = out / folder
    files = {key: base / f"{stem}_{key}.nii.gz" for key in NATIVE + TEMPLATE_SPACE}
    files["xfm"] = base / f"{stem}_from-orig_to-DeepBleedCT_mode-image_xfm.mat"
    return files


def test_one_bad_scan_fails_alone_with_a_named_reason(case):
    proc = case["proc"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = proc.stderr[proc.stderr.index("done in"):]
    assert "2 image(s) processed, 1 failed" in summary
    assert "FAILED  sub-02/ct/sub-02_ct.nii.gz" in summary
    assert "InputError" in summary and "skull" in summary
    assert not (case["out"] / "sub-02" / "ct").exists()  # no partial outputs
    runs = [p for p in (case["out"] / "sub-02" / "log").iterdir() if p.is_dir()]  # sub-X/log/<run-id>/
    assert (case["out"] / "sub-02" / "log" / "sub-02_failure.json").is_file()  # the group level reads it
    assert len(runs) == 1 and list(runs[0].glob("crash-*.txt"))
    assert not list(case["out"].glob(".deepbleed-staging-*"))


@pytest.mark.parametrize("stem,folder,source", [
    ("sub-01_ses-1", "sub-01/ses-1/ct", "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz"),
    ("sub-01_ses-2_acq-axial", "sub-01/ses-2/anat", "sub-01/ses-2/anat/sub-01_ses-2_acq-axial_CT.nii.gz"),
])
def test_outputs_keep_geometry_and_carry_provenance(case, stem, folder, source, template_path):
    files = _outputs(case["out"], stem, folder)
    for path in files.values():
        assert path.is_file(), path
        assert Path(str(path).replace(".nii.gz", ".json").replace(".mat", ".json")).is_file()
    src = nib.load(case["bids"] / source)
    tpl = nib.load(template_path)
    for key in NATIVE:
        img = nib.load(files[key])
        assert img.shape == src.shape
        assert np.array_equal(img.affine, src.affine), key
        assert np.array_equal(img.header.get_qform(), src.header.get_qform())
        assert np.array_equal(img.header.get_sform(), src.header.get_sform())
    for key in TEMPLATE_SPACE:
        img = nib.load(files[key])
        assert img.shape == (128, 128, 128) and np.array_equal(img.affine, tpl.affine), key

    meta = json.loads(files["desc-hemorrhage_mask"].with_suffix("").with_suffix(".json").read_text())
    mask = np.asanyarray(nib.load(files["desc-hemorrhage_mask"]).dataobj)
    brain = np.asanyarray(nib.load(files["desc-brain_mask"]).dataobj)
    vox = voxel_volume_ml(src)
    assert meta["HemorrhageVoxelCount"] == int(mask.sum())
    assert meta["HemorrhageVolume"] == pytest.approx(mask.sum() * vox, abs=1e-3)
    assert meta["BrainVolume"] == pytest.approx(brain.sum() * vox, abs=1e-3)
    assert 1150 < meta["BrainVolume"] < 1700
    assert meta["Sources"][0] == f"bids:raw:{source}"
    assert meta["Model"]["WeightsSHA256"] == sha256_file(case["model"])
    assert meta["Template"]["SHA256"] == TEMPLATE["sha256"]
    assert meta["Parameters"]["NetworkInputInterpolation"] == "nearestNeighbor"
    assert set(meta["Timings"]) >= {"brain_extraction", "registration", "vnet_forward", "to_native"}
    assert {"tensorflow", "nipype", "antspyx", "pybids"} <= set(meta["Software"])
    assert meta["SoftwareVersions"].startswith("deepbleed-bids ")  # BIDS: a string
    # --tta flip+hu: the mirrored pass averaged in, the -/+4 HU passes as an interval (#15)
    unc = meta["Uncertainty"]
    assert unc["TTA"] == "flip+hu" and unc["Passes"] == 2 and unc["CalibrationShiftHU"] == 4.0
    low, high = unc["CalibrationInterval"]
    assert low <= meta["HemorrhageVolume"] <= high and unc["CalibrationSpread"] == pytest.approx(high - low, abs=2e-3)
    assert meta["QC"]["Metrics"]["CalibrationSpread"] == unc["CalibrationSpread"]
    # the network input: raw HU, 0 outside the brain, on the template grid
    net_in = np.asanyarray(nib.load(files["space-DeepBleedCT_desc-preproc_ct"]).dataobj)
    assert (net_in == 0).mean() > 0.4 and net_in.max() <= 3071 and 20 < np.median(net_in[net_in != 0]) < 50


def test_dataset_description(case):
    desc = json.loads((case["out"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "deepbleed-bids"
    assert desc["DatasetLinks"]["raw"].endswith("/bids")


def test_derivatives_pass_the_bids_validator(case):
    from deepbleed_bids.validation import errors, run_validator

    issues = run_validator(case["out"])
    assert errors(issues) == [], errors(issues)
    # the rules behind it: the hemorrhage mask is a BIDS "Lesion" mask, template files resolve
    meta = json.loads((case["out"] / "sub-01/ses-2/anat/sub-01_ses-2_acq-axial_desc-hemorrhage_mask.json").read_text())
    assert meta["Type"] == "Lesion" and meta["LesionClass"] == "hemorrhage"
    tpl = json.loads((case["out"] / "sub-01/ses-2/anat/"
                      "sub-01_ses-2_acq-axial_space-DeepBleedCT_desc-hemorrhage_probseg.json").read_text())
    assert tpl["SpatialReference"] == TEMPLATE["url"] and TEMPLATE["sha256"] in tpl["SpatialReference"] + \
        tpl["Template"]["SHA256"]
    assert "BEP024" in (case["out"] / "README.md").read_text()


def test_run_logs_progress_config_and_methods(case):
    out, stderr = case["out"], case["proc"].stderr
    run_id = next(p.name for p in (out / "sub-02" / "log").iterdir() if p.is_dir())
    # one log file per run, with our lines; the resolved configuration per participant
    log = (out / "logs" / f"deepbleed-bids_{run_id}.log").read_text()
    assert "done in" in log and "BIDS validator: 0 error(s)" in log
    for sub in ("sub-01", "sub-02"):
        config = (out / sub / "log" / run_id / "config.toml").read_text()
        assert 'model = "' + str(case["model"]) + '"' in config and "mem_gb = 8.0" in config
    # one line per image as it starts and ends, with n/N and the time left
    assert len(re.findall(r"\] start [123]/3 sub-0", stderr)) == 3
    ends = re.findall(r"\] (done|FAILED at \S+) ([123])/3 (\S+) in ", stderr)
    assert sorted(n for _, n, _ in ends) == ["1", "2", "3"] and "left)" in stderr
    assert {rel for what, _, rel in ends if what != "done"} == {"sub-02/ct/sub-02_ct.nii.gz"}
    # --write-graph, --resource-monitor
    graph = (out / "logs" / run_id / "graph.dot").read_text()
    assert "ct_sub_01_ses_1_wf" in graph and "->" in graph
    resources = (out / "logs" / run_id / "resources.tsv").read_text().splitlines()
    assert resources[0].split("\t")[:4] == ["node", "startTime", "endTime", "duration_s"]
    assert any("register" in row for row in resources[1:])
    assert not list(case["tmp"].glob(".proc-*")), "resource-monitor files left in the current folder"
    # methods boilerplate from the exact run, shown in the report
    citation = (out / "logs" / "CITATION.md").read_text()
    assert sha256_file(case["model"]) in citation and TEMPLATE["sha256"] in citation
    assert "threshold 0.5" in citation and "Muschelli" in citation and "dcm2niix" in citation
    bib = (out / "logs" / "CITATION.bib").read_text()
    assert all(f"{{{key}," in bib for key in ("deepbleed", "muschelli2015", "ants", "nipype", "dcm2niix",
                                               "tensorflow"))
    assert "<h2 id='methods'>" in (out / "sub-01.html").read_text()


def test_dataset_description_records_the_model(case):
    desc = json.loads((case["out"] / "dataset_description.json").read_text())
    gen = desc["GeneratedBy"][0]
    assert gen["CodeURL"].endswith("/tree/" + gen["Version"])
    assert desc["DeepBleedModels"][0]["WeightsSHA256"] == sha256_file(case["model"])
    assert desc["License"].startswith("unknown: weights supplied by the user")  # no model card
    assert desc["SourceDatasets"][0]["URL"].endswith("/bids") and "HowToAcknowledge" in desc


def test_reports_only_rebuilds_without_processing(case):
    report = case["out"] / "sub-01.html"
    mask = case["out"] / "sub-01/ses-1/ct/sub-01_ses-1_desc-hemorrhage_mask.nii.gz"
    before, mask_before = report.stat().st_mtime_ns, mask.stat().st_mtime_ns
    proc = subprocess.run(case["cmd"] + ["--reports-only", "--participant-label", "01"], env=case["env"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 report(s) rebuilt" in proc.stderr and "CT image(s)" not in proc.stderr
    assert report.stat().st_mtime_ns > before and mask.stat().st_mtime_ns == mask_before


def test_report_figures_drawn_on_threads_give_the_same_page(case, tmp_path):
    """The run draws a report's figures on all of its threads (nprocs x omp-nthreads):
    the page must be the same, figure for figure, as one drawn on a single thread."""
    import shutil

    from deepbleed_bids.reports.participant import write_participant_report

    out = tmp_path / "out"
    shutil.copytree(case["out"], out, ignore=shutil.ignore_patterns("log", "logs"))
    pages = []
    for threads in (1, 3):
        page = write_participant_report(out, case["bids"], "01", threads=threads)
        pages.append(re.sub(r"Generated [^<]*", "", Path(page).read_text()))
    assert pages[0] == pages[1]
    for heading in ("Native space: whole brain", "Native space: brain mask at the skull base",
                    "Alignment to the DeepBleed template"):
        assert pages[0].count(heading) == 2, heading  # both CTs of sub-01
    assert pages[0].count("data:image/png;base64,") >= 8


def test_known_template_mask_lands_on_the_lesion(case, template_path, tmp_path):
    """A mask placed in template space (through the run's own transform) and carried
    back by the pipeline's own interface lands on the inserted lesion, same volume."""
    from deepbleed_bids.interfaces.registration import ToNative
    from deepbleed_bids.registration import to_template

    files = _outputs(case["out"], "sub-01_ses-2_acq-axial", "sub-01/ses-2/anat")
    src_path = case["bids"] / "sub-01/ses-2/anat/sub-01_ses-2_acq-axial_CT.nii.gz"
    src = nib.load(src_path)
    truth = case["lesion"]
    tpl = nib.load(template_path)
    known = to_template(like(truth.astype(np.float32), src), tpl, str(files["xfm"]), interpolation="linear")
    known_path = tmp_path / "known_probseg.nii.gz"
    nib.save(known, known_path)
    volumes = {}
    for method in ("probability", "deepbleed"):
        res = ToNative(in_probseg=str(known_path), reference=str(src_path), transform=str(files["xfm"]),
                       method=method).run(cwd=str(tmp_path))
        out = nib.load(res.outputs.out_mask)
        assert np.array_equal(out.affine, src.affine)
        mask = np.asanyarray(out.dataobj) > 0
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        volumes[method] = res.outputs.volume_ml
        assert dice > (0.9 if method == "probability" else 0.8), (method, dice)
    assert volumes["probability"] == pytest.approx(case["info"]["volume_ml"], rel=0.02)
    assert volumes["deepbleed"] == pytest.approx(case["info"]["volume_ml"], rel=0.10)


def test_rerun_reuses_finished_nodes(case):
    node = next((case["tmp"] / "work").rglob("ct_sub_01_ses_1_wf/preproc_wf/register/result_register.pklz"))
    before = node.stat().st_mtime_ns
    cmd = case["cmd"] + ["--participant-label", "sub-01"]
    proc = subprocess.run(cmd, env=case["env"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert node.stat().st_mtime_ns == before
    assert "2 image(s) processed, 0 failed" in proc.stderr
    assert "start 2/2" in proc.stderr and "done 2/2" in proc.stderr  # progress also when cached
