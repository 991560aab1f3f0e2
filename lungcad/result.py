"""What one scan produces: the :class:`ScanResult` that the pipeline returns and outputs write."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: Columns every candidate table has (docs/architecture.md).  Stages add their own, and remove none.
CANDIDATE_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "z", "y", "x",
                     "diameter_mm", "probability"]
#: The text columns of a candidate table (the others are numbers).
TEXT_COLUMNS = ("seriesuid", "source")


def table_text(value):
    """``value`` with what UTF-8 cannot hold (lone surrogates: a header or a file name decoded
    with ``surrogateescape``) written as backslash escapes, as the CSV files write it; other
    values as they are.  pandas refuses such text when its strings are held by pyarrow
    (pandas 3 with pyarrow installed), so identifiers pass through this on their way into a
    table."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def table_records(records) -> list[dict[str, Any]]:
    """``records`` (dicts) with :func:`table_text` applied to every value."""
    return [{k: table_text(v) for k, v in r.items()} for r in records]


def empty_candidates(extra: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """An empty candidate table with the contract columns (and ``extra``)."""
    cols = CANDIDATE_COLUMNS + [c for c in extra if c not in CANDIDATE_COLUMNS]
    return pd.DataFrame({c: pd.Series(dtype=object if c in TEXT_COLUMNS else float) for c in cols})


@dataclass
class ScanResult:
    """Everything about one scan after the pipeline ran.

    ``candidates`` is the candidate table, sorted by descending ``probability``.
    ``timings`` maps stage name to seconds.  ``config`` is the config the run used,
    as a plain dict, and ``config_hash`` its SHA-256 (first 16 hex digits).

    ``reported`` sums up the reported nodules (the measure stage, :mod:`lungcad.measurements`):
    ``{"n", "lungrads_research", "criteria": {"min_probability", "max_nodules"}, "note"}``, the
    category being research only, not a clinical reading; empty for a scan of an older version.
    ``nodule_labels`` (int16 on the scan's grid (z, y, x): 0 background, k the nodule whose
    ``nodule_id`` is k) and ``lung_mask`` (bool, the same grid) are for the outputs written
    with the scan; they are transient, neither serialised nor compared, and None in a result read
    back from its JSON.
    """

    series_uid: str
    patient_id: str
    candidates: pd.DataFrame
    cancer_probability: float
    input_path: str = ""
    geometry: dict[str, Any] = field(default_factory=dict)
    lung_volume_ml: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    nodule_labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    lung_mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (numpy scalars become Python numbers)."""
        cands = self.candidates.replace({np.nan: None}).to_dict(orient="records")
        return _jsonable({
            "series_uid": self.series_uid,
            "patient_id": self.patient_id,
            "input_path": self.input_path,
            "cancer_probability": float(self.cancer_probability),
            "n_candidates": int(len(self.candidates)),
            "geometry": self.geometry,
            "lung_volume_ml": self.lung_volume_ml,
            "candidates": cands,
            "candidate_columns": list(self.candidates.columns),
            "timings": self.timings,
            "warnings": list(self.warnings),
            "config": self.config,
            "config_hash": self.config_hash,
            "versions": self.versions,
            "meta": self.meta,
            "reported": self.reported,
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScanResult":
        cols = d.get("candidate_columns") or CANDIDATE_COLUMNS
        cands = pd.DataFrame(table_records(d.get("candidates", [])), columns=cols)
        return cls(series_uid=d["series_uid"], patient_id=d["patient_id"], candidates=cands,
                   cancer_probability=float(d["cancer_probability"]),
                   input_path=d.get("input_path", ""), geometry=d.get("geometry", {}),
                   lung_volume_ml=d.get("lung_volume_ml"), timings=d.get("timings", {}),
                   warnings=list(d.get("warnings", [])), config=d.get("config", {}),
                   config_hash=d.get("config_hash", ""), versions=d.get("versions", {}),
                   meta=d.get("meta", {}), reported=dict(d.get("reported") or {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        v = float(obj)
        return None if np.isnan(v) else v
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj
