"""Group level: cohort tables from the participant-level derivatives (nothing is recomputed).

Pure pandas/numpy: the tables. :func:`run_group` writes them, the plots
(:mod:`deepbleed_bids.reports.plots`) and the HTML summary into ``<output_dir>/group/``.

Scan order within a participant: when every scan of the participant has a date
and time (``acq_time`` of ``sub-X/sub-X_sessions.tsv``, else
``AcquisitionDateTime``, else ``AcquisitionDate`` + ``AcquisitionTime`` of the
source BIDS sidecar) they are ordered by it; otherwise by the natural sort of the
session labels (ses-2 before ses-10), then the time of day within a session. A
time of day alone never orders sessions: a follow-up next morning would sort
before an evening baseline.

Post-treatment scans (for the MISTIE III surgical target): sessions named by
``--post-treatment-sessions``, else those whose ``post_treatment`` column in
``sub-X/sub-X_sessions.tsv`` is true (1/true/yes/post). Their reference is the
last scan before the first post-treatment scan.
"""
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .derivatives import HEMORRHAGE_MASK, find_outputs, raw_source
from .errors import InputError
from .utils import clean_json, write_json_atomic, write_tsv_atomic

MASK_JSON = "*" + HEMORRHAGE_MASK + ".json"
MISTIE_RESIDUAL_ML = 15.0  # MISTIE III surgical target: <= 15 mL end-of-treatment residual ...
MISTIE_REDUCTION_PCT = 70.0  # ... or >= 70 % reduction
_TRUE = {"1", "true", "yes", "y", "post", "t"}
_ENTITY_COLUMNS = {"ses": "session", "acq": "acquisition", "rec": "reconstruction", "run": "run"}

VOLUME_COLUMNS = {
    "participant_id": "participant (sub-<label>)",
    "session": "session label (n/a without sessions)",
    "acquisition": "acq- entity of the source CT",
    "run": "run- entity of the source CT",
    "image": "source CT name without suffix: the prefix of every derivative of it",
    "source": "source CT, relative to the BIDS dataset",
    "hemorrhage_volume_ml": "network hemorrhage (ICH + IVH) volume, native voxel size (mL)",
    "intraventricular_volume_ml": "ESTIMATED intraventricular part of the hemorrhage (mL; atlas ventricle "
                                  "prior refined on the scan, not validated on labelled IVH)",
    "parenchymal_volume_ml": "ESTIMATED parenchymal (intracerebral) part of the hemorrhage (mL)",
    "ivh_low_ml": "only when the mass-effect fit of the ventricles ran: the smaller of the two IVH readings "
                  "(blood filling the displaced ventricles / only pushing them aside; mL)",
    "ivh_high_ml": "the larger of those two readings (mL); n/a when the mass-effect fit did not run",
    "volume_low_ml": "lower end of the hemorrhage volume interval over the test-time passes (mL)",
    "volume_high_ml": "upper end of that interval (mL); equal to the volume with --tta none",
    "calibration_low_ml": "with --tta ...+hu: the hemorrhage volume with the brain's HU shifted by -4 or +4, "
                          "whichever is lower (mL); n/a otherwise",
    "calibration_high_ml": "the higher of those two volumes (mL): a wide interval means the result hangs on "
                           "the scanner's HU calibration",
    "uncertain_volume_ml": "volume of voxels with hemorrhage probability 0.2-0.8 (mL)",
    "pass_dice": "smallest Dice between a test-time pass's mask and the averaged mask (n/a with one pass)",
    "tta": "test-time augmentation run (none, flip, flip+mc, hu, flip+hu, flip+mc+hu)",
    "brain_volume_ml": "brain mask volume (mL)",
    "location_class": "ESTIMATED location: deep / lobar / infratentorial / intraventricular (BLAST-CT atlas)",
    "largest_region": "the atlas region holding the largest share of the hemorrhage",
    "largest_region_share": "that region's share of the hemorrhage volume (0-1)",
    "hemorrhage_side": "left / right / bilateral (>= 80 % on one side) of the labelled hemorrhage",
    "edema_volume_ml": "ESTIMATED perihematomal edema (mL; label-free, after Volbers et al. 2018)",
    "relative_edema": "edema / hemorrhage volume",
    "midline_shift_mm": "ESTIMATED midline shift: septum pellucidum (or third ventricle) from the skull's "
                        "mid-sagittal plane (mm)",
    "midline_shift_direction": "towards the patient's left or right",
    "ich_score_imaging": "ICH score points from the image: volume >= 30 mL, IVH, infratentorial origin (0-3)",
    "gcs": "Glasgow Coma Scale (sessions.tsv, else participants.tsv) when given",
    "age": "age in years (sessions.tsv, else participants.tsv) when given",
    "ich_score": "ICH score (Hemphill 2001, 0-6): only when gcs and age are known",
    "abc2_ml": "automated ABC/2 of the largest hemorrhage component (mL); see deepbleed_bids.qc.abc2",
    "abc2_a_mm": "A: largest axial diameter on the slice of largest area (mm)",
    "abc2_b_mm": "B: largest extent perpendicular to A on that slice (mm)",
    "abc2_c_mm": "C: slices holding the hemorrhage x slice spacing (mm)",
    "hyperdensity_ml": "classical hyperdensity estimate (mL), independent of the network",
    "registration_similarity": "correlation of HU with the template after alignment",
    "qc_pass": "true when no QC flag fired",
    "qc_flags": "QC flags, ';'-separated (see the report or deepbleed_bids.qc)",
    "warnings": "warnings of the participant level, ';'-separated",
    "model": "model name",
    "model_sha256": "sha256 of the model weights",
    "date_processed": "when the participant level wrote the outputs",
}

