"""dicom2bids with the real dcm2niix on real DICOM: the GE head bundled with the package, the Philips
phantom and scout series from ../shared/data/dicom (those tests skip without it)."""
import gzip
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids import __version__
from deepbleed_bids.cli.main import main
from deepbleed_bids.dicom import (classify_kernel, contrast_suspected, convert_session, geometry_problem,
                                  is_soft_tissue)
from deepbleed_bids.errors import InputError

pydicom = pytest.importorskip("pydicom")

ID_TAGS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
           "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "StationName",
           "DeviceSerialNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID")
PLANTED = {"PatientName": "Doe^Janeth", "PatientID": "DBX4471", "PatientBirthDate": "19610305",
           "AccessionNumber": "ACC90210", "InstitutionName": "Saint Example Hospital",
           "ReferringPhysicianName": "Smithers^Alan"}


def copy_series(src, dst, prefix="", skip=()):
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.name not in skip:
            shutil.copyfile(path, dst / f"{prefix}{path.name}")
    return dst


def source_identifiers(*folders):
    """Identifying values read with pydicom from the source DICOM files."""
    found = set()
    for folder in folders:
        for path in Path(folder).iterdir():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                continue
            for tag in ID_TAGS:
                value = str(ds.get(tag) or "").strip()
                if len(value) >= 3:
                    found.add(value)
    return found


def written_text(bids_dir):
    """(where, text) for every file written: names, text files, and NIfTI header and extensions."""
    for path in sorted(Path(bids_dir).rglob("*")):
        yield "name", str(path.relative_to(bids_dir))
        if not path.is_file():
            continue
        if path.name.endswith(".nii.gz"):
            hdr = nib.load(path).header
            with gzip.open(path) as fobj:
                head = fobj.read(int(hdr["vox_offset"]) or 352)
            yield path.name, head.decode("latin-1")
            yield path.name, " ".join(str(hdr[k].item().decode("latin-1"))
                                      for k in ("descrip", "aux_file", "db_name", "intent_name"))
        else:
            yield path.name, path.read_text(errors="replace")


def leaked(bids_dir, ids):
    hits = []
    for where, text in written_text(bids_dir):
        for item in ids:
            if re.search(rf"(?<![A-Za-z0-9]){re.escape(item)}(?![A-Za-z0-9])", text, re.I):
                hits.append((where, item))
    return hits


def ct_images(bids_dir):
    return sorted(Path(bids_dir).glob("sub-*/**/ct/*_ct.nii.gz"))


def leftovers(folder):
    """Anything a failed run may have left: hidden work folders or partial files."""
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


@pytest.fixture(scope="module")
def dicom(data_dir):
    return data_dir / "dicom"


@pytest.fixture(scope="module")
def ge_dicom(ge_head_dicom_dir):
    """The GE head series (bundled with the package: these tests need no shared data)."""
    return ge_head_dicom_dir


@pytest.fixture(scope="module")
def ge_bids(ge_dicom, tmp_path_factory):
    bids = tmp_path_factory.mktemp("ge") / "bids"
    start = time.perf_counter()
    result = convert_session(ge_dicom, bids, "sub-01")
    seconds = time.perf_counter() - start
    print(f"\nGE head conversion: {seconds:.1f} s")
    return bids, result, seconds


@pytest.fixture(scope="module")
def mixed_bids(dicom, tmp_path_factory):
    """Philips axial + tilted + scout copied into one folder, with a stray text file."""
    src = tmp_path_factory.mktemp("mixed") / "dicom"
    for name in ("philips-phantom-axial", "philips-phantom-tilt", "philips-scout"):
        copy_series(dicom / name, src, prefix=f"{name}_")
    (src / "README.txt").write_text("exported from PACS\n")
    bids = src.parent / "bids"
    return bids, convert_session(src, bids, "02", "1")


# ------------------------------------------------------------- helpers for the participant level

