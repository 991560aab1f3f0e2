"""The FROC curve from a sorted list of hits and false positives, and reading it at FP/scan rates."""
from __future__ import annotations

import numpy as np


def froc_curve(prob_sorted: np.ndarray, tp_sorted: np.ndarray, weight: np.ndarray, group_end: np.ndarray,
           n_lesions: float, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """FROC curve from entries sorted by descending probability (weights = scan draws)."""
    tps = np.cumsum(weight * tp_sorted)[group_end]
    fpc = np.cumsum(weight * ~tp_sorted)[group_end]
    fps = np.concatenate([[0.0], fpc / n_images])
    sens = np.concatenate([[0.0], tps / n_lesions]) if n_lesions > 0 else np.zeros(len(fps))
    return fps, sens


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rates) -> np.ndarray:
    """Read sensitivities off a FROC curve at the given FP/scan ``rates``.

    The curve is piecewise linear through its points; where it is vertical at a rate
    (several points with the same FP/scan) the highest sensitivity is taken, and past
    its last point it stays flat.  This is what ``numpy.interp`` returns on the
    official curve.
    """
    fps = np.asarray(fps, dtype=float)
    sens = np.asarray(sens, dtype=float)
    q = np.asarray(rates, dtype=float)
    i = np.searchsorted(fps, q, side="right") - 1           # last point at or left of q
    i = np.clip(i, 0, len(fps) - 1)
    j = np.minimum(i + 1, len(fps) - 1)                      # first point right of q
    x0, x1, y0, y1 = fps[i], fps[j], sens[i], sens[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(x1 > x0, (q - x0) / (x1 - x0), 0.0)
    t = np.clip(t, 0.0, 1.0)
    return y0 + t * (y1 - y0)
