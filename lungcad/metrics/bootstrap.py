"""Confidence intervals of the FROC: a bootstrap over scans, with the official percentile rule."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lungcad.metrics.curve import froc_curve, sensitivity_at


def bootstrap_froc(p_s: np.ndarray, tp_s: np.ndarray, scan_s: np.ndarray, group_end: np.ndarray,
                   nod_per_scan: np.ndarray, n_scans: int, rates: tuple[float, ...], *, n_bootstrap: int,
                   seed: int | None, confidence: float):
    """Percentile intervals of the sensitivities, the CPM and a band along the curve.

    Scans are drawn with replacement, as many as there are; each draw weights its scan's
    entries.  The intervals are the sorted values at ``floor(pz n)`` and ``floor((1 - pz) n)``
    with ``pz = (1 - confidence) / 2`` (the LUNA16 script's rule).  Samples that draw no
    nodule (sensitivity 0/0) are left out.

    Parameters
    ----------
    p_s, tp_s, scan_s : arrays
        The FROC entries by descending probability: probability, hit or not, scan index.
    group_end : array of int
        The last index of each run of equal probabilities in ``p_s``.
    nod_per_scan : array
        Nodules per scan, indexed as ``scan_s``.
    n_scans : int
    rates : tuple of float
        The FP/scan operating points.
    n_bootstrap : int
        Samples (0: none, and no interval).

    Returns
    -------
    (dict, ndarray, ndarray, ndarray, int)
        ``ci`` (rate -> (low, high), and ``"cpm"``), the band's FP/scan rates, its low and
        high sensitivities, and the number of samples that counted.
    """
    ci: dict[Any, tuple[float, float]] = {}
    band_fps = np.geomspace(min(rates), max(rates), 61) if n_bootstrap else np.zeros(0)
    band_low = band_high = np.zeros(0)
    n_valid = 0
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        grid = np.concatenate([np.asarray(rates), band_fps])
        samples = np.full((n_bootstrap, len(grid)), np.nan)
        for b in range(n_bootstrap):
            draws = np.bincount(rng.integers(0, n_scans, n_scans), minlength=n_scans).astype(float)
            n_les = float(draws @ nod_per_scan)
            if n_les == 0:
                continue
            f_b, s_b = froc_curve(p_s, tp_s, draws[scan_s], group_end, n_les, n_scans)
            samples[b] = sensitivity_at(f_b, s_b, grid)
        valid = ~np.isnan(samples[:, 0])
        n_valid = int(valid.sum())
        if n_valid:
            samples = samples[valid]
            pz = (1.0 - confidence) / 2.0
            lo_i, hi_i = int(math.floor(pz * n_valid)), int(math.floor((1.0 - pz) * n_valid))
            srt = np.sort(samples, axis=0)
            lo, hi = srt[lo_i], srt[hi_i]
            for k, r in enumerate(rates):
                ci[r] = (float(lo[k]), float(hi[k]))
            cpm_s = np.sort(samples[:, :len(rates)].mean(axis=1))
            ci["cpm"] = (float(cpm_s[lo_i]), float(cpm_s[hi_i]))
            band_low, band_high = lo[len(rates):], hi[len(rates):]
        else:
            band_fps = np.zeros(0)
    return ci, band_fps, band_low, band_high, n_valid
