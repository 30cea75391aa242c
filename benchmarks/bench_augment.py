"""LLM-I2I throughput: generator training tokens/s (Eq. 2 loss, one Ray Train run in-process), generation
candidates/s (KV-cached top-k / nucleus sampling with exclusions) and discriminator scoring pairs/s, on the
``demo`` preset's users (or ``--preset``). CPU by default; ``--device cuda`` (with ``train.use_gpu``) on a GPU.
Writes ``benchmarks/results/augment.json`` (or ``--out``) with the machine's load beside the numbers.

    .venv/bin/python benchmarks/bench_augment.py --threads 1 --epochs 1 --users 500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--users", type=int, default=500, help="users to generate for / score (timing sample)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = the CPU quota")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "augment.json"))
    a = ap.parse_args()

    from pi2i.augment.discriminator import build_discriminator, score
    from pi2i.augment.generator import (
        generate,
        generator_vocab,
        save_checkpoint,
        train_generator,
        training_windows,
    )
    from pi2i.augment.sequences import long_tail, popularity, user_sequences
    from pi2i.config import parse_config
    from pi2i.contracts import read_events
    from pi2i.data.synthetic import generate_preset
    from pi2i.prs.launch import cpu_quota, set_threads

    threads = set_threads(a.threads or None)
    cfg = parse_config({"augment": {"epochs": a.epochs},
                        "train": {"num_workers": 0, "torch_threads": threads, "use_gpu": a.device != "cpu"}})
    ac = cfg.augment
    work = tempfile.mkdtemp(prefix="bench-augment-")
    generate_preset(a.preset, os.path.join(work, "data"), seed=0)
    seqs = user_sequences(read_events(os.path.join(work, "data", "events.parquet")), ac.behaviors)
    ids, counts = popularity(seqs)
    vocab = generator_vocab(ids, None)
    tail, _ = long_tail(ids, counts, ac.tail_fraction)
    rows = np.arange(len(seqs))
    windows = training_windows(seqs, rows, vocab, vocab.encode(tail), ac)

    t0 = time.perf_counter()
    model, m = train_generator(windows, vocab, cfg, work)
    train_wall = time.perf_counter() - t0
    sample = rows[:a.users]
    generate(model, vocab, seqs, sample[:8], ac, device=a.device)  # warm-up
    t0 = time.perf_counter()
    toks, _ = generate(model, vocab, seqs, sample, ac, device=a.device)
    gen_s = time.perf_counter() - t0
    n_cand = int((toks >= 0).sum())

    gdir = save_checkpoint(model, vocab, os.path.join(work, "generator"))
    disc = build_discriminator(gdir, vocab)
    contexts = [vocab.encode(seqs.row(int(r)))[-ac.context_len:] for r in np.repeat(sample, toks.shape[1])]
    flat = toks.ravel()
    ok = flat >= 0
    contexts = [c for c, k in zip(contexts, ok) if k]
    score(disc, vocab, contexts[:64], flat[ok][:64], device=a.device)  # warm-up
    t0 = time.perf_counter()
    score(disc, vocab, contexts, flat[ok], device=a.device)
    disc_s = time.perf_counter() - t0

    res = {
        "preset": a.preset, "device": a.device, "torch_threads": threads, "cpu_quota": cpu_quota(),
        "load_avg_1m_5m_15m": list(os.getloadavg()),
        "model": {"n_embd": ac.n_embd, "n_layer": ac.n_layer, "n_head": ac.n_head, "vocab": vocab.size},
        "train": {"epochs": a.epochs, "windows": windows.num_rows, "tokens_per_epoch": m.get("tokens"),
                  "tokens_per_s": m.get("tokens_per_s"), "last_epoch_s": m.get("seconds"),
                  "wall_s_incl_ray": round(train_wall, 2), "loss": m.get("loss")},
        "generate": {"users": len(sample), "candidates": n_cand, "candidates_per_s": n_cand / gen_s,
                     "seconds": round(gen_s, 3), "candidates_per_user": ac.candidates_per_user,
                     "top_k": ac.top_k, "top_p": ac.top_p},
        "discriminator_score": {"pairs": len(contexts), "pairs_per_s": len(contexts) / disc_s,
                                "seconds": round(disc_s, 3)},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
