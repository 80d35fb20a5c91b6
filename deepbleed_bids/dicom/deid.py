"""De-identification: identifiers read from the DICOM header are kept out of sidecars,
logs, printed summaries and the free-text fields of the NIfTI header."""
import gzip
import re
import shutil

from ..errors import DeepBleedError

REDACTED = "[redacted]"

# Sidecar keys never written; the "Patient*" family is handled by prefix.
_DENY_KEYS = {
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "StationName", "DeviceSerialNumber", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "NameOfPhysiciansReadingStudy",
    "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "ImageComments", "OtherPatientIDs", "IssuerOfPatientID",
}
_KEEP_PATIENT = {"PatientPosition"}
# DICOM attributes whose values are blanked wherever they appear in text.
_ID_TAGS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "AccessionNumber", "InstitutionName",
    "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "RequestingPhysician", "NameOfPhysiciansReadingStudy", "StationName",
    "DeviceSerialNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
)
_PERSON_TAGS = {  # PN values: each part of the name is blanked too
    "PatientName", "PatientMotherBirthName", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "NameOfPhysiciansReadingStudy",
}


def identifiers(header):
    """The identifying strings of a pydicom header (person names also split into their parts)."""
    found = set()
    for tag in _ID_TAGS:
        value = header.get(tag)
        values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for item in values:
            text = str(item or "").strip()
            found.add(text)
            if tag in _PERSON_TAGS:
                found.update(re.split(r"[\^=\s,]+", text))
            if tag == "PatientBirthDate" and re.fullmatch(r"\d{8}", text):
                found.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")
    return {item for item in found if len(item) >= 3}


def scrub_text(text, ids):
    """Replace every identifier (whole word, any case) by ``[redacted]``."""
    for item in sorted(ids, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(item)}(?![A-Za-z0-9])", REDACTED, text, flags=re.I)
    return text


def scrub_sidecar(sidecar, ids):
    """Drop identifying keys and blank identifiers inside the remaining strings."""
    def clean(value):
        if isinstance(value, str):
            return scrub_text(value, ids)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {key: clean(value) for key, value in sidecar.items()
            if key not in _DENY_KEYS and "Date" not in key
            and (not key.startswith("Patient") or key in _KEEP_PATIENT)}


def _write_nifti(src, dst):
    """Gzip ``src`` into ``dst`` with the free-text header fields blanked (they may hold identifiers)."""
    with open(src, "rb") as fin:
        header = bytearray(fin.read(348))
        if 348 not in (int.from_bytes(header[:4], "little"), int.from_bytes(header[:4], "big")):
            raise DeepBleedError(f"{src.name}: dcm2niix wrote an unexpected (not NIfTI-1) header")
        for start, size in ((14, 18), (148, 80), (228, 24), (328, 16)):  # db_name descrip aux_file intent_name
            header[start:start + size] = bytes(size)
        with gzip.open(dst, "wb", compresslevel=4) as fout:  # ~level-6 size in half the time
            fout.write(header)
            shutil.copyfileobj(fin, fout, 1 << 20)
