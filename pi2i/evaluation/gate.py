"""The rollout gate: may this candidate version replace the live one?

Two checks at ``eval.gate_k`` on the same test users (DESIGN.md "Evaluation gate", issue 13 item 3):

1. **beats classic Swing**: ``HR_candidate@K > HR_swing@K`` (strictly); the candidate is ``eval.gate_method``
   (default ``pi2i``); its paired difference against every evaluated method is reported beside (``vs``);
2. **no regression vs live**: the live version of the registry is *re-scored on these users* (never a number
   recorded on another day's users) and the mean paired difference ``d = mean_u(HR_cand(u) − HR_live(u))``
   must satisfy ``d >= −tolerance · HR_live@K`` (``eval.gate_tolerance``, relative). Its standard error and a
   95% interval are reported beside it. No live version (first rollout) skips this check and says so; a live
   version this code cannot load is reported with its error and skipped too.

If ``gate_k`` is not on the evaluated K ladder (the data capped it), the largest evaluated K below it is used
(else the smallest); the K actually used is recorded. The decision, its numbers and a one-line reason go into
``metrics.json["gate"]``; :func:`kfp_metrics` flattens them for KFP ``Metrics.log_metric``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

LIVE = "live"  # key of the live version's per-user HR in decide(per_user=...)


def pick_k(ks: Iterable[int | str], gate_k: int) -> int | None:
    """The K the gate compares at: ``gate_k`` if evaluated, else the largest below it, else the smallest."""
    ladder = sorted({int(k) for k in ks})
    if not ladder:
        return None
    if gate_k in ladder:
        return gate_k
    below = [k for k in ladder if k <= gate_k]
    return below[-1] if below else ladder[0]


def _hr(method: dict | None, k: int) -> float | None:
    if not method:
        return None
    hr = method.get("hr") or {}
    v = hr.get(str(k), hr.get(k))
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Mean of ``a − b`` over the same users, its standard error and a normal 95% interval."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "ci95_low": mean - 1.96 * se, "ci95_high": mean + 1.96 * se, "users": n}


def decide(methods: dict[str, dict], gate_k: int, tolerance: float, candidate: str = "pi2i",
           live: dict | None = None, per_user: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The gate decision: passed, reason, k, the numbers compared and each check's outcome.

    ``live`` is :func:`pi2i.evaluation.evaluate.score_live`'s record (``{"version", "method", "hr": {K: v}}``,
    or ``{"version": None}``, or with ``"error"``); ``per_user`` maps method names and :data:`LIVE` to per-user
    HR at the gate K, in the same user order, for the paired differences.
    """
    k = pick_k((kk for m in methods.values() for kk in (m.get("hr") or {})), gate_k)
    per_user = per_user or {}
    out: dict[str, Any] = {
        "passed": False, "k": k, "requested_k": gate_k, "candidate": candidate, "tolerance": tolerance,
        "candidate_hr": None, "swing_hr": None, "beats_swing": None, "vs_swing": None, "vs": {},
        "live": live, "live_version": (live or {}).get("version"), "live_hr": None, "live_floor": None,
        "live_diff": None, "within_live_tolerance": None}
    if k is None:
        out["reason"] = "no metrics were computed (no test users?)"
        return out
    cand, swing = _hr(methods.get(candidate), k), _hr(methods.get("swing"), k)
    out.update(candidate_hr=cand, swing_hr=swing)
    if cand is None:
        out["reason"] = f"FAIL: no {candidate} HR@{k} (method not evaluated, or no test users)"
        return out
    if swing is None:
        out["reason"] = f"FAIL: no classic Swing HR@{k} to compare against"
        return out
    out["beats_swing"] = cand > swing
    if candidate in per_user:  # informative: the candidate against every method on the same users
        out["vs"] = {name: paired_difference(per_user[candidate], hr) for name, hr in per_user.items()
                     if name not in (candidate, LIVE)}
        out["vs_swing"] = out["vs"].get("swing")
    reasons = [f"{candidate} HR@{k}={cand:.4%} {'>' if out['beats_swing'] else '<='} classic Swing {swing:.4%}"]
    reasons.append(_live_check(out, live, cand, k, tolerance, per_user.get(candidate), per_user.get(LIVE)))
    out["passed"] = bool(out["beats_swing"] and out["within_live_tolerance"] is not False)
    out["reason"] = ("PASS: " if out["passed"] else "FAIL: ") + "; ".join(reasons)
    return out


def _live_check(out: dict, live: dict | None, cand: float, k: int, tolerance: float,
                cand_users: np.ndarray | None, live_users: np.ndarray | None) -> str:
    """Fill the live fields of ``out``; return the reason's clause."""
    if not live or live.get("version") is None:
        return "no live version: live comparison skipped"
    version = live["version"]
    if live.get("error"):
        return f"live version {version} could not be re-scored ({live['error']}): live comparison skipped"
    live_hr = _hr(live, k)
    if live_hr is None:
        return f"live version {version} has no HR@{k}: live comparison skipped"
    floor = (1.0 - tolerance) * live_hr
    if cand_users is not None and live_users is not None and len(cand_users) == len(live_users):
        diff = paired_difference(cand_users, live_users)
    else:  # the same users, so the mean difference is the difference of the means
        diff = {"mean": cand - live_hr, "se": float("nan"), "users": None}
    ok = diff["mean"] >= -tolerance * live_hr - 1e-12
    out.update(live_hr=live_hr, live_floor=floor, live_diff=diff, within_live_tolerance=bool(ok))
    se = f" ± {1.96 * diff['se']:.4%}" if not math.isnan(diff["se"]) else ""
    return (f"live {version} re-scored on the same users: HR@{k}={live_hr:.4%}, paired difference "
            f"{diff['mean']:+.4%}{se}, allowed -{tolerance:.1%} × live = {-tolerance * live_hr:+.4%}: "
            + ("kept" if ok else "REGRESSION"))


def _name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s)


def kfp_metrics(metrics: dict) -> dict[str, float]:
    """Flat ``{name: float}`` for KFP ``Metrics.log_metric``: gate verdict + numbers, and HR@K of each method."""
    g = metrics.get("gate", {})
    flat: dict[str, float] = {"gate_passed": 1.0 if g.get("passed") else 0.0}
    for key in ("k", "candidate_hr", "swing_hr", "live_hr", "live_floor", "tolerance"):
        v = g.get(key)
        if v is not None:
            flat[f"gate_{key}"] = float(v)
    diff = (g.get("live_diff") or {}).get("mean")
    if diff is not None and not math.isnan(diff):
        flat["gate_live_diff"] = float(diff)
    for name, m in metrics.get("methods", {}).items():
        for k, v in m.get("hr", {}).items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                flat[f"hr_{_name(name)}_at_{k}"] = float(v)
    return flat
