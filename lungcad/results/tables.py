"""The tables of an output folder: ``candidates.csv``, ``patients.csv``, ``errors.csv``.

The same records always give the same bytes (sorted rows, one float format, ``\n`` line
ends), and every text cell is made safe to open in a spreadsheet (:func:`safe_cell`).
"""
from __future__ import annotations

import io
import math
import numbers
import re
from typing import Any

import numpy as np
import pandas as pd

from lungcad.result import table_records, table_text

#: First columns of candidates.csv: the LUNA16 submission format, then ours.
CANDIDATES_CSV_LEAD = ["seriesuid", "coordX", "coordY", "coordZ", "probability",
                       "patient_id", "diameter_mm", "nodule_prob", "malignancy_prob", "z", "y", "x"]
PATIENTS_CSV_COLUMNS = ["patient_id", "seriesuid", "cancer_probability", "n_candidates",
                        "top_nodule_prob", "top_malignancy_prob", "top_coordX", "top_coordY",
                        "top_coordZ", "top_diameter_mm", "lung_volume_ml", "input_path",
                        "n_reported", "lungrads_research"]
ERRORS_CSV_COLUMNS = ["path", "stage", "message", "patient_id", "seriesuid"]
#: printf format of every float in the CSVs (same values -> same bytes).
FLOAT_FORMAT = "%.6g"
_NUMERIC = ["coordX", "coordY", "coordZ", "probability", "diameter_mm", "nodule_prob",
            "malignancy_prob", "z", "y", "x"]


def csv_text(df: pd.DataFrame) -> str:
    """``df`` as the CSV text of lungcad's tables (no index, FLOAT_FORMAT, "\\n" line ends),
    its text made safe to open in a spreadsheet (:func:`safe_table`)."""
    buf = io.StringIO()
    safe_table(df).to_csv(buf, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return buf.getvalue()


# ----------------------------------------------------------------------------- text safe to open

#: A cell that starts with one of these is a formula to a spreadsheet (OWASP, CSV injection);
#: a leading quote is added too, so that :func:`cell_value` can undo :func:`safe_cell` exactly.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape_controls(text: str) -> str:
    """``text`` with each control character (C0 and DEL: NUL, ESC, newlines, tabs) written as a
    visible ``\\xNN`` escape, so that a value read from a header can neither hide in nor break
    a table cell, a log line or a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def safe_cell(value):
    """One table value made safe to open: text that a spreadsheet would run as a formula
    (starting ``= + - @``, a tab or a carriage return, or a quote) gets a leading ``'``, as
    OWASP advises, and control characters are escaped (:func:`escape_controls`).  Values that
    are not text (numbers, None, NaN) are returned as they are; valid UIDs (digits and dots)
    never change."""
    if not isinstance(value, str):
        return value
    text = table_text(value)
    prefix = "'" if text.startswith(FORMULA_START) else ""
    return prefix + escape_controls(text)


def cell_value(text):
    """The value a text cell of lungcad's CSVs was written from: the quote that
    :func:`safe_cell` adds removed (control characters stay escaped).  For readers that join
    on a text column, such as patient ids."""
    return text[1:] if isinstance(text, str) and text.startswith("'") else text


def safe_table(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with :func:`safe_cell` applied to its text columns.  Columns are chosen by
    dtype: numeric and boolean columns are left alone, so that -86.6 stays a number."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_datetime64_any_dtype(col.dtype):
            continue
        out[c] = col.map(safe_cell)
    return out


# ----------------------------------------------------------------------------- tables

def by_probability(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records by descending probability (stable: equal probabilities keep their order)."""
    return sorted(records, key=lambda r: -number_or(r.get("probability"), -math.inf))


def candidates_table(scans: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows of ``candidates.csv`` from per-scan dicts (:meth:`OutputDir.load_scans`).

    Columns: :data:`CANDIDATES_CSV_LEAD`, then every other candidate column in
    alphabetical order.  Rows: by seriesuid, then patient_id, then descending probability.
    """
    rows, extra = [], set()
    for d in scans:
        for rec in d.get("candidates") or []:
            r = {k: table_text(v) for k, v in rec.items()}
            r["seriesuid"] = table_text(d["series_uid"])
            r["patient_id"] = table_text(d["patient_id"])
            extra.update(r)
            rows.append(r)
    cols = CANDIDATES_CSV_LEAD + sorted(str(c) for c in extra - set(CANDIDATES_CSV_LEAD))
    df = pd.DataFrame.from_records(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    df["seriesuid"] = df["seriesuid"].astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    if len(df):
        df = df.sort_values(["seriesuid", "patient_id", "probability", "coordZ", "coordY", "coordX"],
                            ascending=[True, True, False, True, True, True], kind="mergesort",
                            na_position="last").reset_index(drop=True)
    return df


def number(v) -> float:
    """A finite float, or NaN for None, text, booleans and non-finite numbers."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        return np.nan
    x = float(v)
    return x if math.isfinite(x) else np.nan


def patients_table(scans: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows of ``patients.csv``: one per scan, with its top candidate.

    The top candidate is the one with the highest ``probability``; ``top_nodule_prob``
    is its ``nodule_prob`` (its ``probability`` when the pipeline has no FPR stage).
    ``n_reported`` and ``lungrads_research`` (the patient's research-only Lung-RADS-style
    category, not a clinical reading) come from the scan's ``reported``; empty for a scan written
    before the measure stage.
    """
    rows = []
    for d in scans:
        cands = by_probability(list(d.get("candidates") or []))
        top = cands[0] if cands else {}
        nod = number(top.get("nodule_prob"))
        rep = d.get("reported") or {}
        rows.append({
            "patient_id": str(d["patient_id"]), "seriesuid": str(d["series_uid"]),
            "cancer_probability": number(d.get("cancer_probability")),
            "n_candidates": len(cands),
            "top_nodule_prob": nod if not np.isnan(nod) else number(top.get("probability")),
            "top_malignancy_prob": number(top.get("malignancy_prob")),
            "top_coordX": number(top.get("coordX")), "top_coordY": number(top.get("coordY")),
            "top_coordZ": number(top.get("coordZ")), "top_diameter_mm": number(top.get("diameter_mm")),
            "lung_volume_ml": number(d.get("lung_volume_ml")),
            "input_path": str(d.get("input_path", "") or ""),
            "n_reported": number(rep.get("n")),
            "lungrads_research": str(rep.get("lungrads_research", "") or ""),
        })
    df = pd.DataFrame(table_records(rows), columns=PATIENTS_CSV_COLUMNS)
    if len(df):
        df = df.sort_values(["patient_id", "seriesuid"], kind="mergesort").reset_index(drop=True)
    return df


def number_or(v, default: float) -> float:
    """:func:`number` of ``v``, or ``default`` where that is NaN."""
    x = number(v)
    return default if np.isnan(x) else x
