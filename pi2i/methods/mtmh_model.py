"""MTMH item tower and its multi-task training (mtmh.txt §3.1–3.3).

::

    h(x)     = SparseNN(x) = E_id(x) ⊕ E_cat(x) ⊕ E_brand(x) ⊕ E_seller(x) ⊕ E_price(x) ⊕ E_pop(x)
    E^e(x)   = normalize(MLP_e(h(x)))       engagement head                                    (§3.3)
    E^r(x)   = normalize(MLP_r(h(x)))       relevance head
    p^+_ij   = softmax over [positive, negatives] of <E_i, E_j> / τ                             (Eq. 1)
    L_e      = −Σ log p^+_ij
    q        = softmax over the same items of content similarity <F_i, F_j> / τ_c
    L_r      = Σ KL(q ‖ p)                                                                      (Eq. 2)
    loss     = L_e(E^e) + [L_e(E^r) + w_r · L_r(E^r)]                                           (Eq. 3)

Pairs (trigger, positive) are co-engaged items: each click with its ``pair_window`` previous clicks in the
user's sequence (§3.1: the T-th item paired with the earlier ones). Negatives of a pair are the other pairs'
positives in the batch plus ``sampled_negatives`` items drawn uniformly from the catalog (shared by the batch);
a negative equal to the pair's positive is masked. Content similarity ``F`` is either the side-info match
``Σ_f w_f·[f_i = f_j]`` (``methods.mtmh.content_weights``: a one-hot content embedding, scaled) or the cosine of
user-supplied ``item_embeddings``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pi2i.config import Config, MTMHConfig
from pi2i.methods.item_features import ITEM_FIELDS, ItemCodes
from pi2i.methods.learned import EpochTracker, open_samples, size_threads, user_split
from pi2i.prs.launch import adam

VAL_MAX_PAIRS = 20_000


class ItemTower(nn.Module):
    """SparseNN (one embedding per id feature, concatenated) and two MLP heads. codes (…, 6) -> 2 × (…, out)"""

    def __init__(self, cfg: MTMHConfig, sizes: dict[str, int]):
        super().__init__()
        d = cfg.embed_dim
        dims = [d] + [max(2, d // 2)] * (len(ITEM_FIELDS) - 1)
        tables = [nn.Embedding(max(sizes[f], 1), k) for f, k in zip(ITEM_FIELDS, dims, strict=True)]
        for t in tables:
            nn.init.normal_(t.weight, std=0.05)
        self.tables = nn.ModuleList(tables)
        self.out_dim = cfg.out_dim
        width = sum(dims)
        self.heads = nn.ModuleDict({h: _mlp([width, *cfg.hidden, cfg.out_dim]) for h in ("engagement", "relevance")})

    def sparse(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(codes[..., k]) for k, t in enumerate(self.tables)], -1)

    def forward(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.sparse(codes)
        return {name: F.normalize(head(h), dim=-1) for name, head in self.heads.items()}


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# --------------------------------------------------------------------------------------------- content
class Content:
    """Content similarity <F_i, F_j> of item codes: side-info matches, or cosine of supplied embeddings."""

    def __init__(self, weights: dict[str, float], embeddings: np.ndarray | None = None):
        self.weights = {ITEM_FIELDS.index(f): w for f, w in weights.items()}
        self.emb = None if embeddings is None else torch.from_numpy(np.asarray(embeddings, np.float32))

    def similarity(self, a_rows: torch.Tensor, a_codes: torch.Tensor, b_rows: torch.Tensor,
                   b_codes: torch.Tensor) -> torch.Tensor:
        """(A, B) similarity between items given by catalog rows (for embeddings) and codes (side info)."""
        if self.emb is not None:
            return self.emb[a_rows] @ self.emb[b_rows].T
        out = torch.zeros(len(a_codes), len(b_codes))
        for k, w in self.weights.items():
            ca, cb = a_codes[:, k], b_codes[:, k]
            out += w * ((ca[:, None] == cb[None, :]) & (ca[:, None] > 0)).float()
        return out


def load_content_embeddings(uri: str, item_ids: np.ndarray) -> np.ndarray:
    """Rows of a (item_id, embedding list<float>) parquet aligned with ``item_ids``, L2-normalised; items it
    lacks get zeros (no content opinion). Raises ValueError naming the file on a malformed table."""
    from pi2i.contracts import read_parquet
    from pi2i.methods.ranking import item_codes

    t = read_parquet(uri)
    if "item_id" not in t.column_names or "embedding" not in t.column_names:
        raise ValueError(f"item embeddings {uri}: needs columns item_id and embedding (list<float>)")
    ids = t.column("item_id").to_numpy().astype(np.int64)
    rows = t.column("embedding").to_pylist()
    dims = {len(r) for r in rows if r is not None}
    if len(dims) != 1:
        raise ValueError(f"item embeddings {uri}: every embedding must have one length, got {sorted(dims)[:5]}")
    emb = np.asarray(rows, np.float32)
    if not np.isfinite(emb).all():
        raise ValueError(f"item embeddings {uri}: NaN or infinite values")
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    order = np.argsort(ids, kind="stable")
    at = item_codes(ids[order], item_ids)
    out = np.zeros((len(item_ids), emb.shape[1]), np.float32)
    out[at >= 0] = emb[order[at[at >= 0]]]
    return out


# --------------------------------------------------------------------------------------------- losses
def multitask_losses(tower: ItemTower, codes: torch.Tensor, trig: torch.Tensor, pos: torch.Tensor,
                     neg: torch.Tensor, content: Content, cfg: MTMHConfig) -> dict[str, torch.Tensor]:
    """L_e of both heads and L_r of the relevance head for pairs (trig[b], pos[b]) (catalog rows), with the
    batch's positives and ``neg`` (catalog rows) as negatives."""
    cols = torch.cat([pos, neg])  # column b is pair b's positive
    emb_t = tower(codes[trig])
    emb_c = tower(codes[cols])
    B = len(trig)
    target = torch.arange(B)
    same = cols[None, :] == pos[:, None]  # accidental positives among the negatives
    same[target, target] = False
    out: dict[str, torch.Tensor] = {}
    for head in ("engagement", "relevance"):
        logits = (emb_t[head] @ emb_c[head].T / cfg.temperature).masked_fill(same, float("-inf"))
        logp = torch.log_softmax(logits, -1)
        out[f"le_{head}"] = -logp[target, target].mean()  # Eq. 1
        if head == "relevance":
            sim = content.similarity(trig, codes[trig], cols, codes[cols]) / cfg.content_temperature
            logq = torch.log_softmax(sim.masked_fill(same, float("-inf")), -1)
            q = logq.exp()
            kl = (q * (logq - logp)).masked_fill(same, 0.0).sum(-1)  # Eq. 2
            out["lr"] = kl.mean()
    out["loss"] = out["le_engagement"] + out["le_relevance"] + cfg.w_r * out["lr"]  # Eq. 3 per head
    return out


