"""Patient-level cancer probability from the candidate table: a leaky noisy-OR.

Each candidate *i* is a nodule with probability ``p_nodule[i]`` and, if it is one, malignant
with probability ``p_malignant[i]``.  Treating candidates as independent causes of cancer and
allowing a small probability ``p_leak`` of cancer that no candidate explains gives

    P(cancer) = 1 - (1 - p_leak) * prod_{i in top k} (1 - p_nodule[i] * p_malignant[i])

where the top *k* candidates are those with the largest ``p_nodule * p_malignant``.  Keeping
only the top *k* stops a scan with many weak false positives from adding up to a high
probability.  The same model was used by the winning Data Science Bowl 2017 entry.

The noisy-OR is only as calibrated as the network's probabilities are.  A two-parameter
logistic recalibration (Platt scaling) of its result,

    P'(cancer) = sigmoid(scale * logit(P(cancer)) + shift),

fitted on labelled patients by :func:`fit_calibration` (``lungcad calibrate``), corrects
that without changing the order of the patients; ``(1, 0)`` leaves P unchanged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["patient_probability", "aggregate", "calibrate", "fit_calibration",
           "check_calibration", "IDENTITY", "SHIPPED_CALIBRATION"]

#: ``(scale, shift)`` that leaves the probability unchanged.
IDENTITY = (1.0, 0.0)
#: ``(scale, shift)`` of the shipped pipeline (``[aggregate] calibration``), fitted by
#: ``lungcad calibrate`` on 40 phantoms (seed 779000) for the shipped networks; the default
#: of :func:`aggregate`, so that a bare call gives the probability ``lungcad detect`` gives.
SHIPPED_CALIBRATION = (1.0275, -1.0104)
#: Probabilities are kept this far from 0 and 1 before the logit.
_EPS = 1e-12


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


def check_calibration(calibration) -> tuple[float, float]:
    """``(scale, shift)`` as two floats; ValueError unless both are finite and ``scale > 0``."""
    try:
        scale, shift = (float(v) for v in calibration)
    except (TypeError, ValueError):
        raise ValueError(f"calibration: expected two numbers (scale, shift). "
                         f"Received {calibration!r}") from None
    if not (np.isfinite(scale) and np.isfinite(shift) and scale > 0.0):
        raise ValueError(f"calibration: expected a finite scale > 0 and a finite shift (a scale <= 0 "
                         f"would reverse or erase the order of the patients). Received {calibration!r}")
    return scale, shift


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def calibrate(p, calibration=IDENTITY):
    """``sigmoid(scale * logit(p) + shift)``, elementwise; ``p`` itself when the calibration is (1, 0).

    Parameters
    ----------
    p : float or array_like of float
        Probabilities in [0, 1].
    calibration : (float, float)
        ``(scale, shift)``, as fitted by :func:`fit_calibration`; ``scale > 0``.

    Returns
    -------
    float or numpy.ndarray
        Same shape as ``p``.  The map is strictly increasing, so it keeps every ranking
        (and the ROC AUC) of the probabilities it is given.
    """
    scale, shift = check_calibration(calibration)
    arr = _check_probabilities("p", p)
    if (scale, shift) == IDENTITY:
        out = arr
    else:
        out = 1.0 / (1.0 + np.exp(-(scale * _logit(arr) + shift)))
    return float(out[0]) if np.ndim(p) == 0 else out.reshape(np.shape(p))


def fit_calibration(p, y) -> tuple[float, float]:
    """Fit ``(scale, shift)`` of :func:`calibrate` to labelled probabilities (Platt scaling).

    Maximum likelihood of the labels under ``sigmoid(scale * logit(p) + shift)``, with Platt's
    targets ``(n1 + 1) / (n1 + 2)`` and ``1 / (n0 + 2)`` in place of 1 and 0, so that patients
    that the probabilities separate perfectly still give a finite fit; ``scale`` is kept in
    [0.01, 100] and ``shift`` in [-50, 50].

    Parameters
    ----------
    p : array_like of float, shape (N,)
        Uncalibrated probabilities in [0, 1], one per patient.
    y : array_like of 0/1, shape (N,)
        The patients' labels; both classes must occur.

    Returns
    -------
    (float, float)
        ``(scale, shift)``.

    Raises
    ------
    ValueError
        When the lengths differ, a label is not 0 or 1, or one class is missing.
    """
    from scipy.optimize import minimize

    p = _check_probabilities("p", p)
    y = np.asarray(y, dtype=float).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"p and y: expected one label per probability. Received {p.size} and {y.size}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: expected labels 0 or 1")
    n1, n0 = int(y.sum()), int((1 - y).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError(f"fitting a calibration needs patients of both classes. Received {n1} with "
                         f"cancer and {n0} without")
    t = np.where(y == 1, (n1 + 1.0) / (n1 + 2.0), 1.0 / (n0 + 2.0))
    z = _logit(p)

    def nll(theta):
        a, b = theta
        u = a * z + b
        # -[t log s(u) + (1 - t) log(1 - s(u))] = log(1 + e^u) - t u, computed stably
        loss = np.logaddexp(0.0, u) - t * u
        g = 1.0 / (1.0 + np.exp(-u)) - t
        return float(loss.sum()), np.array([float((g * z).sum()), float(g.sum())])

    res = minimize(nll, x0=np.array(IDENTITY), jac=True, method="L-BFGS-B",
                   bounds=[(0.01, 100.0), (-50.0, 50.0)])
    return float(res.x[0]), float(res.x[1])


def patient_probability(nodule_probs, malignancy_probs, *, top_k: int = 5,
                        p_leak: float = 0.02, calibration=IDENTITY) -> float:
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
    calibration : (float, float), optional
        ``(scale, shift)`` of :func:`calibrate`, applied to the noisy-OR; ``(1, 0)`` is none.

    Returns
    -------
    float
        The patient's cancer probability: in ``[p_leak, 1]`` without a calibration.

    Raises
    ------
    ValueError
        When a probability is outside [0, 1] or not finite, the two arrays differ in length,
        ``top_k`` is not an integer >= 0, ``p_leak`` is outside [0, 1], or the calibration's
        scale is not > 0.
    """
    _check_options(top_k, p_leak)
    check_calibration(calibration)
    pn = _check_probabilities("nodule_probs", nodule_probs)
    pm = _check_probabilities("malignancy_probs", malignancy_probs)
    if pn.shape != pm.shape:
        raise ValueError(
            "nodule_probs and malignancy_probs: expected the same number of candidates. "
            f"Received {pn.size} and {pm.size}")
    joint = np.sort(pn * pm)[::-1][: int(top_k)]
    p_none = (1.0 - float(p_leak)) * float(np.prod(1.0 - joint))
    return calibrate(float(min(1.0, max(0.0, 1.0 - p_none))), calibration)


