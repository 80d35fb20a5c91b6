"""The official BIDS validator (PyPI ``bids-validator-deno``, runs offline) on a dataset.

CT is not in the BIDS specification yet (BEP024), so the validator reports every
CT image as NOT_INCLUDED unless the dataset's ``.bidsignore`` lists them.
:func:`validate_input` lets those pass with a note (they are what this app reads).
Errors in one subject's files are left to the per-image checks (one bad scan does not
stop the others); every other error stops the run, as fMRIPrep does
(``--skip-bids-validation`` skips).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import InputError

# The lines dicom2bids and the participant level put in .bidsignore (see README)
CT_BIDSIGNORE = ["**/ct", "*_ct.nii", "*_ct.nii.gz", "*_ct.json", "*_CT.nii", "*_CT.nii.gz", "*_CT.json"]
_CT_FILE = re.compile(r"(/ct/|/ct$|_(ct|CT)\.(nii|nii\.gz|json)$)")
_CLI = "from bids_validator_deno import cli; cli()"


class ValidatorUnavailable(InputError):
    pass


def run_validator(path, timeout=1800):
    """Validate ``path``; return the validator's issues (dicts with code, severity, location...)."""
    with tempfile.TemporaryDirectory(prefix="deepbleed-deno-") as deno_dir:
        # deno caches into $HOME by default; a container's $HOME may be read-only
        env = {**os.environ, "DENO_DIR": deno_dir, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
        try:
            proc = subprocess.run([sys.executable, "-c", _CLI, "--format", "json", str(path)],
                                  capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise ValidatorUnavailable(f"the BIDS validator did not finish within {timeout} s on {path}; "
                                       "run it yourself or pass --skip-bids-validation.") from err
    try:
        report = json.loads(proc.stdout)
        return report["issues"]["issues"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ValidatorUnavailable(
            "the BIDS validator (bids-validator-deno) could not run: " + " | ".join(tail)
            + ". Reinstall deepbleed-bids (pip install bids-validator-deno) or pass --skip-bids-validation."
        ) from err


def errors(issues):
    return [i for i in issues if i.get("severity") == "error"]


def describe(issue):
    code = issue.get("code", "?") + (f" ({issue['subCode']})" if issue.get("subCode") else "")
    return f"{code} {issue.get('location', '')}".strip()


def is_ct_not_included(issue):
    """A CT file or folder the validator does not know (BEP024 pending)."""
    return issue.get("code") == "NOT_INCLUDED" and bool(_CT_FILE.search(issue.get("location", "")))


# participants.tsv is only joined into the group tables, which warn about it themselves
_NOT_FATAL = {"PARTICIPANT_ID_MISMATCH"}


def in_subject(issue):
    """An issue located in one subject's files: that image is checked (and refused) on its own."""
    return issue.get("location", "").startswith("/sub-")


def validate_input(bids_dir, log):
    """Run the validator on the input; InputError listing its dataset-level errors, if any.

    Errors in one subject's files (an unreadable NIfTI header, an empty file) do not stop the
    run: each image is read and checked on its own before processing and refused alone with
    its reason, so one bad scan does not stop the others."""
    issues = run_validator(bids_dir)
    ct = [i for i in errors(issues) if is_ct_not_included(i)]
    rest = [i for i in errors(issues) if not is_ct_not_included(i)]
    per_image = [i for i in rest if in_subject(i) or i.get("code") in _NOT_FATAL]
    bad = [i for i in rest if i not in per_image]
    warnings = [i for i in issues if i.get("severity") == "warning"]
    if ct:
        log(f"BIDS validator: {len(ct)} CT file(s)/folder(s) not in the BIDS specification yet (BEP024); "
            f"accepted. Add these lines to {Path(bids_dir) / '.bidsignore'} to silence it: "
            + " ".join(CT_BIDSIGNORE))
    log(f"BIDS validator: {len(bad)} error(s), {len(warnings)} warning(s) in {bids_dir}")
    for issue in per_image:
        log(f"BIDS validator: {describe(issue)} (checked per image below; not fatal for the others)")
    if bad:
        shown = "\n  ".join(describe(i) for i in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise InputError(
            f"{bids_dir} is not a valid BIDS dataset ({len(bad)} validator error(s)):\n  {shown}{more}\n"
            "Fix them (run `bids-validator-deno {0}` for the details) or pass --skip-bids-validation."
            .format(bids_dir))
    return issues
