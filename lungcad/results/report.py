"""``report.html``: a summary table, one section per patient with its crops, the failed scans.

It opens from disk with no server: the images are relative ``crops/...`` links, and every
string taken from the input files is escaped.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np

from lungcad import __version__
from lungcad.results.crops import PLANES
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
.warn{color:#a05a00}.fail{color:#b00020}.small{font-size:13px;color:#555}
"""


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

    h.append("<h2>Summary</h2>")
    if scans:
        h.append("<table><tr><th>Patient</th><th>Series</th><th>Cancer probability</th>"
                 "<th>Candidates</th><th>Top nodule prob.</th><th>Top nodule diameter (mm)</th></tr>")
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
                     f'<td class="num">{_f(top.get("diameter_mm"), ".1f")}</td></tr>')
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


def _scan_section(d: dict[str, Any], *, root: Path | None, top_n: int) -> list[str]:
    sid = d["safe_id"]
    h = [f'<h3 id="scan-{_e(sid)}">Series {_e(d["series_uid"])}</h3>',
         f'<p><b>Cancer probability: {_f(d.get("cancer_probability"))}</b>'
         f' &middot; {len(d.get("candidates") or [])} candidate(s)'
         + (f' &middot; lung volume {_f(d.get("lung_volume_ml"), ".0f")} ml' if d.get("lung_volume_ml") else "")
         + "</p>",
         f'<p class="small">Input: {_e(d.get("input_path", ""))}</p>']
    for w in d.get("warnings") or []:
        h.append(f'<p class="warn">Warning: {_e(w)}</p>')
    crops = [c for c in (d.get("crops") or []) if isinstance(c, str)]
    ranks_with_crops = set()
    for c in crops:
        m = re.match(r"^crops/[A-Za-z0-9._-]+/(\d+)_[a-z]+\.png$", c)
        if m:
            ranks_with_crops.add(int(m.group(1)))
    cands = by_probability(list(d.get("candidates") or []))
    shown = cands[:max(top_n, max(ranks_with_crops, default=-1) + 1)]
    if not shown:
        h.append("<p>No nodule candidate.</p>")
        return h
    h.append("<table><tr><th>#</th><th>x (mm)</th><th>y (mm)</th><th>z (mm)</th><th>Diameter (mm)</th>"
             "<th>Probability</th><th>Nodule prob.</th><th>Malignancy prob.</th></tr>")
    for i, c in enumerate(shown):
        cells = [_f(c.get("coordX"), ".1f"), _f(c.get("coordY"), ".1f"), _f(c.get("coordZ"), ".1f"),
                 _f(c.get("diameter_mm"), ".1f"), _f(c.get("probability")), _f(c.get("nodule_prob")),
                 _f(c.get("malignancy_prob"))]
        h.append(f"<tr><td>{i + 1}</td>" + "".join(f'<td class="num">{v}</td>' for v in cells) + "</tr>")
    h.append("</table>")
    for i, c in enumerate(shown):
        figs = []
        for plane in PLANES:
            rel = f"crops/{sid}/{i}_{plane}.png"
            if rel in crops and (root is None or (root / rel).is_file()):
                figs.append(f'<figure><img src="{_e(rel)}" alt="{_e(plane)} crop of candidate {i + 1}">'
                            f"<figcaption>{_e(plane)}</figcaption></figure>")
        if figs:
            h.append(f'<p class="small">Candidate {i + 1}: ({_f(c.get("coordX"), ".1f")}, '
                     f'{_f(c.get("coordY"), ".1f")}, {_f(c.get("coordZ"), ".1f")}) mm, '
                     f'diameter {_f(c.get("diameter_mm"), ".1f")} mm, probability {_f(c.get("probability"))}</p>')
            h.append('<div class="crops">' + "".join(figs) + "</div>")
    return h
