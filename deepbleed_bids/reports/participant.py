"""One self-contained HTML report per participant (``<output_dir>/sub-X.html``), fMRIPrep-style.

Built from the written derivatives only, so it can be (re)made at any time: every
CT of the participant with outputs on disk gets a section; CT images that failed
or were skipped in this run get one saying why. Figures are embedded (base64
PNG): the file can be sent to a reader on its own.
"""
import json
from datetime import datetime, timezone
from pathlib import Path

from .. import bids as B
from . import html as H

QC_TEXT = "QC flags: automatic checks that ask a reader to look, not verdicts"


def participant_entries(out_dir, subject, failures=(), skipped=()):
    """``{source relpath: {"sidecar": path|None, "status": ..., "reason": ...}}`` for one participant."""
    out_dir = Path(out_dir)
    sub = "sub-" + B.strip_label(subject, "sub-")
    entries = {}
    from ..derivatives import find_outputs

    for found in find_outputs(out_dir, subject=sub):
        path = found.sidecar
        if path is None:
            continue
        if found.error:
            entries[str(path.relative_to(out_dir))] = {"sidecar": None, "status": "failed",
                                                       "reason": f"unreadable sidecar {path.name}: {found.error}"}
            continue
        entries[found.source] = {"sidecar": path, "meta": found.meta, "status": "ok", "reason": ""}
    for status, items in (("failed", failures), ("skipped", skipped)):
        for relpath, reason in items:
            if Path(relpath).parts[0] != sub:
                continue
            entry = entries.setdefault(relpath, {"sidecar": None, "meta": None})
            entry.update(status=status, reason=reason)
    return dict(sorted(entries.items()))


# the derivatives (plan_outputs keys) the figures show
SHOWN = ("brain_mask", "hemorrhage_mask", "hemorrhage_probseg", "hemorrhage_dseg", "edema_mask",
         "atlas_dseg", "preproc_template")


# the order files are read in: the first figures' first, the largest (probability) last
READ_ORDER = ("source", "brain_mask", "hemorrhage_mask", "preproc_template", "template", "atlas_dseg",
              "edema_mask", "hemorrhage_dseg", "hemorrhage_probseg")


