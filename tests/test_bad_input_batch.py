"""Issue 20 at the batch level: ``lungcad detect`` and ``lungcad info`` over a corpus of bad
inputs (tests/bad_inputs.py) beside good scans, and a batch in which lungcad's own code fails.

For every bad input: one stderr line that names its file (or series) and says what is wrong,
no traceback, one errors.csv row, and the other scans of the batch done with their outputs.
"""
from __future__ import annotations

import json
import re
import shutil
import time

import pandas as pd
import pytest

import lungcad.api as api
import lungcad.io as lio
import lungcad.results.crops as crops
from lungcad.results.tables import safe_cell
from bad_inputs import NAMES, SUCCEED, build_corpus, copy_series, synth_series
from lungcad.cli import main
from lungcad.pipeline import Pipeline
from test_cli_detect import lungcad as run_lungcad
from test_pipeline import toy_classifier, toy_segmenter

BAD = tuple(n for n in NAMES if n not in SUCCEED)
DETECT_ERROR = "lungcad detect: error: "
INFO_ERROR = "lungcad info: error: "
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ----------------------------------------------------------------------------- the corpus, run once

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("issue20")
    cases = build_corpus(base / "corpus", outside=base / "outside")
    return base, {c.name: c for c in cases}


@pytest.fixture(scope="module")
def detect_run(corpus):
    """One ``lungcad detect`` over the whole corpus (it loads the networks once)."""
    base, cases = corpus
    out = base / "out"
    r = run_lungcad("detect", base / "corpus", "-o", out, "--no-progress", timeout=1800)
    return r, out, cases


@pytest.fixture(scope="module")
def info_run(corpus):
    base, cases = corpus
    t0 = time.monotonic()
    r = run_lungcad("info", base / "corpus", timeout=300)
    return r, time.monotonic() - t0, cases


def lines_naming(text: str, path) -> list[str]:
    """The lines of ``text`` that name ``path`` (the file, or a file or folder below it)."""
    pat = re.compile(re.escape(str(path)) + r"(?=[/:\s)'\"]|$)")
    return [ln for ln in text.splitlines() if pat.search(ln)]


def check_line(line: str, case) -> None:
    assert re.search(case.words, line), f"{case.name}: the line does not say what is wrong: {line}"
    assert not re.search(case.not_words, line), f"{case.name}: misleading or raw message: {line}"


@pytest.mark.slow
def test_detect_over_the_corpus_exits_1_with_only_error_lines_on_stderr(detect_run):
    r, out, cases = detect_run
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    # nothing but lungcad's own one-line errors: no library warning, no C++ log line
    stray = [ln for ln in r.stderr.splitlines() if not ln.startswith(DETECT_ERROR)]
    assert stray == [], stray
    assert "\x00" not in r.stdout + r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["done"] == len(SUCCEED) and run["counts"]["failed"] == len(BAD)
    assert run["this_run"]["done"] == len(SUCCEED) and run["this_run"]["failed"] == len(BAD)
    assert len(pd.read_csv(out / "errors.csv")) == len(BAD)


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD)
def test_detect_each_bad_input_is_one_line_and_one_row(detect_run, name):
    r, out, cases = detect_run
    case = cases[name]
    lines = lines_naming(r.stderr, case.path)
    assert len(lines) == 1, f"{name}: expected one error line naming {case.path}, got {lines}"
    assert lines[0].startswith(DETECT_ERROR)
    check_line(lines[0], case)
    errs = pd.read_csv(out / "errors.csv", dtype=str, keep_default_na=False)
    rows = errs[errs["path"].map(lambda p: bool(lines_naming(p, case.path)))]
    assert len(rows) == 1, f"{name}: expected one errors.csv row, got\n{rows}"
    assert rows.iloc[0]["stage"] == "io"
    assert re.search(case.words, rows.iloc[0]["message"])
    assert not lines_naming(r.stdout, case.path)       # not done


