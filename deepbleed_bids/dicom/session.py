"""One exam folder -> one BIDS session; a batch table converts many.

A session is assembled in a hidden temporary folder inside ``bids_dir`` and moved
into place with one rename.
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import DeepBleedError, InputError
from .convert import Decision, _dcm2niix_version, convert_series, dcm2niix_binary
from .dataset import (_add_participant, _atomic_write, _check_destination, bids_label, bids_name,
                      ensure_dataset_description, log_path)
from .deid import _write_nifti, identifiers, scrub_sidecar, scrub_text
from .series import read_dicom_folder
from .sources import sources_path, sources_record


@dataclass
class SessionResult:
    """Outcome of converting one exam folder."""

    participant: str
    session: str = None
    decisions: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    images: list = field(default_factory=list)  # absolute paths of the written NIfTI files
    log: Path = None
    error: str = None  # the session as a whole could not be converted

    @property
    def failed(self):
        return [d for d in self.decisions if d.status == "failed"]

    @property
    def ok(self):
        return not self.error and bool(self.images) and not self.failed

    def report(self, tool_output=False):
        """Human-readable summary (the log adds dcm2niix's output)."""
        name = f"sub-{self.participant}" + (f" ses-{self.session}" if self.session else "")
        if self.error:
            return f"{name}: FAILED: {self.error}\n"
        lines = [f"{name}: {len(self.images)} CT image(s) written, "
                 f"{sum(d.status == 'skipped' for d in self.decisions)} series skipped, "
                 f"{len(self.failed)} failed"]
        if not self.images:
            lines.append("  nothing usable was converted: nothing written")
        for d in self.decisions:
            lines.append(f"  {d.status:9} {d.label}" + (f": {d.reason}" if d.reason else ""))
            lines += [f"            -> {o}" for o in d.outputs]
            lines += [f"            note: {x}" for x in d.details]
            if tool_output and d.tool_output:
                lines += ["            | " + x for x in d.tool_output.rstrip().splitlines()]
        lines += [f"  ignored   {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def convert_session(dicom_dir, bids_dir, participant, session=None):
    """Convert the DICOM exam in ``dicom_dir`` to ``sub-<participant>[/ses-<session>]/ct``.

    Naming: ``acq-<KernelType>`` (soft, bone or unknown from :func:`classify_kernel`)
    tells kernels apart; several images of the same kernel class (thin and thick
    slices, repeated scans) get ``run-1``, ``run-2``... in series-number order.
    Slice thickness, kernel and corrections are in each JSON sidecar.

    Raises InputError when the folder is unusable or the destination is taken;
    otherwise returns a :class:`SessionResult` (see ``.ok``). Nothing is written
    unless at least one image converted.
    """
    participant = bids_label(participant, "participant", "sub-")
    session = bids_label(session, "session", "ses-") if session else None
    dicom_dir, bids_dir = Path(dicom_dir), Path(bids_dir)
    if not dicom_dir.is_dir():
        raise InputError(f"{dicom_dir}: no such folder; give the folder holding the DICOM files of one exam.")
    if bids_dir.exists() and not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: exists and is not a folder; give a BIDS folder (created if absent).")
    if not bids_dir.exists() and not bids_dir.parent.is_dir():
        raise InputError(f"{bids_dir.parent}: no such folder to create the BIDS folder in.")
    dest = _check_destination(bids_dir, participant, session)
    series, notes, damaged = read_dicom_folder(dicom_dir)
    tool = dcm2niix_binary()
    result = SessionResult(participant, session, notes=notes)
    result.decisions = [Decision(f"file {rel}", "failed", f"{why}; remove or replace it") for rel, why in damaged]
    ids = set()
    for one in series:
        ids |= identifiers(one.header)
    work = Path(tempfile.mkdtemp(prefix=".dicom2bids-", dir=bids_dir if bids_dir.is_dir() else bids_dir.parent))
    try:
        kept, origin = [], {}  # origin: id(image) -> its source series
        for i, one in enumerate(series):
            try:
                decision, images = convert_series(one, work / f"s{i:03d}", tool)
            except Exception as err:  # noqa: BLE001 - one bad series must not stop the others
                decision, images = Decision(one.label, "failed", f"conversion error ({type(err).__name__}: {err})"), []
            result.decisions.append(decision)
            kept += [(decision, image) for image in images]
            origin.update({id(image): one for image in images})
        if kept:
            version = _dcm2niix_version(tool)
            names = _assemble(kept, work / "ct", participant, session, dest, bids_dir, ids)
            ensure_dataset_description(bids_dir, version)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.rmdir()  # empty (checked above); rename needs the name free
            os.rename(work / "ct", dest)
            result.images = sorted(dest.glob("*.nii.gz"))
            _add_participant(bids_dir, participant)
            result.log = log_path(bids_dir, participant, session)
            old = result.log.read_text(encoding="utf-8") + "\n" if result.log.exists() else ""
            _atomic_write(result.log, old + scrub_text(_log_text(result, version), ids))
            # where each CT's source series is, for DICOM results that reference it
            rel = dest.relative_to(bids_dir)
            record = sources_record([(rel / f"{names[id(image)]}.nii.gz", origin[id(image)])
                                     for _, image in kept], ids)
            _atomic_write(sources_path(bids_dir, participant, session), json.dumps(record, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for d in result.decisions:  # the printed summary may carry series descriptions
        d.label, d.reason = scrub_text(d.label, ids), scrub_text(d.reason, ids)
        d.outputs = [scrub_text(o, ids) for o in d.outputs]
    return result


def _assemble(kept, folder, participant, session, dest, bids_dir, ids):
    """Write the kept images, named and de-identified, into ``folder``; returns id(image) -> name."""
    folder.mkdir()
    by_kind = {}
    for _, image in kept:
        by_kind.setdefault(image.kernel_type, []).append(image)
    names = {}
    for kind, images in by_kind.items():
        for run, image in enumerate(images, 1):
            names[id(image)] = bids_name(participant, session, kind, run if len(images) > 1 else None)
    for decision, image in kept:
        name = names[id(image)]
        _write_nifti(image.nii, folder / f"{name}.nii.gz")
        sidecar = scrub_sidecar(image.sidecar, ids)
        _atomic_write(folder / f"{name}.json", json.dumps(sidecar, indent=2) + "\n")
        decision.outputs.append(f"{(dest / name).relative_to(bids_dir)}.nii.gz: {image.summary}")
    return names


def _log_text(result, version):
    return (f"deepbleed-bids {__version__} dicom2bids, dcm2niix {version}\n"
            f"dcm2niix options: -b y -ba y -c '' -z n -d 0 -f series (one series at a time)\n"
            + result.report(tool_output=True))


def read_batch_table(path):
    """Rows of a batch TSV (columns dicom_dir, participant, optional session).

    Relative dicom_dir paths are taken relative to the table's folder.
    """
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except OSError as err:
        raise InputError(f"--batch {path}: cannot be read ({err.strerror}).") from err
    if not lines:
        raise InputError(f"--batch {path}: empty; it needs a header line: dicom_dir<TAB>participant<TAB>session.")
    columns = [c.strip() for c in lines[0].split("\t")]
    missing = [c for c in ("dicom_dir", "participant") if c not in columns]
    if missing:
        raise InputError(f"--batch {path}: missing column(s) {', '.join(missing)} in the header "
                         f"{columns}; the table is tab-separated with dicom_dir, participant, session.")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        cells = dict(zip(columns, (c.strip() for c in line.split("\t"))))
        if not cells.get("dicom_dir") or not cells.get("participant"):
            raise InputError(f"--batch {path}, line {n}: dicom_dir and participant must not be empty.")
        folder = Path(cells["dicom_dir"])
        rows.append({"dicom_dir": folder if folder.is_absolute() else path.parent / folder,
                     "participant": cells["participant"],
                     "session": cells.get("session") or None, "line": n})
    return rows


def convert_batch(table, bids_dir):
    """Convert every row of a batch table; a failing row does not stop the others."""
    results = []
    for row in read_batch_table(table):
        try:
            results.append(convert_session(row["dicom_dir"], bids_dir, row["participant"], row["session"]))
        except (DeepBleedError, OSError) as err:
            results.append(SessionResult(str(row["participant"]), row["session"],
                                         error=f"line {row['line']} ({row['dicom_dir']}): {err}"))
    return results
