"""DICOM SEG and SR back into the scanner's world, on the real series (tilted GE head, Philips phantom).

The SEG/SR are built from masks in the native space of the dicom2bids-converted
CT (a synthetic hematoma from the project's generator), then read back with
highdicom and pydicom and validated with dciodvfy (dicom3tools). One run.py
end-to-end test uses the bundled synthetic-demo model.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from deepbleed_bids import synth
from deepbleed_bids.derivatives import dseg_tsv, plan_outputs
from deepbleed_bids.dicom import convert_session
from deepbleed_bids.dicom import seg as S
from deepbleed_bids.dicom.results import BIDSIGNORE, dicom_paths, record, wanted, write_dicom
from deepbleed_bids.dicom.sources import find_source
from deepbleed_bids.dicom.sr import read_report
from deepbleed_bids.testing import run_bids_app

GE_REL = "sub-ge/ct/sub-ge_acq-soft_ct.nii.gz"
PH_REL = "sub-phantom/ct/sub-phantom_acq-soft_ct.nii.gz"


def dciodvfy(path):
    """dciodvfy's error lines for one file (the test skips when dicom3tools is absent)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian: apt-get install -y dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def bids(ge_head_dicom_dir, tmp_path_factory):
    """The real GE head (bundled) through dicom2bids, which records its source series."""
    root = tmp_path_factory.mktemp("dicomout") / "bids"
    assert convert_session(ge_head_dicom_dir, root, "ge").ok
    return root


@pytest.fixture(scope="module")
def phantom_bids(bids, data_dir):
    """The Philips phantom (../shared/data only) added to the same dataset."""
    src = data_dir / "dicom" / "philips-phantom-axial"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    assert convert_session(src, bids, "phantom").ok
    return bids


def _derivatives(bids, out_dir, relpath, hemorrhage, brain, qc=None, parts=None):
    """NIfTI derivatives as the participant level writes them (mask, brain mask, sidecars)."""
    img = nib.load(bids / relpath)
    planned = plan_outputs(out_dir, relpath)
    vox = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    for key, data in (("hemorrhage_mask", hemorrhage), ("brain_mask", brain)):
        planned[key].parent.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(data.astype(np.uint8), img.affine).to_filename(planned[key])
    meta = {"HemorrhageVolume": round(float(hemorrhage.sum() * vox), 3), "HemorrhageVolumeUnits": "mL",
            "BrainVolume": round(float(brain.sum() * vox), 3), "QC": qc or {}, "Warnings": []}
    Path(str(planned["hemorrhage_mask"]).replace(".nii.gz", ".json")).write_text(json.dumps(meta))
    Path(str(planned["brain_mask"]).replace(".nii.gz", ".json")).write_text(json.dumps({"BrainVolume": 1}))
    out_files = []
    if parts is not None:  # an ICH/IVH dseg as another step writes it
        dseg = Path(str(planned["hemorrhage_mask"]).replace("_desc-hemorrhage_mask", "_desc-hemorrhage_dseg"))
        nib.Nifti1Image(parts.astype(np.uint8), img.affine).to_filename(dseg)
        Path(str(dseg).replace(".nii.gz", ".tsv")).write_text(dseg_tsv())  # the pipeline's own table
        out_files.append(str(dseg))
    return planned, meta, out_files


def _config(bids, out_dir, **kw):
    return {"bids_dir": str(bids), "output_dir": str(out_dir), "threshold": 0.5,
            "model_spec": {"id": "synthetic-demo", "sha256": "ab" * 32, "version": "1"}, **kw}


