"""The generalisation protocol: score a phantom family with one call.

Two families are defined in :mod:`lungcad.synthetic.domain`:

``validation``
    Small phantoms (``VALIDATION_SIZE``) of the ``randomized`` domain, the training ranges, at
    ``VALIDATION_SEED``.  Every choice of network or setting is made on it.
``shifted``
    Full-size phantoms of the ``shifted`` domain: slice thickness, kernel family and anatomy
    scale drawn inside the bands that no training draw may fall in (``HELD_OUT``), at
    ``SHIFTED_SEED``.  It is never used to choose anything: score it once per chosen network
    and record the commit that scored it.

:func:`score_family` writes the family (``lungcad synth``'s layout, once; later calls reuse
it), runs ``lungcad detect`` over it (resumable), then scores the FROC with a bootstrap CI and
the patient-level AUC and log-loss, and writes ``results.json`` with the commit, the weights'
sha256 and the largest P(cancer) of a healthy patient.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from lungcad.synthetic import domain as _domain

FAMILIES = {
    "validation": dict(domain="randomized", seed=_domain.VALIDATION_SEED,
                       patients=_domain.VALIDATION_PATIENTS, size=_domain.VALIDATION_SIZE),
    "shifted": dict(domain="shifted", seed=_domain.SHIFTED_SEED,
                    patients=_domain.SHIFTED_PATIENTS, size=_domain.SHIFTED_SIZE),
}


def family_spec(name: str, *, patients: int | None = None, size: int | None = None) -> dict[str, Any]:
    """The domain, seed, patient count and slice size of a family (counts may be lowered)."""
    if name not in FAMILIES:
        raise ValueError(f"family expected one of {sorted(FAMILIES)}. Received family={name!r}")
    spec = dict(FAMILIES[name], family=name)
    if patients is not None:
        if not 1 <= int(patients) <= spec["patients"]:
            raise ValueError(f"patients expected 1-{spec['patients']} for the {name} family. "
                             f"Received patients={patients}")
        spec["patients"] = int(patients)
    if size is not None:
        spec["size"] = int(size)
    return spec


def _commit() -> str | None:
    """The git commit of the lungcad checkout in use (with "-dirty" when it has changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def write_family(out_dir, spec: dict[str, Any], *, progress: bool = False) -> Path:
    """Write the family's phantoms as DICOM series under ``out_dir`` unless they are there.

    A folder written for another spec is an error, not silently reused.
    """
    from lungcad.errors import InputError
    from lungcad.synthetic import synth_dataset

    data = Path(out_dir)
    stamp = data / "family.json"
    want = {k: spec[k] for k in ("family", "domain", "seed", "patients", "size")}
    if stamp.exists():
        have = json.loads(stamp.read_text())
        if have != want:
            raise InputError(str(stamp), f"holds the family {have}, not {want}; use another --out")
        return data
    synth_dataset(data, patients=spec["patients"], seed=spec["seed"], layout="dicom", size=spec["size"],
                  domain=spec["domain"], progress=progress)
    stamp.write_text(json.dumps(want, indent=1) + "\n")
    return data


def score_family(name: str, out_dir, *, pipeline=None, patients: int | None = None, size: int | None = None,
                 n_bootstrap: int = 1000, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Write (once), detect and score one family; returns and writes ``out_dir/results.json``.

    Parameters
    ----------
    name : {"validation", "shifted"}
    out_dir : path
        ``data/`` (the phantoms), ``detect/`` (``lungcad detect``'s outputs) and
        ``results.json``.
    pipeline : Pipeline, PipelineConfig, TOML path or None
        What :func:`lungcad.api.detect` takes.
    patients, size : int, optional
        Fewer patients or another slice size than the family's (for a quick look; the
        results say so).
    n_bootstrap, seed : int
        The FROC's bootstrap over scans.
    """
    from lungcad.api import detect, make_pipeline
    from lungcad.metrics import froc, patient_metrics, read_annotations, read_candidates
    from lungcad.results.tables import cell_value
    from lungcad.train.model_card import sha256

    commit = _commit()   # the code this run loads, before a long run lets other commits land
    spec = family_spec(name, patients=patients, size=size)
    out = Path(out_dir)
    data = write_family(out / "data", spec, progress=progress)
    pipe = make_pipeline(pipeline)
    run = detect(data, out / "detect", pipeline=pipe, progress=progress)
    cand_path = out / "detect" / "candidates.csv"
    ann = read_annotations(data / "annotations.csv")
    cand = read_candidates(cand_path)
    uids = sorted(pd.read_csv(out / "detect" / "patients.csv", dtype=str)["seriesuid"].unique())
    fr = froc(ann, cand, seriesuids=uids, n_bootstrap=n_bootstrap, seed=seed)
    labels = pd.read_csv(data / "labels.csv", dtype={"patient_id": str})
    preds = pd.read_csv(out / "detect" / "patients.csv", dtype={"patient_id": str})
    preds["patient_id"] = preds["patient_id"].map(cell_value)
    pm = patient_metrics(labels, preds)
    joined = labels.merge(preds.groupby("patient_id", as_index=False)["cancer_probability"].max(), on="patient_id")
    healthy = joined.loc[joined["cancer"] == 0, "cancer_probability"]
    cfg = pipe.config
    weights = {}
    for role, w in (("segmenter", cfg.candidates.weights), ("fpr", cfg.fpr.weights)):
        path = Path(cfg.resolve_weights(w))
        weights[role] = {"file": str(w), "sha256": sha256(path)}
    froc_d = fr.to_dict()
    result = {
        "family": spec, "full_family": spec["patients"] == FAMILIES[name]["patients"]
        and spec["size"] == FAMILIES[name]["size"],
        "commit": commit, "weights": weights, "config_hash": cfg.hash(),
        "scans": {"done": run.get("done"), "failed": run.get("failed"), "scored": len(uids)},
        "froc": {"cpm": froc_d.get("cpm"), "ci": froc_d.get("ci"), "sensitivities": froc_d.get("sensitivities"),
                 "n_nodules": fr.n_nodules, "n_scans": fr.n_scans},
        "patients": {"auc": pm.get("auc"), "log_loss": pm.get("log_loss"), "n": pm.get("n"),
                     "n_cancer": int(joined["cancer"].sum()),
                     "max_healthy_probability": float(healthy.max()) if len(healthy) else None},
        "choose_on_it": name == "validation",
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def format_result(r: dict[str, Any]) -> str:
    f, p = r["froc"], r["patients"]
    ci = (f.get("ci") or {}).get("cpm")
    ci_s = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    auc = "n/a" if p["auc"] is None else f"{p['auc']:.3f}"
    mh = "n/a" if p["max_healthy_probability"] is None else f"{p['max_healthy_probability']:.3f}"
    return (f"{r['family']['family']} family ({r['family']['patients']} patients, {r['family']['size']} px, "
            f"seed {r['family']['seed']}): CPM {f['cpm']:.3f}{ci_s}, {f['n_nodules']} nodules in {f['n_scans']} "
            f"scans; patient AUC {auc}, log-loss {p['log_loss']:.3f} ({p['n_cancer']} of {p['n']} with cancer); "
            f"highest healthy P(cancer) {mh}; commit {r['commit']}")
