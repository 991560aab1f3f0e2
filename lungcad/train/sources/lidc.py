"""Training cases from LIDC-IDRI series folders with their XML reads: the lesions are the
consensus of at least 3 readers and the malignancy target is ``(mean rating - 1) / 4``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.errors import InputError
from lungcad.train.cases import Case, CaseRef, lesion_table


def lidc_cases(root: str | Path, *, min_readers: int = 3, max_cases: int | None = None
               ) -> list[CaseRef]:
    """Cases of LIDC-IDRI folders: every CT series with an LIDC XML file beside its slices.

    Lesions are the consensus nodules marked by at least ``min_readers`` of the readers
    (:func:`lungcad.io.lidc_consensus`: the LUNA16 reference standard), with the malignancy
    target ``(mean rating - 1) / 4`` in [0, 1].  Findings of fewer readers and non-nodule
    marks are neither positives nor negatives (as in LUNA16).
    """
    from lungcad.io import discover

    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such folder: expected LIDC-IDRI series folders with their XML reads")
    series = [s for s in discover(root, errors=[]) if s.usable]
    refs = []
    for s in series:
        folder = Path(s.path) if Path(s.path).is_dir() else Path(s.path).parent
        xmls = sorted(folder.glob("*.xml"))
        if not xmls:
            continue

        def load(s=s, xmls=xmls):
            from lungcad.io import load_series
            from lungcad.io.lidc import lidc_consensus, read_lidc_xml

            vol = load_series(s)
            reads = pd.concat([read_lidc_xml(x, vol) for x in xmls], ignore_index=True)
            if "seriesuid" in reads and s.series_uid:
                reads = reads[reads["seriesuid"].astype(str) == str(s.series_uid)]
            cons = lidc_consensus(reads, min_readers=min_readers)
            mal = (cons["malignancy"].astype(float) - 1.0) / 4.0 if "malignancy" in cons else math.nan
            les = lesion_table(pd.DataFrame({
                "coordX": cons["coordX"], "coordY": cons["coordY"], "coordZ": cons["coordZ"],
                "diameter_mm": cons["diameter_mm"], "nodule": 1.0,
                "malignancy": np.clip(mal, 0.0, 1.0)}) if len(cons) else None)
            return Case(volume=vol, lesions=les, source=f"lidc:{s.path}")
        refs.append(CaseRef(patient_id=s.patient_id or s.series_uid, loader=load, source="lidc",
                            description=str(s.path)))
        if max_cases is not None and len(refs) >= max_cases:
            break
    if not refs:
        raise InputError(root, "no CT series with an LIDC XML file beside its slices")
    return refs