@pytest.fixture(scope="module")
def ge_outputs(bids, tmp_path_factory):
    """A synthetic 25 mL lobar hematoma (with a ventricular part) in the converted tilted head."""
    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.ct import clamp_hu

    img = nib.load(bids / GE_REL)
    hu = np.asanyarray(img.dataobj)
    brain = np.asarray(extract_brain(clamp_hu(hu), img.affine)) > 0
    hem, _ = synth.hematoma_mask(brain, img.affine, 25.0, rng=np.random.default_rng(3), location="lobar",
                                 image=hu)
    x = np.indices(hem.shape)[0]  # one side labelled "IVH": a two-part dseg
    parts = np.where(hem, np.where(x > np.median(np.nonzero(hem)[0]), 2, 1), 0).astype(np.uint8)
    out_dir = tmp_path_factory.mktemp("ge_out")
    qc = {"Pass": False, "Flags": {"skull_contact": "near bone"}, "Metrics": {"ABC2Volume": 23.5}}
    planned, meta, out_files = _derivatives(bids, out_dir, GE_REL, hem, brain, qc, parts)
    config = _config(bids, out_dir)
    entry = write_dicom(config, {"relpath": GE_REL}, planned, out_files)
    record(planned, entry)
    deid_dir = tmp_path_factory.mktemp("ge_deid")
    planned2, _, _ = _derivatives(bids, deid_dir, GE_REL, hem, brain, qc)
    write_dicom(_config(bids, deid_dir, dicom_deidentify=True), {"relpath": GE_REL}, planned2)
    return {"out": out_dir, "planned": planned, "meta": meta, "entry": entry, "img": img, "hem": hem,
            "brain": brain, "hu": hu,
            "parts": parts, "paths": dicom_paths(out_dir, GE_REL), "deid": dicom_paths(deid_dir, GE_REL)}


def test_sources_recorded_by_dicom2bids(bids, ge_head_dicom_dir):
    files = find_source(bids, GE_REL)
    assert len(files) == 28 and all(Path(f).parent == Path(ge_head_dicom_dir).resolve()
                                    for f in files)
    assert wanted({"bids_dir": str(bids), "dicom_output": None}, {"relpath": GE_REL})
    assert not wanted({"bids_dir": str(bids), "dicom_output": False}, {"relpath": GE_REL})
    assert find_source(bids, "sub-none/ct/sub-none_ct.nii.gz") is None
    # the CT sidecars (BIDS) hold no UID or patient identifier of the source
    sidecar = (bids / GE_REL.replace(".nii.gz", ".json")).read_text()
    assert "QMNx85rKkkg" not in sidecar and "SeriesInstanceUID" not in sidecar


def test_seg_frames_lie_on_the_tilted_source_slices(ge_outputs, bids):
    import highdicom as hd

    seg = hd.seg.segread(ge_outputs["paths"]["seg"])
    sources = {str(ds.SOPInstanceUID): ds for ds in S.read_series(find_source(bids, GE_REL))}
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == \
        str(next(iter(sources.values())).SeriesInstanceUID)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == \
        ["Hemorrhage (ICH+IVH)", "Intracerebral hemorrhage", "Intraventricular hemorrhage", "Brain"]
    iop = np.asarray(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient)
    assert abs(np.degrees(np.arccos(iop[4]))) == pytest.approx(18.5, abs=0.1)  # the gantry tilt, kept
    frames = S.frame_sources(seg)
    assert len(frames) == seg.NumberOfFrames
    for _, uid, ipp in frames:  # each frame sits exactly on the plane of the source slice it references
        assert np.allclose(ipp, sources[uid].ImagePositionPatient, atol=1e-3)
        assert np.allclose(iop, sources[uid].ImageOrientationPatient, atol=1e-6)
    # the hemorrhage lies where the NIfTI has it: world centroids agree (the sheared equidistant
    # grid would put it ~10 mm off at this tilt)
    pixels = seg.pixel_array.reshape((-1, seg.Rows, seg.Columns))
    ordered = list(sources)
    widths = dict(zip(ordered, S.slab_widths(list(sources.values()))))
    points, weights = [], []
    for i, (number, uid, _) in enumerate(frames):
        if number == 1 and pixels[i].any():
            world = S.slice_world(sources[uid])[pixels[i] > 0]
            points.append(world)
            weights.append(np.full(len(world), widths[uid]))
    seg_centroid = np.average(np.concatenate(points), axis=0, weights=np.concatenate(weights))
    img = ge_outputs["img"]
    ijk = np.argwhere(ge_outputs["hem"])
    nifti_centroid = (img.affine[:3, :3] @ ijk.mean(0)) + img.affine[:3, 3]
    assert np.linalg.norm(seg_centroid - nifti_centroid) < 1.5


