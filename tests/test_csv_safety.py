"""Tables safe to open (issue 20): formula injection and control characters in the CSVs,
the JSON and the HTML report that lungcad writes (lungcad/results/)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from lungcad.scan_job import one_line
from lungcad.metrics import read_candidates, write_csv
from lungcad.results import OutputDir, safe_id
from lungcad.results.tables import (FORMULA_START, cell_value, csv_text, escape_controls, safe_cell,
                                    safe_table)
from lungcad.result import CANDIDATE_COLUMNS, ScanResult

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


# ----------------------------------------------------------------------------- the function

@pytest.mark.parametrize("text, expected", [
    ('=HYPERLINK("http://x");1', '\'=HYPERLINK("http://x");1'),
    ("+1+1", "'+1+1"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\\x09=1"),
    ("\r=1", "'\\x0d=1"),
    ("'quoted", "''quoted"),
    ("PAT\x00NUL", "PAT\\x00NUL"),
    ("a\nb", "a\\x0ab"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("del\x7f", "del\\x7f"),
    ("x=1", "x=1"),                      # only a leading character makes a formula
    (" =1", " =1"),
    (UID, UID),                          # valid UIDs are never changed
    ("1.2.3", "1.2.3"),
    ("/data/P1/ct", "/data/P1/ct"),
    ("Ren\u00e9e", "Ren\u00e9e"),
    ("bad\udc80", "bad\\udc80"),         # a lone surrogate, as the tables already wrote it
    ("", ""),
])
def test_safe_cell(text, expected):
    assert safe_cell(text) == expected


@pytest.mark.parametrize("value", [-86.6, 0, -3, 1.5e-300, None, True, np.float64(-2.5), np.int64(-7)])
def test_safe_cell_leaves_values_that_are_not_text(value):
    assert safe_cell(value) is value


def test_safe_cell_leaves_nan():
    assert math.isnan(safe_cell(float("nan")))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_safe_cell_is_never_a_formula_and_never_holds_a_control_character(text):
    out = safe_cell(text)
    assert not out.startswith(TRIGGERS)
    assert not any(ord(c) < 32 or ord(c) == 127 for c in out)
    if not any(ord(c) < 32 or ord(c) == 127 for c in text):
        assert cell_value(out) == text      # undone exactly by readers that join on text


def test_formula_start_is_owasps_list_and_the_quote():
    assert set(FORMULA_START) == set(TRIGGERS) | {"'"}


def test_escape_controls_and_log_lines():
    assert escape_controls("a\x00b\x1fc\x7fd\te") == "a\\x00b\\x1fc\\x7fd\\x09e"
    assert one_line("lungcad detect: error: /x/a\nb.dcm: PatientID P\x00") == \
        "lungcad detect: error: /x/a\\x0ab.dcm: PatientID P\\x00"


def test_safe_table_chooses_columns_by_dtype():
    df = pd.DataFrame({"seriesuid": [UID, "=1+1"], "coordX": [-86.6, 12.0], "n": [-1, 2],
                       "flag": [True, False], "mixed": pd.Series(["-x", -4.5], dtype=object),
                       "text_number": ["-86.6", "1"]})
    out = safe_table(df)
    assert out["seriesuid"].tolist() == [UID, "'=1+1"]
    assert out["coordX"].tolist() == [-86.6, 12.0] and pd.api.types.is_float_dtype(out["coordX"])
    assert out["n"].tolist() == [-1, 2] and pd.api.types.is_integer_dtype(out["n"])
    assert out["flag"].tolist() == [True, False]
    assert out["mixed"].tolist() == ["'-x", -4.5]          # a number in a text column stays a number
    assert out["text_number"].tolist() == ["'-86.6", "1"]  # text is text, whatever it looks like
    assert df["seriesuid"].tolist() == [UID, "=1+1"]      # the input is not changed


def test_csv_text_reads_back_with_numbers_as_numbers():
    df = pd.DataFrame({"seriesuid": ["@cmd", UID], "coordX": [-86.6, 5.0], "patient_id": ["-P", "P\x00"]})
    back = pd.read_csv(pd.io.common.StringIO(csv_text(df)), dtype={"seriesuid": str, "patient_id": str})
    assert back["seriesuid"].tolist() == ["'@cmd", UID]
    assert back["coordX"].tolist() == [-86.6, 5.0] and pd.api.types.is_float_dtype(back["coordX"])
    assert back["patient_id"].map(cell_value).tolist() == ["-P", "P\\x00"]


# ----------------------------------------------------------------------------- the files written

HOSTILE_PID = '=cmd|" /C calc"!A0'


def hostile_scan(pid, uid, *, path) -> ScanResult:
    rows = [(uid, -86.6, 20.25, -100.125, 10, 40, 30, 6.5, 0.9), (uid, 5.0, -6.0, 7.0, 1, 2, 3, 4.0, 0.3)]
    df = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    df["note"] = ["+SUM(1,2)", "plain"]             # a text column a stage could add
    return ScanResult(series_uid=uid, patient_id=pid, candidates=df, cancer_probability=0.5,
                      input_path=path, warnings=["@warn \x1b[2J"], config_hash="abc")


@pytest.fixture
def written(tmp_path):
    out = OutputDir(tmp_path)
    scans = [hostile_scan(HOSTILE_PID, UID, path="-data/evil"),
             hostile_scan("PAT\x00NUL", "1.2.3.4", path="/data/nul\x00/ct"),
             hostile_scan("-12", "1.2.3.5", path="/data/minus")]
    for s in scans:
        out.write_scan(s)
    out.write_error(safe_id("@P", "1.2.9"), path="=/x/evil.dcm", stage="io",
                    message="-bad: \tPixelSpacing\r\n0\\0", patient_id="@P", series_uid="1.2.9")
    out.finalize(run_info={})
    return tmp_path, scans


def raw_rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_written_csvs_neutralise_formulas_and_keep_numbers_and_uids(written):
    root, scans = written
    for name in ("candidates.csv", "patients.csv", "errors.csv"):
        for row in raw_rows(root / name):
            for col, v in row.items():
                assert "\x00" not in v and "\r" not in v and "\n" not in v and "\t" not in v
                if v.startswith(TRIGGERS):
                    float(v)                  # only a (negative) number may start with "-"
    pats = pd.read_csv(root / "patients.csv", dtype={"patient_id": str, "seriesuid": str})
    by_uid = pats.set_index("seriesuid")
    assert by_uid.loc[UID, "patient_id"] == "'" + HOSTILE_PID
    assert by_uid.loc["1.2.3.4", "patient_id"] == "PAT\\x00NUL"
    assert by_uid.loc["1.2.3.5", "patient_id"] == "'-12"
    assert pats["patient_id"].map(cell_value).tolist() == sorted([HOSTILE_PID, "PAT\\x00NUL", "-12"])
    assert by_uid.loc[UID, "input_path"] == "'-data/evil"
    assert by_uid.loc["1.2.3.4", "input_path"] == "/data/nul\\x00/ct"
    assert pd.api.types.is_float_dtype(pats["top_coordX"]) and (pats["top_coordX"] == -86.6).all()
    assert (pats["top_coordZ"] == -100.125).all()

    cands = pd.read_csv(root / "candidates.csv", dtype={"seriesuid": str, "patient_id": str})
    assert sorted(set(cands["seriesuid"])) == sorted([UID, "1.2.3.4", "1.2.3.5"])   # UIDs unchanged
    for col in ("coordX", "coordY", "coordZ", "probability", "diameter_mm", "z", "y", "x"):
        assert pd.api.types.is_numeric_dtype(cands[col]), col
    assert sorted(cands["coordX"].unique()) == [-86.6, 5.0] and sorted(cands["coordY"].unique()) == [-6.0, 20.25]
    assert set(cands["note"]) == {"'+SUM(1,2)", "plain"}
    # lungcad evaluate reads the candidates it wrote: UIDs and coordinates as they were
    ev = read_candidates(root / "candidates.csv")
    assert set(ev["seriesuid"]) == {UID, "1.2.3.4", "1.2.3.5"} and ev["coordX"].min() == -86.6

    (err,) = raw_rows(root / "errors.csv")
    assert err == {"path": "'=/x/evil.dcm", "stage": "io", "message": "'-bad: \\x09PixelSpacing\\x0d\\x0a0\\0",
                   "patient_id": "'@P", "seriesuid": "1.2.9"}


def test_scan_json_keeps_the_exact_ids_escaped_as_json(written):
    root, scans = written
    out = OutputDir(root)
    for s in scans:
        sid = safe_id(s.patient_id, s.series_uid)
        text = out.scan_path(sid).read_text()
        assert "\x00" not in text and "\x1b" not in text
        back = out.read_scan(sid)                # resume and merge read the exact ids back
        assert back.patient_id == s.patient_id and back.series_uid == s.series_uid
        assert back.warnings == ["@warn \x1b[2J"]
    assert "\\u0000" in out.scan_path(safe_id("PAT\x00NUL", "1.2.3.4")).read_text()
    run = json.loads((root / "run.json").read_text())
    assert run["counts"]["done"] == 3 and run["counts"]["failed"] == 1


def test_report_escapes_markup_and_control_characters(written):
    root, _ = written
    html = (root / "report.html").read_text()
    assert "\x00" not in html and "\x1b" not in html and "\t" not in html.split("<style>")[0]
    assert "PAT\\x00NUL" in html and "@warn \\x1b[2J" in html
    assert "=cmd|&quot; /C calc&quot;!A0" in html
    assert "-bad: \\x09PixelSpacing\\x0d\\x0a0\\0" in html


def test_evaluate_tables_go_through_the_same_function(tmp_path):
    df = pd.DataFrame({"seriesuid": ["=HYPERLINK(\"x\")", UID], "sensitivity": [-0.0, 0.5]})
    write_csv(df, tmp_path / "froc.csv")
    back = pd.read_csv(tmp_path / "froc.csv", dtype={"seriesuid": str})
    assert back["seriesuid"].tolist() == ["'=HYPERLINK(\"x\")", UID]
    assert pd.api.types.is_float_dtype(back["sensitivity"])