LONGITUDINAL_COLUMNS = {
    "scan_order": "1 for the first scan of the participant",
    "order_by": "acquisition time, or session label when some scan has no date and time",
    "acq_time": "date and time of the scan when known",
    "hours_from_first": "hours since the first scan (when every scan has a date and time)",
    "change_prev_ml": "volume minus the previous scan's (mL)",
    "change_prev_pct": "that change in percent of the previous volume",
    "change_first_ml": "volume minus the first scan's (mL)",
    "change_first_pct": "that change in percent of the first volume",
    "ivh_change_prev_ml": "ESTIMATED intraventricular volume minus the previous scan's (mL)",
    "ivh_change_first_ml": "ESTIMATED intraventricular volume minus the first scan's (mL)",
    "parenchymal_change_prev_ml": "ESTIMATED parenchymal volume minus the previous scan's (mL)",
    "parenchymal_change_first_ml": "ESTIMATED parenchymal volume minus the first scan's (mL)",
    "edema_change_prev_ml": "ESTIMATED perihematomal edema minus the previous scan's (mL): edema growth",
    "edema_change_first_ml": "ESTIMATED perihematomal edema minus the first scan's (mL)",
    "expansion": "growth from the first scan > expansion_ml or > expansion_pct (pre-treatment scans)",
    "expansion_prev": "the same criterion against the previous scan",
    "post_treatment": "scan after surgery",
    "reference_volume_ml": "post-treatment: the last pre-treatment volume",
    "reduction_pct": "post-treatment: reduction from that reference (%)",
    "mistie_target_met": f"post-treatment: residual <= {MISTIE_RESIDUAL_ML:g} mL or reduction >= "
                         f"{MISTIE_REDUCTION_PCT:g}% (MISTIE III surgical target)",
}


# ---------------------------------------------------------------- reading