@pytest.mark.parametrize("kernel, maker, expected", [
    ("STD+", "GE", "soft"), ("STANDARD", "GE MEDICAL SYSTEMS", "soft"), ("SOFT", "GE", "soft"),
    ("HD STANDARD", "GE", "soft"), ("BONE", "GE", "bone"), ("BONEPLUS", "GE", "bone"),
    ("LUNG", "GE", "bone"), ("EDGE", "GE", "bone"), ("DETAIL", "GE", "unknown"),
    ("H30s", "SIEMENS", "soft"), ("J30s", "SIEMENS", "soft"), ("Hr38", "SIEMENS", "soft"),
    ("Br36d", "Siemens Healthineers", "soft"), ("Hr38\\3", "SIEMENS", "soft"), ("H60s", "SIEMENS", "bone"),
    ("H90s", "SIEMENS", "bone"), ("Hr64h", "SIEMENS", "bone"), ("Br60", "SIEMENS", "bone"),
    ("H50s", "SIEMENS", "unknown"), ("T20f", "SIEMENS", "unknown"),
    ("UB", "Philips", "soft"), ("UA", "Philips Medical Systems", "soft"), ("EC", "Philips", "soft"),
    ("YC", "Philips", "bone"), ("YD", "Philips", "bone"), ("D", "Philips", "bone"), ("E", "Philips", "bone"),
    ("UB", None, "unknown"), ("C", "Philips", "unknown"),
    ("FC26", "TOSHIBA", "soft"), ("FC20", "Canon Medical Systems", "soft"), ("FC30", "TOSHIBA", "bone"),
    ("FC81", "TOSHIBA", "bone"), ("FC13", "TOSHIBA", "unknown"),
    ("Brain", "Canon", "soft"), ("Body Sharp", "Canon", "bone"), ("Brain Sharp", None, "unknown"),
    ("", "GE", "unknown"), (None, None, "unknown"), (["Hr38", "3"], "SIEMENS", "soft"),
])
def test_classify_kernel(kernel, maker, expected):
    assert classify_kernel(kernel, maker) == expected


def test_soft_tissue_and_contrast_helpers():
    assert is_soft_tissue({"KernelType": "soft"})
    assert not is_soft_tissue({"KernelType": "bone", "ConvolutionKernel": "STD+"})
    assert is_soft_tissue({"ConvolutionKernel": "Hr38", "Manufacturer": "Siemens"})
    assert not is_soft_tissue({"ConvolutionKernel": "BONEPLUS"})
    assert not contrast_suspected({"SeriesDescription": "HEAD 5mm", "ContrastBolusAgent": "None"})
    assert contrast_suspected({"ContrastBolusAgent": "Omnipaque 350"})
    assert contrast_suspected({"ContrastBolusVolume": 60})
    for text in ("CTA HEAD", "HEAD C+", "Brain with contrast", "CT perfusion", "Post contrast head"):
        assert contrast_suspected({"SeriesDescription": text}), text
    for text in ("HEAD NON CONTRAST", "Head w/o contrast", "HEAD C-", "STD BRAIN 5MM", "posterior fossa"):
        assert not contrast_suspected({"ProtocolName": text}), text


# ------------------------------------------------------------- GE head: tilt + variable spacing

def test_ge_head_converts_to_one_corrected_image(ge_bids, ge_head):
    bids, result, seconds = ge_bids
    assert result.ok and not result.failed
    images = ct_images(bids)
    assert [p.name for p in images] == ["sub-01_acq-soft_ct.nii.gz"]
    img = nib.load(images[0])
    assert geometry_problem(img) is None and img.ndim == 3
    rzs = img.affine[:3, :3]
    unit = rzs / np.linalg.norm(rzs, axis=0)
    assert np.abs(unit.T @ unit - np.eye(3)).max() < 1e-4  # orthogonal: no shear left
    sidecar = json.loads(images[0].with_name("sub-01_acq-soft_ct.json").read_text())
    assert np.allclose(np.linalg.norm(rzs, axis=0)[2], sidecar["ResampledSliceSpacing"], atol=1e-3)
    # The very image dcm2niix writes as its tilt-corrected, equidistant output.
    ref = nib.load(ge_head)
    assert ref.shape == img.shape and np.allclose(ref.affine, img.affine, atol=1e-4)
    assert np.array_equal(np.asarray(ref.dataobj), np.asarray(img.dataobj))
    assert sidecar["TiltCorrected"] is True and sidecar["EquidistantResampled"] is True
    assert sidecar["GantryDetectorTilt"] == pytest.approx(18.5)
    assert sidecar["OriginalSliceSpacingMin"] == pytest.approx(1.08, abs=0.01)
    assert sidecar["OriginalSliceSpacingMax"] == pytest.approx(7.0, abs=0.01)
    assert sidecar["ConvolutionKernel"] == "STD+" and sidecar["KernelType"] == "soft"
    assert sidecar["KVP"] == 120 and sidecar["SliceThicknessRange"] == [4.0, 7.0]
    assert sidecar["ConversionSoftware"] == "dcm2niix" and sidecar["Manufacturer"] == "GE"  # dcm2niix's fields kept
    assert seconds < 60