def test_seg_volumes_match_the_sidecar(ge_outputs, bids):
    import highdicom as hd

    seg = hd.seg.segread(ge_outputs["paths"]["seg"])
    vol = S.segment_volumes(seg, S.read_series(find_source(bids, GE_REL)))
    meta = ge_outputs["meta"]
    # issue 16 asks for 2 %; the slabs tile the series, so the read-back is exact to rounding
    assert vol["Hemorrhage (ICH+IVH)"] == pytest.approx(meta["HemorrhageVolume"], rel=0.005)
    assert vol["Brain"] == pytest.approx(meta["BrainVolume"], rel=0.005)
    vox = abs(np.linalg.det(ge_outputs["img"].affine[:3, :3])) / 1000
    for label, value in (("Intracerebral hemorrhage", 1), ("Intraventricular hemorrhage", 2)):
        assert vol[label] == pytest.approx(np.count_nonzero(ge_outputs["parts"] == value) * vox, rel=0.01)
    assert ge_outputs["entry"]["SegmentationVolumes"]["hemorrhage"] == pytest.approx(vol["Hemorrhage (ICH+IVH)"],
                                                                                   abs=1e-3)


def test_slabs_tile_the_uneven_tilted_series(bids):
    """GE head: 4 mm, one 1.1 mm step, then 7 mm (along the tilted normal, not the 4.2/7.4 mm table
    increments): each slab reaches half-way to each neighbour, so the slabs neither gap nor overlap."""
    datasets = S.read_series(find_source(bids, GE_REL))
    normal = S._normal(datasets[0])
    pos = np.array([np.dot(normal, ds.ImagePositionPatient) for ds in datasets])
    bounds = S.slab_bounds(datasets)
    assert np.allclose(pos[:-1] + bounds[:-1, 1], pos[1:] - bounds[1:, 0], atol=1e-6)
    assert S.slab_widths(datasets).sum() == pytest.approx(pos[-1] - pos[0] + bounds[0, 0] + bounds[-1, 1])
    step = int(np.argmin(np.diff(pos)))  # the 1.1 mm step: the slabs on both sides are lopsided
    assert bounds[step] == pytest.approx([2.0, 0.54], abs=0.01)
    assert bounds[step + 1] == pytest.approx([0.54, 3.5], abs=0.01)


def test_deep_clot_across_the_spacing_change_keeps_its_volume(ge_outputs, bids, monkeypatch):
    """A deep 25 mL clot straddling the 4 -> 7 mm change read back -2.2 % with slabs centred on
    their planes; now exact. The general (oblique-grid) sub-plane sampling agrees with the exact one."""
    img, datasets = ge_outputs["img"], S.read_series(find_source(bids, GE_REL))
    hem, _ = synth.hematoma_mask(ge_outputs["brain"], img.affine, 25.0, rng=np.random.default_rng(7),
                                 location="deep", image=ge_outputs["hu"])
    vox = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    area = float(np.prod(np.asarray(datasets[0].PixelSpacing, float)))
    widths = S.slab_widths(datasets)

    def volume(frames):
        return float((frames.reshape(len(datasets), -1).sum(1) * area * widths).sum() / 1000)

    exact = S.resample_to_slices(hem, img.affine, datasets)
    assert volume(S.binarize_slabs(exact)) == pytest.approx(hem.sum() * vox, rel=0.002)
    monkeypatch.setattr(S, "_grid_axis", lambda *a: None)  # force the sub-plane path
    sampled = S.resample_to_slices(hem, img.affine, datasets)
    assert np.abs(sampled - exact).max() < 0.05
    assert volume(S.binarize_slabs(sampled)) == pytest.approx(hem.sum() * vox, rel=0.005)