def _record(found, out_dir, thresholds):
    from . import qc as QC

    path, meta, prefix, ents = found.sidecar, found.meta, found.prefix, found.entities
    qcrec = meta.get("QC") or {}
    metrics = qcrec.get("Metrics") or {}
    if thresholds and metrics.get("BrainVolume") is not None:
        flags = QC.flags(metrics, thresholds)  # re-applied to the stored measures
    else:
        flags = qcrec.get("Flags") or {}
    abc = metrics.get("ABC2") or {}
    unc = meta.get("Uncertainty") or {}
    ivh_range = (meta.get("HemorrhageSplit") or {}).get("IntraventricularVolumeRange") or [None, None]
    raw = raw_source(meta) or ""
    model = meta.get("Model") or {}
    return {
        "participant_id": "sub-" + ents.get("sub", ""),
        "session": ents.get("ses", "n/a"),
        "acquisition": ents.get("acq", "n/a"),
        "run": ents.get("run", "n/a"),
        "image": prefix,
        "source": raw,
        "hemorrhage_volume_ml": meta.get("HemorrhageVolume"),
        "intraventricular_volume_ml": meta.get("IntraventricularVolume"),
        "parenchymal_volume_ml": meta.get("ParenchymalVolume"),
        "ivh_low_ml": ivh_range[0],
        "ivh_high_ml": ivh_range[1],
        "volume_low_ml": (unc.get("VolumeInterval") or [None, None])[0],
        "volume_high_ml": (unc.get("VolumeInterval") or [None, None])[1],
        "calibration_low_ml": (unc.get("CalibrationInterval") or [None, None])[0],
        "calibration_high_ml": (unc.get("CalibrationInterval") or [None, None])[1],
        "uncertain_volume_ml": unc.get("UncertainVolume"),
        "pass_dice": unc.get("PassDice") if unc.get("Passes", 1) > 1 else None,
        "tta": unc.get("TTA"),
        "brain_volume_ml": meta.get("BrainVolume"),
        "location_class": meta.get("LocationClass"),
        "largest_region": meta.get("LargestRegion"),
        "largest_region_share": (meta.get("HemorrhageLocation") or {}).get("LargestRegionShare"),
        "hemorrhage_side": (meta.get("HemorrhageLocation") or {}).get("Side"),
        "edema_volume_ml": meta.get("EdemaVolume"),
        "relative_edema": meta.get("RelativeEdema"),
        "midline_shift_mm": meta.get("MidlineShift"),
        "midline_shift_direction": meta.get("MidlineShiftDirection"),
        "ich_score_imaging": (meta.get("ICHScore") or {}).get("ImagingPoints"),
        "abc2_ml": metrics.get("ABC2Volume"),
        "abc2_a_mm": abc.get("A"),
        "abc2_b_mm": abc.get("B"),
        "abc2_c_mm": abc.get("C"),
        "hyperdensity_ml": metrics.get("HyperdensityVolume"),
        "registration_similarity": metrics.get("RegistrationSimilarity"),
        "qc_pass": (not flags) if qcrec else None,
        "qc_flags": ";".join(flags),
        "warnings": ";".join(meta.get("Warnings") or []),
        "model": model.get("Name"),
        "model_sha256": model.get("WeightsSHA256"),
        "date_processed": meta.get("DateProcessed"),
        "report": f"sub-{ents.get('sub', '')}.html",
        "derivative": str(Path(path).relative_to(out_dir)),
    }


def collect_outputs(out_dir, thresholds=None):
    """One record per hemorrhage sidecar under ``out_dir``; (DataFrame, problems).

    A sidecar that cannot be read is listed in problems, never fatal.
    """
    out_dir = Path(out_dir)
    rows, problems = [], []
    for found in find_outputs(out_dir):
        if found.sidecar is None:
            continue
        try:
            if found.error:
                raise ValueError(found.error)
            rows.append(_record(found, out_dir, thresholds))
        except (OSError, ValueError, TypeError, AttributeError) as err:
            problems.append({"file": str(found.sidecar.relative_to(out_dir)),
                             "problem": f"unreadable sidecar: {err}"})
    columns = [c for c in VOLUME_COLUMNS if c not in ("gcs", "age", "ich_score")] + ["report", "derivative"]
    return pd.DataFrame(rows, columns=columns), problems


def read_tsv(path):
    """A BIDS TSV as strings ('n/a' -> missing); None when absent or unreadable."""
    try:
        return pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a"], keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def normalise_id(value):
    """``01`` and ``sub-01`` -> ``sub-01`` (BIDS ids carry the prefix; users often drop it)."""
    value = str(value).strip()
    return value if value.startswith("sub-") else "sub-" + value


