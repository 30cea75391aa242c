"""Slices × threads of the PRS training step, quiet and beside one busy process per core.

The trainer cuts each batch into ``train.shards`` slices computed at once on one thread each
(:class:`pi2i.prs.train.StepRunner`). More threads than cores win a larger CPU share when other processes compete
and cost some speed when the machine is quiet; this measures both for a few settings on the demo samples that
``benchmarks/bench_train.py`` builds (run it once first, or pass ``--samples``)::

    python benchmarks/bench_slices.py --variants 2x2,3x3,4x4,4x2 --repeats 2

``SxT`` = S slices on T threads. Each run is a fresh subprocess timing ``--batches`` steps of 256 samples after
one warm-up step; the summary prints medians and the loaded/quiet slowdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_SAMPLES = os.path.join(tempfile.gettempdir(), "pi2i-train-bench", "samples")


def worker(samples: str, shards: int, threads: int, batches: int, batch_size: int) -> dict:
    __import__("pi2i")  # first, as in `pi2i train`
    import torch

    from pi2i.config import Config
    from pi2i.prs.launch import adam, keep_freed_memory, set_threads
    from pi2i.prs.model import PRSModel, Vocab, to_tensors
    from pi2i.prs.sampling import SampleSet
    from pi2i.prs.train import StepRunner

    cfg = Config()
    cfg.train.shards = shards
    ss = SampleSet(samples)
    vocab = Vocab.build(np.asarray(ss.clicks.items), ss.info, cfg.model.vocab_min_count)
    torch.manual_seed(0)
    model = PRSModel(cfg.model, vocab.sizes, cfg.sampling.seq_len)
    rng = np.random.default_rng(0)
    idx = [np.sort(rng.choice(len(ss), batch_size, replace=False)) for _ in range(batches + 1)]
    quota = set_threads()
    keep_freed_memory()
    s = cfg.sampling
    model.fit_normalizers(to_tensors(ss.features(idx[0], s.num_triggers, s.seq_len, cfg.model.max_trigger_hits), vocab))
    runner = StepRunner(model, adam(model.parameters(), cfg.train.lr), ss, vocab, cfg, torch.device("cpu"), quota, 1)
    runner.tuner.options, runner.tuner.current = [threads], threads  # pinned: no tuning trials
    t0 = c0 = 0.0
    for k, _ in enumerate(runner.steps(idx)):
        if k == 0:
            t0, c0 = time.perf_counter(), time.process_time()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    desc = runner.describe()
    runner.close()
    return {"samples_per_s": batches * batch_size / wall, "cpu_per_wall": cpu / wall, "setting": desc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default=DEFAULT_SAMPLES)
    ap.add_argument("--variants", default="2x2,3x3,4x4,4x2", help="comma-separated SLICESxTHREADS")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=None, help="write the JSON result here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        shards, threads = (int(x) for x in a.worker.split("x"))
        print(json.dumps(worker(a.samples, shards, threads, a.batches, a.batch_size)))
        return
    if not os.path.exists(os.path.join(a.samples, "stats.json")):
        sys.exit(f"no samples at {a.samples}: run benchmarks/bench_train.py once (it builds them) or pass --samples")
    runs: dict[str, dict[str, list[dict]]] = {}
    for cond in ("quiet", "loaded"):
        for rep in range(a.repeats):
            for v in a.variants.split(","):
                busy = ([subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
                        if cond == "loaded" else [])
                try:
                    out = subprocess.run([sys.executable, __file__, "--worker", v, "--samples", a.samples,
                                          "--batches", str(a.batches), "--batch-size", str(a.batch_size)],
                                         capture_output=True, text=True, check=False)
                finally:
                    for b in busy:
                        b.kill()
                if out.returncode != 0:
                    sys.exit(f"{v} {cond}: {out.stderr.strip().splitlines()[-1:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["load_1m"] = os.getloadavg()[0]
                runs.setdefault(v, {}).setdefault(cond, []).append(r)
                print(f"{cond:6s} {v:5s} run {rep + 1}: {r['samples_per_s']:6.0f} samples/s, "
                      f"{r['cpu_per_wall']:.2f} cores busy", flush=True)
    summary = {}
    for v, d in runs.items():
        q = float(np.median([r["samples_per_s"] for r in d["quiet"]]))
        loaded = float(np.median([r["samples_per_s"] for r in d["loaded"]]))
        summary[v] = {"quiet": q, "loaded": loaded, "slowdown": q / loaded}
        print(f"{v}: quiet {q:.0f}, loaded {loaded:.0f} samples/s, slowdown {q / loaded:.2f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"summary": summary, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
