"""`lungcad detect` driven as a subprocess, the way users run it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from lungcad.io import write_dicom_series
from lungcad.synthetic import generate_phantom
from lungcad.volume import CTVolume

REPO = Path(__file__).resolve().parents[1]
LUNA_COLS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def lungcad(*args, timeout=600, env=None):
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lungcad", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


def small_patient(root: Path, seed: int, pid: str) -> Path:
    ph = generate_phantom(seed=seed, shape=(40, 160, 160))
    ph.volume.patient_id = pid
    ph.volume.series_uid = f"1.2.826.0.1.3680043.99.{seed}"
    d = root / pid / "ct"
    write_dicom_series(ph.volume, d, seed=seed)
    return d


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    for i in range(3):
        small_patient(root, 100 + i, f"P{i}")
    return root


@pytest.fixture(scope="module")
def reference_run(batch, tmp_path_factory):
    """One plain run over the batch, that the resumed and the sharded runs must equal."""
    ref = tmp_path_factory.mktemp("ref")
    r = lungcad("detect", batch, "-o", ref, "--no-progress")
    assert r.returncode == 0, r.stderr
    return ref


def test_sample_data_end_to_end(tmp_path):
    out = tmp_path / "out"
    # TensorFlow's default log level, as a user has it
    r = lungcad("detect", REPO / "sample_data", "-o", out, "--no-progress", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""          # a clean run leaves stderr to errors: no backend log lines
    cands = pd.read_csv(out / "candidates.csv")
    assert list(cands.columns[:5]) == LUNA_COLS
    for col in ["patient_id", "diameter_mm", "nodule_prob", "malignancy_prob", "z", "y", "x", "source"]:
        assert col in cands.columns
    assert set(cands["source"]) <= {"unet", "dense"} and (cands["source"] == "unet").any()
    patients = pd.read_csv(out / "patients.csv")
    labels = pd.read_csv(REPO / "sample_data" / "labels.csv")
    assert set(patients["patient_id"]) == set(labels["patient_id"])
    assert patients["cancer_probability"].between(0, 1).all()
    # rows sorted by series, then probability
    for _, g in cands.groupby("seriesuid", sort=False):
        assert (np.diff(g["probability"].to_numpy()) <= 0).all()
    assert list(cands["seriesuid"]) == sorted(cands["seriesuid"])
    scans = sorted((out / "scans").glob("*.json"))
    assert len(scans) == len(patients)
    rec = json.loads(scans[0].read_text())
    for key in ["input_path", "geometry", "lung_volume_ml", "candidates", "timings", "warnings",
                "versions", "config_hash", "cancer_probability"]:
        assert key in rec
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["done"] == len(patients) and run["counts"]["failed"] == 0
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 3
    for img in (out / "crops").rglob("*.png"):
        assert img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_csv(out / "errors.csv").empty


def test_mixed_folder_reports_each_bad_input_and_finishes_the_rest(tmp_path, batch):
    mixed = tmp_path / "mixed"
    shutil.copytree(batch / "P0", mixed / "good0")
    shutil.copytree(batch / "P1", mixed / "good1")
    # a corrupt file
    (mixed / "junk").mkdir()
    (mixed / "junk" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    # an MR series
    mr = CTVolume(np.zeros((4, 32, 32), np.int16), (5, 1, 1), (0, 0, 0), patient_id="MR1",
                  series_uid="1.2.826.0.1.3680043.99.777")
    write_dicom_series(mr, mixed / "mr", modality="MR")
    # a folder with no DICOM at all, given directly in a list file
    (mixed / "notes").mkdir()
    (mixed / "notes" / "readme.txt").write_text("not a scan")
    # a series with missing slices (three in a row removed: a 4x gap)
    miss = small_patient(tmp_path / "src", 200, "MISSING")
    files = sorted(miss.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    for f in files[10:13]:
        f.unlink()
    shutil.copytree(miss.parent, mixed / "missing")

    out = tmp_path / "out"
    r = lungcad("detect", mixed, "-o", out, "--no-progress")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errs = pd.read_csv(out / "errors.csv")
    text = " ".join(errs["message"].astype(str))
    assert "broken.dcm" in " ".join(errs["path"].astype(str)) + text
    assert "MR" in text
    assert "missing" in text.lower()
    assert len(errs) == 3
    patients = pd.read_csv(out / "patients.csv")
    assert sorted(patients["patient_id"]) == ["P0", "P1"]
    # each failure is one line on stderr
    assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 3

    # a list file naming a folder with no DICOM and a path that does not exist
    lst = tmp_path / "scans.txt"
    lst.write_text(f"{mixed / 'notes'}\n{tmp_path / 'nope'}\n{mixed / 'good0'}\n")
    r = lungcad("detect", lst, "-o", tmp_path / "out2", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errs = pd.read_csv(tmp_path / "out2" / "errors.csv")
    assert len(errs) == 2
    assert len(pd.read_csv(tmp_path / "out2" / "patients.csv")) == 1


def test_usage_errors_exit_2(tmp_path):
    assert lungcad("detect").returncode == 2
    r = lungcad("detect", tmp_path, "-o", tmp_path / "o", "--num-shards", "2", "--shard-index", "5")
    assert r.returncode == 2 and "shard" in r.stderr
    r = lungcad("detect", tmp_path / "does-not-exist", "-o", tmp_path / "o")
    assert r.returncode == 1
    assert "does-not-exist" in r.stderr and "Traceback" not in r.stderr


def test_kill_and_resume_gives_identical_csvs(tmp_path, batch, reference_run):
    ref = reference_run
    out = tmp_path / "killed"
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "lungcad", "detect", str(batch), "-o", str(out),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "scans").glob("*.json"))) < 1:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list((out / "scans").glob("*.json")))
    assert 1 <= n_done < 3, "the kill should land in the middle of the batch"
    r = lungcad("detect", batch, "-o", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"{n_done} scan(s) already done" in r.stdout
    for name in ("candidates.csv", "patients.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert not list(out.rglob("*.tmp*"))


def test_shards_and_merge_equal_one_run(tmp_path, batch, reference_run):
    ref = reference_run
    a, b = tmp_path / "a", tmp_path / "b"
    assert lungcad("detect", batch, "-o", a, "--no-progress", env={"SLURM_ARRAY_TASK_ID": "0",
                   "SLURM_ARRAY_TASK_COUNT": "2"}).returncode == 0
    # the flags win over a pod's variables (examples/kubernetes/lungcad-detect-job.yaml sets these)
    assert lungcad("detect", batch, "-o", b, "--num-shards", "2", "--shard-index", "1", "--no-progress",
                   env={"JOB_COMPLETION_INDEX": "0", "LUNGCAD_NUM_SHARDS": "3"}).returncode == 0
    na, nb = (len(list((d / "scans").glob("*.json"))) for d in (a, b))
    assert (na, nb) == (2, 1)
    assert lungcad("merge", a, b, "-o", tmp_path / "m").returncode == 0
    for name in ("candidates.csv", "patients.csv"):
        assert (tmp_path / "m" / name).read_bytes() == (ref / name).read_bytes()


def test_hostile_patient_id_stays_inside_output(tmp_path):
    ph = generate_phantom(seed=5, shape=(30, 128, 128))
    ph.volume.patient_id = "../../etc/<script>"
    ph.volume.series_uid = "1.2.826.0.1.3680043.99.5"
    write_dicom_series(ph.volume, tmp_path / "in" / "x", seed=5)
    out = tmp_path / "out"
    r = lungcad("detect", tmp_path / "in", "-o", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    # nothing was written beside or above the output folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert not (tmp_path.parent / "etc").exists()
    (scan,) = (out / "scans").glob("*.json")
    assert scan.parent == out / "scans" and ".." not in scan.name
    assert "<script>" not in (out / "report.html").read_text()


def test_missing_backend_is_one_line(monkeypatch, capsys):
    """A Keras backend that is not installed stops detect and train with one line, no traceback."""
    import lungcad.cli as cli

    def missing(*, debug=False):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(cli, "import_keras", missing)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert cli.load_backend("train") is False
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lungcad train: error: the Keras backend 'torch' is not installed (No module named 'torch'). "
                   "Install it (e.g. pip install torch) or choose another with --backend."]
    monkeypatch.undo()
    assert cli.load_backend("detect") is True
