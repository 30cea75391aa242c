"""Training and scoring throughput of the learned and item-item methods (EASE, PDN, MTMH) on demo-sized data.

Builds the demo chain once (``generate --preset demo`` -> temporal split -> Swing -> samples, seeded) under
``--work``, then per method: fit time (PDN and MTMH through Ray Train in-process, ``train.num_workers = 0``;
EASE in closed form), and ``recommend`` throughput (users/s, k = 100) over the evaluation users' histories
in batches of ``--batch`` users. Thread pools are sized to ``--threads``. Writes ``--out`` (JSON) with the
``uptime`` load averages before and after: numbers taken on a loaded machine say so.

    .venv/bin/python benchmarks/bench_methods.py --threads 1 --out benchmarks/results/methods.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_chain(work: Path, seed: int) -> dict[str, str]:
    from pi2i.config import Config
    from pi2i.contracts import EVENTS_FILE, ITEMS_FILE, join
    from pi2i.data.split import split
    from pi2i.data.synthetic import generate_preset
    from pi2i.ibs.swing import run_swing
    from pi2i.prs.sampling import build_samples

    cfg = Config()
    paths = {"data": str(work / "data"), "split": str(work / "split"), "i2i": str(work / "i2i.parquet"),
             "samples": str(work / "samples")}
    if not Path(paths["samples"], "meta.json").exists():
        generate_preset("demo", paths["data"], seed=seed)
        split(paths["data"], paths["split"], test_days=cfg.data.test_days)
        train = join(paths["split"], "train")
        run_swing(join(train, EVENTS_FILE), paths["i2i"], cfg.swing)
        build_samples(join(train, EVENTS_FILE), paths["i2i"], paths["samples"], cfg,
                      items_uri=join(train, ITEMS_FILE))
    return paths


def histories(samples: str, n_users: int, length: int):
    from pi2i.methods.base import Histories
    from pi2i.methods.learned import open_samples

    ss, _ = open_samples(samples, "bench")
    ptr, items, ts = np.asarray(ss.clicks.user_ptr), np.asarray(ss.clicks.items), np.asarray(ss.clicks.ts)
    users = np.arange(min(n_users, len(ptr) - 1))
    rows = [(items[ptr[u]:ptr[u + 1]][-length:], ts[ptr[u]:ptr[u + 1]][-length:]) for u in users]
    return Histories.from_lists(rows, np.asarray(ss.clicks.user_ids)[users])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/bench_methods")
    ap.add_argument("--methods", default="ease,pdn,mtmh")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--users", type=int, default=2000, help="users scored")
    ap.add_argument("--batch", type=int, default=500, help="users per recommend call")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/methods.json")
    args = ap.parse_args()

    from pi2i.config import Config
    from pi2i.contracts import EVENTS_FILE, join, read_events
    from pi2i.methods import get_method
    from pi2i.methods.base import TrainInputs
    from pi2i.methods.learned import size_threads

    load_before = os.getloadavg()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = build_chain(work, args.seed)
    size_threads(args.threads)
    cfg = Config()
    cfg.train.torch_threads = args.threads
    cfg.train.seed = args.seed
    cfg.train.storage_path = str((work / "ray").resolve())
    batch = histories(paths["samples"], args.users, cfg.serving.history_len)
    events = read_events(join(paths["split"], "train", EVENTS_FILE))
    results: dict[str, dict] = {}
    for name in args.methods.split(","):
        cls = get_method(name)
        inputs = TrainInputs(events=events, samples_dir=paths["samples"], extra={"progress": False})
        t0 = time.perf_counter()
        model = cls.fit(inputs, cfg)
        fit_s = time.perf_counter() - t0
        model.recommend(batch.__class__.from_lists([batch.row(0)]), args.k)  # warm-up (numba, faiss)
        t0 = time.perf_counter()
        for a in range(0, len(batch), args.batch):
            b = min(len(batch), a + args.batch)
            sub = batch.__class__(batch.users[a:b], batch.indptr[a:b + 1] - batch.indptr[a],
                                  batch.items[batch.indptr[a]:batch.indptr[b]], batch.ts[batch.indptr[a]:batch.indptr[b]])
            model.recommend(sub, args.k)
        rec_s = time.perf_counter() - t0
        m = getattr(model, "metrics", {}) or {}
        best = m.get("best", {})
        results[name] = {
            "fit_seconds": round(fit_s, 2),
            "train_examples_per_s": best.get("train_samples_per_s") or best.get("train_pairs_per_s"),
            "epochs_run": m.get("epochs_run"),
            "recommend_users_per_s": round(len(batch) / rec_s, 1),
            "recommend_ms_per_user": round(1000 * rec_s / len(batch), 3),
        }
        print(name, json.dumps(results[name]), flush=True)
    out = {"data": f"demo preset (2,500 users, 2,500 items, 125k events), seed {args.seed}",
           "threads": args.threads, "k": args.k, "users_scored": len(batch), "batch_users": args.batch,
           "note": "fit includes Ray Train start-up (in-process, num_workers=0); train_examples_per_s counts "
                   "samples (pdn, 1 positive + 40 negatives each) or co-engaged pairs (mtmh)",
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "methods": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
