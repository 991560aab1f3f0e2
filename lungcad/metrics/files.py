"""The CSV and JSON files of evaluation: LUNA16 annotations and candidates, labels, predictions.

Readers raise :class:`~lungcad.errors.InputError` naming the file and what is wrong; ids
(``seriesuid``, ``patient_id``) are read as text, so that ``0015`` stays ``0015``.  The writers
are atomic (:mod:`lungcad.results.atomic`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcad.errors import InputError
from lungcad.results.atomic import atomic_write_text
from lungcad.results.tables import cell_value, csv_text

ANNOTATION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
CANDIDATE_EVAL_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def _read_csv(path, *, required: list[str], what: str, str_columns=("seriesuid",),
              unquote: bool = False) -> pd.DataFrame:
    """Read a CSV; ``str_columns`` (or every column when None) stay text, ids such as ``0015`` intact.

    ``unquote``: the file may be one lungcad wrote, whose text cells that looked like a
    spreadsheet formula carry a leading quote (:func:`lungcad.results.tables.safe_cell`); it is removed
    from the text columns so that ids join with the labels they were read from.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, f"{what} not found (no such file)")
    dtype = str if str_columns is None else {c: str for c in str_columns}
    try:
        # pandas' default float parser rounds correctly (same doubles as Python's float())
        df = pd.read_csv(p, dtype=dtype, skipinitialspace=True, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise InputError(p, f"cannot read {what} as CSV: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(p, f"{what} needs the columns {required}; missing {missing}. "
                            f"Received columns {list(df.columns)}")
    for c in required:
        if str_columns is None or c in str_columns:
            continue
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(p, f"{what}: column '{c}' must be numbers; row {row + 2} holds "
                                f"{df[c].iloc[row]!r}")
        df[c] = values.astype(float)
    if unquote:
        for c in df.columns:
            if not pd.api.types.is_numeric_dtype(df[c].dtype):
                df[c] = df[c].map(cell_value)
    return df


def read_annotations(path) -> pd.DataFrame:
    """Read LUNA16 ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``).

    Also reads ``annotations_excluded.csv``, which has the same columns.  Extra columns
    are kept.  A missing file or column raises :class:`~lungcad.errors.InputError`.
    """
    return _read_csv(path, required=ANNOTATION_COLUMNS, what="annotations")


def read_excluded(path) -> pd.DataFrame:
    """Read LUNA16 ``annotations_excluded.csv`` (same columns as ``annotations.csv``)."""
    return _read_csv(path, required=ANNOTATION_COLUMNS, what="excluded annotations")


def read_candidates(path) -> pd.DataFrame:
    """Read a candidate file (``seriesuid,coordX,coordY,coordZ,probability``, more columns allowed).

    This is the LUNA16 submission format, and the first columns of lungcad's
    ``candidates.csv``.
    """
    return _read_csv(path, required=CANDIDATE_EVAL_COLUMNS, what="candidates", unquote=True)


def read_seriesuids(path) -> list[str]:
    """Read a list of scans: LUNA16 ``seriesuids.csv`` (no header, one UID a line).

    The first comma-separated field of each line is taken; a first line ``seriesuid``
    is a header and is skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "list of series UIDs not found (no such file)")
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(p, f"cannot read the list of series UIDs: {e}") from e
    uids = [ln.split(",")[0].strip() for ln in lines if ln.strip()]
    if uids and uids[0].lower() == "seriesuid":
        uids = uids[1:]
    if not uids:
        raise InputError(p, "the list of series UIDs is empty")
    return uids



def read_labels(path) -> pd.DataFrame:
    """Read a labels CSV (DSB2017 ``stage1_labels.csv`` id,cancer or lungcad's patient_id,cancer).

    Every column is read as text (patient ids such as ``0015`` stay intact);
    :func:`patient_metrics` converts the label column.
    """
    return _read_csv(path, required=[], what="labels", str_columns=None)


def read_predictions(path) -> pd.DataFrame:
    """Read predictions (lungcad ``patients.csv``, or a DSB2017 submission id,cancer), all columns as text."""
    return _read_csv(path, required=[], what="predictions", str_columns=None, unquote=True)



def write_csv(df: pd.DataFrame, path) -> Path:
    """Write a table as CSV, atomically."""
    atomic_write_text(path, csv_text(df))
    return Path(os.fspath(path))


def write_json(obj: dict[str, Any], path) -> Path:
    """Write a dict as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
    return Path(os.fspath(path))
