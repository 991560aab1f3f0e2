"""The output folder of ``lungcad detect`` (lungcad/results/) and ``lungcad merge``."""
from __future__ import annotations

import io
import json
import os
import re
import struct

import numpy as np
import pandas as pd
import pytest

import lungcad.results.atomic as atomic
from lungcad.cli import main
from lungcad.errors import InputError
from lungcad.results import (CANDIDATES_CSV_LEAD, PATIENTS_CSV_COLUMNS, OutputDir, atomic_write_bytes,
                             atomic_write_text, merge_outputs, render_crops, safe_id)
from lungcad.result import CANDIDATE_COLUMNS, ScanResult, table_text
from lungcad.volume import CTVolume

CSV_FILES = ("candidates.csv", "patients.csv", "errors.csv")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])


def scan(pid, uid, rows, cancer, *, extra=("nodule_prob", "malignancy_prob"), path="", **kw) -> ScanResult:
    cols = CANDIDATE_COLUMNS + list(extra)
    df = pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)
    df["seriesuid"] = table_text(uid)        # as the pipeline writes it
    return ScanResult(series_uid=uid, patient_id=pid, candidates=df, cancer_probability=cancer,
                      input_path=path or f"/data/{pid}/{uid}", timings={"io": 0.5, "fpr": 1.25},
                      config_hash="abc123", versions={"lungcad": "0.1.0"}, **kw)


# rows: seriesuid, coordX, coordY, coordZ, z, y, x, diameter_mm, probability, nodule_prob, malignancy_prob
S_A = scan("P1", "1.2.3.1", [
    ("", 5.0, 6.0, 7.0, 1, 2, 3, 4.0, 0.3, 0.3, 0.1),
    ("", -10.5, 20.25, -100.125, 10, 40, 30, 6.5, 0.9, 0.9, 0.25),
], 0.62, lung_volume_ml=4321.5, warnings=["slice gap of 2.5 mm"])
S_B = scan("P1", "1.2.3.0", [
    ("", 123.456789, 0.0, -0.5, 0, 0, 0, 5.0, 1 / 3, 0.5, None, 0.125),
], 0.4, extra=("nodule_prob", "malignancy_prob", "seg_prob"))
S_C = scan("P2", "1.2.4", [], 0.05)
ALL = [S_A, S_B, S_C]

EXPECTED_CANDIDATES = (
    "seriesuid,coordX,coordY,coordZ,probability,patient_id,diameter_mm,nodule_prob,malignancy_prob,z,y,x,seg_prob\n"
    "1.2.3.0,123.457,0,-0.5,0.333333,P1,5,0.5,,0,0,0,0.125\n"
    "1.2.3.1,-10.5,20.25,-100.125,0.9,P1,6.5,0.9,0.25,10,40,30,\n"
    "1.2.3.1,5,6,7,0.3,P1,4,0.3,0.1,1,2,3,\n")
EXPECTED_PATIENTS = (
    "patient_id,seriesuid,cancer_probability,n_candidates,top_nodule_prob,top_malignancy_prob,top_coordX,"
    "top_coordY,top_coordZ,top_diameter_mm,lung_volume_ml,input_path,n_reported,lungrads_research\n"
    "P1,1.2.3.0,0.4,1,0.5,,123.457,0,-0.5,5,,/data/P1/1.2.3.0,,\n"
    "P1,1.2.3.1,0.62,2,0.9,0.25,-10.5,20.25,-100.125,6.5,4321.5,/data/P1/1.2.3.1,,\n"
    "P2,1.2.4,0.05,0,,,,,,,,/data/P2/1.2.4,,\n")


