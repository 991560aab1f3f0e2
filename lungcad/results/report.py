"""``report.html``: a summary table, one section per patient with its nodules, the failed scans.

Each scan's section lists the nodules shown (:func:`lungcad.results.crops.shown_candidates`:
the reported nodules, or the top candidates when none is reported) in a table with their
measurements, type and research-only category, then one block per nodule: an overview axial
slice of the whole chest with the nodule circled and labelled, its three crops, and its
measurements.  It opens from disk with no server: the images are relative ``crops/...`` links,
and every string taken from the input files is escaped.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from lungcad import __version__
from lungcad.results.crops import PLANES, shown_candidates
from lungcad.results.tables import by_probability, escape_controls, number, number_or


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
section.patient{border-top:2px solid #888;margin-top:2em;padding-top:0.5em}
.crops{display:flex;gap:6px;flex-wrap:wrap;margin:0.3em 0 1em}
.crops figure{margin:0}
.crops img{width:192px;height:192px;image-rendering:auto;background:#000}
.crops figcaption{font-size:12px;color:#555;text-align:center}
.crops img.overview{width:384px;height:384px}
section.nodule{margin:0.8em 0 1.4em;padding-left:0.6em;border-left:3px solid #c33}
.research{background:#fff4d6;border:1px solid #e0b84c;padding:4px 8px;font-size:13px}
.warn{color:#a05a00}.fail{color:#b00020}.small{font-size:13px;color:#555}
"""

#: The research-only wording of every Lung-RADS-style category the report shows.
RESEARCH_NOTE = ("The category follows the baseline-screening categories of Lung-RADS v2022 from size "
                 "and type, computed by software: research only, not a clinical reading.")
#: Nodule columns of the patient's table: (column, header, format); shown when any row has one.
NODULE_COLUMNS = (
    ("coordX", "x (mm)", ".1f"), ("coordY", "y (mm)", ".1f"), ("coordZ", "z (mm)", ".1f"),
    ("probability", "Probability", ".3f"), ("malignancy_prob", "Malignancy prob.", ".3f"),
    ("diameter_mm", "Diameter (mm)", ".1f"), ("long_axis_mm", "Long axis (mm)", ".1f"),
    ("short_axis_mm", "Short axis (mm)", ".1f"), ("mean_axis_mm", "Mean axis (mm)", ".1f"),
    ("volume_mm3", "Volume (mm&sup3;)", ".0f"), ("nodule_type", "Type", None),
    ("solid_component_mm", "Solid component (mm)", ".1f"),
    ("lungrads_research", "Category (research only)", None),
)
#: Columns that describe a reported nodule only (M's measurements): not shown for the others.
_MEASURED = {"long_axis_mm", "short_axis_mm", "mean_axis_mm", "volume_mm3", "nodule_type",
             "solid_component_mm", "lungrads_research"}
_ALWAYS = {"coordX", "coordY", "coordZ", "probability", "diameter_mm"}


def _e(v) -> str:
    """Escape anything taken from input files for HTML (text and attribute values)."""
    return html.escape(escape_controls("" if v is None else str(v)), quote=True)


def _f(v, fmt: str = ".3f", none: str = "") -> str:
    x = number(v)
    return none if np.isnan(x) else format(x, fmt)