def aggregate(candidates: pd.DataFrame, *, top_k: int = 5, p_leak: float = 0.02,
              calibration=SHIPPED_CALIBRATION, nodule_col: str = "nodule_prob",
              malignancy_col: str = "malignancy_prob") -> float:
    """Patient probability from a candidate table (see :func:`patient_probability`).

    The defaults are the shipped pipeline's ``[aggregate]`` section, its calibration
    included (:data:`SHIPPED_CALIBRATION`); pass ``calibration=IDENTITY`` for the plain
    noisy-OR.

    Parameters
    ----------
    candidates : pandas.DataFrame
        One row per candidate, with the columns ``nodule_col`` and ``malignancy_col``.
        An empty table (with or without those columns) gives ``p_leak``, calibrated.
    top_k, p_leak, calibration : see :func:`patient_probability`.
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
        return patient_probability([], [], top_k=top_k, p_leak=p_leak, calibration=calibration)
    missing = [c for c in (nodule_col, malignancy_col) if c not in candidates.columns]
    if missing:
        raise ValueError(
            f"candidates: expected columns {[nodule_col, malignancy_col]}. "
            f"Missing {missing}; received columns {list(candidates.columns)}")
    return patient_probability(candidates[nodule_col].to_numpy(dtype=float),
                               candidates[malignancy_col].to_numpy(dtype=float),
                               top_k=top_k, p_leak=p_leak, calibration=calibration)