def tiny_volume(spacing=(5.0, 0.8, 0.8), centre=(10, 32, 30), radius_mm=10.0) -> CTVolume:
    """20 x 64 x 64 lung-like volume (-850 HU) with a soft-tissue sphere (100 HU)."""
    z, y, x = np.mgrid[0:20, 0:64, 0:64]
    r = np.sqrt(((z - centre[0]) * spacing[0]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2
                + ((x - centre[2]) * spacing[2]) ** 2)
    hu = np.where(r <= radius_mm, 100, -850).astype(np.int16)
    return CTVolume(hu, spacing, (-20.0, 10.0, -100.0), patient_id="P1", series_uid="1.2.3.1")


def write_all(root, results, *, crops=None):
    out = OutputDir(root)
    for r in results:
        out.write_scan(r, crops=crops)
    return out


def read_bytes(root):
    return {f: (root / f).read_bytes() for f in CSV_FILES}


# ----------------------------------------------------------------------------- ids and atomic writes

def test_safe_id_is_sanitized_bounded_and_collision_free():
    sid = safe_id("../../etc", "1.2.840.113619.2.55")
    assert re.fullmatch(r"etc_1\.2\.840\.113619\.2\.55_[0-9a-f]{10}", sid)
    for pid, uid in [("../../etc", "x"), (".hidden", "..."), ("<script>", "a/b\\c"), ("", ""),
                     ("-rf", "--x"), ("é ü", "1.2" * 200), ("\x00\n", "/abs/path/series")]:
        s = safe_id(pid, uid)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) and len(s) <= 116, s
        assert ".." not in s.split("_")[0] and "/" not in s
    assert safe_id("a/b", "1") != safe_id("a_b", "1") != safe_id("a", "b_1")
    assert safe_id("P", "1.2") == safe_id("P", "1.2")
    # the tail of a long UID or path is kept, where series differ
    assert safe_id("", "/data/ct/" + "x" * 100 + "/series-7").split("_")[-2].endswith("series-7")


def test_patient_id_with_dots_writes_inside_output(tmp_path):
    root = tmp_path / "out"
    evil = scan("../../etc", "../passwd", [], 0.5)
    out = OutputDir(root)
    sid = out.write_scan(evil)
    assert out.scan_path(sid).resolve().parent == (root / "scans").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert out.scan_done(sid) and out.read_scan(sid).patient_id == "../../etc"
    with pytest.raises(ValueError, match="not a safe scan id"):
        out.scan_done("../../etc")


def test_odd_characters_in_ids_do_not_fail_the_scan(tmp_path):
    # a lone surrogate (a header decoded with surrogateescape), accents, commas and quotes
    r = scan('Ren\u00e9e, "M"\udc80', "1.2.\u00e9", [("", 1.0, 2.0, 3.0, 1, 2, 3, 6.0, 0.9, 0.9, 0.5)], 0.5)
    out = OutputDir(tmp_path)
    sid = out.write_scan(r)
    assert out.read_scan(sid).patient_id == r.patient_id
    out.finalize(run_info={})
    pats = pd.read_csv(tmp_path / "patients.csv", encoding="utf-8", encoding_errors="replace")
    assert pats["patient_id"].tolist() == ['Ren\u00e9e, "M"\\udc80'] and pats["seriesuid"].tolist() == ["1.2.\u00e9"]


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one\n")
    atomic_write_text(p, "two\n")
    assert p.read_text() == "two\n" and os.listdir(p.parent) == ["a.txt"]
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")
    assert p.read_text() == "two\n" and os.listdir(p.parent) == ["a.txt"]


def test_finalize_removes_temp_files_of_dead_writers_only(tmp_path):
    import subprocess
    import sys
    import time

    out = write_all(tmp_path, [S_A])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    host = atomic._HOST
    names = {"dead": f".x.json.{host}.{dead_pid}.abc123de.tmp",
             "mine": f".y.json.{host}.{os.getpid()}.abc123de.tmp",
             "foreign_new": ".z.json.otherhost.12.abc123de.tmp",
             "foreign_old": ".w.json.otherhost.13.abc123de.tmp",
             "not_ours": ".notes.tmp"}
    for n in names.values():
        (out.scans_dir / n).write_text("partial")
    old = time.time() - 2 * 3600
    os.utime(out.scans_dir / names["foreign_old"], (old, old))
    (out.crops_dir / "somescan").mkdir()
    (out.crops_dir / "somescan" / names["dead"]).write_bytes(b"\x89PNG")
    out.finalize(run_info={})
    left = sorted(p.name for p in out.scans_dir.iterdir() if p.name.startswith("."))
    assert left == sorted([names["mine"], names["foreign_new"], names["not_ours"]])
    assert list((out.crops_dir / "somescan").iterdir()) == []


