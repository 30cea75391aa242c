"""Swing benchmark: exact (no caps), T = 100, on the ``swing-bench`` preset at Zipf 0.6 / 0.8 / 1.0.

Each (zipf, workers) configuration runs ``--repeats`` times, each in a fresh subprocess so peak RSS
(``ru_maxrss``) is per run. Reported: median wall time of ``build_swing`` (events already in memory; numba code
loaded from its cache by a warm-up on a tiny graph first), median end-to-end time (read parquet + build + write
parquet), peak RSS, user pairs per second. Ray worker processes are not children of the driver, so for
``workers > 1`` their RSS is sampled (psutil, every 50 ms) and reported as the peak of driver + workers.

    .venv/bin/python benchmarks/bench_swing.py                      # all three Zipf, workers 1 and 2
    .venv/bin/python benchmarks/bench_swing.py --zipf 0.6 --repeats 5 --workers 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ data
def fallback_generate(out_dir: str, zipf: float, seed: int = 0, users: int = 50_000, items: int = 20_000,
                      pairs: int = 1_000_000) -> None:
    """Same shape as the preset when pi2i.data.synthetic is unavailable: Zipf items, lognormal user activity."""
    import numpy as np
    import pyarrow as pa

    from pi2i.contracts import EVENTS_SCHEMA, write_parquet

    rng = np.random.default_rng(seed)
    act = rng.lognormal(0.0, 1.0, users)
    n_u = np.maximum(1, np.round(act / act.sum() * pairs * 1.1)).astype(np.int64)
    p = np.arange(1, items + 1, dtype=np.float64) ** -zipf
    p /= p.sum()
    uid = np.repeat(np.arange(users), n_u)
    iid = rng.choice(items, size=len(uid), p=p)
    ts = 1_700_000_000_000_000 + rng.integers(0, 14 * 86_400_000_000, len(uid))
    t = pa.table({"user_id": uid, "item_id": iid, "behavior": np.full(len(uid), "click"),
                  "ts": pa.array(ts).cast(pa.timestamp("us", tz="UTC"))}, schema=EVENTS_SCHEMA)
    write_parquet(t, os.path.join(out_dir, "events.parquet"))


def ensure_data(data_dir: Path, zipf: float, seed: int) -> Path:
    d = data_dir / f"swing-bench-z{zipf}-s{seed}"
    ev = d / "events.parquet"
    if not ev.exists():
        try:
            from pi2i.data.synthetic import generate_preset

            generate_preset("swing-bench", str(d), seed=seed, zipf=zipf)
        except ImportError:
            fallback_generate(str(d), zipf, seed)
    return ev


# ------------------------------------------------------------------------------------------------ child
class _RssSampler(threading.Thread):
    """Peak of the summed RSS of this process and its descendants (the local Ray cluster), sampled."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = False

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop:
            total = me.memory_info().rss
            # ray.init() starts the local cluster (gcs, raylet -> workers) as descendants of this process;
            # other jobs' Ray processes on the machine are not counted
            for p in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # processes come and go while sampled
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.05)


def child(args: argparse.Namespace) -> None:
    import numpy as np

    # warm-up: load (or compile once) the numba kernels on a tiny graph
    import pyarrow as pa

    from pi2i.config import SwingConfig
    from pi2i.contracts import EVENTS_SCHEMA, read_events, write_parquet
    from pi2i.ibs.swing import build_swing

    tiny = pa.table({"user_id": np.array([0, 0, 1, 1], np.int64), "item_id": np.array([1, 2, 1, 2], np.int64),
                     "behavior": ["click"] * 4, "ts": pa.array(np.zeros(4, np.int64)).cast(
                         pa.timestamp("us", tz="UTC"))}, schema=EVENTS_SCHEMA)
    build_swing(tiny, SwingConfig(top_t=5))
    ray_init_s = 0.0
    if args.workers > 1:
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        build_swing(tiny, SwingConfig(top_t=5), workers=args.workers)  # start the worker processes
        ray_init_s = time.perf_counter() - t
    sampler = _RssSampler() if args.workers > 1 else None
    if sampler:
        sampler.start()
    cfg = SwingConfig(top_t=args.top_t, alpha=1.0, max_items_per_user=0, max_users_per_item=0)
    t0 = time.perf_counter()
    events = read_events(args.events)
    t1 = time.perf_counter()
    c1 = time.process_time()
    table, stats = build_swing(events, cfg, workers=args.workers)
    t2 = time.perf_counter()
    c2 = time.process_time()
    write_parquet(table, args.out)
    t3 = time.perf_counter()
    if sampler:
        sampler.stop = True
        sampler.join()
    out = {
        "build_s": t2 - t1, "read_s": t1 - t0, "write_s": t3 - t2, "e2e_s": t3 - t0, "driver_cpu_s": c2 - c1,
        "prepare_s": stats["prepare_s"], "ray_init_s": ray_init_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_with_workers_mb": (sampler.peak / 2**20) if sampler else None,
        "user_pairs": stats["user_pairs_visited"], "pair_item_updates": stats["pair_item_updates"],
        "triggers_with_row": stats["triggers_with_row"], "rows": stats["rows_total"],
        "row_p50": stats["row_length"]["p50"], "edges": stats["edges_indexed"], "users": stats["users"],
        "items": stats["items"], "load_avg": os.getloadavg()[0],
    }
    print("RESULT " + json.dumps(out))


