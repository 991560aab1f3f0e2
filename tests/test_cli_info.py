"""``lungcad info``: run as a subprocess, as a user would."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from lungcad.io import write_dicom_series, write_itk
from lungcad.volume import CTVolume


def _lungcad(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungcad", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _volume(nz, patient, uid, kernel, spacing=(2.5, 0.7, 0.8)) -> CTVolume:
    hu = np.full((nz, 32, 36), -800, np.int16)
    return CTVolume(hu, spacing, (0.0, 0.0, 0.0), patient_id=patient, series_uid=uid,
                    meta={"kernel": kernel})


def _tree(root):
    write_dicom_series(_volume(9, "PAT1", "1.2.3.1", "B30f"), root / "PAT1" / "soft",
                       series_description="Thorax B30f")
    write_dicom_series(_volume(9, "PAT1", "1.2.3.2", "B70f"), root / "PAT1" / "sharp",
                       series_description="Thorax B70f")
    write_dicom_series(_volume(6, "PAT2", "1.2.3.3", "STANDARD", (5.0, 0.6, 0.6)),
                       root / "PAT2")
    write_itk(_volume(5, "x", "x", ""), root / "subset0" / "1.9.9.mhd")
    (root / "labels.csv").write_text("id,cancer\n")


def test_info_lists_series(tmp_path):
    _tree(tmp_path)
    r = _lungcad("info", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4
    by_uid = {ln.split()[2] if ln.startswith("*") else ln.split()[1]: ln for ln in lines}
    soft = by_uid["1.2.3.1"]
    assert soft.startswith("* PAT1") and "9 slices" in soft and "shape 9x32x36" in soft
    assert "spacing 2.5x0.7x0.8 mm" in soft and "kernel B30f" in soft and "CT" in soft
    assert '"Thorax B30f"' in soft
    assert not by_uid["1.2.3.2"].startswith("*")  # the sharper kernel is not the default
    assert "shape 6x32x36" in by_uid["1.2.3.3"] and "spacing 5x0.6x0.6" in by_uid["1.2.3.3"]
    assert "shape 5x32x36" in by_uid["1.9.9"] and "itk" in by_uid["1.9.9"]
    assert r.stderr == ""


def test_info_json_and_problems(tmp_path):
    _tree(tmp_path)
    bad = tmp_path / "PAT2" / "broken.dcm"
    bad.write_bytes(next((tmp_path / "PAT2").iterdir()).read_bytes()[:400])
    # a series with 3 of 10 slices missing in the middle
    gap = tmp_path / "PAT3"
    files = write_dicom_series(_volume(10, "PAT3", "1.2.3.4", "B"), gap)
    for f in files[4:7]:
        f.unlink()
    r = _lungcad("info", tmp_path, "--json")
    assert r.returncode == 1
    rows = json.loads(r.stdout)
    assert [(d["patient_id"], d["series_uid"], d["n_slices"]) for d in rows] == [
        ("1.9.9", "1.9.9", 5), ("PAT1", "1.2.3.1", 9), ("PAT1", "1.2.3.2", 9),
        ("PAT2", "1.2.3.3", 6), ("PAT3", "1.2.3.4", 7)]
    assert rows[1]["shape"] == [9, 32, 36] and rows[1]["spacing"] == [2.5, 0.7, 0.8]
    assert rows[1]["default_choice"] is True and rows[2]["default_choice"] is False
    assert "missing slices" in rows[4]["problem"] and rows[4]["default_choice"] is False
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in r.stderr
    assert str(bad) in err[0]
    assert str(gap) in err[1] and "missing slices: a gap of 10.00 mm" in err[1]


def test_info_nonexistent_path(tmp_path):
    p = tmp_path / "no" / "such"
    r = _lungcad("info", p)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
