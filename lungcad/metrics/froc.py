"""The LUNA16 FROC of a set of candidates, by the rules of the official evaluation script.

Detection (:func:`froc`) follows the definition of the official LUNA16 evaluation
script (``noduleCADEvaluationLUNA16.py``, Setio et al. 2017), reimplemented here:

* Per scan only the most suspicious candidates are kept (``max_candidates_per_scan``,
  100 in the challenge).  As in the official script, when a scan has more, the
  candidates kept are those whose probability is *strictly greater* than the
  probability of the 101st candidate in descending order, so a tie at the cut keeps
  fewer than 100 (all tied candidates are dropped).
* A candidate hits a finding when the squared distance between the candidate and the
  finding centre is *strictly less* than (diameter / 2)²: the official comparison is
  ``dist < radiusSquared``, so a candidate exactly on the sphere is not a hit.
  A finding with a negative diameter (``-1`` in ``annotations_excluded.csv``) gets the
  official default diameter of 10 mm (radius 5 mm).
* Every nodule of ``annotations.csv`` that is hit counts once, as a true positive
  with the highest probability among the candidates that hit it.  The other
  candidates on that nodule are ignored (neither TP nor FP).  A candidate that hits
  two nodules counts for both.  A nodule that is not hit still counts in the
  sensitivity's denominator.
* Candidates that hit a finding of ``annotations_excluded.csv`` and no nodule are
  ignored.  All other candidates are false positives.
* The FROC curve is the ROC of the TP/FP list at every distinct probability
  (ties between a TP and an FP give a diagonal step), with FPs divided by the number
  of scans and TPs by the number of nodules.  Sensitivities at 1/8 ... 8 FP/scan are
  read off the piecewise-linear curve; where the curve is vertical at the requested
  FP rate, the top of that step is used (what ``numpy.interp`` returns on the
  official curve).  The CPM is their mean.
* The 95 % confidence interval is a bootstrap over scans (scans drawn with
  replacement, the same number as in the data set), with the official percentile
  rule: sorted values at ``floor(0.025 n)`` and ``floor(0.975 n)``.

Two things the official script leaves undefined are defined here: a curve with no
true positive has sensitivity 0 (the script gives NaN), and bootstrap samples that
draw no nodule at all are left out of the interval (their sensitivity is 0/0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lungcad.metrics.bootstrap import bootstrap_froc
from lungcad.metrics.curve import froc_curve, sensitivity_at
from lungcad.metrics.files import ANNOTATION_COLUMNS, CANDIDATE_EVAL_COLUMNS

#: Operating points of the LUNA16 CPM, in average false positives per scan.
FROC_POINTS = (0.125, 0.25, 0.5, 1, 2, 4, 8)
#: Official default diameter (mm) for findings whose diameter is negative (``-1``).
DEFAULT_EXCLUDED_DIAMETER_MM = 10.0


# ----------------------------------------------------------------------------- FROC

#: Columns of :attr:`FrocResult.nodules`.
NODULE_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "found", "probability",
                  "rank", "found_at_fps_per_scan", "nearest_mm", "nearest_probability"]


@dataclass
class FrocResult:
    """A LUNA16 FROC evaluation.

    Attributes
    ----------
    sensitivities : dict
        FP/scan rate (float) -> sensitivity.
    cpm : float
        Mean of ``sensitivities``.
    ci : dict
        FP/scan rate -> (low, high) 95 % bootstrap interval, and ``"cpm"`` -> (low, high).
        Empty when no bootstrap was run.
    fps, sens : ndarray
        The FROC curve (average FPs per scan, sensitivity), one point per distinct
        threshold, starting at (0, 0).
    thresholds : ndarray
        Probability threshold of each curve point (``inf`` for the first).
    band_fps, band_low, band_high : ndarray
        The bootstrap band on a log-spaced grid of FP rates (empty without bootstrap).
    counts : dict
        ``n_tp``, ``n_fp``, ``n_missed``, ``n_candidates`` (after the top-N cut),
        ``n_candidates_dropped`` (by the cut), ``n_ignored_excluded``,
        ``n_ignored_duplicate``, ``n_candidates_outside`` (whose scan is not evaluated).
    nodules : DataFrame
        One row per nodule of the evaluated scans (:data:`NODULE_COLUMNS`): whether a kept
        candidate hits it, the probability and in-scan rank (0 = first) of the best one that
        does, the FP/scan rate from which it counts as found (the false positives of the
        whole set that score at least as high, per scan), and the distance (mm) and
        probability of the kept candidate nearest to its centre, hit or not.
    """

    sensitivities: dict[float, float]
    cpm: float
    ci: dict[Any, tuple[float, float]]
    fps: np.ndarray
    sens: np.ndarray
    thresholds: np.ndarray
    n_nodules: int
    n_scans: int
    counts: dict[str, int] = field(default_factory=dict)
    nodules: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=NODULE_COLUMNS))
    band_fps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_low: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_high: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_bootstrap: int = 0
    n_bootstrap_valid: int = 0
    seed: int | None = None
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (FP rates become string keys such as ``"0.125"``)."""
        def key(k):
            return k if isinstance(k, str) else fmt_rate(k)
        return {
            "cpm": float(self.cpm),
            "sensitivities": {key(k): float(v) for k, v in self.sensitivities.items()},
            "ci": {key(k): [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()},
            "n_nodules": int(self.n_nodules),
            "n_scans": int(self.n_scans),
            "counts": {k: int(v) for k, v in self.counts.items()},
            "n_bootstrap": int(self.n_bootstrap),
            "n_bootstrap_valid": int(self.n_bootstrap_valid),
            "seed": self.seed,
            "confidence": float(self.confidence),
            "curve": {"fps": [float(v) for v in self.fps], "sens": [float(v) for v in self.sens],
                      "thresholds": [None if not np.isfinite(v) else float(v) for v in self.thresholds]},
        }


def fmt_rate(r: float) -> str:
    return f"{float(r):g}"


def _radius_squared(diameter: np.ndarray) -> np.ndarray:
    d = np.where(diameter < 0.0, DEFAULT_EXCLUDED_DIAMETER_MM, diameter)
    return (d / 2.0) ** 2


def _check_columns(df: pd.DataFrame, required: list[str], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs the columns {required}; missing {missing}. "
                         f"Received columns {list(df.columns)}")


def _top_candidates(probs: np.ndarray, max_n: int | None) -> np.ndarray:
    """Indices kept by the official top-N rule (strictly above the (N+1)-th probability)."""
    idx = np.arange(len(probs))
    if not max_n or max_n <= 0 or len(probs) <= max_n:
        return idx
    cut = np.sort(probs)[::-1][max_n]
    return idx[probs > cut]


def _sq_dist(cands: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # (dx² + dy²) + dz², the order of the official script, so boundaries agree bit for bit
    d = cands[:, None, :] - centres[None, :, :]
    return d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2


def _match_scans(ann: pd.DataFrame, cand: pd.DataFrame, exc: pd.DataFrame, uids: list[str],
                 max_n: int | None):
    """Turn the tables into the FROC lists: one entry per detected nodule or FP.

    Returns arrays ``scan`` (index into uids), ``prob``, ``is_tp`` for the entries,
    the number of nodules per scan, the counts, and one row per nodule (the columns of
    :data:`NODULE_COLUMNS` but the FP/scan rate, which needs every scan).
    """
    xyz = ["coordX", "coordY", "coordZ"]
    ann_g = {k: g for k, g in ann.groupby("seriesuid", sort=False)}
    exc_g = {k: g for k, g in exc.groupby("seriesuid", sort=False)}
    cand_g = {k: g for k, g in cand.groupby("seriesuid", sort=False)}
    scan_l, prob_l, tp_l, rows = [], [], [], []
    nodules_per_scan = np.zeros(len(uids), dtype=np.int64)
    counts = dict(n_tp=0, n_fp=0, n_missed=0, n_candidates=0, n_candidates_dropped=0,
                  n_ignored_excluded=0, n_ignored_duplicate=0)
    empty = np.zeros((0, 3))
    for s, uid in enumerate(uids):
        g = cand_g.get(uid)
        if g is None:
            c_xyz, c_p = empty, np.zeros(0)
        else:
            c_p_all = g["probability"].to_numpy(float)
            keep = _top_candidates(c_p_all, max_n)
            counts["n_candidates_dropped"] += len(c_p_all) - len(keep)
            c_xyz = g[xyz].to_numpy(float)[keep]
            c_p = c_p_all[keep]
        counts["n_candidates"] += len(c_p)
        a = ann_g.get(uid)
        a_xyz = empty if a is None else a[xyz].to_numpy(float)
        a_r2 = np.zeros(0) if a is None else _radius_squared(a["diameter_mm"].to_numpy(float))
        nodules_per_scan[s] = len(a_xyz)
        e = exc_g.get(uid)
        e_xyz = empty if e is None else e[xyz].to_numpy(float)
        e_r2 = np.zeros(0) if e is None else _radius_squared(e["diameter_mm"].to_numpy(float))

        d2 = _sq_dist(c_xyz, a_xyz)
        hit = d2 < a_r2[None, :]                              # (n_cand, n_nodules)
        on_nodule = hit.any(axis=1)
        a_d = np.zeros(0) if a is None else a["diameter_mm"].to_numpy(float)
        for j in range(hit.shape[1]):
            m = hit[:, j]
            found = bool(m.any())
            best = float(c_p[m].max()) if found else math.nan
            rank = int((c_p > best).sum()) if found else -1
            if found:
                scan_l.append(s)
                prob_l.append(best)
                tp_l.append(True)
                counts["n_tp"] += 1
                counts["n_ignored_duplicate"] += int(m.sum()) - 1
            else:
                counts["n_missed"] += 1
            near = int(np.argmin(d2[:, j])) if len(c_p) else None
            rows.append((uid, *a_xyz[j], a_d[j], found, best, rank,
                         math.nan if near is None else math.sqrt(d2[near, j]),
                         math.nan if near is None else float(c_p[near])))
        on_excluded = (_sq_dist(c_xyz, e_xyz) < e_r2[None, :]).any(axis=1) & ~on_nodule
        counts["n_ignored_excluded"] += int(on_excluded.sum())
        fp = ~on_nodule & ~on_excluded
        counts["n_fp"] += int(fp.sum())
        scan_l.extend([s] * int(fp.sum()))
        prob_l.extend(c_p[fp].tolist())
        tp_l.extend([False] * int(fp.sum()))
    nodules = pd.DataFrame(rows, columns=[c for c in NODULE_COLUMNS if c != "found_at_fps_per_scan"])
    return (np.asarray(scan_l, dtype=np.int64), np.asarray(prob_l, dtype=float),
            np.asarray(tp_l, dtype=bool), nodules_per_scan, counts, nodules)



def froc(annotations: pd.DataFrame, candidates: pd.DataFrame, *, excluded: pd.DataFrame | None = None,
         seriesuids: list | None = None, fps_per_scan=FROC_POINTS, max_candidates_per_scan: int | None = 100,
         n_bootstrap: int = 1000, seed: int | None = 0, confidence: float = 0.95) -> FrocResult:
    """The LUNA16 FROC and CPM of a set of candidates (see the module docstring for the rules).

    Parameters
    ----------
    annotations : DataFrame
        ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (world mm), one row per nodule.
    candidates : DataFrame
        ``seriesuid, coordX, coordY, coordZ, probability``.
    excluded : DataFrame, optional
        Findings whose hits are ignored (``annotations_excluded.csv``); same columns as
        ``annotations``.  A negative diameter means 10 mm.
    seriesuids : list of str, optional
        The scans evaluated; every one counts in the FP/scan denominator even with no
        candidate.  Default: the union of the scans in ``annotations`` and ``candidates``.
        Rows of scans not in the list are ignored (as in the official script).
    fps_per_scan : sequence of float
        Operating points; the CPM is the mean sensitivity at them.
    max_candidates_per_scan : int or None
        Keep only the most suspicious candidates per scan (official rule, ties at the cut
        dropped); None or 0 keeps all.
    n_bootstrap : int
        Bootstrap samples over scans for the confidence intervals (0: none).
    seed : int, optional
        Seed of the bootstrap.
    confidence : float
        Two-sided level of the intervals.

    Returns
    -------
    FrocResult
    """
    _check_columns(annotations, ANNOTATION_COLUMNS, "annotations")
    _check_columns(candidates, CANDIDATE_EVAL_COLUMNS, "candidates")
    if excluded is None:
        excluded = pd.DataFrame({c: pd.Series(dtype=float) for c in ANNOTATION_COLUMNS})
    _check_columns(excluded, ANNOTATION_COLUMNS, "excluded annotations")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1). Received confidence={confidence}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0. Received n_bootstrap={n_bootstrap}")
    rates = tuple(float(r) for r in fps_per_scan)
    if not rates or min(rates) <= 0:
        raise ValueError(f"fps_per_scan must be positive FP/scan rates. Received {fps_per_scan}")

    def norm(df, cols):
        out = df[cols].copy()
        out["seriesuid"] = out["seriesuid"].astype(str)
        for c in cols[1:]:
            out[c] = pd.to_numeric(out[c], errors="raise").astype(float)
        return out

    ann = norm(annotations, ANNOTATION_COLUMNS)
    exc = norm(excluded, ANNOTATION_COLUMNS)
    cand = norm(candidates, CANDIDATE_EVAL_COLUMNS)
    for name, df, cols in (("annotations", ann, ANNOTATION_COLUMNS), ("candidates", cand, CANDIDATE_EVAL_COLUMNS),
                           ("excluded annotations", exc, ANNOTATION_COLUMNS)):
        bad = ~np.isfinite(df[cols[1:]].to_numpy(float)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: every coordinate, diameter and probability must be a finite "
                             f"number; {int(bad.sum())} row(s) are not, e.g. row {row}: "
                             f"{df.iloc[row].to_dict()}")
    if seriesuids is None:
        uids = sorted(set(ann["seriesuid"]) | set(cand["seriesuid"]))
    else:
        uids = list(dict.fromkeys(str(u) for u in seriesuids))
    if not uids:
        raise ValueError("no scan to evaluate: the annotations and candidates are empty and no "
                         "seriesuids were given")
    uid_set = set(uids)
    n_outside = int((~cand["seriesuid"].isin(uid_set)).sum())

    scan, prob, is_tp, nod_per_scan, counts, nodules = _match_scans(ann, cand, exc, uids,
                                                                    max_candidates_per_scan)
    counts["n_candidates_outside"] = n_outside
    n_scans = len(uids)
    fp_sorted = np.sort(prob[~is_tp])
    n_fp_at_least = len(fp_sorted) - np.searchsorted(fp_sorted, nodules["probability"].to_numpy(float), side="left")
    nodules.insert(NODULE_COLUMNS.index("found_at_fps_per_scan"), "found_at_fps_per_scan",
                   np.where(nodules["found"].to_numpy(bool), n_fp_at_least / n_scans, np.nan))
    n_nodules = int(nod_per_scan.sum())
    if n_nodules == 0:
        raise ValueError("no nodule in the evaluated scans: the sensitivity is undefined. "
                         f"Received {len(ann)} annotation row(s) for {n_scans} scan(s)")

    order = np.argsort(-prob, kind="mergesort")
    p_s, tp_s, scan_s = prob[order], is_tp[order], scan[order]
    group_end = np.flatnonzero(np.r_[p_s[1:] != p_s[:-1], True]) if len(p_s) else np.zeros(0, int)
    ones = np.ones(len(p_s))
    fps, sens = froc_curve(p_s, tp_s, ones, group_end, float(n_nodules), n_scans)
    thresholds = np.concatenate([[np.inf], p_s[group_end]])
    at = sensitivity_at(fps, sens, rates)
    sensitivities = {r: float(v) for r, v in zip(rates, at)}
    cpm = float(np.mean(at))

    ci, band_fps, band_low, band_high, n_valid = bootstrap_froc(
        p_s, tp_s, scan_s, group_end, nod_per_scan, n_scans, rates, n_bootstrap=n_bootstrap, seed=seed,
        confidence=confidence)

    return FrocResult(sensitivities=sensitivities, cpm=cpm, ci=ci, fps=fps, sens=sens,
                      thresholds=thresholds, n_nodules=n_nodules, n_scans=n_scans, counts=counts,
                      nodules=nodules, band_fps=band_fps, band_low=band_low, band_high=band_high,
                      n_bootstrap=int(n_bootstrap), n_bootstrap_valid=n_valid, seed=seed,
                      confidence=float(confidence))


def format_froc(result: FrocResult) -> str:
    """A plain-text table: FP/scan, sensitivity, 95 % CI, then the CPM."""
    has_ci = bool(result.ci)
    level = f"  {100 * result.confidence:g}% CI" if has_ci else ""
    lines = [f"{'FP/scan':>8}  {'sensitivity':>11}" + level]
    for r, s in result.sensitivities.items():
        row = f"{fmt_rate(r):>8}  {s:11.4f}"
        if has_ci:
            lo, hi = result.ci[r]
            row += f"  [{lo:.4f}, {hi:.4f}]"
        lines.append(row)
    cpm = f"{'CPM':>8}  {result.cpm:11.4f}"
    if has_ci:
        lo, hi = result.ci["cpm"]
        cpm += f"  [{lo:.4f}, {hi:.4f}]"
    lines.append(cpm)
    c = result.counts
    lines.append(f"scans {result.n_scans}, nodules {result.n_nodules} ({c.get('n_tp', 0)} hit), "
                 f"candidates {c.get('n_candidates', 0)} ({c.get('n_fp', 0)} FP, "
                 f"{c.get('n_ignored_excluded', 0)} on excluded findings, "
                 f"{c.get('n_ignored_duplicate', 0)} duplicate hits, "
                 f"{c.get('n_candidates_dropped', 0)} beyond the per-scan cut)")
    if has_ci:
        lines.append(f"bootstrap: {result.n_bootstrap_valid} of {result.n_bootstrap} samples over scans, "
                     f"seed {result.seed}")
    return "\n".join(lines)