def read_participants(path, problems=None):
    """participants.tsv as strings, read leniently: every problem is appended to ``problems``
    (``{"file", "problem"}`` naming the line) instead of silently dropping the table.

    Accepted with a warning: Latin-1 text, comma separation, ragged rows (padded with n/a or
    cut), ids without ``sub-``, duplicate ids (the first row is used). Returns None (with a
    warning) for an empty file or one without a ``participant_id`` header.
    """
    import csv
    import io

    path = Path(path)
    problems = problems if problems is not None else []
    where = str(path)

    def warn(text):
        problems.append({"file": where, "problem": text})

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        warn(f"cannot be read ({err.strerror}); participant columns are left out.")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        warn(f"line {line}: not UTF-8 text; read as Latin-1. Save the file as UTF-8.")
        text = raw.decode("latin-1")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        warn("empty: no header line and no participants; participant columns are left out.")
        return None
    sep = "\t"
    if "\t" not in lines[0][1] and "," in lines[0][1]:
        sep = ","
        warn("line 1: comma-separated; BIDS .tsv files are tab-separated (read with commas anyway).")
    rows = [(n, [c.strip() for c in next(csv.reader(io.StringIO(line), delimiter=sep))]) for n, line in lines]
    header = rows[0][1]
    if "participant_id" not in header:
        first = header[0] if header else ""
        what = (f"has no header line (line 1 starts with {first!r}, a participant)" if first.startswith("sub-")
                else f"has no participant_id column (line 1: {', '.join(header)})")
        warn(f"{what}; the first line must name the columns, starting with participant_id. "
             "Participant columns are left out.")
        return None
    records, seen = [], {}
    for n, cells in rows[1:]:
        if len(cells) != len(header):
            warn(f"line {n}: {len(cells)} field(s) where the header has {len(header)}; "
                 + ("missing values read as n/a." if len(cells) < len(header) else "extra values ignored."))
            cells = (cells + [""] * len(header))[: len(header)]
        rec = dict(zip(header, cells))
        pid = rec["participant_id"]
        if not pid:
            warn(f"line {n}: no participant_id; row ignored.")
            continue
        rec["participant_id"] = normalise_id(pid)
        if not pid.startswith("sub-"):
            warn(f"line {n}: participant_id {pid!r} lacks the 'sub-' prefix; read as {rec['participant_id']!r}.")
        if rec["participant_id"] in seen:
            warn(f"line {n}: {rec['participant_id']} is listed again (first on line {seen[rec['participant_id']]}); "
                 "this row is ignored.")
            continue
        seen[rec["participant_id"]] = n
        records.append(rec)
    df = pd.DataFrame(records, columns=header, dtype=object)
    return df.replace({"n/a": np.nan, "": np.nan})


def add_participants(df, participants_tsv, problems=None):
    """Join participants.tsv columns (by participant_id); problems with the file go to ``problems``."""
    info = read_participants(participants_tsv, problems) if participants_tsv else None
    if info is None:
        return df
    info = info.loc[:, ~info.columns.duplicated()]
    info = info.drop(columns=[c for c in info.columns if c in df.columns and c != "participant_id"])
    return df.merge(info, on="participant_id", how="left")


def add_ich_score(df, sessions=None):
    """gcs and age (the session's row of sub-X_sessions.tsv first, else participants.tsv columns
    already joined) and the full ICH score where every item is known (deepbleed_bids.ichscore)."""
    from .ichscore import age_points, gcs_points

    df = df.copy()
    sessions = sessions or {}
    for column in ("gcs", "age"):
        values = []
        for _, row in df.iterrows():
            table = sessions.get(row["participant_id"])
            value = None
            if table is not None and column in table.columns and row["session"] in table.index:
                value = table.at[row["session"], column]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                value = row.get(column) if column in df.columns else None
            values.append(pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0])
        df[column] = values
    totals = []
    for _, row in df.iterrows():
        try:
            gp, ap = gcs_points(row["gcs"]), age_points(row["age"])
        except ValueError:
            gp = ap = None  # off-scale values: no total
        img = pd.to_numeric(pd.Series([row.get("ich_score_imaging")]), errors="coerce").iloc[0]
        totals.append(int(img) + gp + ap if None not in (gp, ap) and img == img else None)
    df["ich_score"] = pd.array(totals, dtype="Int64")
    return df


# ---------------------------------------------------------------- statistics


def describe(values):
    """n, mean, SD, median, quartiles, IQR and range of the non-missing values."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(float)
    n = len(v)
    nan = float("nan")
    q1, med, q3 = np.percentile(v, [25, 50, 75]) if n else (nan, nan, nan)
    return {"n": n, "mean": float(v.mean()) if n else nan, "sd": float(v.std(ddof=1)) if n > 1 else nan,
            "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(v.min()) if n else nan, "max": float(v.max()) if n else nan}


def first_scans(df):
    """Each participant's first scan (df must carry scan_order, see :func:`order_scans`)."""
    return df.sort_values(["participant_id", "scan_order"]).groupby("participant_id").head(1)