def _figures(out_dir, bids_dir, relpath, meta, threads=1):
    """(html, notes) with the mosaics and the alignment check of one CT. The figures are
    drawn side by side on ``threads`` threads (numpy, scipy and Pillow's PNG encoder release
    the GIL for most of the work); the HTML is the same whatever their number."""
    from concurrent.futures import ThreadPoolExecutor

    import nibabel as nib

    from .. import qc as QC
    from ..derivatives import plan_outputs
    from . import figures as F

    files = plan_outputs(out_dir, relpath)
    parts, notes = [], []
    source = Path(bids_dir) / relpath if bids_dir else None
    template = Path((meta.get("Template") or {}).get("Path") or "")
    # every file a figure shows (and no other), read and decompressed once, side by side;
    # each figure starts as soon as the files it shows are in (the probability map is last)
    with ThreadPoolExecutor(4) as reader, ThreadPoolExecutor(max(1, int(threads))) as pool:
        paths = {**{k: files[k] for k in SHOWN}, "source": source, "template": template}
        imgs = _read({k: paths[k] for k in READ_ORDER}, reader)
        jobs = {}
        if "template" in imgs and "preproc_template" in imgs:
            jobs["alignment"] = pool.submit(lambda: F.alignment_figure(imgs["preproc_template"].result(),
                                                                       imgs["template"].result()))
        if "source" in imgs:
            ct_img = nib.as_closest_canonical(imgs["source"].result())
            ct, zooms = F.canonical(ct_img)
            ct_img = nib.Nifti1Image(ct, ct_img.affine, ct_img.header)
            brain, _ = F.canonical(imgs["brain_mask"].result())
            bleed, _ = F.canonical(imgs["hemorrhage_mask"].result())
            jobs.update({
                "overview": pool.submit(F.overview_mosaic, ct, brain, bleed, zooms),
                "detail": pool.submit(lambda: F.detail_mosaic(ct, brain, bleed, zooms,
                                                              QC.abc2(bleed > 0, ct_img.affine))),
                "skull_base": pool.submit(F.skull_base_figure, ct, brain, zooms),
                "trial": pool.submit(_trial_figure, imgs, ct_img, bleed, meta, relpath),
                "split": pool.submit(_split_figure, imgs, ct, zooms, relpath)})
        fig = {k: job.result() for k, job in jobs.items()}
    if "source" in imgs:
        parts.append("<h3>Native space: whole brain</h3><p class='legend'>axial, radiological (R on the left), "
                     "0-80 HU<span style='background:#00d5ff'></span>brain mask"
                     "<span style='background:#ff2a2a'></span>hemorrhage</p>")
        parts.append(H.embedded_png(fig["overview"], f"{relpath} overview"))
        if fig["skull_base"] is not None:
            parts.append("<h3>Native space: brain mask at the skull base</h3><p class='legend'>-40 to 400 HU "
                         "so bone shows; the<span style='background:#00d5ff'></span>brain mask must stay off "
                         "the skull base, petrous bones and their streaks</p>")
            parts.append(H.embedded_png(fig["skull_base"], f"{relpath} skull base"))
        if fig["detail"] is not None:
            parts.append("<h3>Native space: every hemorrhage slice</h3><p class='legend'>outline only, so the "
                         "density under the edge shows<span style='background:#7CFC00'></span>A"
                         "<span style='background:#ffa500'></span>B (ABC/2, slice of largest area)</p>")
            parts.append(H.embedded_png(fig["detail"], f"{relpath} hemorrhage slices"))
        else:
            parts.append("<p>No hemorrhage segmented.</p>")
        parts.extend(fig[k] for k in ("split", "trial") if fig[k])
    else:
        notes.append(f"source CT {relpath} not found in the BIDS dataset: native-space figures omitted")
    if "alignment" in fig:
        parts.append("<h3>Alignment to the DeepBleed template</h3><p class='legend'>the network input "
                     "(registered brain) with the template's<span style='background:#ffd000'></span>brain edge"
                     "<span style='background:#ff4fd8'></span>CSF edges</p>")
        parts.append(H.embedded_png(fig["alignment"], f"{relpath} alignment"))
    else:
        notes.append("template or registered image not found: alignment check omitted")
    return "\n".join(parts), notes


def _read(paths, pool):
    """{key: future image in memory} of the ``paths`` that are files (others left out), read
    on ``pool``'s threads: zlib inflates without the GIL, so two cores read two files at once."""
    import nibabel as nib
    import numpy as np

    def read(path):
        img = nib.load(str(path))
        return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)

    found = {k: p for k, p in paths.items() if p and str(p).endswith((".nii", ".nii.gz")) and Path(p).is_file()}
    return {k: pool.submit(read, p) for k, p in found.items()}


def _split_figure(imgs, ct, zooms, relpath):
    """The IVH / parenchymal split outlined over the uncertainty map (probability 0.2-0.8)."""
    from . import figures as F

    if not ("hemorrhage_dseg" in imgs and "hemorrhage_probseg" in imgs):
        return ""
    dseg, _ = F.canonical(imgs["hemorrhage_dseg"].result())
    prob, _ = F.canonical(imgs["hemorrhage_probseg"].result())
    png = F.split_uncertainty_mosaic(ct, dseg, prob, zooms)
    if png is None:
        return ""
    return ("<h3>Intraventricular / parenchymal split and uncertainty</h3><p class='legend'>"
            f"<span style='background:{F.BLEED_COLOR}'></span>parenchymal (ICH)"
            f"<span style='background:{F.IVH_COLOR}'></span>intraventricular (IVH): an estimate from "
            "anatomy, not from IVH labels; filled: uncertainty map, voxels of probability 0.2-0.8 "
            "(yellow: 0.5)</p>" + H.embedded_png(png, f"{relpath} split and uncertainty"))