# ----------------------------------------------------------------------------- files and columns

def test_finalize_writes_every_file_with_its_columns(tmp_path):
    out = write_all(tmp_path, ALL)
    out.write_error(safe_id("P3", "9.9"), path="/data/P3/9.9", stage="io",
                    message="missing slice between 10.0 and 15.0 mm", patient_id="P3", series_uid="9.9")
    run = out.finalize(run_info={"command": "lungcad detect x -o y", "config": {"a": 1},
                                 "this_run": {"done": 3, "failed": 1, "skipped": 2, "seconds": 12.5}})
    assert (tmp_path / "candidates.csv").read_text() == EXPECTED_CANDIDATES
    assert (tmp_path / "patients.csv").read_text() == EXPECTED_PATIENTS
    assert (tmp_path / "errors.csv").read_text() == (
        "path,stage,message,patient_id,seriesuid\n/data/P3/9.9,io,missing slice between 10.0 and 15.0 mm,P3,9.9\n")
    cands = pd.read_csv(tmp_path / "candidates.csv")
    assert list(cands.columns[:12]) == CANDIDATES_CSV_LEAD
    assert list(pd.read_csv(tmp_path / "patients.csv").columns) == PATIENTS_CSV_COLUMNS
    # run.json: counts computed from the folder, run_info kept
    rj = json.loads((tmp_path / "run.json").read_text())
    assert rj == json.loads(json.dumps(run))
    assert rj["counts"] == {"done": 3, "failed": 1, "skipped": 2, "patients": 2, "candidates": 3}
    assert rj["total_time_s"] == 12.5 and rj["scan_time_s"] == 5.25 and rj["config"] == {"a": 1}
    assert rj["versions"] == {"lungcad": "0.1.0"} and rj["config_hashes"] == ["abc123"]
    # per-scan JSON: everything about the scan, plus its id and crop list
    d = json.loads(out.scan_path(safe_id("P1", "1.2.3.1")).read_text())
    assert d["input_path"] == "/data/P1/1.2.3.1" and d["lung_volume_ml"] == 4321.5
    assert d["timings"] == {"io": 0.5, "fpr": 1.25} and d["config_hash"] == "abc123"
    assert d["n_candidates"] == 2 and d["crops"] == [] and d["safe_id"] == safe_id("P1", "1.2.3.1")
    html = (tmp_path / "report.html").read_text()
    assert html.count('<section class="patient"') == 2 and "Failed scans (1)" in html
    assert "missing slice between 10.0 and 15.0 mm" in html and "slice gap of 2.5 mm" in html


def test_empty_folder_finalizes_to_headers(tmp_path):
    OutputDir(tmp_path).finalize(run_info={})
    assert (tmp_path / "candidates.csv").read_text() == ",".join(CANDIDATES_CSV_LEAD) + "\n"
    assert (tmp_path / "patients.csv").read_text() == ",".join(PATIENTS_CSV_COLUMNS) + "\n"
    assert (tmp_path / "errors.csv").read_text() == "path,stage,message,patient_id,seriesuid\n"
    assert json.loads((tmp_path / "run.json").read_text())["counts"]["done"] == 0


def test_csvs_are_byte_identical_whatever_the_order_and_when_finalized_twice(tmp_path):
    a = write_all(tmp_path / "a", ALL)
    b = write_all(tmp_path / "b", list(reversed(ALL)))
    a.finalize(run_info={})
    first = read_bytes(a.root)
    b.finalize(run_info={"this_run": {"seconds": 99.0}})
    a.finalize(run_info={})
    assert read_bytes(a.root) == first == read_bytes(b.root)