SUMMARY_VARIABLES = ("hemorrhage_volume_ml", "intraventricular_volume_ml", "parenchymal_volume_ml",
                     "uncertain_volume_ml", "abc2_ml", "brain_volume_ml", "edema_volume_ml", "relative_edema",
                     "midline_shift_mm", "ich_score_imaging", "ich_score")


def volume_summary(df, group_by=(), variables=SUMMARY_VARIABLES):
    """Descriptive statistics, overall and per group, for every scan and for first scans only."""
    rows = []
    scopes = {"all_scans": df}
    if "scan_order" in df.columns:
        scopes["first_scan"] = first_scans(df)
    for scope, data in scopes.items():
        for var in variables:
            if var not in data.columns:
                continue
            rows.append({"scope": scope, "group_by": "all", "group": "all", "variable": var,
                         **describe(data[var])})
            for column in group_by:
                keys = data[column].fillna("n/a").astype(str)
                for key, sub in data.groupby(keys, sort=True):
                    rows.append({"scope": scope, "group_by": column, "group": key, "variable": var,
                                 **describe(sub[var])})
    return pd.DataFrame(rows, columns=["scope", "group_by", "group", "variable", "n", "mean", "sd",
                                       "median", "q1", "q3", "iqr", "min", "max"])


# ---------------------------------------------------------------- time order


def natural_key(text):
    """'ses-10' after 'ses-2': digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower())
            for t in re.split(r"(\d+)", str(text)) if t]


def _timestamp(value):
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "n/a"):
        return None
    try:
        ts = pd.Timestamp(str(value))
    except (ValueError, TypeError):
        return None
    return None if pd.isna(ts) else ts


def scan_datetime(metadata, session_row=None):
    """Full date and time of a scan (pandas Timestamp) or None; and its time of day alone."""
    meta = metadata or {}
    when = _timestamp((session_row or {}).get("acq_time"))
    if when is None:
        when = _timestamp(meta.get("AcquisitionDateTime"))
    if when is None and meta.get("AcquisitionDate") and meta.get("AcquisitionTime"):
        when = _timestamp(f"{meta['AcquisitionDate']}T{meta['AcquisitionTime']}")
    time_of_day = str(meta.get("AcquisitionTime") or "")
    return when, time_of_day


def sessions_tables(bids_dir, subjects):
    """``{participant_id: DataFrame of sub-X_sessions.tsv}`` (those that exist and parse)."""
    out = {}
    for sub in subjects:
        table = read_tsv(Path(bids_dir) / sub / f"{sub}_sessions.tsv")
        if table is not None and "session_id" in table.columns:
            table["session"] = table["session_id"].astype(str).str.replace(r"^ses-", "", regex=True)
            out[sub] = table.set_index("session")
    return out


def order_scans(df, metadata=None, sessions=None):
    """Add scan_order, order_by, acq_time and hours_from_first (see the module docstring).

    metadata: ``{source relpath: source sidecar dict}``; sessions: from :func:`sessions_tables`.
    """
    metadata, sessions = metadata or {}, sessions or {}
    df = df.copy()
    whens, tods = [], []
    for _, row in df.iterrows():
        table = sessions.get(row["participant_id"])
        srow = table.loc[row["session"]].to_dict() if table is not None and row["session"] in table.index else None
        when, tod = scan_datetime(metadata.get(row["source"]), srow)
        whens.append(when)
        tods.append(tod)
    df["acq_time"] = whens
    df["_tod"] = tods
    df["scan_order"] = 0
    df["order_by"] = ""
    df["hours_from_first"] = np.nan
    for sub, idx in df.groupby("participant_id").groups.items():
        part = df.loc[idx]
        if part["acq_time"].notna().all():
            keys = sorted(idx, key=lambda i: (part.at[i, "acq_time"], natural_key(part.at[i, "image"])))
            first = part["acq_time"].min()
            df.loc[idx, "hours_from_first"] = [(t - first).total_seconds() / 3600 for t in part["acq_time"]]
            df.loc[idx, "order_by"] = "acquisition time"
        else:
            keys = sorted(idx, key=lambda i: (natural_key(part.at[i, "session"]), part.at[i, "_tod"],
                                              natural_key(part.at[i, "run"]), natural_key(part.at[i, "image"])))
            df.loc[idx, "order_by"] = "session label"
        for order, i in enumerate(keys, 1):
            df.at[i, "scan_order"] = order
    df["acq_time"] = [t.isoformat() if t is not None else None for t in df["acq_time"]]
    return df.drop(columns="_tod").sort_values(["participant_id", "scan_order"]).reset_index(drop=True)


# ---------------------------------------------------------------- change over time


def is_post_treatment(row, post_sessions=(), sessions=None):
    """True when the scan's session is named post-treatment (option, else sessions.tsv)."""
    post_sessions = {str(s).removeprefix("ses-") for s in post_sessions}
    if post_sessions:
        return str(row["session"]) in post_sessions
    table = (sessions or {}).get(row["participant_id"])
    if table is None or "post_treatment" not in table.columns or row["session"] not in table.index:
        return False
    return str(table.at[row["session"], "post_treatment"]).strip().lower() in _TRUE