# ------------------------------------------------------------------------------------------------ driver
def run_one(events: Path, workers: int, top_t: int, out: Path, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--events", str(events), "--workers", str(workers),
           "--top-t", str(top_t), "--out", str(out)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(r.stdout[-2000:], r.stderr[-4000:], file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--events")
    ap.add_argument("--out", default="/tmp/pi2i-bench-swing-i2i.parquet")
    ap.add_argument("--zipf", type=float, nargs="+", default=[0.6, 0.8, 1.0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top-t", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    ap.add_argument("--data-dir", default=os.environ.get("PI2I_BENCH_DATA", "/tmp/pi2i-bench-data"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "swing.md"))
    args = ap.parse_args()
    if args.child:
        args.workers = args.workers[0] if isinstance(args.workers, list) else args.workers
        child(args)
        return

    rows = []
    for z in args.zipf:
        events = ensure_data(Path(args.data_dir), z, args.seed)
        for w in args.workers:
            runs = []
            for k in range(args.repeats):
                r = run_one(events, w, args.top_t, Path(args.out), args.timeout)
                if r is None or "timeout" in r:
                    print(f"zipf={z} workers={w} run {k}: {'timeout' if r else 'failed'}", flush=True)
                    if r:
                        runs.append(r)
                    break
                print(f"zipf={z} workers={w} run {k}: build {r['build_s']:.2f}s e2e {r['e2e_s']:.2f}s "
                      f"rss {r['peak_rss_mb']:.0f}MB load {r['load_avg']:.1f}", flush=True)
                runs.append(r)
            ok = [r for r in runs if "timeout" not in r]
            if not ok:
                rows.append({"zipf": z, "workers": w, "timeout": True})
                continue
            def med(key: str, ok: list[dict] = ok) -> float:
                return statistics.median(r[key] for r in ok)

            rss = max((r["peak_rss_with_workers_mb"] or r["peak_rss_mb"]) for r in ok)
            rows.append({"zipf": z, "workers": w, "runs": len(ok), "build_s": med("build_s"),
                         "build_min_s": min(r["build_s"] for r in ok), "e2e_s": med("e2e_s"),
                         "prepare_s": med("prepare_s"), "driver_cpu_s": med("driver_cpu_s"),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in ok), "peak_rss_all_mb": rss,
                         "user_pairs": ok[0]["user_pairs"], "pair_item_updates": ok[0]["pair_item_updates"],
                         "pairs_per_s": ok[0]["user_pairs"] / med("build_s"), "edges": ok[0]["edges"],
                         "rows": ok[0]["rows"], "row_p50": ok[0]["row_p50"],
                         "load_avg": statistics.median(r["load_avg"] for r in ok),
                         "ray_init_s": med("ray_init_s")})
    write_results(rows, args)


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Swing benchmark",
        "",
        (f"`{' '.join(['.venv/bin/python', 'benchmarks/bench_swing.py'] + sys.argv[1:])}` — "
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} cores, Python {platform.python_version()}."),
        "",
        (f"Exact Swing (no caps), alpha = 1, T = {args.top_t}, `swing-bench` preset (50k users, 20k items), "
         f"{args.repeats} runs per configuration, each in a fresh process; medians reported. "
         "`build` = `build_swing` on the in-memory events (numba kernels loaded from cache); `e2e` adds reading "
         "the events parquet and writing the i2i parquet. Peak RSS is `ru_maxrss` of the process (for workers > "
         "1: the sampled peak of driver + Ray workers). `load` is the 1-minute load average during the runs: the "
         "machine is shared (2 cores, ~7 concurrent jobs), so wall times are inflated by contention. "
         "`CPU (driver)` is the CPU time of the building process (all its threads; for workers > 1 the Ray "
         "workers' CPU is not in it): the load-independent measure of the work for workers = 1."),
        "",
        ("| Zipf | workers | edges | user pairs | pair-item updates | build (median) | build (min) | e2e | "
         "prepare | CPU (driver) | peak RSS | user pairs/s | rows | load |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("timeout"):
            lines.append(f"| {r['zipf']} | {r['workers']} | timeout ({args.timeout:.0f} s) | | | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['zipf']} | {r['workers']} | {r['edges']:,} | {r['user_pairs']:,} | {r['pair_item_updates']:,} | "
            f"{r['build_s']:.2f} s | {r['build_min_s']:.2f} s | {r['e2e_s']:.2f} s | {r['prepare_s']:.2f} s | "
            f"{r['driver_cpu_s']:.2f} s | "
            f"{r['peak_rss_all_mb']:.0f} MB | {r['pairs_per_s'] / 1e6:.1f} M | {r['rows']:,} | {r['load_avg']:.1f} |")
    lines += ["", "```json", json.dumps(rows, indent=1), "```", ""]
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    notes = path.with_name("swing_notes.md")
    extra = ("\n" + notes.read_text()) if notes.exists() else ""
    path.write_text("\n".join(lines) + extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
