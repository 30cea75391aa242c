"""The rollout gate's decision table and its KFP-metrics form."""

from __future__ import annotations

import math

import pytest

from pi2i.evaluation.gate import decide, kfp_metrics


def methods(pi2i=None, swing=0.10, ks=(20, 100, 500)):
    m = {"swing": {"hr": {str(k): swing for k in ks}}, "popularity": {"hr": {str(k): 0.01 for k in ks}}}
    if pi2i is not None:
        m["pi2i"] = {"hr": {str(k): pi2i for k in ks}}
    return m


def live(v, k="100"):
    return {"methods": {"pi2i": {"hr": {k: v}}}, "version": "v1"}


# pi2i, swing, live HR (None = no live version), tolerance -> passed, words in the reason
TABLE = [
    (0.12, 0.10, None, 0.01, True, ["PASS", "no live version"]),
    (0.10, 0.10, None, 0.01, False, ["FAIL", "<="]),  # a tie does not beat Swing
    (0.09, 0.10, None, 0.01, False, ["FAIL"]),
    (0.12, 0.10, 0.12, 0.01, True, ["PASS", "kept"]),
    (0.1189, 0.10, 0.12, 0.01, True, ["PASS"]),  # -0.9% relative: inside tolerance
    (0.1187, 0.10, 0.12, 0.01, False, ["FAIL", "REGRESSION"]),  # -1.08%: outside
    (0.11, 0.10, 0.12, 0.10, True, ["PASS"]),  # a looser tolerance admits it
    (0.09, 0.10, 0.05, 0.01, False, ["FAIL"]),  # better than live but loses to Swing
    (0.20, 0.10, 0.12, 0.0, True, ["PASS"]),
]


@pytest.mark.parametrize("pi2i,swing,live_hr,tol,passed,words", TABLE)
def test_gate_table(pi2i, swing, live_hr, tol, passed, words):
    g = decide(methods(pi2i, swing), 100, tol, live(live_hr) if live_hr is not None else None)
    assert g["passed"] is passed
    assert g["k"] == 100 and g["pi2i_hr"] == pi2i and g["swing_hr"] == swing
    for w in words:
        assert w in g["reason"]
    if live_hr is not None:
        assert g["live_hr"] == live_hr and g["live_floor"] == pytest.approx((1 - tol) * live_hr)
        assert g["live_version"] == "v1"
    else:
        assert g["live_hr"] is None and g["within_live_tolerance"] is None


def test_gate_without_pi2i_fails():
    g = decide(methods(None), 100, 0.01)
    assert g["passed"] is False and "no PI2I" in g["reason"]


def test_gate_live_without_that_k_is_skipped():
    g = decide(methods(0.2), 100, 0.01, live(0.9, k="4000"))
    assert g["passed"] is True and "recorded no PI2I HR@100" in g["reason"]


def test_gate_k_falls_back_to_ladder():
    g = decide(methods(0.2, ks=(20, 50)), 100, 0.01)
    assert g["k"] == 50 and g["requested_k"] == 100 and g["passed"]
    g = decide(methods(0.2, ks=(200, 500)), 100, 0.01)
    assert g["k"] == 200


def test_gate_nan_is_not_a_number_to_pass_on():
    g = decide(methods(float("nan")), 100, 0.01)
    assert g["passed"] is False


def test_kfp_metrics_flat_floats():
    m = {"methods": methods(0.12), "gate": decide(methods(0.12), 100, 0.01, live(0.11))}
    flat = kfp_metrics(m)
    assert flat["gate_passed"] == 1.0 and flat["gate_k"] == 100.0
    assert flat["hr_pi2i_at_100"] == 0.12 and flat["hr_swing_at_20"] == 0.10
    assert all(isinstance(v, float) and not math.isnan(v) for v in flat.values())
    assert all(k.replace("_", "").isalnum() for k in flat)
