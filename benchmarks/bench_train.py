"""PRS training throughput: samples/s and candidate-scorings/s of the training step (features + forward +
backward + Adam) for a fixed model and data size, quiet and under a competing CPU load, old vs new trainer
measured side by side in one run.

* data: the ``demo`` synthetic preset, Swing with the default T, default sampling (1 positive + 20 hard + 80 easy
  negatives per sample), each version's default model (before: MLPs [64, 32], 2 attention heads; after: [32, 32],
  1 head, the same validation and test HR by ``benchmarks/bench_quality.py``); built once into ``--data-dir``.
* "before": the trainer as committed before issue 13 (``git archive <--before-rev> pi2i``) unpacked into a temp
  dir and run from there; "after": this working tree. Each runs ``--batches`` timed training batches of
  ``--batch-size`` samples (after one warm-up batch) in a fresh subprocess: the old trainer's loop builds features
  inline with torch's default thread count; the new one is the trainer's own :class:`pi2i.prs.train.StepRunner`
  (each batch cut into slices computed at once on one thread per slice, features included, the next step's
  slice inputs built by threads that finish early; thread counts from the process's CPU quota) with fused Adam.
* "loaded": the same, while one busy-looping process per core of the quota competes for the CPUs.

    .venv/bin/python benchmarks/bench_train.py --out benchmarks/results/train.json

The result JSON has ``samples_per_s`` (after, quiet) at the top level, and ``runs`` with every measurement; the
machine's load average before and after is recorded beside them (other work on the machine skews every number).
``--repeats N`` (default 3) runs each variant N times per condition, interleaved, and the summary takes the
medians (this machine's speed drifts by ±15% within minutes); the default run takes ~6 minutes on 2 cores, most
of it the old trainer under load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The last commit with the trainer as it was before issue 13 (layout commit "pi2i/ grouped by pipeline stage").
BEFORE_REV = "0016eb85ca6ca9ff215cf54281d51c19224a58f8"


# --------------------------------------------------------------------------------------------- worker
def worker(samples: str, batches: int, batch_size: int, variant: str) -> dict:
    """Time ``batches`` training steps with the trainer importable as ``pi2i`` (old or new)."""
    __import__("pi2i")  # first, as in `pi2i train`: whatever the package sets up before torch loads applies
    import numpy as np
    import torch

    from pi2i.config import Config
    from pi2i.prs.model import PRSModel, Vocab, softmax_loss, to_tensors
    from pi2i.prs.sampling import SampleSet

    cfg = Config()
    ss = SampleSet(samples)
    vocab = Vocab.build(np.asarray(ss.clicks.items), ss.info, cfg.model.vocab_min_count)
    torch.manual_seed(0)
    model = PRSModel(cfg.model, vocab.sizes, cfg.sampling.seq_len)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    rng = np.random.default_rng(0)
    idx = [np.sort(rng.choice(len(ss), batch_size, replace=False)) for _ in range(batches + 1)]
    n_valid = int(sum((np.asarray(ss.cands[i]) >= 0).sum() for i in idx[1:]))
    feats = lambda i: ss.features(i, cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits)

    def step(b):
        loss = softmax_loss(model(b))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    threads = None
    try:
        from pi2i.prs.launch import keep_freed_memory, set_threads
        from pi2i.prs.train import StepRunner
        new = True
    except ImportError:
        new = False
    if new:  # exactly the trainer's steps (pi2i.prs.train._train_loop)
        from pi2i.prs.launch import adam

        opt = adam(model.parameters(), cfg.train.lr)
        quota = set_threads()
        keep_freed_memory()
        model.fit_normalizers(to_tensors(feats(idx[0]), vocab))
        runner = StepRunner(model, opt, ss, vocab, cfg, torch.device("cpu"), quota, 1)
        runner.tuner.period = 1000
        t0 = c0 = None
        used = []
        for k, (i, _) in enumerate(runner.steps(idx)):
            if k == 0:
                t0, c0 = time.perf_counter(), time.process_time()
            else:
                used.append(runner.describe())
        runner.close()
        threads = used
    else:
        for k, i in enumerate(idx):
            if k == 1:
                t0, c0 = time.perf_counter(), time.process_time()
            step(to_tensors(feats(i), vocab))
        threads = [f"{torch.get_num_threads()} threads"]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = batches * batch_size
    return {"variant": variant, "samples_per_s": n / wall, "candidate_scorings_per_s": n_valid / wall,
            "cpu_seconds_per_1k_samples": 1000 * cpu / n, "wall_s": wall, "samples": n,
            "candidates_per_sample": n_valid / n, "settings": sorted(set(threads)),
            "threads_last": threads[-1]}


# --------------------------------------------------------------------------------------------- driver
def build_data(data_dir: Path) -> str:
    sys.path.insert(0, str(REPO))
    from pi2i.config import Config
    from pi2i.data.synthetic import generate_preset
    from pi2i.ibs.swing import run_swing
    from pi2i.layout import I2I_FILE
    from pi2i.prs.sampling import build_samples

    samples = data_dir / "samples"
    if not (samples / "stats.json").exists() or not (samples / I2I_FILE).exists():  # absent, or an older layout
        shutil.rmtree(samples, ignore_errors=True)
        cfg = Config()
        generate_preset("demo", str(data_dir / "data"), seed=0)
        run_swing(str(data_dir / "data" / "events.parquet"), str(data_dir / "i2i.parquet"), cfg.swing)
        build_samples(str(data_dir / "data" / "events.parquet"), str(data_dir / "i2i.parquet"), str(samples), cfg)
    legacy = samples / "i2i.parquet"  # the name the "before" trainer (commit 0016eb8) reads
    if not legacy.exists():
        shutil.copyfile(samples / I2I_FILE, legacy)
    return str(samples)


def export_before(rev: str, dest: Path) -> bool:
    """The committed trainer (``git archive <rev> pi2i``) unpacked into ``dest`` (read-only use of git)."""
    try:
        arc = subprocess.run(["git", "-C", str(REPO), "archive", rev, "pi2i"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=arc.stdout, check=True)
        return True
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False


#: the caller's own OpenMP wait policy (importing pi2i sets one in this process: each variant's pi2i decides)
CALLER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")


def run_variant(variant: str, pythonpath: str, samples: str, a: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath, "RAY_USAGE_STATS_ENABLED": "0"}
    if CALLER_OMP_WAIT_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, __file__, "--worker", variant, "--samples", samples, "--batches", str(a.batches),
           "--batch-size", str(a.batch_size)]
    out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        return {"variant": variant, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def with_load(n: int):
    """Start ``n`` busy-looping processes (one per core of the quota); returns them for stopping."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the JSON result here")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pi2i-train-bench"))
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the 'before' trainer")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each variant per condition (interleaved); the summary takes their medians")
    ap.add_argument("--no-before", action="store_true")
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--samples", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.samples, a.batches, a.batch_size, a.worker)))
        return

    sys.path.insert(0, str(REPO))
    from pi2i.prs.launch import cpu_quota

    samples = build_data(Path(a.data_dir))
    quota = cpu_quota()
    variants = [("after", str(REPO))]
    tmp = tempfile.TemporaryDirectory(prefix="pi2i-before-")
    if not a.no_before and export_before(a.before_rev, Path(tmp.name)):
        variants.insert(0, ("before", tmp.name))
    load0 = os.getloadavg()
    runs: list[dict] = []
    for cond in ("quiet",) + (() if a.no_load else ("loaded",)):
        procs = with_load(quota) if cond == "loaded" else []
        try:
            for rep in range(a.repeats):
                for name, path in variants:
                    r = run_variant(name, path, samples, a)
                    r["condition"], r["repeat"] = cond, rep
                    r["loadavg_1m"] = os.getloadavg()[0]
                    runs.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    def get(variant: str, cond: str) -> dict:
        """The median over repeats of each number of a variant under a condition ({} if every run failed)."""
        ok = [r for r in runs if r["variant"] == variant and r["condition"] == cond and "error" not in r]
        keys = ("samples_per_s", "candidate_scorings_per_s")
        return {k: statistics.median(r[k] for r in ok) for k in keys} if ok else {}

    aq, al, bq, bl = get("after", "quiet"), get("after", "loaded"), get("before", "quiet"), get("before", "loaded")
    ratio = lambda x, y: round(x / y, 2) if x and y else None
    res = {
        "samples_per_s": aq.get("samples_per_s"),
        "candidate_scorings_per_s": aq.get("candidate_scorings_per_s"),
        "samples_per_s_loaded": al.get("samples_per_s"),
        "before_samples_per_s": bq.get("samples_per_s"), "before_samples_per_s_loaded": bl.get("samples_per_s"),
        "speedup_quiet": ratio(aq.get("samples_per_s"), bq.get("samples_per_s")),
        "speedup_loaded": ratio(al.get("samples_per_s"), bl.get("samples_per_s")),
        "slowdown_under_load_after": ratio(aq.get("samples_per_s"), al.get("samples_per_s")),
        "slowdown_under_load_before": ratio(bq.get("samples_per_s"), bl.get("samples_per_s")),
        "runs": runs, "cpu_quota": quota, "competing_processes": quota, "before_rev": a.before_rev,
        "batches": a.batches, "batch_size": a.batch_size, "repeats": a.repeats, "samples_dir": samples,
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime()),
    }
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