def co_engaged_pairs(user_ptr: np.ndarray, items: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """(user row, trigger, positive) of each click with each of its ``window`` previous clicks (differing)."""
    user_ptr, items = np.asarray(user_ptr, np.int64), np.asarray(items, np.int64)
    row = np.repeat(np.arange(len(user_ptr) - 1, dtype=np.int64), np.diff(user_ptr))
    us, ts, ps = [], [], []
    idx = np.arange(len(items))
    for w in range(1, window + 1):
        ok = (idx - w >= user_ptr[row]) & (idx >= w)
        j = idx[ok]
        ok2 = items[j - w] != items[j]
        us.append(row[j[ok2]])
        ts.append(items[j - w][ok2])
        ps.append(items[j][ok2])
    return np.concatenate(us), np.concatenate(ts), np.concatenate(ps)


# --------------------------------------------------------------------------------------------- training loop
def _pairs(config: dict, cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, ItemCodes]:
    """Train and validation pairs as catalog rows (user-disjoint), and the item codes."""
    from pi2i.methods.ranking import item_codes

    ss, _ = open_samples(config["samples_uri"], "mtmh")
    codes = ItemCodes.load(config["codes_uri"], config["sizes"])
    u, t, p = co_engaged_pairs(np.asarray(ss.clicks.user_ptr), np.asarray(ss.clicks.items),
                               cfg.methods.mtmh.pair_window)
    t, p = item_codes(codes.item_ids, t), item_codes(codes.item_ids, p)
    ok = (t >= 0) & (p >= 0)
    u, t, p = u[ok], t[ok], p[ok]
    tr, va = user_split(np.asarray(ss.clicks.user_ids), u, cfg.train.val_fraction, cfg.train.seed)
    return t[tr], p[tr], t[va], p[va], codes


def mtmh_loop(config: dict) -> None:
    """One Ray Train worker (or the driver when ``train.num_workers = 0``)."""
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(config["cfg"])
    tc, mc = cfg.train, cfg.methods.mtmh
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed)
    # One intra-op thread unless train.torch_threads says otherwise: these models run many small ops, and on a
    # shared 2-core node 2 OpenMP threads ran 5-10x slower than 1 (benchmarks/results/methods.json notes).
    size_threads(tc.torch_threads or 1)
    t_tr, p_tr, t_va, p_va, codes = _pairs(config, cfg)
    rng = np.random.default_rng(tc.seed)
    if len(t_va) > VAL_MAX_PAIRS:
        keep = np.sort(rng.choice(len(t_va), VAL_MAX_PAIRS, replace=False))
        t_va, p_va = t_va[keep], p_va[keep]
    emb = load_content_embeddings(config["content_uri"], codes.item_ids) if config.get("content_uri") else None
    content = Content(mc.content_weights, emb)
    x = torch.from_numpy(codes.x)
    tower = ItemTower(mc, codes.sizes)
    net = ray.train.torch.prepare_model(tower) if world > 1 else tower
    opt = adam(net.parameters(), mc.lr)
    tracker = EpochTracker(tower, tc.patience)
    n_items = len(codes.item_ids)

    def batch_losses(model: Any, t: np.ndarray, p: np.ndarray, seed: list[int]) -> dict[str, torch.Tensor]:
        neg = np.random.default_rng(seed).integers(0, n_items, mc.sampled_negatives)
        inner = model.module if hasattr(model, "module") else model
        return multitask_losses(inner, x, torch.from_numpy(t), torch.from_numpy(p), torch.from_numpy(neg),
                                content, mc)

    for epoch in range(mc.epochs):
        t0 = time.perf_counter()
        perm = np.random.default_rng([tc.seed, epoch]).permutation(len(t_tr))
        n_batches = max(1, len(perm) // (mc.batch_size * world))
        if mc.max_batches_per_epoch:
            n_batches = min(n_batches, mc.max_batches_per_epoch)
        mine = perm[rank::world]
        tot, seen = 0.0, 0
        for bi in range(n_batches):
            sel = mine[bi * mc.batch_size:(bi + 1) * mc.batch_size]
            if len(sel) < 2:
                break
            losses = batch_losses(net, t_tr[sel], p_tr[sel], [tc.seed, epoch, bi, rank])
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            tot += losses["loss"].item() * len(sel)
            seen += len(sel)
        train_s = time.perf_counter() - t0
        tower.eval()
        ev = np.zeros(4)
        with torch.inference_mode():
            for s in range(rank * mc.batch_size, len(t_va), mc.batch_size * world):
                part = slice(s, s + mc.batch_size)
                if len(t_va[part]) < 2:
                    continue
                out = batch_losses(tower, t_va[part], p_va[part], [tc.seed, 10_000 + s])
                n = len(t_va[part])
                ev += [n, out["loss"].item() * n, out["le_engagement"].item() * n, out["lr"].item() * n]
        tower.train()
        tr = np.array([tot, seen], np.float64)
        if world > 1 and torch.distributed.is_initialized():
            tt = torch.tensor(np.concatenate([ev, tr]), dtype=torch.float64)
            torch.distributed.all_reduce(tt)
            ev, tr = tt[:4].numpy(), tt[4:].numpy()
        n = max(ev[0], 1.0)
        m = {"epoch": epoch + 1, "train_loss": float(tr[0] / max(tr[1], 1)),
             "val_loss": float(ev[1] / n) if ev[0] else float(tr[0] / max(tr[1], 1)),
             "val_le_engagement": float(ev[2] / n), "val_lr": float(ev[3] / n), "val_pairs": int(ev[0]),
             "train_pairs": int(tr[1]), "epoch_seconds": round(train_s, 3),
             "train_pairs_per_s": float(tr[1] / train_s) if train_s > 0 else None}
        if rank == 0 and config.get("progress"):
            print(f"[mtmh] epoch {epoch + 1}: train_loss {m['train_loss']:.4f} val_loss {m['val_loss']:.4f} "
                  f"({m['train_pairs_per_s'] or 0:.0f} pairs/s)", flush=True)
        if tracker.end_epoch(m):
            break


def item_embeddings(tower: ItemTower, codes: np.ndarray, chunk: int = 1 << 15) -> dict[str, np.ndarray]:
    """Both heads' embeddings (n, out_dim) float32 of every catalog row."""
    tower.eval()
    out: dict[str, list[np.ndarray]] = {"engagement": [], "relevance": []}
    with torch.inference_mode():
        for a in range(0, len(codes), chunk):
            e = tower(torch.from_numpy(codes[a:a + chunk]))
            for h, parts in out.items():
                parts.append(e[h].numpy().astype(np.float32))
    return {h: np.concatenate(v) if v else np.zeros((0, tower.out_dim), np.float32)
            for h, v in out.items()}
