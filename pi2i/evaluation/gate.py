"""The rollout gate: may this candidate version replace the live one?

Two checks at ``eval.gate_k`` (DESIGN.md "Evaluation gate"):

1. **beats classic Swing**: ``HR_pi2i@K > HR_swing@K`` (strictly), on the same test users;
2. **no regression vs live**: ``HR_pi2i@K >= (1 - tolerance) * HR_live@K`` where ``HR_live`` is the PI2I HR@K
   recorded in the live version's ``metrics.json``. No live version (first rollout), or a live record without
   that number, skips this check and says so in the reason.

If ``gate_k`` is not on the evaluated K ladder (the data capped it), the largest evaluated K below it is used
(else the smallest); the K actually used is recorded. The decision, its numbers and a one-line reason go into
``metrics.json["gate"]``; :func:`kfp_metrics` flattens them for KFP ``Metrics.log_metric``.
"""

from __future__ import annotations

import math
import re
from typing import Any


def _hr(method: dict | None, k: int) -> float | None:
    if not method:
        return None
    v = method.get("hr", {}).get(str(k), method.get("hr", {}).get(k))
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _pick_k(methods: dict, gate_k: int) -> int | None:
    ks = sorted({int(k) for m in methods.values() for k in m.get("hr", {})})
    if not ks:
        return None
    if gate_k in ks:
        return gate_k
    below = [k for k in ks if k <= gate_k]
    return below[-1] if below else ks[0]


def decide(methods: dict[str, dict], gate_k: int, tolerance: float, live_metrics: dict | None = None,
           live_version: str | None = None) -> dict[str, Any]:
    """The gate decision as a dict: passed, reason, k, the numbers compared and each check's outcome."""
    k = _pick_k(methods, gate_k)
    out: dict[str, Any] = {"passed": False, "k": k, "requested_k": gate_k, "tolerance": tolerance,
                           "pi2i_hr": None, "swing_hr": None, "live_hr": None, "live_version": live_version,
                           "live_floor": None, "beats_swing": None, "within_live_tolerance": None}
    if k is None:
        out["reason"] = "no metrics were computed (no test users?)"
        return out
    pi2i, swing = _hr(methods.get("pi2i"), k), _hr(methods.get("swing"), k)
    out.update(pi2i_hr=pi2i, swing_hr=swing)
    if pi2i is None:
        out["reason"] = f"no PI2I HR@{k} (model not evaluated or no test users)"
        return out
    if swing is None:
        out["reason"] = f"no classic Swing HR@{k} to compare against"
        return out
    out["beats_swing"] = pi2i > swing
    reasons = [f"PI2I HR@{k}={pi2i:.4%} {'>' if out['beats_swing'] else '<='} classic Swing {swing:.4%}"]

    live = None
    if live_metrics:
        live = _hr(live_metrics.get("methods", {}).get("pi2i"), k)
        if out["live_version"] is None:
            out["live_version"] = live_metrics.get("version")
    if live is None:
        reasons.append("no live version" if not live_metrics else f"live version recorded no PI2I HR@{k}")
        reasons[-1] += ": live comparison skipped"
    else:
        floor = (1.0 - tolerance) * live
        out.update(live_hr=live, live_floor=floor, within_live_tolerance=pi2i >= floor)
        reasons.append(f"live {live:.4%}, floor (-{tolerance:.1%}) {floor:.4%}: "
                       + ("kept" if out["within_live_tolerance"] else "REGRESSION"))
    out["passed"] = bool(out["beats_swing"] and out["within_live_tolerance"] is not False)
    out["reason"] = ("PASS: " if out["passed"] else "FAIL: ") + "; ".join(reasons)
    return out


def _name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s)


def kfp_metrics(metrics: dict) -> dict[str, float]:
    """Flat ``{name: float}`` for KFP ``Metrics.log_metric``: gate verdict + numbers, and HR@K of each method."""
    g = metrics.get("gate", {})
    flat: dict[str, float] = {"gate_passed": 1.0 if g.get("passed") else 0.0}
    for key in ("k", "pi2i_hr", "swing_hr", "live_hr", "live_floor", "tolerance"):
        v = g.get(key)
        if v is not None:
            flat[f"gate_{key}"] = float(v)
    for name, m in metrics.get("methods", {}).items():
        for k, v in m.get("hr", {}).items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                flat[f"hr_{_name(name)}_at_{k}"] = float(v)
    return flat
