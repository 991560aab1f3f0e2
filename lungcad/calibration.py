"""Fit the patient-probability calibration of a pipeline on labelled patients.

``lungcad calibrate --labels L OUT [OUT ...]`` reads the per-scan results of one or more
``lungcad detect`` output folders, recomputes each scan's noisy-OR *without* calibration from
its candidate table and its run's ``[aggregate] top_k`` and ``p_leak``, fits the two numbers of
``[aggregate] calibration`` (:func:`lungcad.aggregate.fit_calibration`) to the labels, and
reports the log-loss before and after.  The fit needs its own patients: fitted on the
patients it is then judged on, its log-loss is optimistic.

>>> from lungcad.calibration import fit_results
>>> fit = fit_results(labels_df, ["out_calibration/"])       # doctest: +SKIP
>>> fit["calibration"]                                        # doctest: +SKIP
(0.61, -0.93)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungcad.errors import InputError

__all__ = ["uncalibrated_probabilities", "fit_results", "format_fit", "toml_lines"]


def uncalibrated_probabilities(result_dirs, *, top_k: int | None = None,
                               p_leak: float | None = None) -> pd.DataFrame:
    """Each scan's cancer probability before calibration, from ``lungcad detect`` output folders.

    Parameters
    ----------
    result_dirs : list of path
        Output folders of ``lungcad detect`` (each with ``scans/*.json``).
    top_k, p_leak : optional
        The noisy-OR's settings to recompute with; default: the runs' own (which must agree).

    Returns
    -------
    DataFrame
        One row per scan: ``patient_id, seriesuid, probability`` (the noisy-OR with the run's
        ``top_k`` and ``p_leak``, no calibration), ``cancer_probability`` (what the run reported)
        and ``path`` (the scan's JSON).  A scan found in two folders is taken once, from the
        first.

    Raises
    ------
    InputError
        When a folder is missing or holds no scan results, a scan's JSON is unreadable or has no
        FPR probabilities, or the scans were made with different ``top_k`` / ``p_leak``.
    """
    from lungcad.aggregate import IDENTITY, aggregate
    from lungcad.results.folder import read_json, scan_files

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    settings: dict[tuple, Path] = {}
    for d in (Path(x) for x in result_dirs):
        if not d.is_dir():
            raise InputError(d, "no such folder")
        files = scan_files(d)
        if not files:
            raise InputError(d, "no scan results in it (scans/*.json); is it a `lungcad detect` output folder?")
        for f in files:
            if f.stem in seen:
                continue
            seen.add(f.stem)
            doc = read_json(f)
            agg = ((doc.get("config") or {}).get("aggregate") or {})
            if "top_k" not in agg or "p_leak" not in agg:
                raise InputError(f, "the scan's config has no [aggregate] top_k and p_leak")
            key = (int(agg["top_k"]) if top_k is None else int(top_k),
                   float(agg["p_leak"]) if p_leak is None else float(p_leak))
            settings.setdefault(key, f)
            if len(settings) > 1:
                (k0, f0), (k1, f1) = list(settings.items())[:2]
                raise InputError(f, f"scans made with different [aggregate] settings cannot share one "
                                    f"calibration: top_k, p_leak = {k0} in {f0} and {k1} here")
            cols = doc.get("candidate_columns") or []
            cands = pd.DataFrame(doc.get("candidates") or [], columns=cols or None)
            if len(cands) and not {"nodule_prob", "malignancy_prob"} <= set(cands.columns):
                raise InputError(f, "the candidates have no nodule_prob and malignancy_prob (a pipeline "
                                    "without an FPR stage has no patient probability to calibrate)")
            if len(cands):
                cands = cands[["nodule_prob", "malignancy_prob"]].astype(float)
                if cands.isna().any().any():
                    raise InputError(f, "some candidates have no nodule_prob or malignancy_prob")
            try:
                p = aggregate(cands, top_k=key[0], p_leak=key[1], calibration=IDENTITY)
            except ValueError as e:
                raise InputError(f, str(e)) from e
            rows.append({"patient_id": str(doc["patient_id"]), "seriesuid": str(doc["series_uid"]),
                         "probability": p, "cancer_probability": float(doc["cancer_probability"]),
                         "path": str(f)})
    return pd.DataFrame(rows, columns=["patient_id", "seriesuid", "probability", "cancer_probability",
                                       "path"])


def fit_results(labels: pd.DataFrame, result_dirs, *, id_col: str | None = None,
                label_col: str | None = None, top_k: int | None = None,
                p_leak: float | None = None) -> dict[str, Any]:
    """Fit ``[aggregate] calibration`` to labelled patients of ``lungcad detect`` output folders.

    A patient with several series counts once, with the highest probability of its series
    (as :func:`lungcad.metrics.patient_metrics` scores it).  ``top_k`` and ``p_leak`` recompute
    the noisy-OR with other settings than the runs' (see :func:`uncalibrated_probabilities`);
    the fit is for those settings, and the result names them.

    Returns
    -------
    dict
        ``calibration`` (scale, shift), ``n``, ``n_positive``, ``before`` and ``after`` (log-loss,
        Brier and ROC AUC of the uncalibrated and the calibrated probabilities on these
        patients), ``as_run`` (the same for the probabilities the runs reported),
        ``missing_predictions``, ``unlabelled_predictions``, ``patients`` (id, label,
        uncalibrated and calibrated probability) and ``aggregate`` (the ``top_k`` and
        ``p_leak`` that were overridden, else empty).
    """
    from lungcad.aggregate import calibrate, fit_calibration
    from lungcad.metrics import join_patients, log_loss, roc_auc

    scans = uncalibrated_probabilities(result_dirs, top_k=top_k, p_leak=p_leak)
    if id_col is not None:
        scans[id_col] = scans["patient_id"]
    try:
        both, missing, unlabelled, _ = join_patients(labels, scans, id_col=id_col, label_col=label_col,
                                                     prob_col="probability")
        as_run, *_ = join_patients(labels, scans, id_col=id_col, label_col=label_col,
                                   prob_col="cancer_probability")
        y = both["y"].to_numpy(int)
        p = both["p"].to_numpy(float)
        cal = fit_calibration(p, y)
    except ValueError as e:
        raise InputError(None, str(e)) from e
    q = np.asarray(calibrate(p, cal), dtype=float)

    def scores(prob, labels_):
        auc = roc_auc(labels_, prob)
        return {"log_loss": log_loss(labels_, prob), "brier": float(np.mean((prob - labels_) ** 2)),
                "auc": None if np.isnan(auc) else auc}

    return {
        "calibration": cal,
        "n": int(len(y)), "n_positive": int(y.sum()),
        "before": scores(p, y), "after": scores(q, y),
        "as_run": scores(as_run["p"].to_numpy(float), as_run["y"].to_numpy(int)),
        "missing_predictions": missing, "unlabelled_predictions": unlabelled,
        "aggregate": {k: v for k, v in (("top_k", top_k), ("p_leak", p_leak)) if v is not None},
        "patients": [{"patient_id": i, "cancer": int(t), "uncalibrated": float(a), "calibrated": float(b)}
                     for i, t, a, b in zip(both["id"], y, p, q)],
    }


def toml_lines(calibration, aggregate: dict[str, Any] | None = None) -> str:
    """The pipeline TOML lines that use a fitted calibration (with the settings it was fitted for)."""
    scale, shift = calibration
    lines = ["[aggregate]"] + [f"{k} = {v!r}" for k, v in (aggregate or {}).items()]
    return "\n".join(lines + [f"calibration = [{scale:.4f}, {shift:.4f}]"])


def format_fit(fit: dict[str, Any]) -> str:
    """A plain-text summary of :func:`fit_results`."""
    def row(name, s):
        auc = "n/a" if s["auc"] is None else f"{s['auc']:.4f}"
        return f"{name:<22}log-loss {s['log_loss']:.4f}   Brier {s['brier']:.4f}   ROC AUC {auc}"

    scale, shift = fit["calibration"]
    agg = fit.get("aggregate") or {}
    lines = [f"patients              {fit['n']} ({fit['n_positive']} with cancer)"
             + (f"; noisy-OR recomputed with {', '.join(f'{k} = {v}' for k, v in agg.items())}" if agg else ""),
             row("as the runs reported", fit["as_run"]),
             row("uncalibrated", fit["before"]),
             row("calibrated (fitted)", fit["after"]),
             f"calibration           scale {scale:.4f}, shift {shift:.4f}",
             "(the fitted figures are on the patients the fit saw; judge it on others)"]
    if fit["missing_predictions"]:
        lines.append(f"warning: {len(fit['missing_predictions'])} labelled patient(s) have no scan result "
                     f"and are left out, e.g. {fit['missing_predictions'][:3]}")
    if fit["unlabelled_predictions"]:
        lines.append(f"note: {len(fit['unlabelled_predictions'])} scanned patient(s) have no label")
    lines += ["", "To use it, put these lines in the pipeline TOML:", toml_lines(fit["calibration"], fit.get("aggregate"))]
    return "\n".join(lines)
