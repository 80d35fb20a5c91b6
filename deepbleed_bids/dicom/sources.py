"""Where each converted CT came from: ``sourcedata/dicom2bids/sub-X[_ses-Y]_sources.json``.

dicom2bids records, for every CT it writes, the files of its source series, so
that the participant level can write DICOM results (SEG, SR) that reference the
very instances a PACS holds. The record sits in ``sourcedata/`` (not in the CT
sidecar: paths and folder names may carry patient names, and sidecars are
de-identified); derivatives never copy it.
"""
import json
from pathlib import Path

from .dataset import log_path

FORMAT = "deepbleed-bids dicom2bids sources 1"


def sources_path(bids_dir, participant, session=None):
    log = log_path(bids_dir, participant, session)
    return log.with_name(log.name.replace("_log.txt", "_sources.json"))


def sources_record(images):
    """The JSON content for ``images``: list of (BIDS relpath of the CT, Series)."""
    record = {"Format": FORMAT, "Images": {}}
    for relpath, series in images:
        record["Images"][str(relpath)] = {
            "SeriesNumber": int(series.number) if series.number not in (None, "") else None,
            "Files": [str(Path(f.path).resolve()) for f in series.files],
        }
    return record


def find_source(bids_dir, relpath):
    """The recorded source DICOM files of one CT (relpath inside bids_dir), or None."""
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
    entry = record.get("Images", {}).get(str(Path(relpath).as_posix()))
    return entry["Files"] if entry and entry.get("Files") else None
