"""LLM-I2I discriminator (llm-i2i.txt §"LLM-based Data Discriminator", Eq. 3): a classifier over (user history,
candidate item) -> probability that the user interacts with the candidate.

* **Model**: ``AutoModelForSequenceClassification`` initialised from the trained generator (the paper fine-tunes
  both from one LLM), reading ``[bos] h_1 .. h_L [sep] candidate`` and scoring the last token.
* **Data** (Eq. 3): positives are held-back real next items (``disc_positions`` positions per training user),
  negatives are sampled globally (``negative_sampling``: popularity-proportional by default, so the filter
  learns relevance rather than popularity and does not throw the long tail away), never from the user's items.
* **Threshold**: the validation users' held-back last items vs the same number of sampled negatives per
  positive. ``τ`` is the smallest threshold whose precision there reaches ``target_precision`` (the paper keeps
  only its most confident "Yes" answers); the precision and recall of the filter at ``τ`` are reported.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from pi2i.augment.generator import local_dir, pad_left, positions
from pi2i.augment.sequences import ItemVocab, Sequences
from pi2i.config import AugmentConfig, Config
from pi2i.contracts import join, read_parquet, write_parquet

DISCRIMINATOR_DIR = "discriminator"
PAIRS_FILE = "discriminator_pairs.parquet"


class NegativeSampler:
    """Global negatives over the item tokens: popularity-proportional or uniform; a user's own items are
    re-drawn (a few rounds; what still collides is dropped)."""

    def __init__(self, tokens: np.ndarray, counts: np.ndarray, how: str, seed: int):
        self.tokens = np.asarray(tokens, np.int64)
        p = np.asarray(counts, np.float64) if how == "popularity" else np.ones(len(tokens))
        self.cdf = np.cumsum(p / p.sum())
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int, exclude: np.ndarray) -> np.ndarray:
        out = self.tokens[np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.tokens) - 1)]
        for _ in range(5):
            bad = np.isin(out, exclude)
            if not bad.any():
                break
            out[bad] = self.tokens[np.minimum(np.searchsorted(self.cdf, self.rng.random(int(bad.sum()))),
                                              len(self.tokens) - 1)]
        return out[~np.isin(out, exclude)]


def pairs(seqs: Sequences, rows: np.ndarray, vocab: ItemVocab, cfg: AugmentConfig, sampler: NegativeSampler,
          held_back: np.ndarray | None = None, last_only: bool = False) -> pa.Table:
    """Labelled (context, candidate) pairs (Eq. 3). ``last_only``: the positive is each row's last item (the
    validation users' held-back item); otherwise up to ``disc_positions`` random positions of the row's
    sequence without its held-back tail."""
    rng = np.random.default_rng([cfg.seed, 3])
    ctx: list[np.ndarray] = []
    cand: list[int] = []
    label: list[float] = []
    for r in rows:
        seq = vocab.encode(seqs.row(int(r)))
        seq = seq[seq >= 0]
        if not last_only and held_back is not None and held_back[r]:
            seq = seq[:len(seq) - int(held_back[r])]
        if len(seq) < 2:
            continue
        if last_only:
            ts = np.array([len(seq) - 1])
        else:
            ts = rng.choice(np.arange(1, len(seq)), min(cfg.disc_positions, len(seq) - 1), replace=False)
        for t in ts:
            c = seq[max(0, t - cfg.context_len):t]
            negs = sampler.draw(cfg.disc_negatives, seq)
            for item, y in [(seq[t], 1.0)] + [(n, 0.0) for n in negs]:
                ctx.append(c)
                cand.append(int(item))
                label.append(y)
    return pa.table({"context": pa.array(ctx, pa.list_(pa.int32())), "candidate": pa.array(cand, pa.int32()),
                     "label": pa.array(label, pa.float32())})


def inputs(contexts: list[np.ndarray], candidates: np.ndarray, vocab: ItemVocab) -> list[np.ndarray]:
    """``[bos] context [sep] candidate`` token rows."""
    return [np.concatenate([[vocab.bos], np.asarray(c, np.int64), [vocab.sep, int(x)]])
            for c, x in zip(contexts, candidates)]


def build_discriminator(generator_dir: str, vocab: ItemVocab):
    """A sequence classifier (one logit) whose transformer starts from the generator's weights."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new classification head is expected to be untrained
    model = AutoModelForSequenceClassification.from_pretrained(local_dir(generator_dir), num_labels=1)
    model.config.pad_token_id = vocab.pad
    return model


def _logits(net, rows: list[np.ndarray], pad: int, device):
    import torch

    ids, mask = pad_left(rows, pad)
    ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
    return net(input_ids=ids_t, attention_mask=mask_t, position_ids=positions(mask_t)).logits[:, 0]


