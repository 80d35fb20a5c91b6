"""The group-level HTML page (``<output_dir>/group/index.html``): links every table, figure and report."""
from datetime import datetime, timezone
from pathlib import Path

from . import html as H


def _link(path, gdir, text=None):
    rel = Path(path).resolve().relative_to(Path(gdir).resolve().parent)
    return f"<a href='../{H.esc(rel)}'>{H.esc(text or Path(path).name)}</a>"


def _summary_table(summary):
    rows = [[H.esc(r["scope"]), H.esc(r["group_by"]), H.esc(r["group"]), H.esc(r["variable"]), str(r["n"]),
             H.fmt(r["mean"]), H.fmt(r["sd"]), H.fmt(r["median"]), f"{H.fmt(r['q1'])}-{H.fmt(r['q3'])}",
             f"{H.fmt(r['min'])}-{H.fmt(r['max'])}"]
            for r in summary.to_dict(orient="records")
            if r["variable"] in ("hemorrhage_volume_ml", "intraventricular_volume_ml", "parenchymal_volume_ml")]
    return H.table(rows, ["scope", "by", "group", "variable", "n", "mean", "SD", "median", "IQR", "range"])


def _scans_table(df):
    rows = []
    for r in df.to_dict(orient="records"):
        anchor = r["image"]
        rows.append([f"<a href='../{H.esc(r['report'])}#{H.esc(anchor)}'>{H.esc(r['image'])}</a>",
                     H.fmt(r["hemorrhage_volume_ml"], 2),
                     f"{H.fmt(r.get('volume_low_ml'))}-{H.fmt(r.get('volume_high_ml'))}",
                     f"{H.fmt(r.get('intraventricular_volume_ml'))} / {H.fmt(r.get('parenchymal_volume_ml'))}",
                     H.fmt(r["abc2_ml"]), H.fmt(r["hyperdensity_ml"]),
                     H.fmt(r["brain_volume_ml"], 0),
                     f"<span class='bad'>{H.esc(r['qc_flags'])}</span>" if r["qc_flags"] else
                     ("<span class='ok'>none</span>" if r["qc_pass"] is True else "n/a")])
    return H.table(rows, ["CT (report)", "hemorrhage (mL)", "interval (mL)", "IVH / parenchymal (mL, estimate)",
                          "ABC/2 (mL)", "hyperdensity (mL)", "brain (mL)",
                          "QC flags"])


def _long_table(long):
    def yes(v):
        return "n/a" if v is None or v != v else ("<b>yes</b>" if v else "no")

    rows = [[H.esc(r["participant_id"]), H.esc(r["session"]), str(r["scan_order"]),
             H.fmt(r["hemorrhage_volume_ml"], 2), H.fmt(r["change_prev_ml"]), H.fmt(r["change_first_ml"]),
             H.fmt(r["change_first_pct"], 0, "%"), yes(r["expansion"]), yes(r["post_treatment"]),
             H.fmt(r["reduction_pct"], 0, "%"), yes(r["mistie_target_met"]),
             H.fmt(r.get("ivh_change_prev_ml")), H.fmt(r.get("ivh_change_first_ml"))]
            for r in long.to_dict(orient="records")]
    return H.table(rows, ["participant", "session", "order", "volume (mL)", "change vs previous (mL)",
                          "change vs first (mL)", "change vs first", "expansion", "post-treatment",
                          "reduction", "MISTIE target met", "IVH change vs previous (mL, estimate)",
                          "IVH change vs first (mL, estimate)"])


