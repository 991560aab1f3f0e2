"""Evaluation: the LUNA16 FROC for detection, log-loss and ROC AUC for patients.

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

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcad.errors import InputError

#: Operating points of the LUNA16 CPM, in average false positives per scan.
FROC_POINTS = (0.125, 0.25, 0.5, 1, 2, 4, 8)
#: Official default diameter (mm) for findings whose diameter is negative (``-1``).
DEFAULT_EXCLUDED_DIAMETER_MM = 10.0

ANNOTATION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
CANDIDATE_EVAL_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


# ----------------------------------------------------------------------------- readers

def _read_csv(path, *, required: list[str], what: str, str_columns=("seriesuid",),
              unquote: bool = False) -> pd.DataFrame:
    """Read a CSV; ``str_columns`` (or every column when None) stay text, ids such as ``0015`` intact.

    ``unquote``: the file may be one lungcad wrote, whose text cells that looked like a
    spreadsheet formula carry a leading quote (:func:`lungcad.results.tables.safe_cell`); it is removed
    from the text columns so that ids join with the labels they were read from.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, f"{what} not found (no such file)")
    dtype = str if str_columns is None else {c: str for c in str_columns}
    try:
        # pandas' default float parser rounds correctly (same doubles as Python's float())
        df = pd.read_csv(p, dtype=dtype, skipinitialspace=True, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise InputError(p, f"cannot read {what} as CSV: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(p, f"{what} needs the columns {required}; missing {missing}. "
                            f"Received columns {list(df.columns)}")
    for c in required:
        if str_columns is None or c in str_columns:
            continue
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(p, f"{what}: column '{c}' must be numbers; row {row + 2} holds "
                                f"{df[c].iloc[row]!r}")
        df[c] = values.astype(float)
    if unquote:
        from lungcad.results.tables import cell_value
        for c in df.columns:
            if not pd.api.types.is_numeric_dtype(df[c].dtype):
                df[c] = df[c].map(cell_value)
    return df


def read_annotations(path) -> pd.DataFrame:
    """Read LUNA16 ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``).

    Also reads ``annotations_excluded.csv``, which has the same columns.  Extra columns
    are kept.  A missing file or column raises :class:`~lungcad.errors.InputError`.
    """
    return _read_csv(path, required=ANNOTATION_COLUMNS, what="annotations")


def read_excluded(path) -> pd.DataFrame:
    """Read LUNA16 ``annotations_excluded.csv`` (same columns as ``annotations.csv``)."""
    return _read_csv(path, required=ANNOTATION_COLUMNS, what="excluded annotations")


def read_candidates(path) -> pd.DataFrame:
    """Read a candidate file (``seriesuid,coordX,coordY,coordZ,probability``, more columns allowed).

    This is the LUNA16 submission format, and the first columns of lungcad's
    ``candidates.csv``.
    """
    return _read_csv(path, required=CANDIDATE_EVAL_COLUMNS, what="candidates", unquote=True)


def read_seriesuids(path) -> list[str]:
    """Read a list of scans: LUNA16 ``seriesuids.csv`` (no header, one UID a line).

    The first comma-separated field of each line is taken; a first line ``seriesuid``
    is a header and is skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "list of series UIDs not found (no such file)")
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(p, f"cannot read the list of series UIDs: {e}") from e
    uids = [ln.split(",")[0].strip() for ln in lines if ln.strip()]
    if uids and uids[0].lower() == "seriesuid":
        uids = uids[1:]
    if not uids:
        raise InputError(p, "the list of series UIDs is empty")
    return uids


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
            return k if isinstance(k, str) else _fmt_rate(k)
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


def _fmt_rate(r: float) -> str:
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


def _curve(prob_sorted: np.ndarray, tp_sorted: np.ndarray, weight: np.ndarray, group_end: np.ndarray,
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
    fps, sens = _curve(p_s, tp_s, ones, group_end, float(n_nodules), n_scans)
    thresholds = np.concatenate([[np.inf], p_s[group_end]])
    at = sensitivity_at(fps, sens, rates)
    sensitivities = {r: float(v) for r, v in zip(rates, at)}
    cpm = float(np.mean(at))

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
            f_b, s_b = _curve(p_s, tp_s, draws[scan_s], group_end, n_les, n_scans)
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
        row = f"{_fmt_rate(r):>8}  {s:11.4f}"
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


def _new_figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> None:
    from lungcad.results.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def plot_froc(result: FrocResult, path, *, title: str | None = None) -> Path:
    """Write the FROC curve as a PNG: the curve, the operating points, their CIs and the band.

    The x axis is logarithmic (base 2) from 1/8 to 8 FP/scan, as in the LUNA16 paper.
    """
    rates = np.asarray(list(result.sensitivities), dtype=float)
    lo_x, hi_x = float(rates.min()), float(rates.max())
    xs = np.geomspace(lo_x / 1.5, hi_x * 1.5, 400)
    ys = sensitivity_at(result.fps, result.sens, xs)
    fig = _new_figure(6.4, 4.8, 100)
    ax = fig.add_subplot(1, 1, 1)
    if len(result.band_fps):
        ax.fill_between(result.band_fps, result.band_low, result.band_high, color="tab:blue",
                        alpha=0.15, linewidth=0, label=f"{100 * result.confidence:g} % bootstrap band")
    ax.plot(xs, ys, color="tab:blue", lw=2, label=f"FROC (CPM {result.cpm:.3f})")
    pts = np.asarray(list(result.sensitivities.values()), dtype=float)
    if result.ci:
        lo = np.array([result.ci[r][0] for r in result.sensitivities])
        hi = np.array([result.ci[r][1] for r in result.sensitivities])
        ax.errorbar(rates, pts, yerr=[pts - lo, hi - pts], fmt="o", color="tab:red", capsize=3,
                    label=f"operating points, {100 * result.confidence:g} % CI")
    else:
        ax.plot(rates, pts, "o", color="tab:red", label="operating points")
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo_x / 1.5, hi_x * 1.5)
    ax.set_xticks(rates)
    ax.set_xticklabels([_fmt_rate(r) for r in rates])
    ax.set_ylim(0, 1.02)
    ax.set_yticks(np.linspace(0, 1, 11))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title or f"FROC: {result.n_nodules} nodules in {result.n_scans} scans")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save_png(fig, path)
    return Path(path)


# ----------------------------------------------------------------------------- patients

LABEL_ID_COLUMNS = ("patient_id", "id")
LABEL_COLUMNS = ("cancer", "label")
PRED_ID_COLUMNS = ("patient_id", "id")
PRED_PROB_COLUMNS = ("cancer_probability", "cancer", "probability")


def _pick(df: pd.DataFrame, given: str | None, options: tuple[str, ...], role: str, table: str) -> str:
    cols = [str(c) for c in df.columns]
    if given is not None:
        if given not in cols:
            raise ValueError(f"{table}: the {role} column '{given}' is missing. "
                             f"Received columns {cols}")
        return given
    for c in options:
        if c in cols:
            return c
    raise ValueError(f"{table}: no {role} column; expected one of {list(options)}. Received columns {cols}")


def read_labels(path) -> pd.DataFrame:
    """Read a labels CSV (DSB2017 ``stage1_labels.csv`` id,cancer or lungcad's patient_id,cancer).

    Every column is read as text (patient ids such as ``0015`` stay intact);
    :func:`patient_metrics` converts the label column.
    """
    return _read_csv(path, required=[], what="labels", str_columns=None)


def read_predictions(path) -> pd.DataFrame:
    """Read predictions (lungcad ``patients.csv``, or a DSB2017 submission id,cancer), all columns as text."""
    return _read_csv(path, required=[], what="predictions", str_columns=None, unquote=True)


def roc_auc(y, p) -> float:
    """ROC AUC by the Mann-Whitney statistic; tied scores count one half.

    Labels may be soft (a malignancy target in [0, 1]): a label of 0.5 or more is a
    positive, anything below is a negative.  Booleans and 0/1 labels are the same as
    before.  This is the one ROC AUC of lungcad; training's held-out metrics use it too.

    Returns NaN when ``y`` holds a single class; a NaN label is a ValueError (drop the
    unlabelled ones first).
    """
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=float).reshape(-1)
    if np.isnan(y).any():
        raise ValueError(f"roc_auc: {int(np.isnan(y).sum())} of {len(y)} labels are NaN; "
                         f"expected labels in [0, 1] (>= 0.5 is a positive)")
    y = y >= 0.5
    p = np.asarray(p, dtype=float).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"roc_auc: expected one score per label. Received {len(y)} labels and {len(p)} scores")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)  # average ranks: a tie between a positive and a negative counts 1/2
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y, p, *, eps: float = 1e-15) -> float:
    """Binary log-loss (natural log), probabilities clipped to [eps, 1 - eps] as in Kaggle DSB2017."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def join_patients(labels: pd.DataFrame, predictions: pd.DataFrame, *, id_col: str | None = None,
                  label_col: str | None = None, prob_col: str | None = None):
    """Pair each labelled patient with its prediction (the highest of its series).

    Returns
    -------
    (DataFrame, list, list, dict)
        The pairs (columns ``id``, ``y``, ``p``, sorted by id), the labelled patients with no
        prediction, the predicted patients with no label, and the columns used
        (``{"labels": [id, label], "predictions": [id, probability]}``).

    Raises
    ------
    ValueError
        When a column is missing, a label is not 0/1, a patient has both labels, a
        probability is outside [0, 1], or no patient is in both tables.
    """
    lid = _pick(labels, id_col, LABEL_ID_COLUMNS, "patient id", "labels")
    lab = _pick(labels, label_col, LABEL_COLUMNS, "label", "labels")
    pid = _pick(predictions, id_col, PRED_ID_COLUMNS, "patient id", "predictions")
    prb = _pick(predictions, prob_col, PRED_PROB_COLUMNS, "probability", "predictions")

    lt = pd.DataFrame({"id": labels[lid].astype(str).str.strip(),
                       "y": pd.to_numeric(labels[lab], errors="coerce")})
    bad = ~lt["y"].isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"labels: '{lab}' must be 0 or 1; {int(bad.sum())} row(s) are not, "
                         f"e.g. {labels[lab].iloc[row]!r} for patient {lt['id'].iloc[row]!r}")
    conflict = lt.groupby("id")["y"].nunique()
    if (conflict > 1).any():
        raise ValueError(f"labels: patients with both labels 0 and 1: "
                         f"{sorted(conflict[conflict > 1].index)[:5]}")
    lt = lt.drop_duplicates("id")
    pt = pd.DataFrame({"id": predictions[pid].astype(str).str.strip(),
                       "p": pd.to_numeric(predictions[prb], errors="coerce")})
    bad = ~pt["p"].between(0.0, 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"predictions: '{prb}' must be probabilities in [0, 1]; {int(bad.sum())} "
                         f"row(s) are not, e.g. {predictions[prb].iloc[row]!r} for patient "
                         f"{pt['id'].iloc[row]!r}")
    pt = pt.groupby("id", sort=True)["p"].max().reset_index()
    both = lt.merge(pt, on="id", how="inner").sort_values("id", kind="mergesort")
    missing = sorted(set(lt["id"]) - set(pt["id"]))
    unlabelled = sorted(set(pt["id"]) - set(lt["id"]))
    if both.empty:
        raise ValueError(f"no patient is in both tables: {len(lt)} labelled (e.g. "
                         f"{lt['id'].head(3).tolist()}), {len(pt)} predicted (e.g. {pt['id'].head(3).tolist()})")
    return both, missing, unlabelled, {"labels": [lid, lab], "predictions": [pid, prb]}