def test_dataset_description_participants_and_log(ge_bids):
    bids, result, _ = ge_bids
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["Name"] and desc["BIDSVersion"] and desc["DatasetType"] == "raw"
    assert desc["GeneratedBy"][0] == {**desc["GeneratedBy"][0], "Name": "deepbleed-bids", "Version": __version__}
    assert (bids / "participants.tsv").read_text() == "participant_id\nsub-01\n"
    log = (bids / "sourcedata/dicom2bids/sub-01_log.txt").read_text()
    assert result.log == bids / "sourcedata/dicom2bids/sub-01_log.txt"
    assert "converted series 2" in log and "Gantry Tilt" in log and "series_Tilt_Eq_1" in log
    assert leftovers(bids) == [".bidsignore", "README.md", "dataset_description.json", "participants.tsv",
                               "sourcedata", "sub-01"]
    sidecar = bids / "sub-01/ct/sub-01_acq-soft_ct.json"
    assert sidecar.stat().st_mode & 0o044 == (bids / "sub-01/ct/sub-01_acq-soft_ct.nii.gz").stat().st_mode & 0o044


def test_converted_datasets_pass_the_bids_validator(ge_bids, mixed_bids):
    """0 errors from the official validator: CT (BEP024) is listed in .bidsignore."""
    from deepbleed_bids.validation import errors, run_validator

    for bids in (ge_bids[0], mixed_bids[0]):
        issues = run_validator(bids)
        assert errors(issues) == [], errors(issues)
        assert "**/ct" in (bids / ".bidsignore").read_text().splitlines()
        assert "BEP024" in (bids / "README.md").read_text()
    # without the .bidsignore the same dataset fails: the test can tell
    (ge_bids[0] / ".bidsignore").rename(ge_bids[0] / "bidsignore.bak")
    try:
        assert any(i["code"] == "NOT_INCLUDED" for i in errors(run_validator(ge_bids[0])))
    finally:
        (ge_bids[0] / "bidsignore.bak").rename(ge_bids[0] / ".bidsignore")


def test_pybids_finds_ct(ge_bids, mixed_bids):
    from bids import BIDSLayout

    for bids, n in ((ge_bids[0], 1), (mixed_bids[0], 2)):
        layout = BIDSLayout(str(bids), validate=False)
        found = layout.get(suffix="ct", extension=[".nii", ".nii.gz"])
        assert len(found) == n
        assert all(f.get_entities()["acquisition"] == "soft" for f in found)
        assert layout.get_metadata(found[0].path)["KernelType"] == "soft"


def test_existing_session_is_not_overwritten(ge_bids, ge_dicom):
    bids, _, _ = ge_bids
    before = {p: p.stat().st_mtime_ns for p in bids.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="already holds CT images"):
        convert_session(ge_dicom, bids, "01")
    assert {p: p.stat().st_mtime_ns for p in bids.rglob("*") if p.is_file()} == before
    with pytest.raises(InputError, match="without sessions"):
        convert_session(ge_dicom, bids, "01", "2")


# ------------------------------------------------------------- Philips: mixed folder with scout

def test_mixed_folder_converts_the_right_set(mixed_bids):
    bids, result = mixed_bids
    assert result.ok
    assert [p.name for p in ct_images(bids)] == ["sub-02_ses-1_acq-soft_run-1_ct.nii.gz",
                                                 "sub-02_ses-1_acq-soft_run-2_ct.nii.gz"]
    axial, tilted = (json.loads(p.read_text()) for p in sorted((bids / "sub-02/ses-1/ct").glob("*.json")))
    assert axial["SeriesDescription"] == "STD BRAIN 5MM" and axial["TiltCorrected"] is False
    assert tilted["SeriesDescription"] == "STEREOTAXIS" and tilted["TiltCorrected"] is True
    assert tilted["GantryDetectorTilt"] == pytest.approx(-18.5) and tilted["EquidistantResampled"] is False
    assert axial["ConvolutionKernel"] == "UB" and axial["KernelType"] == "soft" and axial["SliceThickness"] == 5
    for path in ct_images(bids):
        assert geometry_problem(nib.load(path)) is None
    assert nib.load(ct_images(bids)[1]).shape == (512, 600, 54)
    status = {d.label: (d.status, d.reason) for d in result.decisions}
    assert status["series 100"] == ("skipped", status["series 100"][1])
    assert "localizer/scout" in status["series 100"][1]
    assert any("README.txt: not a DICOM file" in n for n in result.notes)
    log = (bids / "sourcedata/dicom2bids/sub-02_ses-1_log.txt").read_text()
    assert "skipped   series 100: localizer/scout" in log
    assert (bids / "participants.tsv").read_text() == "participant_id\nsub-02\n"


