"""The rollout gate's decision table (candidate vs classic Swing, vs the live version re-scored on the same
users with a paired difference) and its KFP-metrics form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pi2i.evaluation.gate import LIVE, decide, kfp_metrics, paired_difference, pick_k


def methods(cand=None, swing=0.10, ks=(20, 100, 500), name="pi2i"):
    m = {"swing": {"hr": {str(k): swing for k in ks}}, "popularity": {"hr": {str(k): 0.01 for k in ks}}}
    if cand is not None:
        m[name] = {"hr": {str(k): cand for k in ks}}
    return m


def live(v, k="100"):
    return {"version": "v1", "method": "pi2i", "hr": {k: v}}


# candidate, swing, live HR (None = no live version), tolerance -> passed, words in the reason
TABLE = [
    (0.12, 0.10, None, 0.01, True, ["PASS", "no live version"]),
    (0.10, 0.10, None, 0.01, False, ["FAIL", "<="]),  # a tie does not beat Swing
    (0.09, 0.10, None, 0.01, False, ["FAIL"]),
    (0.12, 0.10, 0.12, 0.01, True, ["PASS", "kept", "re-scored on the same users"]),
    (0.1189, 0.10, 0.12, 0.01, True, ["PASS"]),  # -0.9% relative: inside tolerance
    (0.1187, 0.10, 0.12, 0.01, False, ["FAIL", "REGRESSION"]),  # -1.08%: outside
    (0.11, 0.10, 0.12, 0.10, True, ["PASS"]),  # a looser tolerance admits it
    (0.09, 0.10, 0.05, 0.01, False, ["FAIL"]),  # better than live but loses to Swing
    (0.20, 0.10, 0.12, 0.0, True, ["PASS"]),
]


@pytest.mark.parametrize("cand,swing,live_hr,tol,passed,words", TABLE)
def test_gate_table(cand, swing, live_hr, tol, passed, words):
    g = decide(methods(cand, swing), 100, tol, "pi2i", live(live_hr) if live_hr is not None else None)
    assert g["passed"] is passed
    assert g["k"] == 100 and g["candidate_hr"] == cand and g["swing_hr"] == swing
    for w in words:
        assert w in g["reason"]
    if live_hr is not None:
        assert g["live_hr"] == live_hr and g["live_floor"] == pytest.approx((1 - tol) * live_hr)
        assert g["live_version"] == "v1" and g["live_diff"]["mean"] == pytest.approx(cand - live_hr)
    else:
        assert g["live_hr"] is None and g["within_live_tolerance"] is None


def test_gate_paired_difference_from_per_user_hr():
    rng = np.random.default_rng(0)
    live_u = rng.random(400)
    cand_u = np.clip(live_u + rng.normal(0.01, 0.05, 400), 0, 1)
    ms = methods(float(cand_u.mean()), 0.1)
    lv = live(float(live_u.mean()))
    g = decide(ms, 100, 0.01, "pi2i", lv, {"pi2i": cand_u, LIVE: live_u, "swing": np.full(400, 0.1)})
    d = cand_u - live_u
    assert g["live_diff"]["mean"] == pytest.approx(d.mean())
    assert g["live_diff"]["se"] == pytest.approx(d.std(ddof=1) / 20)
    assert g["live_diff"]["ci95_low"] < d.mean() < g["live_diff"]["ci95_high"]
    assert g["vs_swing"]["mean"] == pytest.approx(cand_u.mean() - 0.1) and g["passed"]
    assert set(g["vs"]) == {"swing"} and g["vs"]["swing"] == g["vs_swing"]


def test_paired_difference_of_identical_lists_is_zero():
    a = np.array([0.0, 0.5, 1.0])
    assert paired_difference(a, a) == {"mean": 0.0, "se": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "users": 3}


def test_gate_candidate_is_configurable():
    g = decide(methods(0.3, name="pdn"), 100, 0.01, "pdn")
    assert g["passed"] and g["candidate"] == "pdn" and "pdn HR@100" in g["reason"]
    g = decide(methods(0.3, name="pdn"), 100, 0.01, "pi2i")
    assert g["passed"] is False and "no pi2i" in g["reason"]


def test_gate_live_that_could_not_be_loaded_is_skipped_loudly():
    g = decide(methods(0.2), 100, 0.01, "pi2i", {"version": "v9", "error": "format 1, this code reads 2"})
    assert g["passed"] is True and "v9 could not be re-scored (format 1" in g["reason"]
    assert g["within_live_tolerance"] is None


def test_gate_live_without_that_k_is_skipped():
    g = decide(methods(0.2), 100, 0.01, "pi2i", live(0.9, k="4000"))
    assert g["passed"] is True and "has no HR@100" in g["reason"]


def test_gate_k_falls_back_to_ladder():
    g = decide(methods(0.2, ks=(20, 50)), 100, 0.01)
    assert g["k"] == 50 and g["requested_k"] == 100 and g["passed"]
    g = decide(methods(0.2, ks=(200, 500)), 100, 0.01)
    assert g["k"] == 200
    assert pick_k([], 100) is None and pick_k(["20", "50"], 30) == 20


def test_gate_nan_is_not_a_number_to_pass_on():
    g = decide(methods(float("nan")), 100, 0.01)
    assert g["passed"] is False


def test_kfp_metrics_flat_floats():
    m = {"methods": methods(0.12), "gate": decide(methods(0.12), 100, 0.01, "pi2i", live(0.11))}
    flat = kfp_metrics(m)
    assert flat["gate_passed"] == 1.0 and flat["gate_k"] == 100.0 and flat["gate_live_hr"] == 0.11
    assert flat["hr_pi2i_at_100"] == 0.12 and flat["hr_swing_at_20"] == 0.10
    assert flat["gate_live_diff"] == pytest.approx(0.01)
    assert all(isinstance(v, float) and not math.isnan(v) for v in flat.values())
    assert all(k.replace("_", "").isalnum() for k in flat)