def _trial_figure(imgs, ct_img, bleed, meta, relpath):
    """Location (atlas regions by class), edema outline and midline (deepbleed_bids.trial)."""
    from ..atlas import atlas_labels
    from ..location import region_class
    from . import figures as F

    if "atlas_dseg" not in imgs:
        return ""
    classes = {i: region_class(n) for i, n in atlas_labels().items()}
    measure = meta.get("MidlineShiftMeasurement") or {}
    msp = measure.get("MidSagittalPlane") or {}
    plane = (msp["Normal"], msp["Offset"]) if msp.get("Normal") else None
    edema = imgs["edema_mask"].result() if "edema_mask" in imgs else None
    png = F.trial_mosaic(ct_img, imgs["atlas_dseg"].result(), bleed, edema, classes, plane,
                         measure.get("MidlineShiftSigned"))
    if png is None:
        return ""
    legend = "".join(f"<span style='background:{c}'></span>{k}" for k, c in F.CLASS_COLORS.items())
    text = (f"location {meta.get('LocationClass')} (largest share: {meta.get('LargestRegion')}); "
            f"edema {meta.get('EdemaVolume')} mL (relative {meta.get('RelativeEdema')}); midline shift "
            f"{meta.get('MidlineShift')} mm {meta.get('MidlineShiftDirection') or ''}; ICH score "
            f"{(meta.get('ICHScore') or {}).get('Total', 'n/a')} (imaging points "
            f"{(meta.get('ICHScore') or {}).get('ImagingPoints')})")
    return ("<h3>Location, perihematomal edema, midline shift (estimates)</h3><p class='legend'>atlas regions "
            f"by class {legend}<span style='background:{F.BLEED_COLOR}'></span>hemorrhage"
            f"<span style='background:{F.EDEMA_COLOR}'></span>edema (estimate)"
            f"<span style='background:{F.MIDLINE_COLORS[0]}'></span>skull mid-sagittal plane"
            f"<span style='background:{F.MIDLINE_COLORS[1]}'></span>through the septum</p><p>{text}</p>"
            + H.embedded_png(png, f"{relpath} location, edema, midline"))


def _uncertainty_text(meta):
    unc = meta.get("Uncertainty") or {}
    if not unc:
        return "not computed"
    text = f"{H.fmt(unc.get('UncertainVolume'), 1, ' mL')} of probability 0.2-0.8"
    if unc.get("Passes", 1) > 1:
        lo, hi = unc.get("VolumeInterval") or [None, None]
        text += (f"; {unc['Passes']} passes ({H.esc(unc.get('TTA'))}): volume {H.fmt(lo, 1)}-{H.fmt(hi, 1)} mL, "
                 f"smallest pass Dice {H.fmt(unc.get('PassDice'), 2)}")
    else:
        text += f"; one pass (--tta {H.esc(unc.get('TTA'))}): no interval"
    if unc.get("CalibrationInterval"):
        lo, hi = unc["CalibrationInterval"]
        text += f"; with the brain's HU shifted by -/+{H.fmt(unc.get('CalibrationShiftHU'), 0)}: {H.fmt(lo, 1)}-{H.fmt(hi, 1)} mL"
    return text