def render_report(scans: list[dict[str, Any]], errors: list[dict[str, Any]], *, root: Path | None = None,
                  top_n: int = 3) -> str:
    """The HTML report: a summary table, one section per patient, and the failed scans.

    Every string from the scans (PatientID, UIDs, paths, messages) is escaped, and the
    images are relative ``crops/...`` links, so the file opens from disk with no server.
    """
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for d in sorted(scans, key=lambda d: (str(d["patient_id"]), str(d["series_uid"]), d["safe_id"])):
        by_patient.setdefault(str(d["patient_id"]), []).append(d)
    anchors = {pid: f"patient-{i}" for i, pid in enumerate(by_patient)}
    n_cands = sum(len(d.get("candidates") or []) for d in scans)
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width,initial-scale=1">',
         "<title>lungcad report</title>", f"<style>{_CSS}</style></head><body>",
         "<h1>lungcad report</h1>",
         f'<p class="small">{len(by_patient)} patient(s), {len(scans)} scan(s) done, '
         f"{len(errors)} failed, {n_cands} candidate(s). lungcad {_e(__version__)}. "
         "Research software: not a medical device.</p>"]
    with_reported = any(isinstance(d.get("reported"), dict) and d["reported"] for d in scans)
    if with_reported or any(_text(c.get("lungrads_research")) for d in scans for c in d.get("candidates") or []):
        h.append(f'<p class="research">{_e(RESEARCH_NOTE)}</p>')

    h.append("<h2>Summary</h2>")
    if scans:
        h.append("<table><tr><th>Patient</th><th>Series</th><th>Cancer probability</th>"
                 "<th>Candidates</th><th>Top nodule prob.</th><th>Top nodule diameter (mm)</th>"
                 + ("<th>Reported nodules</th><th>Category (research only)</th>" if with_reported else "")
                 + "</tr>")
        summary = sorted(scans, key=lambda d: (-number_or(d.get("cancer_probability"), -1.0),
                                               str(d["patient_id"]), str(d["series_uid"])))
        for d in summary:
            cands = by_probability(list(d.get("candidates") or []))
            top = cands[0] if cands else {}
            nod = top.get("nodule_prob", top.get("probability"))
            h.append(f'<tr><td><a href="#{anchors[str(d["patient_id"])]}">{_e(d["patient_id"])}</a></td>'
                     f'<td><a href="#scan-{_e(d["safe_id"])}">{_e(d["series_uid"])}</a></td>'
                     f'<td class="num">{_f(d.get("cancer_probability"))}</td>'
                     f'<td class="num">{len(cands)}</td><td class="num">{_f(nod)}</td>'
                     f'<td class="num">{_f(top.get("diameter_mm"), ".1f")}</td>'
                     + (_reported_cells(d) if with_reported else "") + "</tr>")
        h.append("</table>")
    else:
        h.append("<p>No scan was done.</p>")

    if errors:
        h.append(f'<h2 class="fail">Failed scans ({len(errors)})</h2>')
        h.append("<table><tr><th>Path</th><th>Stage</th><th>Message</th><th>Patient</th><th>Series</th></tr>")
        for e in errors:
            h.append(f"<tr><td>{_e(e['path'])}</td><td>{_e(e['stage'])}</td><td>{_e(e['message'])}</td>"
                     f"<td>{_e(e['patient_id'])}</td><td>{_e(e['seriesuid'])}</td></tr>")
        h.append("</table>")

    for pid, group in by_patient.items():
        h.append(f'<section class="patient" id="{anchors[pid]}"><h2>Patient {_e(pid)}</h2>')
        for d in group:
            h.extend(_scan_section(d, root=root, top_n=top_n))
        h.append("</section>")
    h.append("</body></html>")
    return "\n".join(h) + "\n"




def _text(v) -> str:
    """A text cell's value ('' for None, NaN and numbers' absence)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v)


def _cell(c: dict[str, Any], col: str, fmt: str | None) -> str:
    if fmt is None:
        return f"<td>{_e(_text(c.get(col)))}</td>"
    return f'<td class="num">{_f(c.get(col), fmt)}</td>'


def _reported_cells(d: dict[str, Any]) -> str:
    rep = d.get("reported") if isinstance(d.get("reported"), dict) else {}
    n = rep.get("n")
    return (f'<td class="num">{_e(n) if isinstance(n, int) else ""}</td>'
            f"<td>{_e(_text(rep.get('lungrads_research')))}</td>")


def _is_reported(c: dict[str, Any]) -> bool:
    return not np.isnan(number(c.get("nodule_id")))


def _label(c: dict[str, Any], i: int) -> str:
    return f"Nodule {int(number(c['nodule_id']))}" if _is_reported(c) else f"Candidate {i + 1}"


def _measurements(c: dict[str, Any]) -> str:
    """One line of a nodule's measurements, type and category (those it has)."""
    parts = [f"({_f(c.get('coordX'), '.1f')}, {_f(c.get('coordY'), '.1f')}, {_f(c.get('coordZ'), '.1f')}) mm",
             f"probability {_f(c.get('probability'))}"]
    for col, name, fmt, unit in (("malignancy_prob", "malignancy probability", ".3f", ""),
                                 ("long_axis_mm", "long axis", ".1f", " mm"),
                                 ("short_axis_mm", "short axis", ".1f", " mm"),
                                 ("mean_axis_mm", "mean axis", ".1f", " mm"),
                                 ("volume_mm3", "volume", ".0f", " mm&sup3;"),
                                 ("solid_component_mm", "solid component", ".1f", " mm")):
        if col in _MEASURED and not _is_reported(c):
            continue
        v = _f(c.get(col), fmt)
        if v:
            parts.append(f"{name} {v}{unit}")
    if not _f(c.get("long_axis_mm")):
        d = _f(c.get("diameter_mm"), ".1f")
        if d:
            parts.append(f"diameter {d} mm")
    if _text(c.get("nodule_type")):
        parts.append(f"type {_e(c['nodule_type'])}")
    if _text(c.get("lungrads_research")):
        parts.append(f"category {_e(c['lungrads_research'])} (Lung-RADS v2022 style; research only, "
                     "not a clinical reading)")
    return ", ".join(parts)


