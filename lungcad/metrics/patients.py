"""Patient-level metrics of cancer probabilities: the one ROC AUC and log-loss of lungcad, calibration."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

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