def patient_metrics(labels: pd.DataFrame, predictions: pd.DataFrame, *, id_col: str | None = None,
                    label_col: str | None = None, prob_col: str | None = None,
                    n_bins: int = 10) -> dict[str, Any]:
    """Patient-level log-loss, ROC AUC and calibration of cancer probabilities.

    Parameters
    ----------
    labels : DataFrame
        ``id,cancer`` (DSB2017 ``stage1_labels.csv``) or ``patient_id,cancer``.
    predictions : DataFrame
        lungcad ``patients.csv`` (``patient_id, seriesuid, cancer_probability``) or a DSB2017
        submission (``id,cancer``).  A patient with several rows (several series) gets the
        highest probability.
    id_col, label_col, prob_col : str, optional
        Column names, when they are not among the detected ones.  ``id_col`` applies to
        both tables.
    n_bins : int
        Equal-width calibration bins over [0, 1].

    Returns
    -------
    dict
        ``n`` (patients scored), ``n_positive``, ``log_loss``, ``auc`` (None with one class),
        ``brier``, ``calibration`` (a list of bins: ``lo, hi, n, mean_predicted,
        fraction_positive``), ``missing_predictions`` (labelled patients with no prediction)
        and ``unlabelled_predictions``, and the columns used.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1. Received n_bins={n_bins}")
    both, missing, unlabelled, cols = join_patients(labels, predictions, id_col=id_col,
                                                    label_col=label_col, prob_col=prob_col)
    y = both["y"].to_numpy(int)
    p = both["p"].to_numpy(float)
    auc = roc_auc(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    bins = []
    for k in range(n_bins):
        m = which == k
        bins.append({"lo": float(edges[k]), "hi": float(edges[k + 1]), "n": int(m.sum()),
                     "mean_predicted": float(p[m].mean()) if m.any() else None,
                     "fraction_positive": float(y[m].mean()) if m.any() else None})
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "log_loss": log_loss(y, p),
        "auc": None if np.isnan(auc) else auc,
        "brier": float(np.mean((p - y) ** 2)),
        "calibration": bins,
        "missing_predictions": missing,
        "unlabelled_predictions": unlabelled,
        "columns": cols,
    }


def format_patient_metrics(m: dict[str, Any]) -> str:
    """A plain-text summary of :func:`patient_metrics`."""
    auc = "n/a (one class only)" if m["auc"] is None else f"{m['auc']:.4f}"
    lines = [f"patients   {m['n']} ({m['n_positive']} with cancer)",
             f"log-loss   {m['log_loss']:.5f}",
             f"ROC AUC    {auc}",
             f"Brier      {m['brier']:.5f}"]
    if m["missing_predictions"]:
        lines.append(f"warning: {len(m['missing_predictions'])} labelled patient(s) have no prediction "
                     f"and are left out, e.g. {m['missing_predictions'][:3]}")
    if m["unlabelled_predictions"]:
        lines.append(f"note: {len(m['unlabelled_predictions'])} predicted patient(s) have no label")
    return "\n".join(lines)


def plot_calibration(metrics: dict[str, Any], path, *, title: str | None = None) -> Path:
    """Write a reliability diagram (observed vs predicted per bin, with counts) as a PNG."""
    bins = [b for b in metrics["calibration"] if b["n"]]
    fig = _new_figure(5.6, 6.4, 100)
    ax = fig.add_axes([0.14, 0.36, 0.8, 0.56])
    axh = fig.add_axes([0.14, 0.08, 0.8, 0.18], sharex=ax)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if bins:
        ax.plot([b["mean_predicted"] for b in bins], [b["fraction_positive"] for b in bins], "o-",
                color="tab:blue", label="observed")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Fraction with cancer")
    auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
    ax.set_title(title or f"Calibration: n={metrics['n']}, log-loss {metrics['log_loss']:.3f}, AUC {auc}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    cal = metrics["calibration"]
    axh.bar([(b["lo"] + b["hi"]) / 2 for b in cal], [b["n"] for b in cal],
            width=[(b["hi"] - b["lo"]) * 0.9 for b in cal], color="tab:blue", alpha=0.6)
    axh.set_xlabel("Predicted cancer probability")
    axh.set_ylabel("Patients")
    _save_png(fig, path)
    return Path(path)


def write_csv(df: pd.DataFrame, path) -> Path:
    """Write a table as CSV, atomically."""
    from lungcad.results import atomic_write_text, csv_text

    atomic_write_text(path, csv_text(df))
    return Path(os.fspath(path))


def write_json(obj: dict[str, Any], path) -> Path:
    """Write a dict as indented JSON, atomically."""
    import json

    from lungcad.results.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
    return Path(os.fspath(path))
