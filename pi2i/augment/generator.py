"""LLM-I2I generator (llm-i2i.txt §"LLM-based Data Generator"): a causal transformer language model over users'
item sequences that proposes the items a user would interact with next.

* **Model**: Hugging Face ``transformers`` — a small GPT-2 built from scratch over the item vocabulary
  (:mod:`pi2i.augment.sequences`), or any local causal-LM checkpoint (``augment.generator`` / ``--generator PATH``)
  fine-tuned through the same code: its text tokens stay, item tokens are appended to its embedding table; a
  checkpoint written by this module keeps its item tokens and gains the new items.
* **Loss** (Eq. 2): next-token cross-entropy, weight ``α`` where the next item is long-tail, ``β`` otherwise,
  averaged over the predicted positions — ``α > β`` pushes the model toward the tail.
* **Training** runs under Ray Train (:func:`pi2i.prs.launch.run_ray_train`): in-process for
  ``train.num_workers = 0``, DDP workers otherwise, GPUs with ``train.use_gpu`` — like the scorer.
* **Generation**: each user's most recent ``context_len`` items (paper: 10) as the prompt, then ``N`` items sampled
  one after another (temperature, top-k, nucleus), special tokens, the user's seen items and items already
  generated excluded — a synthetic continuation of the user's sequence.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa

from pi2i.augment.sequences import VOCAB_META, ItemVocab, Sequences
from pi2i.config import AugmentConfig, Config
from pi2i.contracts import exists, join, read_parquet, write_parquet

GENERATOR_DIR = "generator"
TRAIN_FILE = "generator_windows.parquet"


class GeneratorError(ValueError):
    """A generator checkpoint that cannot be used (missing path, not a causal LM)."""


# ----------------------------------------------------------------------------------------------- data
def training_windows(seqs: Sequences, rows: np.ndarray, vocab: ItemVocab, tail_tokens: np.ndarray,
                     cfg: AugmentConfig, held_back: np.ndarray | None = None) -> pa.Table:
    """``[bos] i_1 .. i_n`` windows of at most ``max_len`` items (cut from each user's most recent end) with the
    Eq. 2 weight of every predicted token: ``alpha`` for a long-tail item, ``beta`` otherwise.
    ``held_back[r]`` drops that many trailing items of row ``r`` (the validation users' last item)."""
    is_tail = np.zeros(vocab.size, bool)
    is_tail[tail_tokens] = True
    toks: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    for r in rows:
        seq = vocab.encode(seqs.row(int(r)))
        if held_back is not None and held_back[r]:
            seq = seq[:len(seq) - int(held_back[r])]
        seq = seq[seq >= 0]
        for end in range(len(seq), 1, -cfg.max_len):  # windows of >= 2 items: at least one next-item target
            w = seq[max(0, end - cfg.max_len):end]
            t = np.concatenate([[vocab.bos], w]).astype(np.int32)
            weight = np.where(is_tail[t[1:]], cfg.alpha, cfg.beta).astype(np.float32)  # Eq. 2
            toks.append(t)
            wts.append(weight)
    return pa.table({"tokens": pa.array(toks, pa.list_(pa.int32())),
                     "weights": pa.array(wts, pa.list_(pa.float32()))})


def pad_left(rows: list[np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) with every row right-aligned (prompts end where generation or classification reads)."""
    n = max((len(r) for r in rows), default=1)
    ids = np.full((len(rows), n), pad, np.int64)
    mask = np.zeros((len(rows), n), np.int64)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, n - len(r):] = r
            mask[i, n - len(r):] = 1
    return ids, mask


def positions(mask):
    """Position ids that start at 0 on each row's first real token (left or right padding alike)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------------- model
def resolve_init(path: str | None) -> str | None:
    """Check a pretrained checkpoint path (``--generator``): ValueError naming it when it is not one."""
    if path is None:
        return None
    if not exists(path):
        raise GeneratorError(f"generator checkpoint not found: {path}")
    if not exists(join(path, "config.json")):
        raise GeneratorError(f"generator checkpoint {path} has no config.json (not a Hugging Face model dir)")
    return path


def local_dir(uri: str) -> str:
    """A local directory holding the files of ``uri`` (a copy in a temp dir when it is an object-store URI)."""
    if "://" not in uri:
        return uri
    import pyarrow.fs as pafs

    from pi2i.contracts import resolve

    fs, root = resolve(uri)
    dst = tempfile.mkdtemp(prefix="pi2i-hf-")
    pafs.copy_files(root, dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dst


def generator_vocab(item_ids: np.ndarray, init_dir: str | None) -> ItemVocab:
    """The item vocabulary: from scratch; a checkpoint of ours extended by new items; or item tokens appended
    after a plain pretrained model's text vocabulary."""
    if init_dir is None:
        return ItemVocab(np.sort(item_ids), 0)
    if exists(join(init_dir, VOCAB_META)):
        return ItemVocab.load(init_dir).extended(item_ids)
    from transformers import AutoConfig

    return ItemVocab(np.sort(item_ids), int(AutoConfig.from_pretrained(local_dir(init_dir)).vocab_size))


def n_positions(cfg: AugmentConfig) -> int:
    return max(cfg.max_len + 1, cfg.context_len + cfg.candidates_per_user + 1, cfg.context_len + 3)


def build_generator(vocab: ItemVocab, cfg: AugmentConfig, init_dir: str | None = None):
    """A GPT-2 causal LM sized by ``cfg`` (from scratch), or the checkpoint ``init_dir`` with its embedding
    table grown to the item vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    if init_dir is None:
        conf = GPT2Config(vocab_size=vocab.size, n_positions=n_positions(cfg), n_embd=cfg.n_embd,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout,
                          embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, bos_token_id=vocab.bos,
                          eos_token_id=vocab.sep, pad_token_id=vocab.pad)
        return GPT2LMHeadModel(conf)
    try:
        model = AutoModelForCausalLM.from_pretrained(local_dir(init_dir))
    except (OSError, ValueError) as e:
        raise GeneratorError(f"generator checkpoint {init_dir} is not a causal language model: {e}") from None
    table: Any = model.get_input_embeddings().weight
    if table.shape[0] < vocab.size:  # grow the embedding table by the item tokens
        model.resize_token_embeddings(vocab.size)
    model.config.pad_token_id = vocab.pad
    return model


def weighted_lm_loss(logits, tokens, weights, mask):
    """Eq. 2: Σ_t w_{t+1} · CE(y_{t+1} | y_≤t) / #predicted tokens.

    Shapes: logits (B, S, V), tokens (B, S), weights (B, S-1) (weight of token t+1), mask (B, S)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1),
                         reduction="none").view(tokens.shape[0], -1)
    valid = mask[:, 1:].float()
    return (ce * weights * valid).sum() / valid.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------------- training
def _generator_loop(config: dict) -> None:
    """Ray Train loop (every worker, or in-process): Eq. 2 training of the causal LM; reports per epoch."""
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
    table = read_parquet(config["windows_uri"])
    toks = [np.asarray(t, np.int64) for t in table.column("tokens").to_pylist()]
    wts = [np.asarray(w, np.float32) for w in table.column("weights").to_pylist()]
    vocab = ItemVocab(np.zeros(config["n_items"], np.int64), config["offset"])  # token layout only
    device = ray.train.torch.get_device() if world > 1 or tc.use_gpu else torch.device("cpu")
    model = build_generator(vocab, ac, config.get("init_dir"))
    model.to(device)
    net = ray.train.torch.prepare_model(model) if world > 1 else model
    opt = torch.optim.AdamW(net.parameters(), lr=ac.lr, weight_decay=0.01)
    for epoch in range(ac.epochs):
        net.train()
        t0 = time.perf_counter()
        order = np.random.default_rng([ac.seed, epoch]).permutation(len(toks))[rank::world]
        tot, n_tok = 0.0, 0
        for s in range(0, len(order), ac.batch_size):
            idx = order[s:s + ac.batch_size]
            width = max(len(toks[i]) for i in idx)
            ids = np.full((len(idx), width), vocab.pad, np.int64)
            mask = np.zeros((len(idx), width), np.int64)
            w = np.zeros((len(idx), width - 1), np.float32)
            for j, i in enumerate(idx):  # right padding
                ids[j, :len(toks[i])] = toks[i]
                mask[j, :len(toks[i])] = 1
                w[j, :len(wts[i])] = wts[i]
            ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            logits = net(input_ids=ids_t, attention_mask=mask_t, position_ids=positions(mask_t)).logits
            loss = weighted_lm_loss(logits, ids_t, torch.from_numpy(w).to(device), mask_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            k = int(mask[:, 1:].sum())
            tot += float(loss.item()) * k
            n_tok += k
        secs = time.perf_counter() - t0
        m = {"epoch": epoch + 1, "loss": tot / max(n_tok, 1), "tokens": n_tok, "seconds": round(secs, 3),
             "tokens_per_s": n_tok * world / secs if secs > 0 else None}
        if rank == 0 and config.get("progress"):
            print(f"[augment] generator epoch {epoch + 1}: loss {m['loss']:.4f} "
                  f"({m['tokens_per_s'] or 0:.0f} tokens/s)", flush=True)
        report_epoch(m, model.save_pretrained if epoch == ac.epochs - 1 else None)


def train_generator(windows: pa.Table, vocab: ItemVocab, cfg: Config, work_uri: str,
                    init_dir: str | None = None, progress: bool = False) -> tuple[Any, dict]:
    """Train (or fine-tune ``init_dir``) on ``windows`` under Ray Train; return (model on CPU, metrics)."""
    from transformers import AutoModelForCausalLM

    from pi2i.prs.launch import cleanup_local_checkpoints, run_ray_train

    if windows.num_rows == 0:
        raise ValueError("augment: no user has two or more items to train the generator on")
    uri = join(work_uri, TRAIN_FILE)
    write_parquet(windows, uri)
    loop_cfg = {"cfg": cfg.model_dump(), "windows_uri": uri, "n_items": len(vocab.item_ids),
                "offset": vocab.offset, "init_dir": init_dir, "progress": progress}
    result = run_ray_train(_generator_loop, loop_cfg, cfg, "llm-i2i-generator")
    if result.checkpoint is None:
        raise RuntimeError("generator training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        model = AutoModelForCausalLM.from_pretrained(d)
    cleanup_local_checkpoints()
    hist = result.metrics or {}
    return model.eval(), {k: hist.get(k) for k in ("epoch", "loss", "tokens", "seconds", "tokens_per_s")}


# ----------------------------------------------------------------------------------------- generation
def prompts(seqs: Sequences, rows: np.ndarray, vocab: ItemVocab, context_len: int,
            held_back: np.ndarray | None = None) -> list[np.ndarray]:
    """``[bos]`` + each row's most recent ``context_len`` in-vocabulary item tokens."""
    out = []
    for r in rows:
        seq = vocab.encode(seqs.row(int(r)))
        if held_back is not None and held_back[r]:
            seq = seq[:len(seq) - int(held_back[r])]
        seq = seq[seq >= 0][-context_len:]
        out.append(np.concatenate([[vocab.bos], seq]).astype(np.int64))
    return out


def generate(model, vocab: ItemVocab, seqs: Sequences, rows: np.ndarray, cfg: AugmentConfig,
             held_back: np.ndarray | None = None, batch_size: int = 256,
             device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Sample ``N = cfg.candidates_per_user`` item tokens per row, one after another with the KV cache.

    Returns (tokens (n, N) int64, -1 where nothing could be sampled; the generator's probability of each pick
    after the exclusions, before temperature/top-k/top-p). Excluded: non-item tokens, every item of the user's
    sequence (without its ``held_back`` tail: those are what validation looks for) and items already generated."""
    import torch
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    n_new = cfg.candidates_per_user
    warp = LogitsProcessorList()
    if cfg.temperature != 1.0:
        warp.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k > 0:
        warp.append(TopKLogitsWarper(cfg.top_k, min_tokens_to_keep=1))
    if cfg.top_p < 1.0:
        warp.append(TopPLogitsWarper(cfg.top_p, min_tokens_to_keep=1))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = model.to(device).eval()
    vocab_out = model.get_output_embeddings().weight.shape[0]
    out_tok = np.full((len(rows), n_new), -1, np.int64)
    out_p = np.zeros((len(rows), n_new), np.float32)
    all_prompts = prompts(seqs, rows, vocab, cfg.context_len, held_back)
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            rr = rows[s:s + batch_size]
            ids, mask = pad_left(all_prompts[s:s + batch_size], vocab.pad)
            ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            banned = torch.ones((len(rr), vocab_out), dtype=torch.bool, device=device)
            banned[:, vocab.first_item:vocab.size] = False  # only item tokens may be generated
            for j, r in enumerate(rr):
                seen = vocab.encode(seqs.row(int(r)))
                if held_back is not None and held_back[r]:
                    seen = seen[:len(seen) - int(held_back[r])]
                banned[j, torch.from_numpy(seen[seen >= 0]).to(device)] = True
            out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions(mask_t), use_cache=True)
            past, pos = out.past_key_values, positions(mask_t)[:, -1:]
            logits = out.logits[:, -1, :]
            hist = ids_t
            for step in range(n_new):
                scores = logits.float().masked_fill(banned, float("-inf"))
                alive = torch.isfinite(scores).any(-1)
                scores[~alive, vocab.pad] = 0.0  # nothing left to sample for this row: pick pad, drop it
                probs = torch.softmax(scores, -1)
                warped = warp(hist, scores.clone())  # type: ignore[arg-type]
                nxt = torch.multinomial(torch.softmax(warped, -1), 1, generator=gen)
                p = probs.gather(1, nxt).squeeze(1)
                tok = torch.where(alive, nxt.squeeze(1), torch.full_like(nxt.squeeze(1), -1))
                out_tok[s:s + len(rr), step] = tok.cpu().numpy()
                out_p[s:s + len(rr), step] = p.cpu().numpy()
                banned.scatter_(1, nxt, True)
                hist = torch.cat([hist, nxt], 1)
                mask_t = torch.cat([mask_t, torch.ones_like(nxt)], 1)
                pos = pos + 1
                out = model(input_ids=nxt, attention_mask=mask_t, position_ids=pos, past_key_values=past,
                            use_cache=True)
                past, logits = out.past_key_values, out.logits[:, -1, :]
    return out_tok, out_p


def save_checkpoint(model, vocab: ItemVocab, out_uri: str) -> str:
    """Write a Hugging Face checkpoint + the item vocabulary to ``out_uri`` (what ``--generator`` reads)."""
    d = out_uri if "://" not in out_uri else tempfile.mkdtemp(prefix="pi2i-hf-")
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d)
    vocab.save(d)
    if d != out_uri:
        import pyarrow.fs as pafs

        from pi2i.contracts import resolve

        fs, root = resolve(out_uri)
        pafs.copy_files(d, root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return out_uri
