"""LUNA16 FROC and patient metrics against hand-computed cases (lungcad/metrics/)."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pandas as pd
import pytest

from lungcad.cli import main
from lungcad.errors import InputError
from lungcad.metrics import (FROC_POINTS, NODULE_COLUMNS, froc, log_loss, patient_metrics, plot_calibration, plot_froc,
                             read_annotations, read_candidates, read_excluded, read_labels,
                             read_predictions, read_seriesuids, roc_auc, sensitivity_at)

ANN_COLS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
CAND_COLS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def ann_df(rows):
    return pd.DataFrame(rows, columns=ANN_COLS)


def cand_df(rows):
    return pd.DataFrame(rows, columns=CAND_COLS)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# The hand-computed case.
#
# Nodules (annotations.csv):            Excluded findings (annotations_excluded.csv):
#   N1  S1 (0,0,0)    d 10 -> r 5          E1  S2 (30,0,0)   d 4  -> r 2
#   N2  S1 (50,0,0)   d 6  -> r 3          E2  S2 (-30,0,0)  d -1 -> official default d 10, r 5
#   N3  S2 (0,0,0)    d 8  -> r 4
#   N4  S3 (10,10,10) d 5  (S3 has no candidate: N4 is missed)
#
# Candidates:
#   c1  S1 (1,0,0)        p .90  dist 1 to N1          -> hit N1
#   c2  S1 (0,2,0)        p .60  dist 2 to N1          -> 2nd hit on N1: ignored (not an FP)
#   c3  S1 (52.9,0,0)     p .50  dist 2.9 < 3 to N2    -> hit N2 (just inside)
#   c4  S1 (53,0,0)       p .55  dist 3.0 = r of N2    -> FP (official test is dist² < r², strict)
#   c5  S1 (100,100,100)  p .30                        -> FP
#   c6  S2 (0,0,3.9)      p .80  dist 3.9 < 4 to N3    -> hit N3
#   c7  S2 (30,1,0)       p .70  dist 1 < 2 to E1      -> ignored
#   c8  S2 (-30,0,4)      p .85  dist 4 < 5 to E2      -> ignored (only with the 10 mm default)
#   c9  S2 (0,0,20)       p .50                        -> FP, tied with the TP of N2
#   c10 S2 (-30,0,5.5)    p .20  dist 5.5 > 5 to E2    -> FP (just outside)
#
# FROC list (descending p): .90 TP(N1), .80 TP(N3), .55 FP(c4), .50 {TP(N2), FP(c9)}, .30 FP, .20 FP
# Curve (FP count, TP count): (0,0) (0,1) (0,2) (1,2) (2,3) (3,3) (4,3); 4 nodules.
CASE_ANN = ann_df([("S1", 0.0, 0.0, 0.0, 10.0), ("S1", 50.0, 0.0, 0.0, 6.0),
                   ("S2", 0.0, 0.0, 0.0, 8.0), ("S3", 10.0, 10.0, 10.0, 5.0)])
CASE_EXC = ann_df([("S2", 30.0, 0.0, 0.0, 4.0), ("S2", -30.0, 0.0, 0.0, -1.0)])
CASE_CAND = cand_df([
    ("S1", 1.0, 0.0, 0.0, 0.9), ("S1", 0.0, 2.0, 0.0, 0.6), ("S1", 52.9, 0.0, 0.0, 0.5),
    ("S1", 53.0, 0.0, 0.0, 0.55), ("S1", 100.0, 100.0, 100.0, 0.3),
    ("S2", 0.0, 0.0, 3.9, 0.8), ("S2", 30.0, 1.0, 0.0, 0.7), ("S2", -30.0, 0.0, 4.0, 0.85),
    ("S2", 0.0, 0.0, 20.0, 0.5), ("S2", -30.0, 0.0, 5.5, 0.2)])


def test_hand_computed_case_three_scans():
    # Scans by default: S1, S2 (candidates) and S3 (annotations) -> 3.
    # fps = FP/3: 0, 0, 0, 1/3, 2/3, 1, 4/3;  sens = TP/4: 0, .25, .5, .5, .75, .75, .75
    #   1/8, 1/4: between (0, .5) and (1/3, .5)            -> .5
    #   1/2:      on the diagonal (1/3, .5) -> (2/3, .75)   -> .5 + .25 * (1/2 - 1/3) / (1/3) = .625
    #   1 .. 8:   .75
    # CPM = (.5 + .5 + .625 + 4 * .75) / 7 = 4.625 / 7
    r = froc(CASE_ANN, CASE_CAND, excluded=CASE_EXC, n_bootstrap=0)
    assert r.n_scans == 3 and r.n_nodules == 4
    assert r.sensitivities == {0.125: 0.5, 0.25: 0.5, 0.5: 0.625, 1.0: 0.75, 2.0: 0.75, 4.0: 0.75, 8.0: 0.75}
    assert r.cpm == pytest.approx(4.625 / 7, abs=1e-15)
    assert r.counts["n_tp"] == 3 and r.counts["n_missed"] == 1 and r.counts["n_fp"] == 4
    assert r.counts["n_ignored_excluded"] == 2 and r.counts["n_ignored_duplicate"] == 1
    assert r.counts["n_candidates"] == 10
    np.testing.assert_allclose(r.fps, [0, 0, 0, 1 / 3, 2 / 3, 1, 4 / 3])
    np.testing.assert_allclose(r.sens, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75])
    np.testing.assert_allclose(r.thresholds[1:], [0.9, 0.8, 0.55, 0.5, 0.3, 0.2])
    assert r.ci == {}


def test_hand_computed_case_per_nodule_table():
    # N1: c1 (.9) and c2 hit it; nothing in S1 scores higher (rank 0); no FP scores >= .9 (0 FP/scan);
    #     nearest c1, 1 mm.
    # N2: c3 (.5) hits it; c1, c2, c4 score higher in S1 (rank 3); FPs >= .5: c4, c9 -> 2 / 3 scans;
    #     nearest c3 (2.9 mm; c4 is 3.0).
    # N3: c6 (.8); c8 (.85, on an excluded finding) scores higher in S2 (rank 1); no FP >= .8.
    # N4: S3 has no candidate.
    r = froc(CASE_ANN, CASE_CAND, excluded=CASE_EXC, n_bootstrap=0)
    n = r.nodules
    assert list(n.columns) == NODULE_COLUMNS and len(n) == 4
    assert list(n["seriesuid"]) == ["S1", "S1", "S2", "S3"] and list(n["diameter_mm"]) == [10, 6, 8, 5]
    assert list(n["found"]) == [True, True, True, False]
    np.testing.assert_allclose(n["probability"], [0.9, 0.5, 0.8, np.nan])
    assert list(n["rank"]) == [0, 3, 1, -1]
    np.testing.assert_allclose(n["found_at_fps_per_scan"], [0.0, 2 / 3, 0.0, np.nan])
    np.testing.assert_allclose(n["nearest_mm"], [1.0, 2.9, 3.9, np.nan])
    np.testing.assert_allclose(n["nearest_probability"], [0.9, 0.5, 0.8, np.nan])
    # the rate at which each found nodule counts is where the curve takes it in
    for rate, prob in zip(n["found_at_fps_per_scan"][:3], n["probability"][:3]):
        k = int(np.flatnonzero(r.thresholds == prob)[0])
        assert r.fps[k] == pytest.approx(rate)


def test_hand_computed_case_scan_without_anything_counts_in_denominator():
    # S4 has neither nodule nor candidate, but is listed: fps = FP/4: 0, 0, 0, .25, .5, .75, 1
    #   1/8: between (0, .5) and (.25, .5) -> .5;  1/4: the point (.25, .5) -> .5;  1/2: (.5, .75) -> .75
    # CPM = (.5 + .5 + 5 * .75) / 7 = 4.75 / 7
    r = froc(CASE_ANN, CASE_CAND, excluded=CASE_EXC, seriesuids=["S1", "S2", "S3", "S4"], n_bootstrap=0)
    assert r.n_scans == 4
    assert r.sensitivities == {0.125: 0.5, 0.25: 0.5, 0.5: 0.75, 1.0: 0.75, 2.0: 0.75, 4.0: 0.75, 8.0: 0.75}
    assert r.cpm == pytest.approx(4.75 / 7, abs=1e-15)


def test_without_excluded_file_hits_on_excluded_findings_are_false_positives():
    # c7 (.70) and c8 (.85) become FPs: list .90 TP, .85 FP, .80 TP, .70 FP, .55 FP, .50 {TP, FP}, .30, .20
    # (FP, TP): (0,0) (0,1) (1,1) (1,2) (2,2) (3,2) (4,3) (5,3) (6,3); 3 scans -> fps = FP/3
    #   1/8: between (0, .25) and (1/3, .25) -> .25;  1/4 -> .25;  1/2: between (1/3, .5) and (2/3, .5) -> .5
    #   1: the point (1, .5) -> .5;  2: (2, .75) -> .75;  4, 8 -> .75
    r = froc(CASE_ANN, CASE_CAND, n_bootstrap=0)
    assert r.sensitivities == {0.125: 0.25, 0.25: 0.25, 0.5: 0.5, 1.0: 0.5, 2.0: 0.75, 4.0: 0.75, 8.0: 0.75}
    assert r.counts["n_fp"] == 6 and r.counts["n_ignored_excluded"] == 0


def test_radius_boundary_is_strict_as_in_the_official_script():
    ann = ann_df([("A", 0.0, 0.0, 0.0, 6.0)])
    inside = froc(ann, cand_df([("A", 2.9, 0.0, 0.0, 0.5)]), n_bootstrap=0)
    on = froc(ann, cand_df([("A", 3.0, 0.0, 0.0, 0.5)]), n_bootstrap=0)
    assert inside.cpm == 1.0 and inside.counts["n_fp"] == 0
    assert on.cpm == 0.0 and on.counts["n_fp"] == 1


def test_excluded_finding_with_diameter_minus_one_gets_radius_5mm():
    ann = ann_df([("A", 100.0, 0.0, 0.0, 10.0)])
    exc = ann_df([("A", 0.0, 0.0, 0.0, -1.0)])
    near = froc(ann, cand_df([("A", 0.0, 4.9, 0.0, 0.5)]), excluded=exc, n_bootstrap=0)
    far = froc(ann, cand_df([("A", 0.0, 5.0, 0.0, 0.5)]), excluded=exc, n_bootstrap=0)
    assert near.counts["n_ignored_excluded"] == 1 and near.counts["n_fp"] == 0
    assert far.counts["n_ignored_excluded"] == 0 and far.counts["n_fp"] == 1


def test_a_candidate_inside_two_overlapping_nodules_detects_both():
    ann = ann_df([("A", 0.0, 0.0, 0.0, 10.0), ("A", 4.0, 0.0, 0.0, 10.0)])
    r = froc(ann, cand_df([("A", 2.0, 0.0, 0.0, 0.7)]), n_bootstrap=0)
    assert r.counts["n_tp"] == 2 and r.cpm == 1.0


def test_duplicate_hits_keep_the_highest_probability():
    # N at origin hit by .3 and .9; one FP at .6.  With the highest (.9) the nodule ranks above the FP:
    # (FP,TP): (0,0) (0,1) (1,1); 1 scan -> sensitivity 1 from 0 FP/scan.  Had .3 been kept, it would be .0
    # below 1 FP/scan.
    ann = ann_df([("A", 0.0, 0.0, 0.0, 10.0)])
    cand = cand_df([("A", 1.0, 0.0, 0.0, 0.3), ("A", 0.0, 1.0, 0.0, 0.9), ("A", 50.0, 0.0, 0.0, 0.6)])
    r = froc(ann, cand, n_bootstrap=0)
    assert r.sensitivities[0.125] == 1.0 and r.counts["n_fp"] == 1 and r.counts["n_ignored_duplicate"] == 1


def test_perfect_detector_cpm_1_and_no_hits_cpm_0():
    ann = ann_df([("A", 0.0, 0.0, 0.0, 8.0), ("B", 10.0, 10.0, 10.0, 6.0), ("B", -40.0, 5.0, 0.0, 12.0)])
    perfect = cand_df([(s, x, y, z, 1.0) for s, x, y, z, _ in ann.itertuples(index=False)])
    assert froc(ann, perfect, n_bootstrap=0).cpm == 1.0
    misses = cand_df([("A", 200.0, 0.0, 0.0, 0.9), ("B", 200.0, 0.0, 0.0, 0.8)])
    r = froc(ann, misses, n_bootstrap=0)
    assert r.cpm == 0.0 and all(v == 0.0 for v in r.sensitivities.values())
    assert froc(ann, cand_df([]), n_bootstrap=0).cpm == 0.0


def test_top_100_per_scan():
    # 100 FPs with p in (.5, .99] and the hit with p .1: the hit is the 101st and is dropped.
    ann = ann_df([("A", 0.0, 0.0, 0.0, 10.0)])
    fps = [("A", 100.0 + i, 0.0, 0.0, 0.5 + 0.0049 * (i + 1)) for i in range(100)]
    cand = cand_df(fps + [("A", 0.0, 0.0, 0.0, 0.1)])
    r = froc(ann, cand, n_bootstrap=0)
    assert r.counts["n_candidates"] == 100 and r.counts["n_candidates_dropped"] == 1
    assert r.cpm == 0.0
    # without the cut the hit is found: 100 FP/scan before it, so 0 at 1/8..8 FP/scan still, but counted
    r_all = froc(ann, cand, max_candidates_per_scan=None, n_bootstrap=0)
    assert r_all.counts["n_tp"] == 1 and r_all.counts["n_candidates"] == 101
    # with the hit ranked first it is kept, and the cut drops the lowest FP instead
    cand2 = cand_df(fps + [("A", 0.0, 0.0, 0.0, 0.999)])
    r2 = froc(ann, cand2, n_bootstrap=0)
    assert r2.counts["n_tp"] == 1 and r2.counts["n_fp"] == 99 and r2.cpm == 1.0
    # official rule: keep p strictly above the 101st; 101 tied candidates are all dropped
    tied = cand_df([("A", 100.0 + i, 0.0, 0.0, 0.5) for i in range(101)])
    assert froc(ann, tied, n_bootstrap=0).counts["n_candidates"] == 0


def test_rows_of_unlisted_scans_are_ignored():
    ann = ann_df([("A", 0.0, 0.0, 0.0, 10.0), ("B", 0.0, 0.0, 0.0, 10.0)])
    cand = cand_df([("A", 0.0, 0.0, 0.0, 0.9), ("B", 50.0, 0.0, 0.0, 0.9)])
    r = froc(ann, cand, seriesuids=["A"], n_bootstrap=0)
    assert r.n_nodules == 1 and r.cpm == 1.0 and r.counts["n_candidates_outside"] == 1


def _random_case(n_scans=30, seed=3):
    rng = np.random.default_rng(seed)
    ann, cand = [], []
    for s in range(n_scans):
        uid = f"1.3.6.{s}"
        for k in range(int(rng.integers(0, 3))):
            c = rng.uniform(-100, 100, 3)
            ann.append((uid, *c, 8.0))
            if rng.random() < 0.8:
                cand.append((uid, *(c + 1.0), float(rng.uniform(0.3, 1.0))))
        for _ in range(int(rng.integers(0, 12))):
            cand.append((uid, *rng.uniform(-100, 100, 3), float(rng.uniform(0.0, 0.8))))
    return ann_df(ann), cand_df(cand)


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    ann, cand = _random_case()
    a = froc(ann, cand, n_bootstrap=300, seed=7)
    b = froc(ann, cand, n_bootstrap=300, seed=7)
    c = froc(ann, cand, n_bootstrap=300, seed=8)
    assert a.ci == b.ci and a.ci != c.ci
    assert set(a.ci) == set(FROC_POINTS) | {"cpm"}
    for r in FROC_POINTS:
        lo, hi = a.ci[r]
        assert lo <= a.sensitivities[r] <= hi
    lo, hi = a.ci["cpm"]
    assert lo < a.cpm < hi and hi - lo < 0.5
    assert a.n_bootstrap_valid == 300
    assert len(a.band_fps) == len(a.band_low) == len(a.band_high) > 0
    assert np.all(a.band_low <= a.band_high)
    d = json.loads(json.dumps(a.to_dict()))
    assert d["cpm"] == a.cpm and d["ci"]["cpm"] == list(a.ci["cpm"])
    assert d["sensitivities"]["0.125"] == a.sensitivities[0.125]


def test_sensitivity_at_takes_top_of_vertical_steps_and_is_flat_past_the_end():
    fps = [0.0, 0.5, 0.5, 1.0]
    sens = [0.0, 0.25, 0.75, 1.0]
    np.testing.assert_allclose(sensitivity_at(fps, sens, [0.25, 0.5, 0.75, 2.0]), [0.125, 0.75, 0.875, 1.0])


def test_input_checks():
    with pytest.raises(ValueError, match="diameter_mm"):
        froc(ann_df([]).drop(columns="diameter_mm"), cand_df([]))
    with pytest.raises(ValueError, match="no nodule"):
        froc(ann_df([]), cand_df([("A", 0.0, 0.0, 0.0, 0.5)]), n_bootstrap=0)
    with pytest.raises(ValueError, match="finite"):
        froc(ann_df([("A", 0.0, 0.0, 0.0, 5.0)]), cand_df([("A", 0.0, 0.0, 0.0, float("nan"))]))


# ----------------------------------------------------------------------------- readers and CLI

def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def luna_files(tmp_path):
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    rows += [f"{s},{x},{y},{z},{d}" for s, x, y, z, d in CASE_ANN.itertuples(index=False)]
    a = write(tmp_path / "annotations.csv", "\n".join(rows) + "\n")
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    rows += [f"{s},{x},{y},{z},{d}" for s, x, y, z, d in CASE_EXC.itertuples(index=False)]
    e = write(tmp_path / "annotations_excluded.csv", "\n".join(rows) + "\n")
    rows = ["seriesuid,coordX,coordY,coordZ,probability,patient_id"]
    rows += [f"{s},{x},{y},{z},{p},P{s}" for s, x, y, z, p in CASE_CAND.itertuples(index=False)]
    c = write(tmp_path / "candidates.csv", "\n".join(rows) + "\n")
    u = write(tmp_path / "seriesuids.csv", "S1\nS2\nS3\nS4\n")
    return a, e, c, u


def test_readers_accept_published_csvs(luna_files, tmp_path):
    a, e, c, u = luna_files
    ann, exc, cand = read_annotations(a), read_excluded(e), read_candidates(c)
    assert list(ann.columns) == ANN_COLS and len(ann) == 4 and ann["diameter_mm"].tolist()[-1] == 5.0
    assert exc["diameter_mm"].tolist() == [4.0, -1.0]
    assert len(cand) == 10 and "patient_id" in cand.columns
    assert read_seriesuids(u) == ["S1", "S2", "S3", "S4"]
    assert froc(ann, cand, excluded=exc, n_bootstrap=0).cpm == pytest.approx(4.625 / 7)
    # a UID that looks like a number stays text
    n = write(tmp_path / "num.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n00123,1,2,3,4\n")
    assert read_annotations(n)["seriesuid"].tolist() == ["00123"]


def test_readers_report_missing_files_and_columns(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_annotations(tmp_path / "nope.csv")
    bad = write(tmp_path / "bad.csv", "seriesuid,x,y,z,probability\nA,1,2,3,0.5\n")
    with pytest.raises(InputError, match=r"missing \['coordX', 'coordY', 'coordZ'\].*Received columns"):
        read_candidates(bad)
    txt = write(tmp_path / "txt.csv", "seriesuid,coordX,coordY,coordZ,probability\nA,1,2,three,0.5\n")
    with pytest.raises(InputError, match="row 2"):
        read_candidates(txt)


def test_cli_froc(luna_files, tmp_path, capsys):
    a, e, c, u = luna_files
    out_json, out_png = tmp_path / "froc.json", tmp_path / "froc.png"
    rc = main(["evaluate", "froc", "--annotations", str(a), "--candidates", str(c), "--excluded", str(e),
               "--bootstrap", "50", "--json", str(out_json), "--plot", str(out_png)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "   0.5       0.6250" in text and "CPM       0.6607" in text and "95% CI" in text
    d = json.loads(out_json.read_text())
    assert d["cpm"] == pytest.approx(4.625 / 7) and d["n_scans"] == 3 and d["n_bootstrap"] == 50
    assert png_size(out_png.read_bytes()) == (640, 480)
    rc = main(["evaluate", "froc", "--annotations", str(a), "--candidates", str(c), "--excluded", str(e),
               "--seriesuids", str(u), "--bootstrap", "0"])
    assert rc == 0 and "CPM       0.6786" in capsys.readouterr().out
    out_csv = tmp_path / "nodules.csv"
    rc = main(["evaluate", "froc", "--annotations", str(a), "--candidates", str(c), "--excluded", str(e),
               "--bootstrap", "0", "--nodules", str(out_csv)])
    assert rc == 0 and f"nodules: {out_csv} (1 of 4 not found)" in capsys.readouterr().out
    n = pd.read_csv(out_csv)
    assert list(n.columns) == NODULE_COLUMNS and list(n["rank"]) == [0, 3, 1, -1]


def test_cli_missing_file_is_one_line_exit_1(tmp_path, capsys):
    rc = main(["evaluate", "froc", "--annotations", str(tmp_path / "missing.csv"),
               "--candidates", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "missing.csv: annotations not found" in err


def test_plot_froc_without_bootstrap(tmp_path):
    r = froc(CASE_ANN, CASE_CAND, excluded=CASE_EXC, n_bootstrap=0)
    assert png_size(plot_froc(r, tmp_path / "f.png").read_bytes()) == (640, 480)


# ----------------------------------------------------------------------------- patients

def test_auc_perfect_reversed_ties_and_hand_computed():
    y = [0, 0, 1, 1]
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pairs (pos, neg): .35>.1 win, .35<.4 loss, .8 beats both -> 3/4
    assert roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == 0.75
    # .5 vs .5 counts one half: (1 + 0.5 + 2) / 4
    assert roc_auc(y, [0.1, 0.5, 0.5, 0.9]) == 0.875
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_auc_soft_labels_are_positive_from_one_half():
    """The one ROC AUC (training's held-out metrics use it too): a soft label, such as a
    malignancy target in [0, 1], is a positive at 0.5 and above and a negative below, so
    0.3 is not a positive (astype(bool) would make it one) and 0.5 is."""
    from lungcad.train import roc_auc as train_roc_auc

    assert train_roc_auc is roc_auc
    p = [0.1, 0.2, 0.3, 0.9]
    assert roc_auc([0.0, 0.3, 0.5, 1.0], p) == roc_auc([0, 0, 1, 1], p) == 1.0
    assert roc_auc([0.49, 0.3, 0.51, 0.7], p) == 1.0
    assert roc_auc([True, False, False, True], p) == roc_auc([1, 0, 0, 1], p) == 0.5
    assert math.isnan(roc_auc([0.2, 0.3, 0.4, 0.1], p))             # all below 0.5: one class
    with pytest.raises(ValueError, match="labels are NaN"):
        roc_auc([0.0, float("nan"), 1.0, 1.0], p)
    with pytest.raises(ValueError, match="one score per label"):
        roc_auc([0, 1], p)


def test_log_loss_hand_computed_and_clipped():
    # -(ln .8 + ln .6) / 2
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx((0.2231435513142097 + 0.5108256237659907) / 2, rel=1e-12)
    # p = 0 for a positive is clipped to 1e-15: -ln(1e-15) = 34.538776394910684
    assert log_loss([1], [0.0]) == pytest.approx(34.538776394910684, rel=1e-12)
    # p = 1 for a negative is clipped to 1 - 1e-15, which in doubles is 1 - 9.992e-16: -ln(9.992e-16)
    assert log_loss([0], [1.0]) == pytest.approx(-math.log(1.0 - (1.0 - 1e-15)), rel=1e-12)
    assert log_loss([0], [1.0]) == pytest.approx(34.5396, abs=1e-4)


def test_patient_metrics_dsb_labels_against_patients_csv():
    labels = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "cancer": [1, 0, 1, 0, 1]})
    preds = pd.DataFrame({"patient_id": ["a", "a", "b", "c", "d", "x"],
                          "seriesuid": ["1", "2", "3", "4", "5", "6"],
                          "cancer_probability": [0.2, 0.9, 0.1, 0.7, 0.3, 0.5]})
    m = patient_metrics(labels, preds)
    # a -> max(.2, .9) = .9; e has no prediction; x has no label
    # y = [1, 0, 1, 0] for a, b, c, d; p = [.9, .1, .7, .3]: a perfect ranking
    assert m["n"] == 4 and m["n_positive"] == 2 and m["auc"] == 1.0
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.9) + math.log(0.7) + math.log(0.7)) / 4)
    assert m["brier"] == pytest.approx((0.01 + 0.01 + 0.09 + 0.09) / 4)
    assert m["missing_predictions"] == ["e"] and m["unlabelled_predictions"] == ["x"]
    assert m["columns"] == {"labels": ["id", "cancer"], "predictions": ["patient_id", "cancer_probability"]}
    bins = m["calibration"]
    assert len(bins) == 10 and sum(b["n"] for b in bins) == 4
    assert bins[9]["n"] == 1 and bins[9]["fraction_positive"] == 1.0   # .9 falls in [.9, 1]
    assert bins[1]["n"] == 1 and bins[1]["mean_predicted"] == pytest.approx(0.1)


def test_patient_metrics_column_errors_name_expected_and_received():
    labels = pd.DataFrame({"pid": ["a"], "cancer": [1]})
    preds = pd.DataFrame({"id": ["a"], "cancer": [0.5]})
    expected = r"expected one of \['patient_id', 'id'\]. Received columns \['pid', 'cancer'\]"
    with pytest.raises(ValueError, match=expected):
        patient_metrics(labels, preds)
    m = patient_metrics(labels, preds.rename(columns={"id": "pid"}), id_col="pid")
    assert m["n"] == 1 and m["auc"] is None
    with pytest.raises(ValueError, match="must be 0 or 1"):
        patient_metrics(pd.DataFrame({"id": ["a"], "cancer": [2]}), preds)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        patient_metrics(pd.DataFrame({"id": ["a"], "cancer": [1]}), preds.assign(cancer=1.5))


def test_cli_patients_and_calibration_plot(tmp_path, capsys):
    # DSB2017 ids are hex; one that is all digits must stay text ("0030" is not 30)
    lab = write(tmp_path / "stage1_labels.csv", "id,cancer\n0015ceb8,1\n0030,0\n003f41c7,0\n")
    pred = write(tmp_path / "patients.csv",
                 "patient_id,seriesuid,cancer_probability\n0015ceb8,1.2,0.8\n0030,1.3,0.4\n003f41c7,1.4,0.1\n")
    png, js = tmp_path / "calib.png", tmp_path / "m.json"
    rc = main(["evaluate", "patients", "--labels", str(lab), "--predictions", str(pred), "--plot", str(png),
               "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 0 and "ROC AUC    1.0000" in out and "patients   3 (1 with cancer)" in out
    d = json.loads(js.read_text())
    assert d["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.6) + math.log(0.9)) / 3)
    assert png_size(png.read_bytes()) == (560, 640)
    assert read_labels(lab)["id"].tolist()[0] == "0015ceb8"
    assert read_predictions(pred)["patient_id"].tolist()[2] == "003f41c7"
    m = patient_metrics(read_labels(lab), read_predictions(pred))
    assert png_size(plot_calibration(m, tmp_path / "c2.png").read_bytes()) == (560, 640)


def test_numeric_looking_ids_are_compared_as_text(tmp_path):
    lab = write(tmp_path / "labels.csv", "patient_id,cancer\n0030,1\n31,0\n")
    pred = write(tmp_path / "pred.csv", "patient_id,cancer_probability\n30,0.9\n31,0.2\n")
    m = patient_metrics(read_labels(lab), read_predictions(pred))
    assert m["n"] == 1 and m["missing_predictions"] == ["0030"] and m["unlabelled_predictions"] == ["30"]


def test_ids_that_lungcad_neutralised_join_with_their_labels(tmp_path):
    """lungcad writes a patient id that looks like a formula with a leading quote (OWASP); the
    readers of its tables take the quote off again, so the id joins with the labels file."""
    from lungcad.results.tables import csv_text
    lab = write(tmp_path / "labels.csv", "patient_id,cancer\n-12,1\n=A1,0\nP3,0\n")
    preds = pd.DataFrame({"patient_id": ["-12", "=A1", "P3"], "seriesuid": ["1.2", "1.3", "1.4"],
                          "cancer_probability": [0.8, 0.3, 0.1]})
    pred = write(tmp_path / "patients.csv", csv_text(preds))
    assert "'-12" in pred.read_text() and "'=A1" in pred.read_text()
    m = patient_metrics(read_labels(lab), read_predictions(pred))
    assert m["n"] == 3 and m["missing_predictions"] == [] and m["auc"] == 1.0