def _pct(change, base):
    return 100.0 * change / base if base and base > 0 else float("nan")


def longitudinal(df, expansion_ml=6.0, expansion_pct=33.0, post_sessions=(), sessions=None):
    """Change table of every participant with two or more scans (df from :func:`order_scans`)."""
    rows = []
    for _, part in df.groupby("participant_id", sort=True):
        if len(part) < 2:
            continue
        part = part.sort_values("scan_order")
        part_frame = part
        post = [is_post_treatment(r, post_sessions, sessions) for _, r in part.iterrows()]
        vols = part["hemorrhage_volume_ml"].astype(float).to_numpy()
        first_post = next((k for k, p in enumerate(post) if p), None)
        reference = vols[first_post - 1] if first_post else float("nan")
        for k, (_, r) in enumerate(part.iterrows()):
            v, first = vols[k], vols[0]
            prev = vols[k - 1] if k else float("nan")
            d_first, d_prev = v - first, v - prev
            row = {c: r[c] for c in ("participant_id", "session", "acquisition", "run", "image",
                                     "scan_order", "order_by", "acq_time", "hours_from_first")}
            row.update(hemorrhage_volume_ml=v,
                       change_prev_ml=d_prev, change_prev_pct=_pct(d_prev, prev),
                       change_first_ml=d_first, change_first_pct=_pct(d_first, first),
                       post_treatment=post[k])
            grows = lambda d, base: bool(d > expansion_ml or _pct(d, base) > expansion_pct)  # noqa: E731
            row["expansion"] = grows(d_first, first) if k and not post[k] else None
            row["expansion_prev"] = grows(d_prev, prev) if k else None
            if post[k]:
                red = _pct(reference - v, reference) if reference == reference else float("nan")
                met = v <= MISTIE_RESIDUAL_ML or (red == red and red >= MISTIE_REDUCTION_PCT)
                row.update(reference_volume_ml=reference, reduction_pct=red,
                           mistie_target_met=True if met else (False if red == red else None))
            else:
                row.update(reference_volume_ml=float("nan"), reduction_pct=float("nan"), mistie_target_met=None)
            for part, column in (("ivh", "intraventricular_volume_ml"), ("parenchymal", "parenchymal_volume_ml"),
                                 ("edema", "edema_volume_ml")):
                series = pd.to_numeric(part_df_col(part_frame, column), errors="coerce").to_numpy(float)
                row[column] = series[k]
                row[f"{part}_change_prev_ml"] = series[k] - series[k - 1] if k else float("nan")
                row[f"{part}_change_first_ml"] = series[k] - series[0]
            row["qc_flags"] = r.get("qc_flags", "")
            rows.append(row)
    columns = ["participant_id", "session", "acquisition", "run", "image", "scan_order", "order_by",
               "acq_time", "hours_from_first", "hemorrhage_volume_ml", "change_prev_ml", "change_prev_pct",
               "change_first_ml", "change_first_pct", "expansion", "expansion_prev", "post_treatment",
               "reference_volume_ml", "reduction_pct", "mistie_target_met",
               "intraventricular_volume_ml", "ivh_change_prev_ml", "ivh_change_first_ml",
               "parenchymal_volume_ml", "parenchymal_change_prev_ml", "parenchymal_change_first_ml",
               "edema_volume_ml", "edema_change_prev_ml", "edema_change_first_ml", "qc_flags"]
    return pd.DataFrame(rows, columns=columns)


def part_df_col(frame, column):
    """A column of the frame, or missing values when older outputs lack it."""
    return frame[column] if column in frame.columns else pd.Series([float("nan")] * len(frame), index=frame.index)


# ---------------------------------------------------------------- completeness


def missing_outputs(expected, df, reasons=None):
    """Expected source images (relpaths) without outputs, as a DataFrame with a reason
    (``reasons``: relpath -> why, e.g. the recorded failure of its last run)."""
    done = set(df["source"]) if len(df) else set()
    have_subject = set(df["participant_id"]) if len(df) else set()
    reasons = reasons or {}
    rows = []
    for relpath in expected:
        if relpath in done:
            continue
        sub = Path(relpath).parts[0]
        rows.append({"participant_id": sub, "source": relpath,
                     "reason": reasons.get(relpath) or ("no outputs for this image" if sub in have_subject
                                                        else "no outputs for this participant")})
    return pd.DataFrame(rows, columns=["participant_id", "source", "reason"])


def current_outputs(df, out_dir, in_dataset, problems):
    """Keep the outputs whose source is in the BIDS dataset and whose last run succeeded.

    Returns (kept, reasons): ``reasons`` maps a source whose last run failed to why, so that
    missing.tsv says it; the stale outputs of such a run are listed in ``problems``.
    """
    from .preflight import read_failure

    reasons, keep = {}, []
    for source, derivative, when in zip(df["source"], df["derivative"], df["date_processed"]):
        if source not in in_dataset:
            problems.append({"file": derivative, "problem": f"its source {source or '(unknown)'} is not among "
                             "the CT images of the BIDS dataset (removed, renamed or not selected); not counted."})
            keep.append(False)
            continue
        failure = read_failure(out_dir, source)
        keep.append(failure is None)
        if failure is not None:
            problems.append({"file": derivative, "problem": f"stale: the last run of {source} failed "
                             f"({failure.get('Date', '?')}); these outputs of {when} are not counted."})
    for source in in_dataset:
        failure = read_failure(out_dir, source)
        if failure is not None:
            reasons[source] = f"last run failed ({failure.get('Date', '?')}): {failure.get('Reason', '?')}"
    return df[keep] if len(df) else df, reasons


# ---------------------------------------------------------------- writing


def write_tsv(df, path, descriptions=None):
    """Atomic TSV ('n/a' for missing) and, given descriptions, its JSON data dictionary."""
    path = write_tsv_atomic(df, path)
    if descriptions:
        write_json_atomic({c: {"Description": descriptions[c]} for c in df.columns if c in descriptions},
                          path.with_suffix(".json"))
    return path


# ---------------------------------------------------------------- the group level


def _expected_images(config, problems):
    """Source CT images the participant level would process, and their sidecars."""
    from .bids import collect_ct
    from .kernels import select_series

    try:
        images = collect_ct(config.bids_dir, config.participant_label, config.session_label,
                            config.bids_filters)
    except InputError as err:
        problems.append({"file": str(config.bids_dir), "problem": str(err)})
        return [], {}, set()
    everything = {i["relpath"] for i in images}
    images, _ = select_series(images, config.kernels)
    return [i["relpath"] for i in images], {i["relpath"]: i.get("metadata", {}) for i in images}, everything