def test_sr_reads_back_the_volumes_qc_and_model(ge_outputs):
    meta = ge_outputs["meta"]
    report = read_report(str(ge_outputs["paths"]["sr"]))
    hem = report["Hemorrhage (ICH+IVH)"]
    assert hem["volume_ml"] == pytest.approx(meta["HemorrhageVolume"])
    assert hem["abc2_ml"] == pytest.approx(23.5)
    assert "Usable - Does not meet the quality control standard" in hem["qc"] and "skull contact" in hem["qc"]
    assert report["Brain"]["volume_ml"] == pytest.approx(meta["BrainVolume"])
    assert {"Intracerebral hemorrhage", "Intraventricular hemorrhage"} <= set(report)
    sr = pydicom.dcmread(ge_outputs["paths"]["sr"])
    seg = pydicom.dcmread(ge_outputs["paths"]["seg"])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert str(evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == str(seg.SOPInstanceUID)
    text = " ".join(str(e.value) for e in sr.iterall() if e.VR != "SQ")
    assert "synthetic-demo" in text and "sha256=" + "ab" * 32 in text


@pytest.mark.parametrize("kind", ["seg", "sr"])
def test_dciodvfy_no_errors(ge_outputs, kind):
    assert dciodvfy(ge_outputs["paths"][kind]) == []
    assert dciodvfy(ge_outputs["deid"][kind]) == []


def test_identifiers_only_in_dicom_and_deidentify(ge_outputs):
    src_id = "QMNx85rKkkg"  # PatientID of the GE head
    for path in ge_outputs["paths"].values():
        assert pydicom.dcmread(path).PatientID == src_id
    for path in ge_outputs["deid"].values():
        ds = pydicom.dcmread(path)
        assert ds.PatientID == "" and ds.PatientIdentityRemoved == "YES"
    sidecar = Path(str(ge_outputs["planned"]["hemorrhage_mask"]).replace(".nii.gz", ".json")).read_text()
    assert src_id not in sidecar and "1.2.840" not in sidecar and "DicomOutputs" in sidecar
    entry = json.loads(sidecar)["DicomOutputs"]
    assert entry["Segmentation"] == "bids::sub-ge/dicom/sub-ge_acq-soft_desc-hemorrhage_seg.dcm"
    assert (ge_outputs["out"] / ".bidsignore").read_text().splitlines() == [BIDSIGNORE]


def test_untilted_phantom(phantom_bids, tmp_path):
    """Philips phantom (no tilt, 5 mm): a 20 mL sphere through SEG and SR, validated."""
    bids = phantom_bids
    import highdicom as hd

    img = nib.load(bids / PH_REL)
    ijk = np.indices(img.shape[:3]).reshape(3, -1).T
    world = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    center = img.affine[:3, :3] @ (np.array(img.shape[:3]) / 2) + img.affine[:3, 3]
    dist = np.linalg.norm(world - center, axis=1).reshape(img.shape[:3])
    radius = (20.0 * 1000 * 3 / (4 * np.pi)) ** (1 / 3)
    planned, meta, _ = _derivatives(bids, tmp_path, PH_REL, dist <= radius, dist <= 60.0)
    write_dicom(_config(bids, tmp_path), {"relpath": PH_REL}, planned)
    paths = dicom_paths(tmp_path, PH_REL)
    seg = hd.seg.segread(paths["seg"])
    sources = S.read_series(find_source(bids, PH_REL))
    vol = S.segment_volumes(seg, sources)
    assert vol["Hemorrhage (ICH+IVH)"] == pytest.approx(meta["HemorrhageVolume"], rel=0.005)
    assert vol["Brain"] == pytest.approx(meta["BrainVolume"], rel=0.005)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    assert all(np.allclose(ipp, by_uid[uid].ImagePositionPatient, atol=1e-3) for _, uid, ipp in S.frame_sources(seg))
    assert read_report(str(paths["sr"]))["Brain"]["volume_ml"] == pytest.approx(meta["BrainVolume"])
    assert dciodvfy(paths["seg"]) == [] and dciodvfy(paths["sr"]) == []


def test_failure_is_a_warning_and_keeps_the_nifti(bids, tmp_path):
    """A CT without a recorded source: the real nipype interface records why, the NIfTI stays."""
    from deepbleed_bids.interfaces.dicom import WriteDicom

    rel = "sub-other/ct/sub-other_ct.nii.gz"
    (bids / "sub-other" / "ct").mkdir(parents=True, exist_ok=True)
    shutil.copy(bids / GE_REL, bids / rel)
    brain = np.zeros(nib.load(bids / rel).shape[:3], bool)
    brain[100:200, 100:200, 5:20] = True
    planned, _, _ = _derivatives(bids, tmp_path, rel, brain, brain)
    before = planned["hemorrhage_mask"].read_bytes()
    result = WriteDicom(config=_config(bids, tmp_path, dicom_output=True), source={"relpath": rel},
                        out_files=[str(planned["hemorrhage_mask"])]).run()
    assert result.outputs.out_files == [] and "no source DICOM series recorded" in result.outputs.error
    meta = json.loads(Path(str(planned["hemorrhage_mask"]).replace(".nii.gz", ".json")).read_text())
    assert any("DICOM output not written" in w for w in meta["Warnings"])
    assert planned["hemorrhage_mask"].read_bytes() == before
    assert not (tmp_path / "sub-other" / "dicom").exists()


def test_identifying_source_path_is_not_recorded(ge_head_dicom_dir, tmp_path):
    """A folder named after the patient: the BIDS dataset stays free of it; DICOM output says why not."""
    from deepbleed_bids.dicom.sources import lookup, sources_path

    src = tmp_path / "Doe_Janeth"
    src.mkdir()
    for path in sorted(Path(ge_head_dicom_dir).iterdir()):
        ds = pydicom.dcmread(path)
        ds.PatientName = "Doe^Janeth"
        ds.save_as(src / path.name)
    bids = tmp_path / "bids"
    assert convert_session(src, bids, "01").ok
    assert "Janeth" not in sources_path(bids, "01").read_text()
    rel = "sub-01/ct/sub-01_acq-soft_ct.nii.gz"
    assert "patient identifier" in lookup(bids, rel)["NotRecorded"] and find_source(bids, rel) is None
    assert wanted({"bids_dir": str(bids), "dicom_output": None}, {"relpath": rel})  # so the reason is shown
    with pytest.raises(Exception, match="rename the folder"):
        write_dicom(_config(bids, tmp_path / "out"), {"relpath": rel}, plan_outputs(tmp_path / "out", rel))


def test_missing_source_file_is_named(bids, tmp_path):
    files = find_source(bids, GE_REL)[:3] + [str(tmp_path / "gone.dcm")]
    with pytest.raises(Exception, match="gone.dcm is missing"):
        S.read_series(files)


def test_dseg_parts_named_by_their_name_column(tmp_path):
    """The pipeline's ICH row mentions "ventricles" in its description: the name decides the part."""
    from deepbleed_bids.dicom.results import _labels

    dseg = tmp_path / "sub-01_desc-hemorrhage_dseg.nii.gz"
    dseg.with_name(dseg.name.replace(".nii.gz", ".tsv")).write_text(dseg_tsv())
    assert _labels(dseg) == {"ich": [1], "ivh": [2]}
    dseg.with_name(dseg.name.replace(".nii.gz", ".tsv")).write_text(
        "index\tname\tdescription\n3\tbleed\tintraventricular blood\n4\tx\tICH near the ventricles\n")
    assert _labels(dseg) == {"ich": [], "ivh": [3]}  # description only when unambiguous


def test_dicom_folder_per_session(tmp_path):
    paths = dicom_paths(tmp_path, "sub-01/ses-2/ct/sub-01_ses-2_acq-soft_run-1_ct.nii.gz")
    assert paths["seg"] == tmp_path / "sub-01/ses-2/dicom/sub-01_ses-2_acq-soft_run-1_desc-hemorrhage_seg.dcm"
    assert paths["sr"].name == "sub-01_ses-2_acq-soft_run-1_desc-volumes_sr.dcm"


def test_flags_parse():
    from deepbleed_bids.cli.parser import build_parser
    from deepbleed_bids.cli.run import config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["b", "o", "participant"])).dicom_output is None
    cfg = config_from_args(parse(["b", "o", "participant", "--dicom-output", "--dicom-deidentify"]))
    assert cfg.dicom_output is True and cfg.dicom_deidentify is True
    assert config_from_args(parse(["b", "o", "participant", "--no-dicom-output"])).dicom_output is False