def test_identifiers_absent(ge_bids, mixed_bids, dicom):
    ge_ids = source_identifiers(dicom / "ge-head-tilt")
    philips_ids = source_identifiers(*(dicom / n for n in ("philips-phantom-axial", "philips-phantom-tilt",
                                                           "philips-scout")))
    assert {"QMNx85rKkkg", "REMOVED"} <= ge_ids  # the scans are not vacuous
    assert {"PLASTIC", "HEAD", "QMC", "NOTTINGHAM", "CT4", "336067", "2157"} <= philips_ids
    assert leaked(ge_bids[0], ge_ids) == []
    assert leaked(mixed_bids[0], philips_ids) == []


def test_planted_identifiers_and_contrast(ge_dicom, tmp_path):
    """A GE head copy carrying a realistic name, IDs and contrast agent: none of the IDs may leak."""
    src = tmp_path / "Doe_Janeth_19610305"
    src.mkdir()
    for path in sorted(ge_dicom.iterdir()):
        ds = pydicom.dcmread(path)
        for key, value in PLANTED.items():
            setattr(ds, key, value)
        ds.SeriesDescription = "Head Janeth Doe ACC90210"
        ds.ImageComments = "Janeth Doe DBX4471"  # dcm2niix copies it into the NIfTI aux_file
        ds.ContrastBolusAgent = "Omnipaque 350"
        ds.save_as(src / path.name)
    bids = tmp_path / "bids"
    result = convert_session(src, bids, "03")
    assert result.ok
    ids = {"Janeth", "Doe", "DBX4471", "19610305", "1961-03-05", "ACC90210", "Saint Example Hospital",
           "Smithers", "Alan"}
    assert leaked(bids, ids) == []
    assert not any(item.lower() in result.report().lower() for item in ids)
    sidecar = json.loads(next((bids / "sub-03/ct").glob("*.json")).read_text())
    assert sidecar["ContrastBolusAgent"] == "Omnipaque 350" and contrast_suspected(sidecar)
    assert sidecar["SeriesDescription"] == "Head [redacted] [redacted] [redacted]"


# ------------------------------------------------------------- bad input

def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        convert_session(tmp_path / "empty", tmp_path / "bids", "01")
    assert leftovers(tmp_path) == ["empty"]