def _scan_section(d: dict[str, Any], *, root: Path | None, top_n: int) -> list[str]:
    sid = d["safe_id"]
    h = [f'<h3 id="scan-{_e(sid)}">Series {_e(d["series_uid"])}</h3>',
         f'<p><b>Cancer probability: {_f(d.get("cancer_probability"))}</b>'
         f' &middot; {len(d.get("candidates") or [])} candidate(s)'
         + (f' &middot; lung volume {_f(d.get("lung_volume_ml"), ".0f")} ml' if d.get("lung_volume_ml") else "")
         + "</p>",
         f'<p class="small">Input: {_e(d.get("input_path", ""))}</p>']
    rep = d.get("reported") if isinstance(d.get("reported"), dict) else None
    if rep:
        crit = rep.get("criteria") if isinstance(rep.get("criteria"), dict) else {}
        rule = ", ".join(f"{_e(k)} {_e(v)}" for k, v in crit.items())
        cat = _text(rep.get("lungrads_research"))
        h.append(f"<p>Reported nodules: {_e(rep.get('n', ''))}" + (f" ({rule})" if rule else "")
                 + (f" &middot; category of the scan: <b>{_e(cat)}</b> (research only, not a clinical reading)"
                    if cat else "") + "</p>")
    for w in d.get("warnings") or []:
        h.append(f'<p class="warn">Warning: {_e(w)}</p>')
    for kind, note in sorted(((d.get("meta") or {}).get("outputs") or {}).items()):
        if isinstance(note, str) and not note.startswith("written"):
            h.append(f'<p class="small">{_e(kind)}: {_e(note)}</p>')
    crops = {c for c in (d.get("crops") or []) if isinstance(c, str)}
    cands = list(d.get("candidates") or [])
    shown = shown_candidates(cands, top_n)
    if not shown:
        h.append("<p>No nodule candidate.</p>")
        return h
    if not any(_is_reported(c) for c in shown):
        h.append(f'<p class="small">No nodule reported; the {len(shown)} most probable candidate(s):</p>')
    cols = [(col, head, fmt) for col, head, fmt in NODULE_COLUMNS
            if col in _ALWAYS or any(_text(c.get(col)) and (col not in _MEASURED or _is_reported(c)) for c in shown)]
    h.append("<table><tr><th>Nodule</th>" + "".join(f"<th>{head}</th>" for _, head, _ in cols) + "</tr>")
    for i, c in enumerate(shown):
        cells = "".join(_cell(c, col, fmt) if col not in _MEASURED or _is_reported(c) else "<td></td>"
                        for col, _, fmt in cols)
        h.append(f'<tr><td><a href="#scan-{_e(sid)}-{i}">{_e(_label(c, i))}</a></td>{cells}</tr>')
    h.append("</table>")
    for i, c in enumerate(shown):
        figs = []
        for plane in ("overview", *PLANES):
            rel = f"crops/{sid}/{i}_{plane}.png"
            if rel in crops and (root is None or (root / rel).is_file()):
                cls = ' class="overview"' if plane == "overview" else ""
                figs.append(f'<figure><img{cls} src="{_e(rel)}" alt="{_e(plane)} of {_e(_label(c, i).lower())}">'
                            f"<figcaption>{_e(plane)}</figcaption></figure>")
        h.append(f'<section class="nodule" id="scan-{_e(sid)}-{i}"><h4>{_e(_label(c, i))}</h4>'
                 f'<p class="small">{_measurements(c)}</p>')
        if figs:
            h.append('<div class="crops">' + "".join(figs) + "</div>")
        h.append("</section>")
    return h