def test_resume_scan_done_and_rewrite(tmp_path):
    out = OutputDir(tmp_path)
    sid = safe_id(S_A.patient_id, S_A.series_uid)
    assert not out.scan_done(sid)
    out.write_scan(S_A)
    assert out.scan_done(sid)
    back = out.read_scan(sid)
    assert back.cancer_probability == 0.62 and len(back.candidates) == 2
    assert back.candidates["probability"].tolist() == [0.3, 0.9]
    # a JSON cut short by a crash in the middle of a non-atomic write would be reported, not skipped silently
    (out.scans_dir / "broken_1_0123456789.json").write_text('{"series_uid": ')
    with pytest.raises(InputError, match="broken_1_0123456789.json: not a readable JSON"):
        out.finalize(run_info={})


def test_error_superseded_by_success(tmp_path):
    out = OutputDir(tmp_path)
    sid = safe_id(S_A.patient_id, S_A.series_uid)
    out.write_error(sid, path=S_A.input_path, stage="pipeline", message="out of memory",
                    patient_id="P1", series_uid="1.2.3.1")
    # an error recorded by path (ids unknown at discovery) for the folder that later succeeded
    out.write_error(safe_id("", S_B.input_path), path=S_B.input_path, stage="io", message="unreadable")
    out.write_error(safe_id("", "/data/junk.dcm"), path="/data/junk.dcm", stage="io", message="not DICOM")
    assert out.error_path(sid).exists()
    out.write_scan(S_A)
    out.write_scan(S_B)
    assert not out.error_path(sid).exists()
    run = out.finalize(run_info={})
    errs = pd.read_csv(tmp_path / "errors.csv")
    assert errs["path"].tolist() == ["/data/junk.dcm"] and run["counts"]["failed"] == 1


def test_report_escapes_input_strings_and_links_crops(tmp_path):
    evil = "<script>alert('x')</script>"
    r = scan(evil, '1.2"><img src=x onerror=alert(1)>', [("", 1.0, 2.0, 3.0, 1, 2, 3, 6.0, 0.9, 0.9, 0.5)],
             0.7, warnings=["<b>bold</b>"], path="/data/<evil>&")
    vol = tiny_volume()
    crops = render_crops(vol, r.candidates, top_n=1)
    out = OutputDir(tmp_path)
    sid = out.write_scan(r, crops=crops)
    out.write_error(safe_id("", "/x/<script>"), path="/x/<script>", stage="io", message="bad <tag>")
    out.finalize(run_info={})
    html = (tmp_path / "report.html").read_text()
    assert "<script>" not in html and "onerror=alert(1)>" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "/data/&lt;evil&gt;&amp;" in html and "bad &lt;tag&gt;" in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs == [f"crops/{sid}/0_{p}.png" for p in ("axial", "coronal", "sagittal")]
    for s in srcs:
        assert png_size((tmp_path / s).read_bytes()) == (192, 192)
    assert "Cancer probability: 0.700" in html and '<td class="num">6.0</td>' in html


# ----------------------------------------------------------------------------- crops

def test_render_crops_keys_and_png_sizes():
    vol = tiny_volume()
    xyz = vol.voxel_to_world([10, 32, 30])
    cands = pd.DataFrame({"seriesuid": "1.2.3.1", "coordX": [xyz[0], xyz[0] + 5, 0.0],
                          "coordY": [xyz[1], xyz[1], 0.0], "coordZ": [xyz[2], xyz[2], -100.0],
                          "z": [10, 10, 0], "y": [32, 32, 0], "x": [30, 36, 0],
                          "diameter_mm": [20.0, np.nan, 4.0], "probability": [0.5, 0.9, 0.1]})
    crops = render_crops(vol, cands, top_n=2)
    assert sorted(crops) == sorted(f"{i}_{p}" for i in range(2) for p in ("axial", "coronal", "sagittal"))
    assert all(png_size(v) == (192, 192) for v in crops.values())
    small = render_crops(vol, cands, top_n=5, image_px=100)
    assert len(small) == 9 and png_size(small["2_sagittal"]) == (100, 100)
    assert render_crops(vol, cands.iloc[:0]) == {}


