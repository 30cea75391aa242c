"""Candidate scoring latency: one user, ~10,000 candidates, ``Scorer.recommend`` end to end (target ≤ 50 ms p50 on
2 cores), plus batched ``recommend_many`` throughput.

The i2i index, catalogue and model are synthetic (random rows; a default-size ``ModelConfig`` with random weights —
latency does not depend on the weights): 60k items with category/brand/seller/price, 5,000 trigger rows of
``--row`` targets; the user's 20 distinct triggers retrieve ~10k distinct candidates. Or pass ``--model-dir`` and
``--i2i`` to time a trained model. torch and numba use ``--threads`` threads; inference runs under
``torch.inference_mode``.

    .venv/bin/python benchmarks/bench_scoring.py --threads 2 --repeats 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_scorer(n_items: int, n_rows: int, row: int, seed: int = 0):
    import pyarrow as pa
    import torch

    from pi2i.config import Config
    from pi2i.ibs.i2i import I2IIndex
    from pi2i.prs.candidates import ItemInfo, RowLookup
    from pi2i.prs.model import PRSModel, Vocab
    from pi2i.prs.scoring import Scorer

    rng = np.random.default_rng(seed)
    items = np.arange(1, n_items + 1, dtype=np.int64) * 7
    trig = np.sort(rng.choice(items, n_rows, replace=False))
    tg = np.stack([rng.choice(items, row, replace=False) for _ in range(n_rows)])
    sc = np.sort(rng.random((n_rows, row)).astype(np.float32), axis=1)[:, ::-1]
    t = pa.table({"trigger": np.repeat(trig, row), "target": tg.ravel(), "score": sc.ravel().copy(),
                  "rank": np.tile(np.arange(1, row + 1, dtype=np.int32), n_rows)})
    index = I2IIndex.from_table(t)
    info = ItemInfo.from_table(pa.table({
        "item_id": items, "category_id": rng.integers(0, 200, n_items), "brand_id": rng.integers(0, 2000, n_items),
        "seller_id": rng.integers(0, 5000, n_items), "price": rng.lognormal(3, 1, n_items)}))
    cfg = Config()
    vocab = Vocab.build(items, info, 1)
    torch.manual_seed(0)
    model = PRSModel(cfg.model, vocab.sizes, cfg.sampling.seq_len).eval()
    meta = {"num_triggers": cfg.sampling.num_triggers, "seq_len": cfg.sampling.seq_len,
            "max_trigger_hits": cfg.model.max_trigger_hits, "dedup_consecutive": True}
    scorer = Scorer(model, cfg, meta, vocab, RowLookup.build(index), info, items)
    return scorer, trig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--row", type=int, default=520, help="targets per synthetic i2i row")
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--users", type=int, default=500, help="users for the recommend_many throughput run")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import numba
    import torch

    torch.set_num_threads(a.threads)
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    from pi2i.prs.candidates import candidate_union, featurize
    from pi2i.prs.model import to_tensors

    scorer, trig = synthetic_scorer(60_000, 5_000, a.row)
    rng = np.random.default_rng(1)
    hist_items = rng.choice(trig, 50)  # 50 clicks; the last 20 distinct are the triggers
    hist_ts = np.arange(50, dtype=np.int64) * 60_000_000 + 1_700_000_000_000_000
    rec = scorer.recommend(hist_items, hist_ts, a.k)  # warm-up (numba cache load, torch init)
    lat, cpu, phase = [], [], {"groups+union": [], "features": [], "encode": [], "model": []}
    for _ in range(a.repeats):
        t, c0 = time.perf_counter(), time.process_time()
        rec = scorer.recommend(hist_items, hist_ts, a.k)
        lat.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c0)
    for _ in range(min(a.repeats, 20)):  # phase breakdown of the same path
        t0 = time.perf_counter()
        g = scorer.groups([(hist_items, hist_ts)])
        c = candidate_union(scorer.lookup, g.triggers)
        t1 = time.perf_counter()
        f = featurize(g, c, scorer.lookup, scorer.info, scorer.max_hits)
        t2 = time.perf_counter()
        b = to_tensors(f, scorer.vocab)
        t3 = time.perf_counter()
        with torch.inference_mode():
            scorer.model(b)
        t4 = time.perf_counter()
        for k_, v in zip(phase, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phase[k_].append(v)
    hists = [(rng.choice(trig, 30), hist_ts[:30]) for _ in range(a.users)]
    scorer.recommend_many(hists[:10], 100)
    t = time.perf_counter()
    many = scorer.recommend_many(hists, 100)
    many_s = time.perf_counter() - t
    lat_ms = sorted(1000 * x for x in lat)
    res = {
        "num_candidates": rec.num_candidates, "k": a.k, "threads": a.threads, "repeats": a.repeats,
        "recommend_ms_p50": statistics.median(lat_ms), "recommend_ms_p90": lat_ms[int(0.9 * (len(lat_ms) - 1))],
        "recommend_ms_min": lat_ms[0],
        "recommend_cpu_ms_p50": 1000 * statistics.median(cpu),  # CPU time of this process (all its threads)
        "phase_ms_p50": {k_: 1000 * statistics.median(v) for k_, v in phase.items()},
        "recommend_many_users": a.users, "recommend_many_seconds": many_s,
        "recommend_many_users_per_s": a.users / many_s,
        "recommend_many_candidates_per_s": sum(r.num_candidates for r in many) / many_s,
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
