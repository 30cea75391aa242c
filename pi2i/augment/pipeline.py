"""The LLM-I2I augmentation step (llm-i2i.txt Fig. 2): train the generator and the discriminator on the users'
real sequences, let the generator propose ``N`` new items per user, keep the ones the discriminator accepts with
confidence ``>= τ``, and append them to the events as ``behavior = "synthetic"`` rows.

Outputs in ``out_dir``:

* ``events.parquet`` — the input rows unchanged and in their order (rows ``0 .. n-1``), then the kept synthetic
  rows (``behavior = "synthetic"``, ``ts`` = the user's last real event, so they never leave the input's period).
  Swing counts them unless ``swing.include_synthetic`` is off; sampling and evaluation never do (their
  behaviours are real ones).
* ``provenance.parquet`` — one row per synthetic event, keyed by ``row`` (its index in ``events.parquet``):
  user, item, discriminator confidence, generator probability, position in the generated sequence, long-tail
  flag, generator and discriminator versions.
* ``summary.json`` — users, proposed, kept, share_long_tail, seconds, the filter's validation precision/recall
  at the chosen ``τ``, and the models' training metrics.
* ``generator/`` and ``discriminator/`` — Hugging Face checkpoints (+ item vocabulary); ``generator/`` is what
  ``--generator`` fine-tunes the next day.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pyarrow as pa

from pi2i.augment.discriminator import (
    DISCRIMINATOR_DIR,
    NegativeSampler,
    choose_tau,
    pairs,
    score,
    train_discriminator,
)
from pi2i.augment.generator import (
    GENERATOR_DIR,
    generate,
    generator_vocab,
    resolve_init,
    save_checkpoint,
    train_generator,
    training_windows,
)
from pi2i.augment.sequences import long_tail, popularity, user_sequences
from pi2i.config import Config
from pi2i.contracts import (
    EVENTS_FILE,
    EVENTS_SCHEMA,
    SUMMARY_FILE,
    SYNTHETIC_BEHAVIOR,
    TS_TYPE,
    join,
    makedirs,
    read_events,
    write_json,
    write_parquet,
)

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.parquet"
WORK_DIR = "_work"

PROVENANCE_SCHEMA = pa.schema([
    pa.field("row", pa.int64(), nullable=False),
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),
    pa.field("generator_prob", pa.float32(), nullable=False),
    pa.field("position", pa.int32(), nullable=False),
    pa.field("long_tail", pa.bool_(), nullable=False),
    pa.field("generator_version", pa.string(), nullable=False),
    pa.field("discriminator_version", pa.string(), nullable=False),
])


def model_version(model, kind: str) -> str:
    """``<kind>-<pi2i version>-<sha256 of the weights, 12 hex>``: names the exact model that made a row."""
    import pi2i

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"{kind}-{pi2i.__version__}-{h.hexdigest()[:12]}"


def augment(events_uri: str, out_dir: str, cfg: Config, progress: bool = False) -> dict:
    """Run LLM-I2I augmentation on the events at ``events_uri``; write ``out_dir``; return the summary."""
    from pi2i.prs.launch import set_threads

    t_start = time.perf_counter()
    ac = cfg.augment
    init_dir = resolve_init(ac.generator)
    events = read_events(events_uri)
    if events.num_rows == 0:
        raise ValueError(f"augment: the events table {events_uri} is empty")
    set_threads(cfg.train.torch_threads or None)
    seqs = user_sequences(events, ac.behaviors, ac.dedup_consecutive)
    if len(seqs) == 0:
        raise ValueError(f"augment: no events with behaviour in {ac.behaviors} in {events_uri}")
    rng = np.random.default_rng(ac.seed)
    rows = np.arange(len(seqs))
    if ac.max_users and len(rows) > ac.max_users:
        rows = np.sort(rng.choice(rows, ac.max_users, replace=False))
    makedirs(out_dir)
    work = join(out_dir, WORK_DIR)
    makedirs(work)

    # vocabulary, popularity and the long tail (Eq. 2)
    item_ids, counts = popularity(seqs)
    vocab = generator_vocab(item_ids, init_dir)
    tail_items, threshold = long_tail(item_ids, counts, ac.tail_fraction)
    tail_tokens = vocab.encode(tail_items)

    # validation users: their last item is held back from both models (it is what τ is chosen on)
    lens = seqs.lengths
    eligible = rows[lens[rows] >= 3]
    n_val = round(ac.val_fraction * len(eligible))
    val_rows = np.sort(rng.choice(eligible, n_val, replace=False)) if n_val else np.zeros(0, np.int64)
    held_back = np.zeros(len(seqs), np.int64)
    held_back[val_rows] = 1

    # generator (Eq. 1-2)
    windows = training_windows(seqs, rows, vocab, tail_tokens, ac, held_back)
    gen_model, gen_metrics = train_generator(windows, vocab, cfg, work, init_dir, progress)
    gen_uri = save_checkpoint(gen_model, vocab, join(out_dir, GENERATOR_DIR))
    gen_version = model_version(gen_model, "generator")
    t_gen = time.perf_counter()
    tokens, gen_prob = generate(gen_model, vocab, seqs, rows, ac)
    gen_seconds = time.perf_counter() - t_gen
    if len(val_rows):  # generator quality: the held-back next item among the N generated for it
        vt, _ = generate(gen_model, vocab, seqs, val_rows, ac, held_back)
        last = vocab.encode(np.array([seqs.row(int(r))[-1] for r in val_rows]))
        gen_metrics["val_hit_rate_at_n"] = float(np.mean((vt == last[:, None]).any(1)))

    # discriminator (Eq. 3) and τ on the validation split
    sampler = NegativeSampler(vocab.encode(item_ids), counts, ac.negative_sampling, ac.seed)
    train_rows = np.setdiff1d(rows, val_rows)
    disc_model, disc_metrics = train_discriminator(pairs(seqs, train_rows, vocab, ac, sampler, held_back), vocab,
                                                   cfg, work, gen_uri, progress)
    disc_version = model_version(disc_model, "discriminator")
    val = pairs(seqs, val_rows, vocab, ac, sampler, last_only=True)
    val_p = score(disc_model, vocab, val.column("context").to_pylist(), val.column("candidate").to_numpy())
    filt = choose_tau(val_p, val.column("label").to_numpy(), ac.target_precision, ac.tau)
    tau = filt["tau"]

    # score the proposals and keep the confident ones
    n_new = tokens.shape[1]
    prop_row = np.repeat(rows, n_new)
    prop_pos = np.tile(np.arange(n_new), len(rows))
    flat_tok, flat_gp = tokens.ravel(), gen_prob.ravel()
    ok = flat_tok >= 0
    prop_row, prop_pos, flat_tok, flat_gp = prop_row[ok], prop_pos[ok], flat_tok[ok], flat_gp[ok]
    contexts = []
    for r in prop_row:
        seq = vocab.encode(seqs.row(int(r)))
        contexts.append(seq[seq >= 0][-ac.context_len:])
    conf = score(disc_model, vocab, contexts, flat_tok) if len(flat_tok) else np.zeros(0, np.float32)
    keep = conf >= tau
    k_row, k_tok = prop_row[keep], flat_tok[keep]
    k_items = vocab.decode(k_tok)
    is_tail_prop = np.isin(vocab.decode(flat_tok), tail_items)
    is_tail = is_tail_prop[keep]

    # write: real rows unchanged, then the synthetic rows (+ provenance keyed by row)
    real = events.select([f.name for f in EVENTS_SCHEMA])
    synth = pa.table({
        "user_id": pa.array(seqs.users[k_row], pa.int64()),
        "item_id": pa.array(k_items, pa.int64()),
        "behavior": pa.array([SYNTHETIC_BEHAVIOR] * len(k_row), pa.string()),
        "ts": pa.array(seqs.last_ts[k_row], pa.int64()).cast(TS_TYPE),
    }, schema=EVENTS_SCHEMA)
    out_events = pa.concat_tables([real.cast(EVENTS_SCHEMA), synth])
    write_parquet(out_events, join(out_dir, EVENTS_FILE))
    prov = pa.table({
        "row": pa.array(np.arange(real.num_rows, real.num_rows + len(k_row)), pa.int64()),
        "user_id": pa.array(seqs.users[k_row], pa.int64()),
        "item_id": pa.array(k_items, pa.int64()),
        "confidence": pa.array(conf[keep], pa.float32()),
        "generator_prob": pa.array(flat_gp[keep], pa.float32()),
        "position": pa.array(prop_pos[keep], pa.int32()),
        "long_tail": pa.array(is_tail, pa.bool_()),
        "generator_version": pa.array([gen_version] * len(k_row), pa.string()),
        "discriminator_version": pa.array([disc_version] * len(k_row), pa.string()),
    }, schema=PROVENANCE_SCHEMA)
    write_parquet(prov, join(out_dir, PROVENANCE_FILE))

    summary = {
        "users": len(rows), "users_augmented": len(np.unique(k_row)),
        "proposed": len(flat_tok), "kept": len(k_row),
        "keep_rate": float(len(k_row) / len(flat_tok)) if len(flat_tok) else 0.0,
        "share_long_tail": float(is_tail.mean()) if len(is_tail) else 0.0,
        "share_long_tail_proposed": float(is_tail_prop.mean()) if len(is_tail_prop) else 0.0,
        "real_rows": int(real.num_rows), "synthetic_rows": len(k_row),
        "seconds": round(time.perf_counter() - t_start, 3),
        "long_tail": {"fraction": ac.tail_fraction, "threshold_count": threshold, "items": len(tail_items),
                      "catalog": len(item_ids),
                      "share_of_train_tokens": float(np.isin(seqs.items, tail_items).mean())},
        "tau": tau, "filter_validation": filt,
        "generator": {**gen_metrics, "version": gen_version, "init": init_dir, "vocab_size": vocab.size,
                      "windows": windows.num_rows, "candidates_per_s": len(flat_tok) / gen_seconds
                      if gen_seconds > 0 else None, "generate_seconds": round(gen_seconds, 3)},
        "discriminator": {**disc_metrics, "version": disc_version},
        "provenance": PROVENANCE_FILE,
    }
    write_json(summary, join(out_dir, SUMMARY_FILE))
    save_checkpoint(disc_model, vocab, join(out_dir, DISCRIMINATOR_DIR))
    return summary