def write_group_report(path, df, summary, long, missing, result, figures, config):
    gdir = Path(path).parent
    nav = [("overview", "Overview"), ("summary", "Cohort"), ("time", "Over time"), ("figures", "Figures"),
           ("scans", "CT images"), ("missing", "Missing")]
    body = ["<h1 id='overview'>deepbleed-bids: group summary</h1>",
            f"<p>{result['n_images']} CT image(s) of {result['n_participants']} participant(s); "
            f"{result['n_missing_images']} CT image(s) of the dataset without outputs. Generated "
            f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}. Not for clinical use.</p>",
            "<p>Tables: " + " ".join(_link(gdir / f, gdir) for f in
                                     ("volumes.tsv", "summary.tsv", "summary.json", "longitudinal.tsv",
                                      "missing.tsv") if (gdir / f).is_file()) + "</p>"]
    models = sorted(set(df["model"].dropna().astype(str)))
    if len(models) > 1:
        body.append(f"<div class='flag'>outputs of several models are mixed: {H.esc(', '.join(models))}</div>")
    for p in result.get("problems") or []:
        body.append(f"<div class='note'>{H.esc(p['file'])}: {H.esc(p['problem'])}</div>")
    body += ["<h2 id='summary'>Cohort summary (hemorrhage volume, mL)</h2>", _summary_table(summary)]
    agreement = result.get("agreement")
    if agreement:
        c = agreement.get("cohort") or {}
        body += ["<h3>Agreement with the reference masks</h3>", H.kv_table([
            ("scans", str(c.get("n"))), ("Dice mean (SD)", f"{H.fmt(c.get('dice_mean'), 3)} "
                                                          f"({H.fmt(c.get('dice_sd'), 3)})"),
            ("volume r", H.fmt(c.get("volume_r"), 3)), ("RMSE", H.fmt(c.get("volume_rmse_ml"), 2, " mL")),
            ("within 5 mL", H.fmt(c.get("percent_within_5ml"), 0, "%")),
            ("mean difference (network - reference)", H.fmt(c.get("volume_diff_mean_ml"), 2, " mL"))]),
            "<p>" + " ".join(_link(p, gdir) for p in (agreement.get("files") or {}).values()) + "</p>"]
    body.append("<h2 id='time'>Change over time</h2>")
    if len(long):
        lg = result["longitudinal"]
        body.append(f"<p>Expansion: growth from the first scan &gt; {lg['expansion_ml']:g} mL or &gt; "
                    f"{lg['expansion_pct']:g}%. Post-treatment scans: {H.esc(lg['post_treatment'])}; MISTIE III "
                    f"target: residual &le; {lg['mistie_target']['residual_ml']:g} mL or reduction &ge; "
                    f"{lg['mistie_target']['reduction_pct']:g}% from the last pre-treatment scan.</p>")
        body.append(_long_table(long))
    else:
        body.append("<p>No participant has more than one scan.</p>")
    body.append("<h2 id='figures'>Figures</h2>")
    for name, paths in figures.items():
        show = next((p for p in paths if str(p).endswith(".svg")), paths[0])
        rel = Path(show).resolve().relative_to(gdir.resolve()) if Path(show).resolve().is_relative_to(
            gdir.resolve()) else Path(show)
        body.append(f"<h3>{H.esc(name.replace('_', ' '))}</h3><img class='fig' style='background:#fff;"
                    f"max-width:700px' alt='{H.esc(name)}' src='{H.esc(rel)}'>"
                    + " ".join(_link(p, gdir, Path(p).suffix[1:].upper()) for p in paths))
    body += ["<h2 id='scans'>CT images</h2>", _scans_table(df), "<h2 id='missing'>Missing outputs</h2>"]
    if len(missing):
        rows = [[H.esc(r["participant_id"]), H.esc(r["source"]), H.esc(r["reason"]) + (
            f" (<a href='../{H.esc(r['participant_id'])}.html'>report</a>)"
            if (gdir.parent / f"{r['participant_id']}.html").is_file() else "")]
            for r in missing.to_dict(orient="records")]
        body.append(H.table(rows, ["participant", "CT", "why"]))
    else:
        body.append("<p>Every CT image of the dataset has outputs.</p>")
    reports = sorted(gdir.parent.glob("sub-*.html"))
    body.append("<h2>Participant reports</h2><p>" + " ".join(_link(p, gdir, p.stem) for p in reports) + "</p>")
    return H.write_atomic(H.page("deepbleed-bids group summary", nav, "\n".join(body)), path)