@pytest.mark.slow
@pytest.mark.parametrize("name", SUCCEED)
def test_detect_the_good_scans_are_done_with_their_outputs(detect_run, name):
    r, out, cases = detect_run
    case = cases[name]
    assert not lines_naming(r.stderr, case.path), r.stderr
    (scan,) = [json.loads(f.read_text()) for f in sorted((out / "scans").glob("*.json"))
               if json.loads(f.read_text())["input_path"] == str(case.path)]
    uid, pid = scan["series_uid"], scan["patient_id"]
    assert re.fullmatch(r"[0-9.]+", uid)
    patients = pd.read_csv(out / "patients.csv", dtype={"patient_id": str, "seriesuid": str})
    (row,) = patients[patients["seriesuid"] == uid].itertuples()
    assert row.patient_id == safe_cell(pid) and row.input_path == str(case.path)
    assert row.n_candidates == scan["n_candidates"] > 0 and 0 <= row.cancer_probability <= 1
    cands = pd.read_csv(out / "candidates.csv", dtype={"seriesuid": str})
    assert (cands["seriesuid"] == uid).sum() == scan["n_candidates"]
    assert scan["crops"] and all((out / c).is_file() for c in scan["crops"])
    if case.warning:
        assert any(re.search(case.warning, w) for w in scan["warnings"]), scan["warnings"]
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_detect_tables_are_safe_to_open(detect_run):
    r, out, cases = detect_run
    for name in ("candidates.csv", "patients.csv", "errors.csv"):
        df = pd.read_csv(out / name, dtype=str, keep_default_na=False)
        for col in df.columns:
            bad = [v for v in df[col] if v.startswith(FORMULA_START)
                   and not re.fullmatch(r"-[0-9.e+-]+", v)]      # negative numbers are numbers
            assert bad == [], f"{name}:{col} holds formula-like cells {bad[:3]}"
    cands = pd.read_csv(out / "candidates.csv")
    for col in ("coordX", "coordY", "coordZ", "probability", "diameter_mm"):
        assert pd.api.types.is_float_dtype(cands[col]), col
    assert (cands["coordX"] < 0).any()                 # negative coordinates stay numbers
    # the NUL of a PatientID is a visible escape, never a raw byte in a table, JSON or the report
    for f in [*out.glob("*.csv"), *out.glob("*.json"), *out.glob("scans/*.json"), out / "report.html"]:
        assert b"\x00" not in f.read_bytes(), f
    assert "PAT\\x00NUL" in (out / "patients.csv").read_text()
    assert "PAT\\x00NUL" in (out / "report.html").read_text()


# ----------------------------------------------------------------------------- lungcad info

@pytest.mark.slow
def test_info_over_the_corpus(info_run):
    r, seconds, cases = info_run
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    stray = [ln for ln in r.stderr.splitlines() if not ln.startswith(INFO_ERROR)]
    assert stray == [], stray
    assert seconds < 120                     # a claimed 65,536 frames is refused, not read
    for name, case in cases.items():
        lines = lines_naming(r.stderr, case.path)
        if case.in_info is None:
            assert lines == [], f"{name} is not a problem for info: {lines}"
        elif case.in_info:
            assert len(lines) == 1, f"{name}: expected one line naming {case.path}, got {lines}"
        else:
            assert len(lines) <= 1, f"{name}: expected at most one line naming {case.path}, got {lines}"
        for ln in lines:
            check_line(ln, case)
    # the non-CT series and the good ones are listed on stdout
    listed = r.stdout
    assert lines_naming(listed, cases["not_ct"].path) and " MR " in lines_naming(listed, cases["not_ct"].path)[0]
    for name in SUCCEED:
        assert len(lines_naming(listed, cases[name].path)) == 1
    assert "\x00" not in listed and "PAT\\x00NUL" in listed


