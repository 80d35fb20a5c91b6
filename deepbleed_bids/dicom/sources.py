"""Where each converted CT came from: ``sourcedata/dicom2bids/sub-X[_ses-Y]_sources.json``.

dicom2bids records, for every CT it writes, the files of its source series, so
that the participant level can write DICOM results (SEG, SR) that reference the
very instances a PACS holds. The record sits in ``sourcedata/`` (not in the CT
sidecar: paths and folder names may carry patient names, and sidecars are
de-identified); derivatives never copy it. A path that holds a patient
identifier (a folder named after the patient) is not recorded: the dataset
stays free of identifiers, and the entry says why there is no DICOM output.
"""
import json
from pathlib import Path

from .dataset import log_path
from .deid import scrub_text

FORMAT = "deepbleed-bids dicom2bids sources 1"


def sources_path(bids_dir, participant, session=None):
    log = log_path(bids_dir, participant, session)
    return log.with_name(log.name.replace("_log.txt", "_sources.json"))


NOT_RECORDED = ("the path of the source DICOM files contains a patient identifier (e.g. a folder "
                "named after the patient), so dicom2bids did not record it; rename the folder "
                "(e.g. by study number) and convert again to get DICOM results")


def sources_record(images, ids=()):
    """The JSON content for ``images``: list of (BIDS relpath of the CT, Series); ids: identifiers."""
    record = {"Format": FORMAT, "Images": {}}
    for relpath, series in images:
        files = [str(Path(f.path).resolve()) for f in series.files]
        entry = {"SeriesNumber": int(series.number) if series.number not in (None, "") else None}
        if any(scrub_text(f, ids) != f for f in files):
            entry["NotRecorded"] = NOT_RECORDED
        else:
            entry["Files"] = files
        record["Images"][Path(relpath).as_posix()] = entry
    return record


def lookup(bids_dir, relpath):
    """The recorded entry of one CT (relpath inside bids_dir), or None."""
    parts = Path(relpath).parts
    participant = parts[0][len("sub-"):]
    session = parts[1][len("ses-"):] if len(parts) > 3 and parts[1].startswith("ses-") else None
    path = sources_path(bids_dir, participant, session)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("Images", {}).get(Path(relpath).as_posix())


def find_source(bids_dir, relpath):
    """The recorded source DICOM files of one CT (relpath inside bids_dir), or None."""
    entry = lookup(bids_dir, relpath)
    return entry["Files"] if entry and entry.get("Files") else None
