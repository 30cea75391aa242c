"""With vs without LLM-I2I augmentation, side by side on the same split (llm-i2i.txt Tables 3-4).

One train/test split; two Swing indexes — on the real train events, and on real + kept synthetic rows — and,
for ``pi2i``, one scorer trained on each index (the samples always come from the real events). Both variants
go through the same :func:`pi2i.evaluation.evaluate.evaluate` on the same real train histories and test clicks,
so the only difference is the data the index was built from. Writes ``compare.json`` and ``compare.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pi2i.config import Config
from pi2i.contracts import EVENTS_FILE, exists, join, makedirs, read_json, write_json
from pi2i.layout import I2I_FILE

AUGMENTED = "augmented"
VARIANTS = ("original", "augmented")


def _acceptance(res: dict, k: str, max_rel_drop: float = 0.02) -> dict | None:
    """The issue's bar for Swing: tail HR@K up, overall HR@K down by at most ``max_rel_drop`` relative."""
    try:
        o, a = res["swing"]["original"], res["swing"]["augmented"]
        hr_o, hr_a = o["hr"][k], a["hr"][k]
        tail_o, tail_a = o["tail_hr"][k], a["tail_hr"][k]
    except KeyError:
        return None
    rel = (hr_a - hr_o) / hr_o if hr_o else 0.0
    return {"k": int(k), "tail_hr_original": tail_o, "tail_hr_augmented": tail_a, "hr_original": hr_o,
            "hr_augmented": hr_a, "hr_relative_change": rel,
            "passed": bool(tail_a > tail_o and rel >= -max_rel_drop)}


def compare(train_dir: str, test_dir: str, out_dir: str, cfg: Config, methods: Sequence[str] = ("swing", "pi2i"),
            augmented_dir: str | None = None, progress: bool = False) -> dict:
    """Augment ``train_dir`` (or reuse ``augmented_dir``), build both indexes, train/evaluate ``methods`` on
    both, write ``compare.json`` / ``compare.md`` into ``out_dir``; return the comparison."""
    from pi2i.augment.pipeline import augment
    from pi2i.evaluation.evaluate import evaluate
    from pi2i.ibs.swing import run_swing

    t0 = time.perf_counter()
    makedirs(out_dir)
    train_events = join(train_dir, EVENTS_FILE)
    if augmented_dir is None:
        augmented_dir = join(out_dir, AUGMENTED)
        summary = augment(train_events, augmented_dir, cfg, progress)
    else:
        summary = read_json(join(augmented_dir, "summary.json")) if exists(join(augmented_dir, "summary.json")) \
            else {}
    sources = {"original": train_events, "augmented": join(augmented_dir, EVENTS_FILE)}
    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    timings: dict[str, float] = {}
    for variant, events in sources.items():
        d = join(out_dir, variant)
        i2i = join(d, I2I_FILE)
        t = time.perf_counter()
        swing_stats = run_swing(events, i2i, cfg.swing, cfg.swing.workers)
        timings[f"swing_{variant}"] = round(time.perf_counter() - t, 3)
        model_dirs: list[str] = []
        if "pi2i" in methods:
            from pi2i.prs.sampling import build_samples
            from pi2i.prs.train import train

            t = time.perf_counter()
            build_samples(train_events, i2i, join(d, "samples"), cfg)  # real clicks only, this variant's index
            train(join(d, "samples"), join(d, "model"), cfg, progress=progress)
            timings[f"pi2i_train_{variant}"] = round(time.perf_counter() - t, 3)
            model_dirs.append(join(d, "model"))
        m = evaluate(train_dir, test_dir, i2i, model_dirs, join(d, "eval"), cfg, methods=list(methods))
        for name in methods:
            r = m["methods"].get(name, {})
            results[name][variant] = {"hr": r.get("hr", {}), "tail_hr": r.get("tail_hr", {})}
        results.setdefault("_swing_stats", {})[variant] = {
            k: swing_stats.get(k) for k in ("pairs", "triggers", "events_used", "users", "items") if k in swing_stats}
    ks = sorted({k for r in results[methods[0]].values() for k in r["hr"]}, key=int)
    k_gate = str(cfg.eval.gate_k) if str(cfg.eval.gate_k) in ks else (ks[-1] if ks else "100")
    out = {
        "ks": ks, "methods": {m: results[m] for m in methods}, "swing_stats": results.get("_swing_stats"),
        "augment": {k: summary.get(k) for k in ("users", "proposed", "kept", "share_long_tail", "seconds", "tau")},
        "filter_validation": summary.get("filter_validation"),
        "acceptance": _acceptance(results, k_gate), "timings": timings,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out, join(out_dir, "compare.json"))
    from pi2i.contracts import resolve

    fs, p = resolve(join(out_dir, "compare.md"))
    with fs.open_output_stream(p) as f:
        f.write(markdown(out).encode())
    return out


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "–"


def markdown(res: dict) -> str:
    """HR@K and tail HR@K per method, original vs augmented, with the relative change."""
    ks = res["ks"]
    lines = ["# LLM-I2I augmentation: with vs without (same test users, real test clicks)", ""]
    a = res.get("augment") or {}
    lines.append(f"Synthetic rows kept: {a.get('kept')} of {a.get('proposed')} proposed for {a.get('users')} users "
                 f"(long-tail share {_pct(a.get('share_long_tail'))}%, τ = {a.get('tau')}).")
    lines.append("")
    for metric in ("hr", "tail_hr"):
        lines.append(f"## {metric.replace('_', ' ')}@K (%)")
        lines.append("")
        lines.append("| method | data | " + " | ".join(f"K={k}" for k in ks) + " |")
        lines.append("|---|---|" + "---|" * len(ks))
        for name, variants in res["methods"].items():
            for v in VARIANTS:
                vals = variants.get(v, {}).get(metric, {})
                lines.append(f"| {name} | {v} | " + " | ".join(_pct(vals.get(k)) for k in ks) + " |")
            o, g = variants.get("original", {}).get(metric, {}), variants.get("augmented", {}).get(metric, {})
            rel = [f"{100 * (g[k] - o[k]) / o[k]:+.1f}%" if o.get(k) and k in g else "–" for k in ks]
            lines.append(f"| {name} | Δ rel | " + " | ".join(rel) + " |")
        lines.append("")
    acc = res.get("acceptance")
    if acc:
        lines.append(f"Acceptance (Swing, K={acc['k']}): tail HR {_pct(acc['tail_hr_original'])}% → "
                     f"{_pct(acc['tail_hr_augmented'])}%, HR {_pct(acc['hr_original'])}% → "
                     f"{_pct(acc['hr_augmented'])}% ({100 * acc['hr_relative_change']:+.2f}% rel): "
                     f"{'PASS' if acc['passed'] else 'FAIL'}")
    return "\n".join(lines) + "\n"