def _bright_extent_px(png: bytes) -> tuple[int, int]:
    """Height and width, in pixels, of the grey-white (not red) pixels through the image centre."""
    import matplotlib.image as mpimg

    rgb = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    white = (rgb.min(axis=2) > 0.8)                 # the 100 HU sphere in the lung window; red has G = B = 0
    n = rgb.shape[0] // 2
    return int(white[:, n].sum()), int(white[n, :].sum())


def test_thick_slices_are_not_squashed_in_coronal_and_sagittal():
    # a 20 mm sphere on 5 mm slices: 5 slices tall.  Drawn in voxels it would be ~4x wider than tall.
    vol = tiny_volume(spacing=(5.0, 0.8, 0.8))
    xyz = vol.voxel_to_world([10, 32, 30])
    cands = pd.DataFrame({"coordX": [xyz[0]], "coordY": [xyz[1]], "coordZ": [xyz[2]], "diameter_mm": [20.0],
                          "probability": [0.9]})
    crops = render_crops(vol, cands, top_n=1, size_mm=64, image_px=192)
    px_per_mm = 192 / 64
    for plane in ("axial", "coronal", "sagittal"):
        h, w = _bright_extent_px(crops[f"0_{plane}"])
        assert 0.7 < h / w < 1.45, (plane, h, w)
        assert 14 * px_per_mm < w < 23 * px_per_mm, (plane, w)


@pytest.mark.parametrize("flip_x", [False, True])
def test_axial_crop_shows_patient_left_on_the_right_whatever_the_direction(flip_x):
    # a bright marker 12 mm to the patient's left (world +x) of the candidate; with a flipped x axis
    # the marker sits at a lower column index, but must still be drawn on the right of the image
    hu = np.full((20, 64, 64), -850, np.int16)
    mx = 15 if flip_x else 45
    hu[9:12, 31:34, mx - 1:mx + 2] = 100
    direction = np.diag([-1.0, 1.0, 1.0]) if flip_x else np.eye(3)
    vol = CTVolume(hu, (5.0, 0.8, 0.8), (0.0, 0.0, 0.0), direction=direction)
    xyz = vol.voxel_to_world([10, 32, 30])
    assert vol.voxel_to_world([10, 32, mx])[0] - xyz[0] == pytest.approx(12.0)
    cands = pd.DataFrame({"coordX": [xyz[0]], "coordY": [xyz[1]], "coordZ": [xyz[2]], "diameter_mm": [4.0],
                          "probability": [0.9]})
    import matplotlib.image as mpimg

    rgb = mpimg.imread(io.BytesIO(render_crops(vol, cands, top_n=1)["0_axial"]), format="png")[..., :3]
    cols = np.flatnonzero((rgb[80:112].min(axis=2) > 0.8).any(axis=0))   # the rows through the centre
    # 12 mm right of the centre at 3 px/mm: column ~96 + 36
    assert len(cols) and 120 < cols.mean() < 145, cols