def _discriminator_loop(config: dict) -> None:
    """Ray Train loop: binary cross-entropy of Eq. 3 over the labelled pairs; reports per epoch."""
    import ray.train
    import ray.train.torch
    import torch

    from pi2i.prs.launch import report_epoch

    cfg = Config.model_validate(config["cfg"])
    ac, tc = cfg.augment, cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)
    torch.manual_seed(ac.seed)
    vocab = ItemVocab(np.zeros(config["n_items"], np.int64), config["offset"])
    t = read_parquet(config["pairs_uri"])
    rows = inputs(t.column("context").to_pylist(), t.column("candidate").to_numpy(), vocab)
    labels = t.column("label").to_numpy().astype(np.float32)
    device = ray.train.torch.get_device() if world > 1 or tc.use_gpu else torch.device("cpu")
    model = build_discriminator(config["generator_uri"], vocab).to(device)
    net = ray.train.torch.prepare_model(model) if world > 1 else model
    opt = torch.optim.AdamW(net.parameters(), lr=ac.lr, weight_decay=0.01)
    bce = torch.nn.BCEWithLogitsLoss()
    bs = ac.batch_size * 4  # short rows: larger batches
    for epoch in range(ac.disc_epochs):
        net.train()
        t0 = time.perf_counter()
        order = np.random.default_rng([ac.seed, 7, epoch]).permutation(len(rows))[rank::world]
        tot, n = 0.0, 0
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            logit = _logits(net, [rows[i] for i in idx], vocab.pad, device)
            loss = bce(logit, torch.from_numpy(labels[idx]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.item()) * len(idx)
            n += len(idx)
        secs = time.perf_counter() - t0
        m = {"epoch": epoch + 1, "loss": tot / max(n, 1), "pairs": n, "seconds": round(secs, 3),
             "pairs_per_s": n * world / secs if secs > 0 else None}
        if rank == 0 and config.get("progress"):
            print(f"[augment] discriminator epoch {epoch + 1}: loss {m['loss']:.4f}", flush=True)
        report_epoch(m, model.save_pretrained if epoch == ac.disc_epochs - 1 else None)


def train_discriminator(train_pairs: pa.Table, vocab: ItemVocab, cfg: Config, work_uri: str,
                        generator_uri: str, progress: bool = False) -> tuple[Any, dict]:
    """Train on ``train_pairs`` under Ray Train, starting from the generator at ``generator_uri``."""
    from transformers import AutoModelForSequenceClassification

    from pi2i.prs.launch import cleanup_local_checkpoints, run_ray_train

    if train_pairs.num_rows == 0:
        raise ValueError("augment: no training pairs for the discriminator (users need two or more items)")
    uri = join(work_uri, PAIRS_FILE)
    write_parquet(train_pairs, uri)
    loop_cfg = {"cfg": cfg.model_dump(), "pairs_uri": uri, "n_items": len(vocab.item_ids),
                "offset": vocab.offset, "generator_uri": generator_uri, "progress": progress}
    result = run_ray_train(_discriminator_loop, loop_cfg, cfg, "llm-i2i-discriminator")
    if result.checkpoint is None:
        raise RuntimeError("discriminator training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        model = AutoModelForSequenceClassification.from_pretrained(d)
    cleanup_local_checkpoints()
    hist = result.metrics or {}
    return model.eval(), {k: hist.get(k) for k in ("epoch", "loss", "pairs", "seconds", "pairs_per_s")}


def score(model, vocab: ItemVocab, contexts: list[np.ndarray], candidates: np.ndarray,
          batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Confidence P(interact | history, candidate) for every pair."""
    import torch

    rows = inputs(contexts, candidates, vocab)
    out = np.zeros(len(rows), np.float32)
    model = model.to(device).eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            out[s:s + batch_size] = torch.sigmoid(_logits(model, rows[s:s + batch_size], vocab.pad,
                                                          device)).float().cpu().numpy()
    return out


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks)."""
    pos, neg = int((y > 0).sum()), int((y <= 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    sp = p[order]
    i = 0
    while i < len(sp):  # average ranks of ties
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y > 0].sum() - pos * (pos + 1) / 2) / (pos * neg))


def filter_quality(p: np.ndarray, y: np.ndarray, tau: float) -> dict:
    """Precision and recall of "keep when p >= tau" against the labels."""
    kept = p >= tau
    tp = int((kept & (y > 0)).sum())
    return {"tau": float(tau), "precision": tp / int(kept.sum()) if kept.any() else float("nan"),
            "recall": tp / max(int((y > 0).sum()), 1), "kept": int(kept.sum())}


def choose_tau(p: np.ndarray, y: np.ndarray, target_precision: float, tau: float | None = None) -> dict:
    """``tau`` if given; else the smallest threshold whose precision on (p, y) reaches ``target_precision``
    (most recall at that precision), or the F1-best threshold when none does. Returns the filter's quality."""
    base = {"val_pairs": len(p), "val_positives": int((y > 0).sum()), "auc": auc(p, y),
            "target_precision": target_precision}
    if tau is not None:
        return {**base, **filter_quality(p, y, tau), "chosen": "config", "target_met": None}
    if len(p) == 0:
        return {**base, **filter_quality(p, y, 1.0), "chosen": "no validation pairs", "target_met": False}
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], (y[order] > 0)
    tp = np.cumsum(ys)
    k = np.arange(1, len(ps) + 1)
    last_of_tie = np.append(ps[1:] != ps[:-1], True)  # a threshold keeps every pair tied with it
    prec, rec = tp / k, tp / max(int(ys.sum()), 1)
    ok = last_of_tie & (prec >= target_precision)
    if ok.any():
        i = int(np.nonzero(ok)[0][-1])
        return {**base, **filter_quality(p, y, float(ps[i])), "chosen": "target precision", "target_met": True}
    f1 = np.where(last_of_tie, 2 * prec * rec / np.maximum(prec + rec, 1e-12), -1.0)
    i = int(np.argmax(f1))
    return {**base, **filter_quality(p, y, float(ps[i])), "chosen": "best F1", "target_met": False}
