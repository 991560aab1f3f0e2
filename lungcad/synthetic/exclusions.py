"""Known lesions of real CT backgrounds, to keep away from (a scan without reads is unknown,
not healthy).

An exclusions table (:func:`read_exclusions`) has ``series`` (a SeriesInstanceUID or a
series folder name), ``coordX, coordY, coordZ`` (world mm, LPS) and ``diameter_mm``.  The two
lesions that ``../shared/data/real/backgrounds/PROVENANCE.md`` marks in the POPI scan ship in
``lungcad/synthetic/data/background_exclusions.csv`` (:func:`default_exclusions`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lungcad.errors import InputError

__all__ = ["EXCLUSION_COLUMNS", "default_exclusions", "exclusions_for", "read_exclusions"]

#: Columns of an exclusions table (``series``: SeriesInstanceUID or series folder name).
EXCLUSION_COLUMNS = ["series", "coordX", "coordY", "coordZ", "diameter_mm"]

_DATA = Path(__file__).resolve().parent / "data"


def read_exclusions(path: str | Path) -> pd.DataFrame:
    """An exclusions CSV (columns :data:`EXCLUSION_COLUMNS`; ``seriesuid`` is accepted for
    ``series``; lines starting with ``#`` are comments).

    Raises
    ------
    InputError
        The file cannot be read or lacks a column.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, comment="#", dtype={"series": str, "seriesuid": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read the exclusions CSV: {e}") from e
    if "series" not in df and "seriesuid" in df:
        df = df.rename(columns={"seriesuid": "series"})
    missing = [c for c in EXCLUSION_COLUMNS if c not in df]
    if missing:
        raise InputError(path, f"exclusions CSV: expected columns {EXCLUSION_COLUMNS} (series is a "
                               f"SeriesInstanceUID or a series folder name). Missing {missing}; "
                               f"found {list(df.columns)}")
    out = df[EXCLUSION_COLUMNS].copy()
    out["series"] = out["series"].astype(str).str.strip()
    for c in EXCLUSION_COLUMNS[1:]:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    bad = out[["coordX", "coordY", "coordZ"]].isna().any(axis=1)
    if bad.any():
        raise InputError(path, f"exclusions CSV: row {int(np.flatnonzero(bad)[0]) + 1} has no numeric "
                               f"coordX, coordY, coordZ")
    return out.reset_index(drop=True)


def default_exclusions() -> pd.DataFrame:
    """The known lesions of the shared backgrounds (the POPI scan's two, from PROVENANCE.md)."""
    return read_exclusions(_DATA / "background_exclusions.csv")


def exclusions_for(table: pd.DataFrame | None, *, series_uid: str, names: Sequence[str] = ()
                   ) -> pd.DataFrame:
    """Rows of an exclusions table that belong to a series: ``series`` equal to its UID or to
    one of ``names`` (its folder name, file stem, path relative to the root)."""
    cols = ["coordX", "coordY", "coordZ", "diameter_mm"]
    if table is None or len(table) == 0:
        return pd.DataFrame(columns=cols, dtype=float)
    keys = {str(series_uid)} | {str(n) for n in names if n}
    sel = table[table["series"].astype(str).isin(keys)]
    return sel[cols].astype(float).reset_index(drop=True)


def _exclusion_array(exclude) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) centres and (N,) radii (mm; 0 when unknown) of points or a table."""
    if exclude is None:
        return np.zeros((0, 3)), np.zeros(0)
    if isinstance(exclude, pd.DataFrame):
        if len(exclude) == 0:
            return np.zeros((0, 3)), np.zeros(0)
        xyz = exclude[["coordX", "coordY", "coordZ"]].to_numpy(float)
        r = (np.nan_to_num(exclude["diameter_mm"].to_numpy(float), nan=0.0) / 2.0
             if "diameter_mm" in exclude else np.zeros(len(xyz)))
        return xyz, r
    xyz = np.asarray(exclude, dtype=float).reshape(-1, 3)
    return xyz, np.zeros(len(xyz))
