"""Training cases from DSB2017: ``stage1/<patient>/*.dcm`` with the ``stage1_labels.csv``
patient labels, and how a patient label becomes weak lesion labels
(:func:`apply_patient_labels`, :func:`with_patient_labels` for cases of any source).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from lungcad.errors import InputError
from lungcad.train.cases import Case, CaseLike, CaseRef, lesion_table


def read_patient_labels(path: str | Path) -> dict[str, float]:
    """DSB2017 ``stage1_labels.csv`` (columns ``id,cancer``) as {patient id: 0.0 or 1.0}."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read labels CSV: {e}") from e
    id_col = "id" if "id" in df else ("patient_id" if "patient_id" in df else None)
    lab_col = "cancer" if "cancer" in df else ("label" if "label" in df else None)
    if id_col is None or lab_col is None:
        raise InputError(path, f"expected columns id,cancer (DSB2017 stage1_labels.csv). "
                               f"Found {list(df.columns)}")
    labels = pd.to_numeric(df[lab_col], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        raise InputError(path, f"cancer labels must be 0 or 1; row {int(np.flatnonzero(bad)[0]) + 2} "
                               f"has {df[lab_col][bad].iloc[0]!r}")
    return dict(zip(df[id_col].astype(str), labels.astype(float)))


def apply_patient_labels(case: Case, label: float, *, weak_candidates: pd.DataFrame | None = None
                         ) -> Case:
    """Turn a patient-level cancer label into lesion-level malignancy targets.

    DSB2017 labels say whether the patient was diagnosed with cancer within a year, not
    which nodule.  The rule used here:

    * label 0: no lesion of the patient is malignant, so every lesion whose malignancy is
      unknown gets target 0;
    * label 1: when no lesion has a known malignancy, the *top lesion* gets target 1 (a weak
      label): the largest annotated lesion, or when there is none, the most probable
      candidate of ``weak_candidates`` (the current segmenter's candidates), which is
      added with ``nodule`` NaN (its nodule status is unknown, so it does not train the
      nodule head).  Other lesions keep NaN (they do not train the malignancy head);
    * label 0 without annotations: the top 3 candidates of ``weak_candidates`` are added as
      lesions with malignancy 0 and ``nodule`` NaN.

    Returns a new case with ``patient_label`` set.
    """
    if math.isnan(label):
        return case
    les = case.lesions.copy()
    cands = weak_candidates if weak_candidates is not None else pd.DataFrame()
    if label == 0:
        les.loc[les["malignancy"].isna(), "malignancy"] = 0.0
        if len(les) == 0 and len(cands):
            top = cands.sort_values("probability", ascending=False).head(3)
            les = lesion_table(pd.DataFrame({
                "coordX": top["coordX"], "coordY": top["coordY"], "coordZ": top["coordZ"],
                "diameter_mm": top["diameter_mm"], "nodule": math.nan, "malignancy": 0.0}))
    elif label == 1 and not les["malignancy"].notna().any():
        if len(les):
            les.loc[les["diameter_mm"].idxmax(), "malignancy"] = 1.0
        elif len(cands):
            top = cands.sort_values("probability", ascending=False).head(1)
            les = lesion_table(pd.DataFrame({
                "coordX": top["coordX"], "coordY": top["coordY"], "coordZ": top["coordZ"],
                "diameter_mm": top["diameter_mm"], "nodule": math.nan, "malignancy": 1.0}))
    return Case(volume=case.volume, lesions=les.reset_index(drop=True), negatives=case.negatives,
                lesion_mask=case.lesion_mask, lung_mask=case.lung_mask, patient_label=float(label),
                source=case.source)


def dsb2017_cases(root: str | Path, labels: str | Path | dict, *, max_cases: int | None = None
                  ) -> list[CaseRef]:
    """Labelled patients of a DSB2017 folder (``stage1/<patient>/*.dcm`` or ``<patient>/``).

    Only patients listed in the labels are returned (the stage-1 test patients have none).
    A case carries its patient label; lesions come from :func:`apply_patient_labels` when
    FPR training mines candidates with a segmenter (see :func:`lungcad.train.fit_fpr.train_fpr`).
    """
    from lungcad.io import choose_series, discover

    root = Path(root)
    labels = labels if isinstance(labels, dict) else read_patient_labels(labels)
    scan_root = root / "stage1" if (root / "stage1").is_dir() else root
    if not scan_root.is_dir():
        raise InputError(root, "not a folder: expected DSB2017 stage1/<patient>/*.dcm")
    refs = []
    for pid in sorted(p.name for p in scan_root.iterdir() if p.is_dir()):
        if pid not in labels:
            continue

        def load(pid=pid):
            from lungcad.io import load_series

            found = choose_series(discover(scan_root / pid, errors=[]))
            if not found:
                raise InputError(scan_root / pid, "no usable CT series")
            info = next(iter(found.values()))
            vol = load_series(info)
            vol.patient_id = pid
            case = Case(volume=vol, source=f"dsb2017:{pid}")
            case.patient_label = float(labels[pid])
            return case
        refs.append(CaseRef(patient_id=pid, loader=load, source="dsb2017",
                            description=str(scan_root / pid)))
        if max_cases is not None and len(refs) >= max_cases:
            break
    if not refs:
        raise InputError(root, "no patient folder of the labels CSV was found")
    return refs


def with_patient_labels(cases: Iterable[CaseLike], labels: dict[str, float]) -> list[CaseLike]:
    """Attach patient labels (by patient id) to cases of any source; see
    :func:`apply_patient_labels` for how they become lesion targets."""
    out = []
    for c in cases:
        lab = labels.get(c.patient_id)
        if lab is None:
            out.append(c)
            continue
        if isinstance(c, Case):
            out.append(apply_patient_labels(c, lab))
        else:
            out.append(CaseRef(patient_id=c.patient_id, source=c.source, description=c.description,
                               loader=lambda c=c, lab=lab: apply_patient_labels(c.load(), lab)))
    return out