def _summary(meta):
    qc = meta.get("QC") or {}
    m = qc.get("Metrics") or {}
    abc = m.get("ABC2") or {}
    flags = qc.get("Flags") or {}
    status = ("<span class='ok'>no flags</span>" if qc and not flags else
              f"<span class='bad'>{len(flags)} flag(s)</span>" if flags else "not computed")
    return H.kv_table([
        ("Hemorrhage volume (network)", H.fmt(meta.get("HemorrhageVolume"), 2, " mL")),
        ("Intraventricular / parenchymal (estimate)",
         f"{H.fmt(meta.get('IntraventricularVolume'), 2, ' mL')} / {H.fmt(meta.get('ParenchymalVolume'), 2, ' mL')}"
         + (f" ({H.esc(caution)})" if (caution := (meta.get("HemorrhageSplit") or {}).get("Caution")) else "")
         if meta.get("IntraventricularVolume") is not None else "not computed"),
        ("Uncertainty", _uncertainty_text(meta)),
        ("ABC/2", H.fmt(m.get("ABC2Volume"), 1, " mL") + (
            f" (A {H.fmt(abc.get('A'), 0)} x B {H.fmt(abc.get('B'), 0)} x C {H.fmt(abc.get('C'), 0)} mm / 2)"
            if abc.get("A") else "")),
        ("Hyperdensity estimate (classical)", H.fmt(m.get("HyperdensityVolume"), 1, " mL")),
        ("Brain volume", H.fmt(meta.get("BrainVolume"), 0, " mL")),
        ("Registration similarity / brain overlap",
         f"{H.fmt(m.get('RegistrationSimilarity'), 2)} / {H.fmt(m.get('TemplateOverlap'), 2)}"),
        ("Quality control", status),
    ])


def _provenance(meta, out_dir, relpath):
    from ..derivatives import plan_outputs

    model = meta.get("Model") or {}
    tpl = meta.get("Template") or {}
    files = plan_outputs(out_dir, relpath)
    links = " ".join(f'<a href="{H.esc(Path(p).relative_to(out_dir))}">{H.esc(k)}</a>'
                     for k, p in files.items() if Path(p).exists())
    rows = [("Model", f"{H.esc(model.get('Name'))} ({H.esc(model.get('Format'))}, license "
                      f"{H.esc(model.get('License') or 'n/a')})"),
            ("Weights sha256", f"<code>{H.esc(model.get('WeightsSHA256'))}</code>"),
            ("Template", f"{H.esc(tpl.get('Name'))} <code>{H.esc(tpl.get('SHA256'))}</code>"),
            ("Parameters", f"<code>{H.esc(json.dumps(meta.get('Parameters', {})))}</code>"),
            ("Software", H.esc(", ".join(f"{k} {v}" for k, v in (meta.get("Software") or meta.get("SoftwareVersions") or {}).items()))),
            ("Timings (s)", H.esc(", ".join(f"{k} {v}" for k, v in (meta.get("Timings") or {}).items()))),
            ("Processed", H.esc(meta.get("DateProcessed"))),
            ("Files", links)]
    return "<details open><summary>Provenance</summary>" + H.kv_table(rows) + "</details>"


def _last_run_crashes(log_dir):
    """Crash files of the newest run (``log/<run-id>/``; run ids sort by time)."""
    runs = sorted(p for p in Path(log_dir).glob("*") if p.is_dir() and any(p.glob("crash-*")))
    return sorted(runs[-1].glob("crash-*")) if runs else []


def _methods(out_dir):
    """The methods boilerplate of the last run (logs/CITATION.html)."""
    from ..boilerplate import methods_html

    text = methods_html(out_dir)
    if not text:
        return ""
    return ("<h2 id='methods'>Methods</h2><details open><summary>Boilerplate for your manuscript "
            "(also in logs/CITATION.md and logs/CITATION.bib)</summary>" + text + "</details>")


