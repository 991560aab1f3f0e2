"""`lungcad calibrate`: fit [aggregate] calibration on the results of a real `lungcad detect` run."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcad.aggregate import calibrate
from lungcad.calibration import uncalibrated_probabilities
from lungcad.errors import InputError

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "sample_data" / "labels.csv"


def lungcad(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "lungcad", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "out"
    r = lungcad("detect", REPO / "sample_data", "-o", out, "--no-progress", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_fit_reads_the_run_and_undoes_its_calibration(detected, tmp_path):
    fit_json, png = tmp_path / "fit.json", tmp_path / "cal.png"
    r = lungcad("calibrate", "--labels", LABELS, detected, "--json", fit_json, "--plot", png)
    assert r.returncode == 0, r.stderr
    assert "patients              3 (2 with cancer)" in r.stdout
    assert "[aggregate]\ncalibration = [" in r.stdout
    fit = json.loads(fit_json.read_text())
    scale, shift = fit["calibration"]
    assert scale > 0 and np.isfinite(shift)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the uncalibrated noisy-OR, put through the calibration the run used, is what the run reported
    patients = pd.read_csv(detected / "patients.csv", dtype={"patient_id": str})
    run_cal = tuple(json.loads(next((detected / "scans").glob("*.json")).read_text())
                    ["config"]["aggregate"]["calibration"])
    reported = dict(zip(patients["patient_id"], patients["cancer_probability"]))
    assert len(fit["patients"]) == 3
    for row in fit["patients"]:
        assert calibrate(row["uncalibrated"], run_cal) == pytest.approx(reported[row["patient_id"]], abs=2e-6)
        assert row["calibrated"] == pytest.approx(calibrate(row["uncalibrated"], (scale, shift)), abs=1e-12)
    assert fit["as_run"]["log_loss"] == pytest.approx(
        -np.mean([np.log(reported[p["patient_id"]]) if p["cancer"] else np.log(1 - reported[p["patient_id"]])
                  for p in fit["patients"]]), abs=1e-4)


def test_a_scan_in_two_folders_counts_once(detected, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(detected, copy)
    table = uncalibrated_probabilities([detected, copy])
    assert len(table) == 3
    assert table["path"].str.startswith(str(detected)).all()


def test_runs_with_different_aggregate_settings_are_refused(detected, tmp_path):
    other = tmp_path / "other"
    (other / "scans").mkdir(parents=True)
    src = sorted((detected / "scans").glob("*.json"))[0]
    doc = json.loads(src.read_text())
    doc["config"]["aggregate"]["top_k"] = 3
    doc["series_uid"] = doc["series_uid"] + ".9"
    changed = other / "scans" / ("X" + src.name)
    changed.write_text(json.dumps(doc))
    r = lungcad("calibrate", "--labels", LABELS, detected, other)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "different [aggregate] settings" in r.stderr and changed.name in r.stderr
    # naming the settings recomputes every scan with them, so the runs may differ
    r = lungcad("calibrate", "--labels", LABELS, detected, other, "--top-k", "2", "--p-leak", "0.02")
    assert r.returncode == 0, r.stderr
    assert "noisy-OR recomputed with top_k = 2, p_leak = 0.02" in r.stdout
    assert "[aggregate]\ntop_k = 2\np_leak = 0.02\ncalibration = [" in r.stdout


def test_top_k_override_recomputes_the_noisy_or(detected):
    run = uncalibrated_probabilities([detected])
    one = uncalibrated_probabilities([detected], top_k=1)
    none = uncalibrated_probabilities([detected], top_k=0, p_leak=0.1)
    assert (one["probability"] <= run["probability"] + 1e-12).all()      # fewer causes, less probability
    assert np.allclose(none["probability"], 0.1)


def test_user_errors_are_one_line(detected, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_class = tmp_path / "labels.csv"
    one_class.write_text("patient_id,cancer\nSYN2017-000,1\nSYN2017-001,1\n")
    for labels, folder, message in [(LABELS, tmp_path / "nowhere", "nowhere: no such folder"),
                                     (LABELS, empty, "no scan results"),
                                     (tmp_path / "nolabels.csv", detected, "nolabels.csv"),
                                     (one_class, detected, "both classes")]:
        r = lungcad("calibrate", "--labels", labels, folder)
        assert r.returncode == 1, message
        assert message in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_run_without_fpr_probabilities_is_named(detected, tmp_path):
    bare = tmp_path / "bare"
    (bare / "scans").mkdir(parents=True)
    src = sorted((detected / "scans").glob("*.json"))[0]
    doc = json.loads(src.read_text())
    keep = [c for c in doc["candidate_columns"] if c not in ("nodule_prob", "malignancy_prob")]
    doc["candidate_columns"] = keep
    doc["candidates"] = [{k: c[k] for k in keep} for c in doc["candidates"]]
    (bare / "scans" / src.name).write_text(json.dumps(doc))
    with pytest.raises(InputError, match="no nodule_prob and malignancy_prob") as e:
        uncalibrated_probabilities([bare])
    assert src.name in str(e.value)
