"""Leaky noisy-OR aggregation: exact values, p_leak, top-k, monotonicity."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungcad.aggregate import IDENTITY, SHIPPED_CALIBRATION, aggregate, calibrate, fit_calibration, patient_probability


def test_empty_gives_p_leak_exactly():
    assert patient_probability([], [], top_k=5, p_leak=0.02) == pytest.approx(0.02, abs=1e-15)
    assert patient_probability([], [], p_leak=0.0) == 0.0
    empty = pd.DataFrame({"nodule_prob": [], "malignancy_prob": []})
    assert aggregate(empty, top_k=3, p_leak=0.1, calibration=IDENTITY) == pytest.approx(0.1, abs=1e-15)
    assert aggregate(pd.DataFrame(), p_leak=0.05, calibration=IDENTITY) == pytest.approx(0.05, abs=1e-15)
    # bare, the shipped calibration applies to the leak too, as in `lungcad detect`
    assert aggregate(pd.DataFrame()) == pytest.approx(calibrate(0.02, SHIPPED_CALIBRATION), abs=1e-15)


def test_hand_computed_values():
    # joint = 0.9*0.5 = 0.45 and 0.2*0.5 = 0.1
    p = patient_probability([0.9, 0.2], [0.5, 0.5], top_k=5, p_leak=0.02)
    assert p == pytest.approx(1 - 0.98 * 0.55 * 0.9, abs=1e-12)  # 0.5149
    assert p == pytest.approx(0.5149, abs=1e-12)
    # top_k=1 keeps only the 0.45 candidate
    assert patient_probability([0.9, 0.2], [0.5, 0.5], top_k=1, p_leak=0.02) == \
        pytest.approx(1 - 0.98 * 0.55, abs=1e-12)
    # certain malignant nodule -> 1
    assert patient_probability([1.0], [1.0], p_leak=0.02) == 1.0
    # p_leak = 0 and a single candidate: P = p_nodule * p_malignant
    assert patient_probability([0.6], [0.7], p_leak=0.0) == pytest.approx(0.42, abs=1e-12)


def test_top_k_chosen_by_joint_probability_not_by_nodule_probability():
    # Candidate 0 has the highest nodule prob but a low joint prob (0.99*0.1 = 0.099);
    # candidate 1 has joint 0.5*0.8 = 0.4.  With top_k=1 only candidate 1 counts.
    p = patient_probability([0.99, 0.5], [0.1, 0.8], top_k=1, p_leak=0.0)
    assert p == pytest.approx(0.4, abs=1e-12)


def test_kplus1_th_candidate_has_no_effect():
    rng = np.random.default_rng(7)
    for k in (1, 3, 5):
        pn = rng.uniform(0.3, 1.0, size=k)
        pm = rng.uniform(0.3, 1.0, size=k)
        base = patient_probability(pn, pm, top_k=k, p_leak=0.02)
        weakest = float((pn * pm).min())
        # a (k+1)-th candidate whose joint probability is below every top-k candidate
        extra = patient_probability(np.append(pn, weakest * 0.9), np.append(pm, 1.0),
                                    top_k=k, p_leak=0.02)
        assert extra == pytest.approx(base, abs=1e-15)
        # with k+1 it does count
        more = patient_probability(np.append(pn, weakest * 0.9), np.append(pm, 1.0),
                                   top_k=k + 1, p_leak=0.02)
        assert more > base


def test_monotone_non_decreasing_in_each_probability():
    rng = np.random.default_rng(2017)
    for _ in range(300):
        n = int(rng.integers(1, 9))
        pn = rng.uniform(0, 1, n)
        pm = rng.uniform(0, 1, n)
        k = int(rng.integers(1, 7))
        leak = float(rng.uniform(0, 0.2))
        base = patient_probability(pn, pm, top_k=k, p_leak=leak)
        i = int(rng.integers(n))
        for arr in (pn, pm):
            raised = arr.copy()
            raised[i] = rng.uniform(arr[i], 1.0)
            a, b = (raised, pm) if arr is pn else (pn, raised)
            assert patient_probability(a, b, top_k=k, p_leak=leak) >= base - 1e-15
        # a higher leak never lowers P either
        assert patient_probability(pn, pm, top_k=k, p_leak=min(1.0, leak + 0.05)) >= base - 1e-15
        assert leak - 1e-15 <= base <= 1.0


def test_adding_a_candidate_never_lowers_probability():
    rng = np.random.default_rng(11)
    for _ in range(300):
        n = int(rng.integers(0, 8))
        pn, pm = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
        k = int(rng.integers(1, 6))
        base = patient_probability(pn, pm, top_k=k, p_leak=0.02)
        new_n, new_m = rng.uniform(0, 1, 2)
        after = patient_probability(np.append(pn, new_n), np.append(pm, new_m),
                                    top_k=k, p_leak=0.02)
        assert after >= base - 1e-15


def test_aggregate_reads_table_columns():
    df = pd.DataFrame({"nodule_prob": [0.9, 0.2], "malignancy_prob": [0.5, 0.5],
                       "probability": [0.1, 0.1]})
    assert aggregate(df, top_k=5, p_leak=0.02, calibration=IDENTITY) == pytest.approx(0.5149, abs=1e-12)
    df2 = df.rename(columns={"nodule_prob": "pn", "malignancy_prob": "pm"})
    assert aggregate(df2, top_k=5, p_leak=0.02, calibration=IDENTITY, nodule_col="pn", malignancy_col="pm") == \
        pytest.approx(0.5149, abs=1e-12)


@pytest.mark.parametrize("pn,pm,kw,match", [
    ([1.2], [0.5], {}, r"nodule_probs: expected probabilities in \[0, 1\]. Received .*1.2"),
    ([0.5], [-0.1], {}, r"malignancy_probs: expected probabilities in \[0, 1\]"),
    ([np.nan], [0.5], {}, r"nodule_probs: expected probabilities in \[0, 1\]"),
    ([0.5, 0.1], [0.5], {}, r"expected the same number of candidates. Received 2 and 1"),
    ([0.5], [0.5], {"p_leak": 1.5},
     r"p_leak: expected a probability in \[0, 1\]. Received p_leak=1.5"),
    ([0.5], [0.5], {"top_k": -1}, r"top_k: expected an integer >= 0. Received top_k=-1"),
    ([0.5], [0.5], {"top_k": 2.5}, r"top_k: expected an integer >= 0"),
])
def test_invalid_input_raises_value_error(pn, pm, kw, match):
    with pytest.raises(ValueError, match=match):
        patient_probability(pn, pm, **kw)


def test_aggregate_missing_column_raises():
    with pytest.raises(ValueError, match=r"Missing \['malignancy_prob'\]"):
        aggregate(pd.DataFrame({"nodule_prob": [0.5]}))
    with pytest.raises(ValueError, match="expected a pandas DataFrame"):
        aggregate([0.5, 0.5])


# ----------------------------------------------------------------------------- calibration

def test_calibrate_identity_is_exact_and_known_values():
    p = np.array([0.0, 1e-9, 0.02, 0.5, 0.97, 1.0])
    assert np.array_equal(calibrate(p, (1.0, 0.0)), p)
    # sigmoid(2 * logit(0.5) + 1) = sigmoid(1)
    assert calibrate(0.5, (2.0, 1.0)) == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-12)
    # sigmoid(0.5 * logit(0.8) - 0.3)
    z = 0.5 * np.log(0.8 / 0.2) - 0.3
    assert calibrate(0.8, (0.5, -0.3)) == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-12)
    assert isinstance(calibrate(0.3, (0.7, 0.1)), float)


def test_calibrate_keeps_order_and_bounds():
    p = np.sort(np.random.default_rng(0).uniform(0, 1, 200))
    for cal in [(0.3, -1.0), (1.0, 2.0), (4.0, 0.5)]:
        q = calibrate(p, cal)
        assert np.all(np.diff(q) >= 0)            # monotone, so the ROC AUC cannot change
        assert np.all((q > 0) & (q < 1))


def test_patient_probability_applies_the_calibration_to_the_noisy_or():
    raw = patient_probability([0.9, 0.2], [0.5, 0.5], top_k=5, p_leak=0.02)
    cal = patient_probability([0.9, 0.2], [0.5, 0.5], top_k=5, p_leak=0.02, calibration=(0.6, -0.8))
    assert cal == pytest.approx(calibrate(raw, (0.6, -0.8)), abs=1e-15)
    assert cal < raw
    df = pd.DataFrame({"nodule_prob": [0.9, 0.2], "malignancy_prob": [0.5, 0.5]})
    assert aggregate(df, calibration=(0.6, -0.8)) == pytest.approx(cal, abs=1e-15)
    # an empty table: the calibrated leak
    assert aggregate(pd.DataFrame(), p_leak=0.02, calibration=(0.6, -0.8)) == \
        pytest.approx(calibrate(0.02, (0.6, -0.8)), abs=1e-15)


def test_fit_calibration_recovers_the_generating_parameters():
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 2.0, 20000)
    p_raw = 1 / (1 + np.exp(-z))                      # an over-confident score ...
    y = rng.uniform(size=z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))   # ... of this truth
    scale, shift = fit_calibration(p_raw, y.astype(int))
    assert scale == pytest.approx(0.5, abs=0.03)
    assert shift == pytest.approx(-1.0, abs=0.05)


def test_fit_calibration_lowers_the_log_loss_of_overconfident_scores():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    # confident and often wrong: 0.95 for a quarter of the healthy, 0.98 for most of the ill
    p = np.where(y == 1, np.where(rng.uniform(size=60) < 0.8, 0.98, 0.3),
                 np.where(rng.uniform(size=60) < 0.25, 0.95, 0.05))
    cal = fit_calibration(p, y)
    q = calibrate(p, cal)

    def ll(prob):
        return -np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob))

    assert ll(q) < ll(p) - 0.05
    assert cal[0] < 1.0                               # the fit tempers over-confident scores


def test_fit_calibration_on_separable_patients_is_finite_and_keeps_order():
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    scale, shift = fit_calibration(p, y)
    assert np.isfinite(scale) and np.isfinite(shift) and 0 < scale <= 100
    q = calibrate(p, (scale, shift))
    assert q[:3].max() < 0.5 < q[3:].min()
    assert q.max() < 1.0 and q.min() > 0.0            # Platt's targets: never certain


@pytest.mark.parametrize("p,y,match", [
    ([0.2, 0.3], [1, 1], "patients of both classes. Received 2 with cancer and 0 without"),
    ([0.2, 0.3], [1], "one label per probability"),
    ([0.2, 0.3], [1, 2], "labels 0 or 1"),
    ([0.2, 1.3], [1, 0], r"expected probabilities in \[0, 1\]"),
])
def test_fit_calibration_rejects_bad_input(p, y, match):
    with pytest.raises(ValueError, match=match):
        fit_calibration(p, y)


@pytest.mark.parametrize("cal", [(0.0, 1.0), (-1.0, 0.0), (np.inf, 0.0), (1.0, np.nan), (1.0,), "ab"])
def test_invalid_calibration_raises(cal):
    with pytest.raises(ValueError, match="calibration: expected"):
        patient_probability([0.5], [0.5], calibration=cal)
