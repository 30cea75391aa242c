"""Trigger–target sampling benchmark on the ``swing-bench`` preset (50k users, 20k items, ~1.15M events).

Builds the data and the Swing index once (cached in ``--data-dir``), warms the numba kernels on a tiny run, then
runs :func:`pi2i.prs.sampling.build_samples` ``--repeats`` times and reports medians: positions (candidate samples)
per second in the compiled sampler, end to end (read + sample + write the samples dir), the drop rate, and the
per-batch feature building throughput (:meth:`SampleSet.features`, what training pays per batch).

    .venv/bin/python benchmarks/bench_sampling.py --data-dir /tmp/sampling-bench --top-t 1250 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi2i.config import Config
from pi2i.data.synthetic import generate_preset
from pi2i.ibs.swing import run_swing
from pi2i.prs.sampling import SampleSet, build_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/tmp/pi2i-sampling-bench")
    ap.add_argument("--preset", default="swing-bench")
    ap.add_argument("--top-t", type=int, default=1250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the JSON result here")
    a = ap.parse_args()
    d = Path(a.data_dir)
    data, i2i = d / a.preset, d / f"i2i_T{a.top_t}.parquet"
    cfg = Config()
    cfg.swing.top_t = a.top_t
    if not (data / "events.parquet").exists():
        generate_preset(a.preset, str(data), seed=0)
    if not i2i.exists():
        t = time.perf_counter()
        run_swing(str(data / "events.parquet"), str(i2i), cfg.swing)
        print(f"swing T={a.top_t}: {time.perf_counter() - t:.1f}s", flush=True)
    # warm-up: compile / load the numba kernels
    warm = d / "warm"
    if not (warm / "events.parquet").exists():
        generate_preset("tiny", str(warm), seed=0)
        run_swing(str(warm / "events.parquet"), str(warm / "i2i.parquet"), cfg.swing)
    build_samples(str(warm / "events.parquet"), str(warm / "i2i.parquet"), str(d / "warm_samples"), cfg)
    SampleSet(str(d / "warm_samples")).features(np.arange(10), 20, 50, 8)

    runs = []
    for r in range(a.repeats):
        s = build_samples(str(data / "events.parquet"), str(i2i), str(d / "samples"), cfg)
        runs.append(s)
        print(f"run {r + 1}: {s['positions']} positions, sampler {s['samples_per_s_sampling']:.0f}/s, "
              f"e2e {s['samples_per_s']:.0f}/s, drop {s['drop_rate']:.1%}", flush=True)
    ss = SampleSet(str(d / "samples"))
    rng = np.random.default_rng(0)
    feat_t = []
    for _ in range(5):
        idx = np.sort(rng.choice(len(ss), 256, replace=False))
        t = time.perf_counter()
        ss.features(idx, cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits)
        feat_t.append(time.perf_counter() - t)
    med = lambda k: statistics.median(x[k] for x in runs)
    res = {
        "preset": a.preset, "top_t": a.top_t, "repeats": a.repeats, "events": runs[0]["events"],
        "positions": runs[0]["positions"], "samples": runs[0]["samples"], "drop_rate": runs[0]["drop_rate"],
        "mean_positive_triggers": runs[0]["mean_positive_triggers"],
        "mean_hard_negatives": runs[0]["mean_hard_negatives"], "mean_easy_negatives": runs[0]["mean_easy_negatives"],
        "sampler_positions_per_s_median": med("samples_per_s_sampling"),
        "e2e_positions_per_s_median": med("samples_per_s"), "e2e_seconds_median": med("seconds_total"),
        "features_batch256_ms_median": 1000 * statistics.median(feat_t),
        "load_avg_1m": os.getloadavg()[0], "cores": os.cpu_count(), "python": platform.python_version(),
    }
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