def test_crops_are_written_before_the_json_and_stale_crops_removed(tmp_path, monkeypatch):
    written = []
    real = atomic.atomic_write_bytes

    def spy(path, data):
        written.append(os.path.relpath(path, tmp_path))
        return real(path, data)

    monkeypatch.setattr(atomic, "atomic_write_bytes", spy)     # the one writer, of bytes and of text
    vol = tiny_volume()
    out = OutputDir(tmp_path)
    sid = out.write_scan(S_A, crops=render_crops(vol, S_A.candidates, top_n=2))
    assert len(written) == 7 and written[-1] == f"scans/{sid}.json"
    assert all(w.startswith(f"crops/{sid}/") for w in written[:-1])
    assert len(list((tmp_path / "crops" / sid).glob("*.png"))) == 6
    out.write_scan(S_A, crops=render_crops(vol, S_A.candidates, top_n=1))
    assert sorted(p.name for p in (tmp_path / "crops" / sid).iterdir()) == [
        "0_axial.png", "0_coronal.png", "0_sagittal.png"]
    assert json.loads(out.scan_path(sid).read_text())["crops"] == [
        f"crops/{sid}/0_{p}.png" for p in ("axial", "coronal", "sagittal")]
    with pytest.raises(ValueError, match="crop names"):
        out.write_scan(S_A, crops={"../x": b"\x89PNG\r\n\x1a\n"})
    with pytest.raises(ValueError, match="must be PNG bytes"):
        out.write_scan(S_A, crops={"0_axial": b"GIF89a"})


def test_scan_json_is_strict_json(tmp_path):
    r = scan("P", "1", [("", 1.0, 2.0, 3.0, 1, 2, 3, float("inf"), 0.5, float("nan"), 0.2)], 0.5)
    out = OutputDir(tmp_path)
    sid = out.write_scan(r)

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    d = json.loads(out.scan_path(sid).read_text(), parse_constant=refuse)
    assert d["candidates"][0]["diameter_mm"] is None and d["candidates"][0]["nodule_prob"] is None


# ----------------------------------------------------------------------------- merge

