"""Patient-level cancer probability from the candidate table: a leaky noisy-OR.

Each candidate *i* is a nodule with probability ``p_nodule[i]`` and, if it is one, malignant
with probability ``p_malignant[i]``.  Treating candidates as independent causes of cancer and
allowing a small probability ``p_leak`` of cancer that no candidate explains gives

    P(cancer) = 1 - (1 - p_leak) * prod_{i in top k} (1 - p_nodule[i] * p_malignant[i])

where the top *k* candidates are those with the largest ``p_nodule * p_malignant``.  Keeping
only the top *k* stops a scan with many weak false positives from adding up to a high
probability.  The same model was used by the winning Data Science Bowl 2017 entry.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["patient_probability", "aggregate"]


def _check_probabilities(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0):
        bad = arr[~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)]
        raise ValueError(
            f"{name}: expected probabilities in [0, 1]. Received {bad.size} value(s) outside it, "
            f"e.g. {name}={bad[0]!r}")
    return arr


def _check_options(top_k: int, p_leak: float) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k: expected an integer >= 0. Received top_k={top_k!r}")
    if not np.isfinite(p_leak) or not 0.0 <= float(p_leak) <= 1.0:
        raise ValueError(f"p_leak: expected a probability in [0, 1]. Received p_leak={p_leak!r}")


def patient_probability(nodule_probs, malignancy_probs, *, top_k: int = 5,
                        p_leak: float = 0.02) -> float:
    """Leaky noisy-OR over the top-k candidates.

    Parameters
    ----------
    nodule_probs : array_like of float, shape (N,)
        Probability that each candidate is a nodule, in [0, 1].
    malignancy_probs : array_like of float, shape (N,)
        Probability that each candidate is malignant given that it is a nodule, in [0, 1].
    top_k : int, optional
        Number of candidates that enter the product, chosen by the largest
        ``nodule_prob * malignancy_prob``.  ``0`` gives ``p_leak``.
    p_leak : float, optional
        Probability of cancer that no candidate explains; the result for an empty table.

    Returns
    -------
    float
        The patient's cancer probability, in ``[p_leak, 1]``.

    Raises
    ------
    ValueError
        When a probability is outside [0, 1] or not finite, the two arrays differ in length,
        ``top_k`` is not an integer >= 0, or ``p_leak`` is outside [0, 1].
    """
    _check_options(top_k, p_leak)
    pn = _check_probabilities("nodule_probs", nodule_probs)
    pm = _check_probabilities("malignancy_probs", malignancy_probs)
    if pn.shape != pm.shape:
        raise ValueError(
            "nodule_probs and malignancy_probs: expected the same number of candidates. "
            f"Received {pn.size} and {pm.size}")
    joint = np.sort(pn * pm)[::-1][: int(top_k)]
    p_none = (1.0 - float(p_leak)) * float(np.prod(1.0 - joint))
    return float(min(1.0, max(0.0, 1.0 - p_none)))


def aggregate(candidates: pd.DataFrame, *, top_k: int = 5, p_leak: float = 0.02,
              nodule_col: str = "nodule_prob", malignancy_col: str = "malignancy_prob") -> float:
    """Patient probability from a candidate table (see :func:`patient_probability`).

    Parameters
    ----------
    candidates : pandas.DataFrame
        One row per candidate, with the columns ``nodule_col`` and ``malignancy_col``.
        An empty table (with or without those columns) gives ``p_leak``.
    top_k, p_leak : see :func:`patient_probability`.
    nodule_col, malignancy_col : str, optional
        Column names of the two probabilities.

    Returns
    -------
    float
    """
    if not isinstance(candidates, pd.DataFrame):
        raise ValueError(
            f"candidates: expected a pandas DataFrame. Received {type(candidates).__name__}")
    if len(candidates) == 0:
        return patient_probability([], [], top_k=top_k, p_leak=p_leak)
    missing = [c for c in (nodule_col, malignancy_col) if c not in candidates.columns]
    if missing:
        raise ValueError(
            f"candidates: expected columns {[nodule_col, malignancy_col]}. "
            f"Missing {missing}; received columns {list(candidates.columns)}")
    return patient_probability(candidates[nodule_col].to_numpy(dtype=float),
                               candidates[malignancy_col].to_numpy(dtype=float),
                               top_k=top_k, p_leak=p_leak)