def run_group(config, log=print):
    """Write every group output into ``<output_dir>/group``; returns a dict of what was written."""
    from . import qc as QC
    from .bids import strip_label
    from .reports import plots as P
    from .reports.summary import write_group_report

    out_dir = Path(config.output_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: no such folder; run the participant level first.")
    try:
        QC.check_thresholds(config.qc_thresholds)
    except ValueError as err:
        raise InputError(f"--qc-thresholds: {err}") from err
    df, problems = collect_outputs(out_dir, config.qc_thresholds)
    if config.participant_label:
        wanted = {"sub-" + strip_label(p, "sub-") for p in config.participant_label}
        df = df[df["participant_id"].isin(wanted)]
    if config.session_label:
        df = df[df["session"].isin({strip_label(s, "ses-") for s in config.session_label})]
    expected, metadata, in_dataset = _expected_images(config, problems)
    df, reasons = current_outputs(df, out_dir, in_dataset, problems)
    missing = missing_outputs(expected, df, reasons)
    if df.empty:
        raise InputError(f"nothing to summarise: no hemorrhage outputs (*{MASK_JSON[1:]}) under {out_dir}"
                         + (f"; {len(missing)} CT image(s) of the dataset have none" if len(missing) else "")
                         + ". Run the participant level first.")
    sessions = sessions_tables(config.bids_dir, sorted(df["participant_id"].unique()))
    df = order_scans(df, metadata, sessions)
    df = add_participants(df, Path(config.bids_dir) / "participants.tsv", problems)
    df = add_ich_score(df, sessions)
    unknown = [c for c in config.group_by if c not in df.columns]
    if unknown:
        tsv = [f"{p['file']}: {p['problem']}" for p in problems if p["file"].endswith("participants.tsv")]
        raise InputError(f"--group-by {' '.join(unknown)}: no such column in participants.tsv or the volume "
                         f"table; available: {', '.join(c for c in df.columns if c not in ('report', 'derivative'))}."
                         + "".join(f"\n  {t}" for t in tsv))
    gdir = out_dir / "group"
    gdir.mkdir(parents=True, exist_ok=True)
    files = {}
    volumes = df.drop(columns=["report", "derivative"])
    files["volumes"] = write_tsv(volumes, gdir / "volumes.tsv", {**VOLUME_COLUMNS, **LONGITUDINAL_COLUMNS})
    summary = volume_summary(df, config.group_by)
    files["summary"] = write_tsv(summary, gdir / "summary.tsv")
    long = longitudinal(df, config.expansion_ml, config.expansion_pct, config.post_treatment_sessions, sessions)
    if len(long):
        files["longitudinal"] = write_tsv(long, gdir / "longitudinal.tsv",
                                          {**VOLUME_COLUMNS, **LONGITUDINAL_COLUMNS})
    files["missing"] = write_tsv(missing, gdir / "missing.tsv")
    agreement = None
    if config.reference_masks:
        agreement = _agreement(config, out_dir, gdir, problems, log)
    figures = P.group_figures(df, long, config.group_by, gdir, agreement, log=log)
    result = clean_json({
        "n_images": int(len(df)), "n_participants": int(df["participant_id"].nunique()),
        "n_missing_images": int(len(missing)),
        "missing_participants": sorted(set(missing["participant_id"]) - set(df["participant_id"])),
        "summary": summary.to_dict(orient="records"),
        "longitudinal": {
            "participants": int(long["participant_id"].nunique()) if len(long) else 0,
            "expansion_ml": config.expansion_ml, "expansion_pct": config.expansion_pct,
            "post_treatment": (f"sessions {config.post_treatment_sessions}" if config.post_treatment_sessions
                               else "the post_treatment column of sub-X/sub-X_sessions.tsv"),
            "mistie_target": {"residual_ml": MISTIE_RESIDUAL_ML, "reduction_pct": MISTIE_REDUCTION_PCT},
            "n_expansion": int((long["expansion"] == True).sum()) if len(long) else 0,  # noqa: E712
        },
        "qc": {"thresholds": {**QC.THRESHOLDS, **config.qc_thresholds},
               "n_flagged": int((df["qc_flags"].fillna("") != "").sum())},
        "agreement": agreement,
        "problems": problems,
        "files": {k: str(Path(v).relative_to(out_dir)) for k, v in files.items()},
        "figures": {k: [str(Path(p).relative_to(out_dir)) for p in v] for k, v in figures.items()},
    })
    write_json_atomic(result, gdir / "summary.json")
    write_group_report(gdir / "index.html", df, summary, long, missing, result, figures, config)
    log(f"group: {len(df)} image(s) of {result['n_participants']} participant(s) summarised in {gdir}")
    if len(missing):
        log(f"group: {len(missing)} CT image(s) without outputs (see {gdir / 'missing.tsv'})")
    for p in problems:
        log(f"group: {p['file']}: {p['problem']}")
    return result


def _agreement(config, out_dir, gdir, problems, log):
    """The paper's agreement tables against --reference-masks (deepbleed_bids.evaluation)."""
    from .evaluation import evaluate

    try:
        result = evaluate(out_dir, config.reference_masks, gdir / "agreement",
                          participants=None, group_by=config.group_by)
    except InputError as err:
        problems.append({"file": str(config.reference_masks), "problem": str(err)})
        log(f"group: agreement not computed: {err}")
        return None
    return result