def test_info_with_no_scan_exits_1_with_one_line(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a scan")
    r = run_lungcad("info", tmp_path, timeout=120)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == [f"{INFO_ERROR}{tmp_path}: no scans found (no DICOM series, .mhd/.mha or "
                                     f".nii/.nii.gz file)"]


# ----------------------------------------------------------------------------- lungcad's own failures

@pytest.fixture(scope="module")
def three_patients(tmp_path_factory):
    """Three copies of one small synthetic series, patients P0, P1, P2 (P1 in the middle)."""
    base = tmp_path_factory.mktemp("three")
    src = synth_series(base / "synth")
    root = base / "in"
    for k in range(3):
        copy_series(src, root / f"P{k}", 100 + k)
    return root


@pytest.fixture
def toy_pipeline(monkeypatch):
    """``lungcad detect`` with toy networks (the plumbing, not the learned weights)."""
    pipe = Pipeline(segmenter=toy_segmenter, classifier=toy_classifier)
    monkeypatch.setattr(api, "make_pipeline", lambda pipeline=None, batch_size=None: pipe)
    return pipe


def crash_on(monkeypatch, patient_id: str, exc: BaseException) -> None:
    """Make lungcad's crop rendering raise ``exc`` on one patient's scan (a bug in lungcad)."""
    render = crops.render_crops

    def render_or_crash(volume, candidates, **kw):
        if volume.patient_id == patient_id:
            raise exc
        return render(volume, candidates, **kw)

    monkeypatch.setattr(crops, "render_crops", render_or_crash)


def detect_main(args, capsys):
    code = main(["detect", *map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_bug_mid_batch_is_that_scans_error_and_the_batch_finishes(tmp_path, three_patients, toy_pipeline,
                                                                    monkeypatch, capsys, debug):
    crash_on(monkeypatch, "P1", ValueError("operands could not be broadcast together"))
    out = tmp_path / "out"
    code, stdout, err = detect_main([three_patients, "-o", out, *(["--debug"] if debug else [])], capsys)
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith(DETECT_ERROR)]
    assert len(lines) == 1
    assert str(three_patients / "P1") in lines[0]
    assert "unexpected ValueError: operands could not be broadcast together" in lines[0]
    assert "a bug in lungcad" in lines[0]
    if debug:
        assert "Traceback" in err and "render_or_crash" in err
    else:
        assert "Traceback" not in err and err.strip() == lines[0]
    # the scans before and after it are done, with their outputs, and the run is recorded
    patients = pd.read_csv(out / "patients.csv", dtype=str)
    assert sorted(patients["patient_id"]) == ["P0", "P2"]
    assert len(list((out / "scans").glob("*.json"))) == 2
    errs = pd.read_csv(out / "errors.csv", dtype=str)
    assert errs["patient_id"].tolist() == ["P1"] and errs["stage"].tolist() == ["outputs"]
    assert errs["path"].tolist() == [str(three_patients / "P1")]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["done"] == 2 and run["counts"]["failed"] == 1
    assert (out / "report.html").is_file()
    # a rerun after the fix redoes only the failed scan
    monkeypatch.undo()
    toy = Pipeline(segmenter=toy_segmenter, classifier=toy_classifier)
    monkeypatch.setattr(api, "make_pipeline", lambda pipeline=None, batch_size=None: toy)
    code, stdout, err = detect_main([three_patients, "-o", out], capsys)
    assert code == 0, err
    assert "2 scan(s) already done" in stdout
    assert pd.read_csv(out / "errors.csv").empty and len(pd.read_csv(out / "patients.csv")) == 3


@pytest.mark.slow
def test_an_interrupt_mid_batch_still_writes_the_tables(tmp_path, three_patients, toy_pipeline, monkeypatch,
                                                        capsys):
    crash_on(monkeypatch, "P1", KeyboardInterrupt())
    out = tmp_path / "out"
    code, stdout, err = detect_main([three_patients, "-o", out], capsys)
    assert code == 130 and "interrupted" in err
    assert pd.read_csv(out / "patients.csv", dtype=str)["patient_id"].tolist() == ["P0"]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["done"] == 1 and run["this_run"]["done"] == 1


def test_a_bug_while_discovering_is_one_row_and_the_run_is_recorded(tmp_path, toy_pipeline, monkeypatch,
                                                                    capsys):
    def broken_discover(root, *, errors=None):
        raise NotImplementedError("unknown VR 'XY'")

    monkeypatch.setattr(lio, "discover", broken_discover)
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    code, stdout, err = detect_main([tmp_path / "in", "-o", out], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [f"{DETECT_ERROR}{tmp_path / 'in'}: unexpected NotImplementedError: unknown VR "
                                f"'XY' (in stage io; a bug in lungcad: run with --debug for the traceback "
                                f"and report it)"]
    errs = pd.read_csv(out / "errors.csv", dtype=str)
    assert errs["path"].tolist() == [str(tmp_path / "in")]
    assert json.loads((out / "run.json").read_text())["counts"]["failed"] == 1
    code, stdout, err = detect_main([tmp_path / "in", "-o", tmp_path / "out2", "--debug"], capsys)
    assert code == 1 and "Traceback" in err and "broken_discover" in err


@pytest.mark.slow
def test_a_bug_on_one_listed_path_leaves_the_others(tmp_path, three_patients, toy_pipeline, monkeypatch, capsys):
    discover = lio.discover

    def discover_or_crash(root, *, errors=None):
        if str(root).endswith("P1"):
            raise OverflowError("Python int too large to convert to C long")
        return discover(root, errors=errors)

    monkeypatch.setattr(lio, "discover", discover_or_crash)
    lst = tmp_path / "scans.txt"
    lst.write_text("".join(f"{three_patients / p}\n" for p in ("P0", "P1", "P2")))
    out = tmp_path / "out"
    code, stdout, err = detect_main([lst, "-o", out], capsys)
    assert code == 1 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"{DETECT_ERROR}{three_patients / 'P1'}: unexpected OverflowError")
    assert sorted(pd.read_csv(out / "patients.csv", dtype=str)["patient_id"]) == ["P0", "P2"]


@pytest.mark.slow
def test_an_unreadable_result_of_an_earlier_run_does_not_stop_the_tables(tmp_path, toy_pipeline, capsys):
    src = synth_series(tmp_path / "synth")
    shutil.copytree(src, tmp_path / "in" / "P0")
    out = tmp_path / "out"
    (out / "scans").mkdir(parents=True)
    broken = out / "scans" / "broken_1_0123456789.json"
    broken.write_text('{"series_uid": ')           # cut short by a crash outside lungcad's atomic writes
    code, stdout, err = detect_main([tmp_path / "in", "-o", out], capsys)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith(f"{DETECT_ERROR}{broken}: not a readable JSON file")
    assert len(pd.read_csv(out / "patients.csv")) == 1
    errs = pd.read_csv(out / "errors.csv", dtype=str)
    assert errs["path"].tolist() == [str(broken)] and errs["stage"].tolist() == ["outputs"]
    assert json.loads((out / "run.json").read_text())["counts"]["done"] == 1


@pytest.mark.slow
def test_weights_that_do_not_load_still_leave_run_json(tmp_path, toy_pipeline, monkeypatch, capsys):
    from lungcad.errors import LungcadError

    def no_weights():
        raise LungcadError("/w/segmenter.keras: cannot read the segmenter weights")

    monkeypatch.setattr(toy_pipeline, "load_models", no_weights)
    (tmp_path / "in" / "junk").mkdir(parents=True)
    (tmp_path / "in" / "junk" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    src = synth_series(tmp_path / "synth")
    shutil.copytree(src, tmp_path / "in" / "P0")
    out = tmp_path / "out"
    code, stdout, err = detect_main([tmp_path / "in", "-o", out], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == "lungcad detect: error: /w/segmenter.keras: cannot read the segmenter weights"
    assert "broken.dcm" in err.splitlines()[0]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["failed"] == 1 and run["counts"]["done"] == 0
    assert pd.read_csv(out / "errors.csv", dtype=str)["path"].tolist() == [str(tmp_path / "in" / "junk" / "broken.dcm")]
