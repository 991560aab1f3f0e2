"""The generalisation protocol: families from lungcad.synthetic.domain, written, detected and scored."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from lungcad.errors import InputError
from lungcad.metrics import froc, read_annotations, read_candidates
from lungcad.pipeline import Pipeline
from lungcad.protocol import family_spec, score_family, write_family
from lungcad.synthetic import domain
from test_pipeline import toy_classifier, toy_segmenter


def test_families_come_from_the_domain_module():
    v, s = family_spec("validation"), family_spec("shifted")
    assert (v["domain"], v["seed"], v["patients"], v["size"]) == (
        "randomized", domain.VALIDATION_SEED, domain.VALIDATION_PATIENTS, domain.VALIDATION_SIZE)
    assert (s["domain"], s["seed"], s["patients"], s["size"]) == ("shifted", domain.SHIFTED_SEED, 40, 512)
    with pytest.raises(ValueError, match="family expected"):
        family_spec("test")
    with pytest.raises(ValueError, match="patients expected 1-12"):
        family_spec("validation", patients=13)
    # training seeds must not reach into either family
    with pytest.raises(ValueError, match="validation family"):
        domain.check_training_seed(domain.VALIDATION_SEED - 5, 10)
    domain.check_training_seed(0, 1000)


def test_score_family_writes_detects_scores_and_resumes(tmp_path):
    pipe = Pipeline(segmenter=toy_segmenter, classifier=toy_classifier)
    r = score_family("validation", tmp_path, pipeline=pipe, patients=2, size=128, n_bootstrap=20)
    data = tmp_path / "data"
    meta = json.loads((data / "domain.json").read_text())
    assert meta["domain"] == "randomized"
    assert r["family"]["seed"] == domain.VALIDATION_SEED and not r["full_family"] and r["choose_on_it"]
    assert r["scans"] == {"done": 2, "failed": 0, "scored": 2}
    # the figures are those of the evaluation functions on the files written
    ann = read_annotations(data / "annotations.csv")
    cand = read_candidates(tmp_path / "detect" / "candidates.csv")
    uids = sorted(pd.read_csv(tmp_path / "detect" / "patients.csv", dtype=str)["seriesuid"])
    again = froc(ann, cand, seriesuids=uids, n_bootstrap=0)
    assert r["froc"]["cpm"] == pytest.approx(again.cpm) and r["froc"]["n_nodules"] == again.n_nodules
    assert r["patients"]["n"] == 2
    labels = pd.read_csv(data / "labels.csv")
    assert r["patients"]["n_cancer"] == int(labels["cancer"].sum())
    seg = pipe.config.resolve_weights(pipe.config.candidates.weights)
    assert r["weights"]["segmenter"]["sha256"] == hashlib.sha256(seg.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "results.json").read_text())["froc"]["cpm"] == pytest.approx(again.cpm)
    # a second call reuses the phantoms and skips the scans already done
    stamp = (data / "family.json").stat().st_mtime_ns
    r2 = score_family("validation", tmp_path, pipeline=pipe, patients=2, size=128, n_bootstrap=20)
    assert (data / "family.json").stat().st_mtime_ns == stamp
    assert r2["scans"]["done"] == 0 and r2["froc"]["cpm"] == pytest.approx(r["froc"]["cpm"])
    # a folder written for another family is refused, not reused
    with pytest.raises(InputError, match="holds the family"):
        write_family(data, family_spec("validation", patients=3, size=128))
