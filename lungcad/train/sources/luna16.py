"""Training cases from a LUNA16 folder: ``subset*/*.mhd`` with ``annotations.csv`` (lesions),
``candidates_V2.csv`` (class-0 rows are negatives) and ``annotations_excluded.csv`` (findings
that are neither: negatives near them are dropped).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.errors import InputError
from lungcad.train.cases import (NEGATIVE_COLUMNS, Case, CaseRef, _in_volume, drop_near, lesion_table,
                                 negative_table)


def read_luna16_tables(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``annotations.csv``, class-0 rows of ``candidates_V2.csv`` (or ``candidates.csv``) and
    ``annotations_excluded.csv`` of a LUNA16 folder; the last two are empty when absent.

    They are looked for in ``root`` and in ``root/CSVFILES`` and ``root/evaluationScript/annotations``
    (the layouts LUNA16 was published in).
    """
    root = Path(root)

    def find(*names):
        for sub in ("", "CSVFILES", "evaluationScript/annotations", "annotations"):
            for name in names:
                p = root / sub / name
                if p.is_file():
                    return p
        return None

    ann_path = find("annotations.csv")
    if ann_path is None:
        raise InputError(root, "no annotations.csv: expected a LUNA16 folder with subset*/*.mhd "
                               "and annotations.csv (seriesuid,coordX,coordY,coordZ,diameter_mm)")
    ann = _read_csv(ann_path, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    cand_path = find("candidates_V2.csv", "candidates.csv")
    if cand_path is not None:
        cand = _read_csv(cand_path, ["seriesuid", "coordX", "coordY", "coordZ", "class"])
        neg = cand[cand["class"] == 0].drop(columns="class")
        neg["diameter_mm"] = math.nan
    else:
        neg = pd.DataFrame(columns=["seriesuid"] + NEGATIVE_COLUMNS)
    exc_path = find("annotations_excluded.csv")
    exc = (_read_csv(exc_path, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
           if exc_path is not None else pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ",
                                                              "diameter_mm"]))
    return ann, neg, exc


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read CSV: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(path, f"expected columns {columns}. Missing {missing}; "
                               f"found {list(df.columns)}")
    df = df[columns].copy()
    df["seriesuid"] = df["seriesuid"].astype(str)
    return df


def luna16_cases(root: str | Path, *, max_cases: int | None = None,
                 malignancy: pd.DataFrame | None = None) -> list[CaseRef]:
    """Cases of a LUNA16 folder (``subset*/<seriesuid>.mhd``; any ``*.mhd`` under ``root``).

    Lesions are the rows of ``annotations.csv``; negatives the class-0 rows of
    ``candidates_V2.csv`` that lie farther than the radius + 5 mm from every annotated and
    every excluded finding (``annotations_excluded.csv``: neither positive nor negative).
    LUNA16 has no malignancy, so the target is NaN unless ``malignancy`` (columns
    seriesuid, coordX, coordY, coordZ, malignancy) gives one for a lesion within its radius.
    The patient id is the series UID (LUNA16 has one scan per patient).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder: expected a LUNA16 folder with subset*/*.mhd")
    ann, neg, exc = read_luna16_tables(root)
    files = sorted(root.glob("subset*/*.mhd")) or sorted(root.rglob("*.mhd"))
    if not files:
        raise InputError(root, "no .mhd scans: expected subset*/<seriesuid>.mhd")
    if max_cases is not None:
        files = files[:int(max_cases)]
    refs = []
    for f in files:
        uid = f.stem
        a, n, e = (t[t["seriesuid"] == uid] for t in (ann, neg, exc))

        def load(f=f, uid=uid, a=a, n=n, e=e):
            from lungcad.io import load_ct

            vol = load_ct(f)
            vol.series_uid = vol.series_uid or uid
            vol.patient_id = uid
            les = lesion_table(pd.DataFrame({
                "coordX": a["coordX"], "coordY": a["coordY"], "coordZ": a["coordZ"],
                "diameter_mm": a["diameter_mm"], "nodule": 1.0, "malignancy": math.nan}))
            if malignancy is not None and len(les):
                les = _attach_malignancy(les, malignancy[malignancy["seriesuid"].astype(str) == uid])
            negs = negative_table(n[NEGATIVE_COLUMNS])
            negs = drop_near(negs, pd.concat([a, e], ignore_index=True), margin_mm=5.0)
            negs = negs[_in_volume(vol, negs[["coordX", "coordY", "coordZ"]].to_numpy(float))]
            return Case(volume=vol, lesions=les, negatives=negs.reset_index(drop=True),
                        source=f"luna16:{f.parent.name}/{f.name}")
        refs.append(CaseRef(patient_id=uid, loader=load, source="luna16", description=str(f)))
    return refs


def _attach_malignancy(lesions: pd.DataFrame, mal: pd.DataFrame) -> pd.DataFrame:
    out = lesions.copy()
    if len(mal) == 0:
        return out
    b = mal[["coordX", "coordY", "coordZ"]].to_numpy(float)
    for i, row in out.iterrows():
        d = np.linalg.norm(b - np.array([row.coordX, row.coordY, row.coordZ]), axis=1)
        j = int(np.argmin(d))
        if d[j] <= max(row.diameter_mm / 2.0, 3.0):
            out.loc[i, "malignancy"] = float(mal["malignancy"].iloc[j])
    return out