@pytest.mark.slow
def test_run_py_writes_dicom_for_a_dicom2bids_dataset(bids, head_and_brain, asset_home, tmp_path):
    """End to end: run.py on the converted tilted head (automatic DICOM output), synthetic-demo model.

    A synthetic hematoma goes into the converted NIfTI (the SEG is built from the
    NIfTI results; the source DICOM pixels are only referenced).
    """
    import highdicom as hd

    from deepbleed_bids.brain import extract_brain
    from deepbleed_bids.ct import clamp_hu

    root = tmp_path / "bids"
    shutil.copytree(bids, root, ignore=shutil.ignore_patterns("sub-phantom", "sub-other"))
    img = nib.load(root / GE_REL)
    brain = np.asarray(extract_brain(clamp_hu(np.asanyarray(img.dataobj)), img.affine)) > 0
    with_bleed, _, _ = synth.insert_hematoma(img, brain, 30.0, rng=np.random.default_rng(7), location="deep")
    nib.Nifti1Image(np.asanyarray(with_bleed.dataobj), img.affine, img.header).to_filename(root / GE_REL)
    out = tmp_path / "out"
    proc = run_bids_app(root, out, "--work-dir", tmp_path / "work", "--nprocs", "2", home=asset_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = plan_outputs(out, GE_REL)
    meta = json.loads(Path(str(planned["hemorrhage_mask"]).replace(".nii.gz", ".json")).read_text())
    assert "DicomOutputs" in meta, meta.get("Warnings")
    assert meta["HemorrhageVolume"] > 5  # the network found the inserted hematoma
    paths = dicom_paths(out, GE_REL)
    vol = S.segment_volumes(hd.seg.segread(paths["seg"]), S.read_series(find_source(root, GE_REL)))
    assert vol["Brain"] == pytest.approx(meta["BrainVolume"], rel=0.02)
    assert vol["Hemorrhage (ICH+IVH)"] == pytest.approx(meta["HemorrhageVolume"], rel=0.02)
    parts = np.asanyarray(nib.load(str(planned["hemorrhage_mask"]).replace("_mask", "_dseg")).dataobj)
    vox = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    for label, value in (("Intracerebral hemorrhage", 1), ("Intraventricular hemorrhage", 2)):
        if np.any(parts == value):  # each part of the pipeline's dseg is its own segment
            assert vol[label] == pytest.approx(np.count_nonzero(parts == value) * vox, rel=0.02, abs=0.05)
    report = read_report(str(paths["sr"]))
    assert report["Hemorrhage (ICH+IVH)"]["volume_ml"] == pytest.approx(meta["HemorrhageVolume"])
    assert report["Hemorrhage (ICH+IVH)"]["abc2_ml"] == pytest.approx(meta["QC"]["Metrics"]["ABC2Volume"])
    assert dciodvfy(paths["seg"]) == [] and dciodvfy(paths["sr"]) == []
    validator = shutil.which("bids-validator-deno") or shutil.which("bids-validator-deno",
                                                                      path=str(Path(sys.executable).parent))
    if validator:  # the dicom/ folder is ignored by the validator (other findings are not this test's)
        found = subprocess.run([validator, str(out)], capture_output=True, text=True, timeout=600)
        assert "/dicom" not in found.stdout + found.stderr
