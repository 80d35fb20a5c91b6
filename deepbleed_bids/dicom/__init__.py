"""DICOM head CT -> BIDS with the real dcm2niix.

Written into ``bids_dir`` (CT is the proposed BIDS datatype of BEP024)::

    dataset_description.json                      created when absent, never rewritten
    .bidsignore, README.md                        CT lines added (BEP024 pending); README when absent
    participants.tsv                              row added; existing rows/columns kept
    sub-X/[ses-Y/]ct/sub-X[_ses-Y]_acq-<kernel>[_run-<n>]_ct.nii.gz + .json
    sourcedata/dicom2bids/sub-X[_ses-Y]_log.txt   dcm2niix output and per-series decisions
    sourcedata/dicom2bids/sub-X[_ses-Y]_sources.json  each CT's source DICOM files (for DICOM results)

Each series is read with pydicom, screened (scouts, reports, secondary captures,
non-CT, non-axial, truncated files and missing slices are caught here), then
converted on its own by dcm2niix so that one bad series cannot spoil the others.
Of dcm2niix's images only the geometrically correct one is kept (``_Tilt_Eq_1``,
``_Eq_1`` or ``_Tilt_1`` when it writes them). A session is assembled in a hidden
temporary folder inside ``bids_dir`` and moved into place with one rename.

Modules: ``series`` (reading, grouping, screening), ``convert`` (dcm2niix, choosing
the corrected image, sidecar fields), ``deid`` (identifiers, scrubbing),
``dataset`` (BIDS names and dataset files), ``session`` (one exam, a batch).
The kernel and contrast rules live in :mod:`deepbleed_bids.kernels`.
"""
from ..kernels import classify_kernel, contrast_suspected, is_soft_tissue
from .convert import ORTHO_TOL, Decision, convert_series, dcm2niix_binary, geometry_problem
from .dataset import BIDS_VERSION, bids_label, bids_name, ensure_dataset_description, log_path
from .deid import REDACTED, identifiers, scrub_sidecar, scrub_text
from .series import CT_IMAGE_SOPS, DICOMDIR_SOP, MAX_AXIAL_DEG, MIN_SLICES, Series, read_dicom_folder, screen
from .session import SessionResult, convert_batch, convert_session, read_batch_table

__all__ = [
    "BIDS_VERSION", "CT_IMAGE_SOPS", "DICOMDIR_SOP", "MAX_AXIAL_DEG", "MIN_SLICES", "ORTHO_TOL", "REDACTED",
    "Decision", "Series", "SessionResult",
    "bids_label", "bids_name", "classify_kernel", "contrast_suspected", "convert_batch", "convert_series",
    "convert_session", "dcm2niix_binary", "ensure_dataset_description", "geometry_problem", "identifiers",
    "is_soft_tissue", "log_path", "read_batch_table", "read_dicom_folder", "screen", "scrub_sidecar",
    "scrub_text",
]
