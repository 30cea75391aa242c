"""PI2I quality vs its own baselines on real (MovieLens sample) and demo data (issue 13 item 4).

Runs the documented CLI steps end to end and prints HR@K of every method::

    pi2i data load --format movielens --input ratings.dat --out D ; pi2i data split --data D --out S \
        --per-user-fraction 0.1                       (demo: pi2i data generate --preset demo; --test-days 1)
    pi2i swing --events S/train/events.parquet --out I
    pi2i samples --events S/train/events.parquet --i2i I --out SM ; pi2i train --samples SM --out M
    pi2i evaluate --train S/train --test S/test --i2i I --model M --methods popularity,swing,pool,ease,pi2i --out O

Usage: ``python benchmarks/bench_quality.py [--datasets movielens,demo,taobao] [--work DIR] [--out F.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PI2I = [str(Path(sys.executable).with_name("pi2i"))]
SHARED = ROOT.parent / "shared" / "data"  # the real samples live beside the checkout, never in it
MOVIELENS = str(SHARED / "movielens-sample" / "ratings.dat")
TAOBAO = str(SHARED / "taobao" / "userbehavior_head.csv")
METHODS = "popularity,swing,pool,ease,pi2i"
KS = (20, 50, 100, 200, 500)


REUSE = False  # --reuse: skip a step whose output exists (re-print the table of a finished --work dir)
TRAIN_CONFIG: list[str] = []  # --config F: passed to `pi2i train` (e.g. a model variant)


def sh(*args: str) -> float | None:
    out = args[args.index("--out") + 1]
    if REUSE and Path(out).exists():  # say so: a stale work dir would otherwise pass old results off as new
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(Path(out).stat().st_mtime))
        print(f"(reused {out}, written {when}: pi2i {args[0]} not run)", flush=True)
        return None
    t0 = time.perf_counter()
    print("$ pi2i " + " ".join(args), flush=True)
    subprocess.run(PI2I + list(args), check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 1)


def run(dataset: str, work: Path, movielens: str) -> dict:
    d, s, i, sm, m, o = (str(work / dataset / x) for x in ("D", "S", "I", "SM", "M", "O"))
    secs: dict[str, float | None] = {}
    if dataset == "movielens":
        secs["load"] = sh("data", "load", "--format", "movielens", "--input", movielens, "--out", d)
        secs["split"] = sh("data", "split", "--data", d, "--out", s, "--per-user-fraction", "0.1")
    elif dataset == "taobao":
        secs["load"] = sh("data", "load", "--format", "taobao", "--input", TAOBAO, "--out", d)
        secs["split"] = sh("data", "split", "--data", d, "--out", s, "--test-days", "1")
    else:
        secs["generate"] = sh("data", "generate", "--preset", "demo", "--out", d)
        secs["split"] = sh("data", "split", "--data", d, "--out", s, "--test-days", "1")
    ev = f"{s}/train/events.parquet"
    secs["swing"] = sh("swing", "--events", ev, "--out", i)
    secs["samples"] = sh("samples", "--events", ev, "--i2i", i, "--out", sm)
    secs["train"] = sh("train", "--samples", sm, "--out", m, *TRAIN_CONFIG)
    secs["evaluate"] = sh("evaluate", "--train", f"{s}/train", "--test", f"{s}/test", "--i2i", i, "--model", m,
                          "--methods", METHODS if dataset != "taobao" else METHODS.replace(",ease", ""),
                          "--out", o)  # EASE refuses the Taobao head's 48.9k-item catalogue (dense n×n B)
    metrics = json.loads(Path(o, "metrics.json").read_text())
    stats = json.loads(Path(m, "train_stats.json").read_text())
    return {"metrics": metrics, "train_stats": stats, "seconds": secs}


def hr_table(metrics: dict) -> dict[str, dict[str, float]]:
    """{method: {K: HR@K}} from metrics.json (tolerant of its layout)."""
    out: dict[str, dict[str, float]] = {}
    for name, m in (metrics.get("methods") or {}).items():
        hr = m.get("hr") or {}
        out[name] = {str(k): float(v) for k, v in hr.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="movielens,demo")
    ap.add_argument("--work", default=None, help="working dir (default: a temp dir)")
    ap.add_argument("--movielens", default=MOVIELENS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quality.json"))
    ap.add_argument("--baseline", default=None, help="results file of an earlier run to keep as 'before'")
    ap.add_argument("--baseline-note", default="", help="what the earlier run measured (code version)")
    ap.add_argument("--reuse", action="store_true", help="skip steps whose output exists in --work")
    ap.add_argument("--config", default=None, help="YAML config for `pi2i train` (default: the built-in defaults)")
    a = ap.parse_args()
    global REUSE
    REUSE = a.reuse
    if a.config:
        TRAIN_CONFIG[:] = ["--config", a.config]
    work = Path(a.work or tempfile.mkdtemp(prefix="pi2i-quality-"))
    results = {"load_before": os.getloadavg()[0], "datasets": {}}
    for ds in a.datasets.split(","):
        r = run(ds, work, a.movielens)
        r["hr"] = hr_table(r["metrics"])
        r["paired"] = (r["metrics"].get("paired") or {}).get("vs", {})
        results["datasets"][ds] = {k: v for k, v in r.items() if k != "metrics"}
    results["load_after"] = os.getloadavg()[0]
    print(f"\nHR@K (load {results['load_before']:.1f} -> {results['load_after']:.1f})")
    for ds, r in results["datasets"].items():
        cal = r["train_stats"].get("calibration") or {}
        hr_key = f"val_hr{cal.get('k')}"
        chosen = (f"popularity {cal['popularity']:g}, swing {cal['swing']:g}, {cal.get('seconds', '?')} s; val "
                  f"HR@{cal['k']} {cal[hr_key]:.4f} vs model {cal[hr_key + '_model']:.4f}" if cal else "-")
        print(f"\n{ds}  (train {r['train_stats'].get('seconds')} s; calibration {chosen})")
        print("method".ljust(12) + "".join(f"HR@{k}".rjust(9) for k in KS))
        for name, hr in r["hr"].items():
            print(name.ljust(12) + "".join(f"{hr.get(str(k), float('nan')):9.4f}" for k in KS))
        for base in ("popularity", "swing"):  # pi2i minus it, paired over the same users: more than noise?
            cells = [r["paired"].get(str(k), {}).get(base) for k in KS]
            if any(cells):
                print(f"vs {base[:9]}".ljust(12) + "".join(
                    f"{c['mean']:+8.4f}" + ("*" if c["ci95_low"] > 0 or c["ci95_high"] < 0 else " ") if c
                    else " " * 9 for c in cells) + "   (* 95% CI excludes 0)")
    if a.baseline:  # an earlier run (e.g. of the code before a change), kept side by side
        base = json.loads(Path(a.baseline).read_text())
        results["before"] = {"source": a.baseline, "note": a.baseline_note, "datasets": base["datasets"]}
        print("\nPI2I HR@K before -> after")
        for ds, r in results["datasets"].items():
            b = base["datasets"].get(ds, {}).get("hr", {}).get("pi2i", {})
            print(ds.ljust(12) + "".join(f"  @{k} {b.get(str(k), float('nan')):.4f}->{r['hr']['pi2i'][str(k)]:.4f}"
                                         for k in KS))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(f"\n-> {a.out}")


if __name__ == "__main__":
    main()