def _section(out_dir, bids_dir, relpath, entry, threads=1):
    anchor = B.source_prefix(relpath)
    meta, status = entry.get("meta"), entry["status"]
    badge = {"ok": "<span class='ok'>processed</span>", "failed": "<span class='bad'>FAILED</span>",
             "skipped": "<span class='warn'>skipped</span>"}[status]
    out = [f"<h2 id='{H.esc(anchor)}'>{H.esc(relpath)} {badge}</h2>"]
    if status != "ok":
        out.append(f"<div class='flag'>{H.esc(entry.get('reason'))}</div>")
        logs = _last_run_crashes(Path(out_dir) / Path(relpath).parts[0] / "log")
        if status == "failed" and logs:
            out.append("<p>Crash logs: " + " ".join(
                f"<a href='{H.esc(p.relative_to(out_dir))}'>{H.esc(p.name)}</a>" for p in logs) + "</p>")
        if meta:
            out.append(f"<div class='note'>The outputs below are from an earlier run "
                       f"({H.esc(meta.get('DateProcessed'))}).</div>")
    if not meta:
        return "\n".join(out)
    out.append(_summary(meta))
    qc = meta.get("QC") or {}
    for name, why in (qc.get("Flags") or {}).items():
        out.append(f"<div class='flag'><b>{H.esc(name)}</b>: {H.esc(why)}</div>")
    for warning in meta.get("Warnings") or []:
        out.append(f"<div class='note'>warning: {H.esc(warning)}</div>")
    try:
        figs, notes = _figures(out_dir, bids_dir, relpath, meta, threads)
    except Exception as err:  # noqa: BLE001  a broken file must not cost the other images their report
        figs, notes = "", [f"figures could not be made: {err}"]
    out += [f"<div class='note'>{H.esc(n)}</div>" for n in notes]
    out.append(figs)
    out.append(_provenance(meta, Path(out_dir), relpath))
    return "\n".join(out)


def write_participant_report(out_dir, bids_dir, subject, failures=(), skipped=(), threads=1):
    """Write ``<out_dir>/sub-X.html``; returns its path (None when the participant has nothing).
    ``threads``: figures drawn side by side (the same HTML whatever their number)."""
    out_dir = Path(out_dir)
    sub = "sub-" + B.strip_label(subject, "sub-")
    entries = participant_entries(out_dir, sub, failures, skipped)
    if not entries:
        return None
    sections, nav = [], [("summary", "Summary")]
    rows = []
    for relpath, entry in entries.items():
        anchor = B.source_prefix(relpath)
        nav.append((anchor, anchor.replace(sub + "_", "") or anchor))
        meta = entry.get("meta") or {}
        flags = (meta.get("QC") or {}).get("Flags") or {}
        rows.append([f"<a href='#{H.esc(anchor)}'>{H.esc(relpath)}</a>", H.esc(entry["status"]),
                     H.fmt(meta.get("HemorrhageVolume"), 2) if meta else "n/a",
                     (f"{H.fmt(meta.get('IntraventricularVolume'), 2)} / {H.fmt(meta.get('ParenchymalVolume'), 2)}"
                      if meta.get("IntraventricularVolume") is not None else "n/a"),
                     H.fmt(((meta.get("QC") or {}).get("Metrics") or {}).get("ABC2Volume"), 1) if meta else "n/a",
                     "<span class='bad'>" + H.esc(", ".join(flags)) + "</span>" if flags else
                     ("<span class='ok'>none</span>" if meta.get("QC") else "n/a")])
        sections.append(_section(out_dir, bids_dir, relpath, entry, threads))
    head = (f"<h1 id='summary'>deepbleed-bids report: {H.esc(sub)}</h1>"
            f"<p>Intracerebral hemorrhage (ICH + IVH) segmented with the DeepBleed VNet. {QC_TEXT}. "
            f"Not for clinical use. Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>"
            + H.table(rows, ["CT", "status", "hemorrhage (mL)", "IVH / parenchymal (mL, estimate)",
                             "ABC/2 (mL)", "QC flags"]))
    methods = _methods(out_dir)
    if methods:
        nav.append(("methods", "Methods"))
        sections.append(methods)
    return H.write_atomic(H.page(f"{sub} - deepbleed-bids", nav, head + "\n".join(sections)),
                          out_dir / f"{sub}.html")
