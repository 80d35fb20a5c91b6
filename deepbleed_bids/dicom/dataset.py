"""The BIDS folder: labels and file names, the destination check, participants.tsv,
dataset_description.json and where the log goes."""
import json
import re
from pathlib import Path

from .. import __url__, __version__
from ..bids import BIDS_VERSION  # noqa: F401 (deepbleed_bids.dicom re-exports it)
from ..errors import InputError
from ..utils import write_text_atomic


def bids_label(value, what, prefix):
    """A BIDS label from user input (``sub-01`` or ``01``); InputError when not alphanumeric."""
    label = str(value or "").strip()
    label = label[len(prefix):] if label.startswith(prefix) else label
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise InputError(f"{what} label {value!r} is not a BIDS label: use letters and digits only (e.g. 01 or P001).")
    return label


def bids_name(participant, session, acq, run=None):
    """``sub-X[_ses-Y]_acq-<acq>[_run-<n>]_ct``."""
    parts = [f"sub-{participant}"] + ([f"ses-{session}"] if session else []) + [f"acq-{acq}"]
    return "_".join(parts + ([f"run-{run}"] if run else []) + ["ct"])


def _atomic_write(path, text, clobber=True):
    return write_text_atomic(text, path, clobber=clobber)


def _check_destination(bids_dir, participant, session):
    """The session's ct folder; InputError when writing there would mix or overwrite data."""
    sub = bids_dir / f"sub-{participant}"
    if session and (sub / "ct").exists():
        raise InputError(f"{sub}: already holds data without sessions; convert sub-{participant} "
                         "without --session-label, or into another BIDS folder.")
    if not session and sub.is_dir() and any(sub.glob("ses-*")):
        raise InputError(f"{sub}: already has sessions ({', '.join(sorted(p.name for p in sub.glob('ses-*')))}); "
                         "give --session-label.")
    dest = (sub / f"ses-{session}" if session else sub) / "ct"
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"{dest}: already holds CT images; nothing is overwritten: choose another "
                         "session label, or move that folder away yourself.")
    table = bids_dir / "participants.tsv"
    if table.is_file():
        first = table.read_text(encoding="utf-8").splitlines()[:1]
        if not first or "participant_id" not in first[0].split("\t"):
            raise InputError(f"{table}: has no participant_id column in its first line; fix the file "
                             "(tab-separated, participant_id first) and run again.")
    return dest


def _add_participant(bids_dir, participant):
    path, pid = bids_dir / "participants.tsv", f"sub-{participant}"
    if not path.exists():
        return _atomic_write(path, f"participant_id\n{pid}\n")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    columns = lines[0].split("\t")
    col = columns.index("participant_id")
    if any(len(row.split("\t")) > col and row.split("\t")[col] == pid for row in lines[1:]):
        return False
    row = ["n/a"] * len(columns)
    row[col] = pid
    return _atomic_write(path, text + ("" if text.endswith("\n") else "\n") + "\t".join(row) + "\n")


def ensure_dataset_description(bids_dir, dcm2niix_version=None):
    """Write dataset_description.json when absent; an existing one is left untouched."""
    desc = {
        "Name": "CT dataset converted by deepbleed-bids dicom2bids",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "deepbleed-bids", "Version": __version__,
                         "Description": "dicom2bids: DICOM CT to BIDS with dcm2niix", "CodeURL": __url__}],
    }
    if dcm2niix_version:
        desc["GeneratedBy"].append({"Name": "dcm2niix", "Version": dcm2niix_version})
    path = Path(bids_dir) / "dataset_description.json"
    ensure_dataset_files(bids_dir)
    return not path.exists() and _atomic_write(path, json.dumps(desc, indent=2) + "\n", clobber=False)


# CT is not in the BIDS specification yet (BEP024): without these lines the official
# validator reports every CT image as NOT_INCLUDED (an error).
BIDSIGNORE = ["# CT is not in the BIDS specification yet (BEP024, https://bids.neuroimaging.io/bep024)",
              "**/ct", "*_ct.nii.gz", "*_ct.json"]

README = """# CT dataset converted by deepbleed-bids dicom2bids

CT images converted from DICOM with dcm2niix (`deepbleed-bids dicom2bids`):
`sub-<label>/[ses-<label>/]ct/sub-<label>[_ses-<label>]_acq-<kernel>[_run-<n>]_ct.nii.gz`,
with JSON sidecars and the conversion log in `sourcedata/dicom2bids/`.

CT is not yet part of the BIDS specification: the `ct` datatype and `_ct` suffix follow
the proposal BEP024 (https://bids.neuroimaging.io/bep024). Until it is merged, `.bidsignore`
lists the CT files so that the BIDS validator accepts the dataset; the rest of the dataset
is validated as usual.
"""


def ensure_dataset_files(bids_dir):
    """.bidsignore (missing lines added, the user's kept) and README (written when absent)."""
    bids_dir = Path(bids_dir)
    bids_dir.mkdir(parents=True, exist_ok=True)
    ignore = bids_dir / ".bidsignore"
    text = ignore.read_text(encoding="utf-8") if ignore.is_file() else ""
    missing = [line for line in BIDSIGNORE if line not in text.splitlines()]
    if missing:
        _atomic_write(ignore, text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(missing) + "\n")
    if not any((bids_dir / name).exists() for name in ("README", "README.md", "README.txt", "README.rst")):
        _atomic_write(bids_dir / "README.md", README, clobber=False)


def log_path(bids_dir, participant, session=None):
    stem = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    return Path(bids_dir) / "sourcedata" / "dicom2bids" / f"{stem}_log.txt"
