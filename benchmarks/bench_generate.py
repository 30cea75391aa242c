"""Benchmark the synthetic generator: wall time and peak RSS for 10M events (preset ``bench-10m``).

Each run is a fresh child process (so the peak RSS is the generator's, not this script's), writing to a
temporary directory that is removed afterwards.

    .venv/bin/python benchmarks/bench_generate.py [--preset bench-10m] [--repeat 3] [--zipf 0.8] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
from pi2i.data.synthetic import generate_preset
t = time.perf_counter()
s = generate_preset(sys.argv[1], sys.argv[2], seed=0, **json.loads(sys.argv[3]))
print(json.dumps({"gen_s": time.perf_counter() - t, "events": s["events"],
                  "distinct_user_items": s["distinct_user_items"]}))
"""


def run_once(preset: str, overrides: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, preset, d, json.dumps(overrides)],
                             check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        size = os.path.getsize(os.path.join(d, "events.parquet"))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update({"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "events_parquet_mb": size / 2**20})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench-10m")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--zipf", type=float, default=None)
    ap.add_argument("--chunk-events", type=int, default=None, help="events per generated chunk")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    overrides = {k: v for k, v in {"zipf": a.zipf, "chunk_events": a.chunk_events}.items() if v is not None}
    runs = []
    for i in range(a.repeat):
        r = run_once(a.preset, overrides)
        runs.append(r)
        print(f"run {i + 1}: {r['events']:,} events  generate {r['gen_s']:.1f} s  process {r['wall_s']:.1f} s  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB  events.parquet {r['events_parquet_mb']:.0f} MB", flush=True)
    summary = {
        "preset": a.preset, "overrides": overrides, "repeat": a.repeat, "cpus": os.cpu_count(),
        "median_generate_s": statistics.median(r["gen_s"] for r in runs),
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