def test_merge_of_shards_equals_one_folder_with_all_scans(tmp_path):
    vol = tiny_volume()
    crops = render_crops(vol, S_A.candidates, top_n=1)
    whole = write_all(tmp_path / "whole", ALL, crops=crops)
    whole.write_error(safe_id("P9", "9"), path="/data/P9", stage="io", message="not CT", patient_id="P9",
                      series_uid="9")
    whole.finalize(run_info={})
    a = write_all(tmp_path / "a", [S_A, S_C], crops=crops)
    a.write_error(safe_id("P9", "9"), path="/data/P9", stage="io", message="not CT", patient_id="P9",
                  series_uid="9")
    b = OutputDir(tmp_path / "b")
    # shard b first failed on S_B, then succeeded on a rerun; shard a also saw S_B fail
    a.write_error(safe_id(S_B.patient_id, S_B.series_uid), path=S_B.input_path, stage="pipeline",
                  message="killed", patient_id="P1", series_uid="1.2.3.0")
    b.write_scan(S_B, crops=crops)
    a.finalize(run_info={"this_run": {"skipped": 1, "seconds": 3.0}})
    b.finalize(run_info={"this_run": {"skipped": 0, "seconds": 4.5}})
    summary = merge_outputs([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert read_bytes(tmp_path / "merged") == read_bytes(whole.root)
    assert summary["counts"]["done"] == 3 and summary["counts"]["failed"] == 1
    assert summary["counts"]["skipped"] == 1 and summary["total_time_s"] == 7.5
    assert summary["conflicts"] == [] and summary["copied_scans"] == 3 and summary["copied_errors"] == 1
    merged_crops = sorted(p.relative_to(tmp_path / "merged").as_posix()
                          for p in (tmp_path / "merged" / "crops").rglob("*.png"))
    assert merged_crops == sorted(p.relative_to(whole.root).as_posix() for p in (whole.crops_dir).rglob("*.png"))
    assert len(merged_crops) == 9
    # merging again, or into one of the inputs, changes nothing in the tables
    merge_outputs([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert read_bytes(tmp_path / "merged") == read_bytes(whole.root)
    merge_outputs([tmp_path / "a", tmp_path / "b"], tmp_path / "a")
    assert read_bytes(tmp_path / "a") == read_bytes(whole.root)


def test_merge_reports_conflicting_copies(tmp_path):
    write_all(tmp_path / "a", [S_A])
    changed = scan("P1", "1.2.3.1", [("", 0.0, 0.0, 0.0, 0, 0, 0, 4.0, 0.99, 0.99, 0.9)], 0.99)
    write_all(tmp_path / "b", [changed])
    summary = merge_outputs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert summary["conflicts"] == [safe_id("P1", "1.2.3.1")]
    assert pd.read_csv(tmp_path / "m" / "patients.csv")["cancer_probability"].tolist() == [0.62]


def test_cli_merge(tmp_path, capsys):
    write_all(tmp_path / "a", [S_A])
    write_all(tmp_path / "b", [S_B, S_C])
    rc = main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m")])
    assert rc == 0 and "3 scan(s) done, 0 failed, 3 candidate(s)" in capsys.readouterr().out
    assert (tmp_path / "m" / "candidates.csv").read_text() == EXPECTED_CANDIDATES
    rc = main(["merge", str(tmp_path / "nope"), "-o", str(tmp_path / "m2")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "nope: no such folder" in err


# ----------------------------------------------------------------------------- kill and resume

def make_batch(n: int = 12) -> list[ScanResult]:
    """``n`` scans with random candidates (the same for the same ``n``)."""
    rng = np.random.default_rng(2017)
    batch = []
    for i in range(n):
        rows = [("", *rng.uniform(-150, 150, 3), *rng.integers(0, 200, 3), rng.uniform(3, 30),
                 rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, 1)) for _ in range(int(rng.integers(0, 40)))]
        batch.append(scan(f"LIDC-{i % 5:04d}", f"1.3.6.1.4.1.{1000 + i}", rows, float(rng.uniform(0, 1))))
    return batch


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_outputs import make_batch
from lungcad.results import OutputDir, safe_id
out = OutputDir({root!r})
for r in make_batch():
    if not out.scan_done(safe_id(r.patient_id, r.series_uid)):
        out.write_scan(r)
        time.sleep(0.15)
out.finalize(run_info={{}})
"""


def test_sigkill_mid_batch_then_resume_gives_identical_csvs(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    whole = write_all(tmp_path / "whole", make_batch())
    whole.finalize(run_info={})
    root = tmp_path / "killed"
    code = _CHILD.format(tests=str(Path(__file__).parent), root=str(root))
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while time.time() < deadline and len(list((root / "scans").glob("*.json"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = sorted((root / "scans").glob("*.json"))
    assert proc.returncode == -signal.SIGKILL and 3 <= len(done) < 12
    for f in done:      # every file that exists is complete
        json.loads(f.read_text())
    assert not (root / "candidates.csv").exists()
    rerun = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert rerun.returncode == 0
    assert read_bytes(root) == read_bytes(whole.root)
    assert len(list((root / "scans").glob("*.json"))) == 12
    assert not list(root.rglob("*.tmp"))


def test_odd_characters_in_error_rows_and_candidate_ids(tmp_path):
    # a file name that was not UTF-8 (os.fsdecode gives lone surrogates) in an error row, and a
    # SeriesInstanceUID of that kind: the tables hold them as backslash escapes
    out = OutputDir(tmp_path)
    bad = "/data/scan\udcff.mhd"
    out.write_error(safe_id("P\udcff", "1.2"), path=bad, stage="io", message=f"{bad}: cannot read",
                    patient_id="P\udcff", series_uid="1.2")
    r = scan("Q", "1.3\udc80", [("", 1.0, 2.0, 3.0, 1, 2, 3, 6.0, 0.9, 0.9, 0.5)], 0.5)
    sid = out.write_scan(r)
    assert out.read_scan(sid).series_uid == "1.3\udc80"
    out.finalize(run_info={})
    errs = pd.read_csv(tmp_path / "errors.csv", encoding="utf-8")
    assert errs["path"].tolist() == ["/data/scan\\udcff.mhd"]
    assert errs["patient_id"].tolist() == ["P\\udcff"]
    cands = pd.read_csv(tmp_path / "candidates.csv", encoding="utf-8")
    assert cands["seriesuid"].tolist() == ["1.3\\udc80"]