def test_text_file_only(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image\n")
    with pytest.raises(InputError, match=r"no DICOM files among its 1 file\(s\)"):
        convert_session(tmp_path / "in", tmp_path / "bids", "01")
    assert leftovers(tmp_path) == ["in"]


def test_truncated_file_fails_its_series_and_writes_nothing(dicom, tmp_path):
    src = copy_series(dicom / "philips-phantom-axial", tmp_path / "in")
    data = (src / "I100").read_bytes()
    (src / "I100").write_bytes(data[: len(data) // 2])
    result = convert_session(src, tmp_path / "bids", "01")
    assert not result.ok and result.images == [] and result.log is None
    (failed,) = result.failed
    assert failed.label == "series 201 'STD BRAIN 5MM'"
    assert "file I100 is truncated" in failed.reason and "re-export" in failed.reason
    assert leftovers(tmp_path) == ["in"]


def test_missing_slice_fails_and_the_rest_converts(dicom, tmp_path, capsys):
    src = tmp_path / "in"
    copy_series(dicom / "philips-phantom-axial", src, prefix="ax_", skip={"I140"})  # a middle slice
    copy_series(dicom / "philips-phantom-tilt", src, prefix="tilt_")
    bids = tmp_path / "bids"
    assert main(["dicom2bids", str(src), str(bids), "--participant-label", "05"]) == 1
    err = capsys.readouterr().err
    assert "failed    series 201 'STD BRAIN 5MM': 1 slice(s) missing: a 10.00 mm gap" in err
    assert [p.name for p in ct_images(bids)] == ["sub-05_acq-soft_ct.nii.gz"]  # the tilted series
    assert json.loads((bids / "sub-05/ct/sub-05_acq-soft_ct.json").read_text())["SeriesDescription"] == "STEREOTAXIS"
    assert "slice(s) missing" in (bids / "sourcedata/dicom2bids/sub-05_log.txt").read_text()


def test_scout_only_gives_nothing_and_exit_1(dicom, tmp_path, capsys):
    bids = tmp_path / "bids"
    assert main(["dicom2bids", str(dicom / "philips-scout"), str(bids), "--participant-label", "06"]) == 1
    err = capsys.readouterr().err
    assert "nothing usable was converted" in err and "localizer/scout" in err
    assert leftovers(tmp_path) == []


def test_non_volume_series_are_skipped_with_reasons(ge_dicom, tmp_path):
    """Reports, captures, non-CT, reformats and single slices, built from real GE files."""
    from pydicom.uid import generate_uid

    kinds = {  # series number: (files, changes, expected reason)
        90: (1, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.67", "Modality": "SR"},
             "no pixel data (X-Ray Radiation Dose SR Storage)"),
        91: (3, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "Secondary Capture Image Storage: not an original CT"),
        92: (10, {"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, "modality MR, not CT"),
        93: (10, {"ImageType": ["DERIVED", "SECONDARY", "REFORMATTED"]}, "derived secondary images"),
        94: (10, {"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}, "not axial: the slices are 90 deg"),
        95: (1, {}, "only 1 image(s): not a volume"),
    }
    src = tmp_path / "in"
    src.mkdir()
    files = sorted(ge_dicom.iterdir())
    for number, (count, changes, _) in kinds.items():
        uid = generate_uid()
        for path in files[:count]:
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID, ds.SeriesNumber = uid, number
            for key, value in changes.items():
                setattr(ds, key, value)
            if ds.SOPClassUID.endswith(".88.67"):
                del ds.PixelData
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.save_as(src / f"{number}_{path.name}")
    result = convert_session(src, tmp_path / "bids", "01")
    assert not result.ok and not result.failed and result.images == []
    reasons = {d.label: d.reason for d in result.decisions if d.status == "skipped"}
    for number, (_, _, expected) in kinds.items():
        assert expected in reasons[f"series {number}"]
    assert leftovers(tmp_path) == ["in"]


def test_existing_participants_and_description_are_kept(dicom, tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-99\t71\n")
    (bids / "dataset_description.json").write_text('{"Name": "mine", "BIDSVersion": "1.9.0"}\n')
    assert convert_session(dicom / "philips-phantom-axial", bids, "07").ok
    assert (bids / "participants.tsv").read_text() == "participant_id\tage\nsub-99\t71\nsub-07\tn/a\n"
    assert (bids / "dataset_description.json").read_text() == '{"Name": "mine", "BIDSVersion": "1.9.0"}\n'


def test_bad_labels(dicom, tmp_path):
    with pytest.raises(InputError, match="not a BIDS label"):
        convert_session(dicom / "philips-scout", tmp_path / "bids", "01_a")
    assert main(["dicom2bids", str(dicom / "philips-scout"), str(tmp_path / "b")]) == 1  # no label


# ------------------------------------------------------------- CLI end to end

def test_cli_batch(dicom, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    table = tmp_path / "exams.tsv"
    table.write_text(f"dicom_dir\tparticipant\tsession\n{dicom / 'philips-phantom-axial'}\tsub-08\t1\nempty\t09\t\n")
    bids = tmp_path / "bids"
    assert main(["dicom2bids", "--batch", str(table), str(bids)]) == 1  # row 3 has no DICOM
    out = capsys.readouterr()
    assert "sub-08 ses-1: 1 CT image(s) written" in out.out
    assert "sub-09: FAILED: line 3" in out.err and "the folder is empty" in out.err
    assert [p.name for p in ct_images(bids)] == ["sub-08_ses-1_acq-soft_ct.nii.gz"]
    assert (bids / "participants.tsv").read_text() == "participant_id\nsub-08\n"


def test_cli_subprocess(dicom, tmp_path):
    exe = Path(sys.executable).with_name("deepbleed-bids")
    bids = tmp_path / "bids"
    proc = subprocess.run([str(exe), "dicom2bids", str(dicom / "philips-phantom-axial"), str(bids),
                           "--participant-label", "10", "--session-label", "ses-2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "converted series 201 'STD BRAIN 5MM'" in proc.stdout
    assert (bids / "sub-10/ses-2/ct/sub-10_ses-2_acq-soft_ct.nii.gz").is_file()
