"""Scalar PDN (pdn.txt §4): TrigNet, SimNet, direct net and bias net as named blocks.

::

    t_uj   = TrigNet(z_u, a_uj, x_j) = MLP(CAT(E(z_u), E(a_uj), E(x_j)))                  (Eq. 8)
    s_ji   = SimNet(x_j, c_ji, x_i)  = MLP(CAT(E(x_j), E(c_ji), E(x_i)))                  (Eq. 9)
    PATH   = ln(1 + e^t_uj · e^s_ji) = softplus(t_uj + s_ji)                               (Eq. 10)
    d_ui   = MLP(E'(z_u)) · MLP(E'(x_i))ᵀ          (user × item tower, own embeddings)    (Eq. 11)
    ŷ_ui   = softplus(d_ui) + Σ_j PATH_uji + softplus(y_bias)                               (Eq. 12)
    p_ui   = 1 − exp(−ŷ_ui)                                                                (Eq. 13)

Shapes (G groups, L trigger slots, C candidate slots, P paths, d = embed_dim): ``E(x)`` (…, 6d), ``E(a)``
(…, 4d), ``E(c)`` (P, 3d) (inside SimNet), ``E(z)`` (G, 2d) = history-length embedding ⊕ mean category embedding of the last
clicks. The first layer of SimNet is applied to each part of the concatenation separately and summed — the
same affine map, computed once per trigger and per candidate instead of once per path.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from pi2i.config import Config, PDNConfig
from pi2i.contracts import I2I_SCHEMA
from pi2i.ibs.i2i import I2IIndex
from pi2i.methods.item_features import ITEM_FIELDS
from pi2i.methods.learned import EpochTracker, open_samples, size_threads, user_split
from pi2i.methods.pdn_features import Featurizer, PDNBatch, RowIndex, candidate_columns, sample_batch
from pi2i.prs.launch import adam

VAL_MAX_SAMPLES = 2000
INDEX_CHUNK = 1 << 16

A_FIELDS = ("count", "position", "age", "behavior")
C_FIELDS = ("score", "rank", "rel")
BIAS_FIELDS = ("hour", "day", "depth")


class FieldEmbedding(nn.Module):
    """One embedding table per one-hot feature; a field is their concatenation (§4.2). codes (…, F) -> (…, F·d)."""

    def __init__(self, sizes: list[int], dim: int):
        super().__init__()
        tables = [nn.Embedding(max(int(n), 1), dim) for n in sizes]
        for t in tables:
            nn.init.normal_(t.weight, std=0.05)
        self.tables = nn.ModuleList(tables)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(codes[..., k]) for k, t in enumerate(self.tables)], -1)


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU, last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*(layers if last_act else layers[:-1]))


class UserField(nn.Module):
    """E(z_u): history-length embedding ⊕ mean of the category embeddings of the last clicks, the category
    table given by the caller (PDN shares the item field's). (G,) (G, S) -> (G, 2d)"""

    def __init__(self, n_len: int, dim: int):
        super().__init__()
        self.length = nn.Embedding(n_len, dim)

    def forward(self, user_len: torch.Tensor, user_cats: torch.Tensor, category: nn.Embedding) -> torch.Tensor:
        m = (user_cats > 0).float()
        cats = (category(user_cats) * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
        return torch.cat([self.length(user_len), cats], -1)


class TrigNet(nn.Module):
    """t_uj = MLP(E(z_u) ⊕ E(a_uj) ⊕ E(x_j)) (Eq. 8). (G, 2d), (G, L, 4d), (G, L, 6d) -> (G, L)"""

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        self.net = mlp([2 * dim + len(A_FIELDS) * dim + len(ITEM_FIELDS) * dim, *hidden, 1])

    def forward(self, z: torch.Tensor, a: torch.Tensor, xj: torch.Tensor) -> torch.Tensor:
        z = z[:, None, :].expand(-1, a.shape[1], -1)
        return self.net(torch.cat([z, a, xj], -1)).squeeze(-1)


class ProjectedField(nn.Module):
    """``W · E(codes)`` of a field without materialising ``E(codes)``: each feature's table is projected once
    (``E_f W_fᵀ``, a few rows) and gathered per row — the same affine map, for the many-row path inputs.
    codes (…, F) -> (…, out)"""

    def __init__(self, sizes: list[int], dim: int, out: int):
        super().__init__()
        self.field = FieldEmbedding(sizes, dim)
        self.proj = nn.Linear(len(sizes) * dim, out, bias=False)
        self.dim = dim

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        d = self.dim
        table: torch.Tensor | None = None  # every code combination, row-major over the features
        joint = torch.zeros(codes.shape[:-1], dtype=torch.long)
        for k, t in enumerate(self.field.tables):
            w: torch.Tensor = t.weight  # type: ignore[assignment]
            part = w @ self.proj.weight[:, k * d:(k + 1) * d].T  # (n_k, out)
            table = part if table is None else (table[:, None, :] + part[None, :, :]).reshape(-1, part.shape[1])
            joint = joint * w.shape[0] + codes[..., k]
        assert table is not None
        return table[joint]


class SimNet(nn.Module):
    """s_ji = MLP(E(x_j) ⊕ E(c_ji) ⊕ E(x_i)) (Eq. 9), first layer split by part. -> (P,)

    The first layer of the MLP is ``W_j E(x_j) + W_c E(c_ji) + W_i E(x_i) + b``: the trigger and target parts
    are computed once per trigger / candidate slot and gathered per path; the E(c_ji) part owns its embedding
    tables (:class:`ProjectedField`)."""

    def __init__(self, dim: int, hidden: list[int], c_sizes: list[int]):
        super().__init__()
        d_x = len(ITEM_FIELDS) * dim
        self.first_j = nn.Linear(d_x, hidden[0])
        self.first_c = ProjectedField(c_sizes, dim, hidden[0])  # W_c · E(c_ji)
        self.first_i = nn.Linear(d_x, hidden[0], bias=False)
        self.rest = mlp([hidden[0], *hidden[1:], 1])

    def project(self, xj: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First-layer parts of the trigger and target embeddings (any leading shape)."""
        return self.first_j(xj), self.first_i(xi)

    def head(self, hj: torch.Tensor, c_codes: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return self.rest(F.relu(hj + self.first_c(c_codes) + hi)).squeeze(-1)

    def forward(self, xj: torch.Tensor, c_codes: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        hj, hi = self.project(xj, xi)
        return self.head(hj, c_codes, hi)


class DirectNet(nn.Module):
    """d_ui = p_u · q_i with user and item towers over their own embeddings, LeakyReLU MLPs (Eq. 11)."""

    def __init__(self, sizes: dict[str, int], dim: int, hidden: list[int], k: int):
        super().__init__()
        self.item_field = FieldEmbedding([sizes[f] for f in ITEM_FIELDS], dim)
        self.user_field = UserField(sizes["length"], dim)
        self.user_tower = mlp([2 * dim, *hidden, k], nn.LeakyReLU)
        self.item_tower = mlp([len(ITEM_FIELDS) * dim, *hidden, k], nn.LeakyReLU)

    def users(self, user_len: torch.Tensor, user_cats: torch.Tensor) -> torch.Tensor:
        category = self.item_field.tables[ITEM_FIELDS.index("category_id")]
        return self.user_tower(self.user_field(user_len, user_cats, category))  # p_u (G, k)

    def items(self, x: torch.Tensor) -> torch.Tensor:
        return self.item_tower(self.item_field(x))  # q_i (…, k)


class BiasNet(nn.Module):
    """A shallow tower over selection-bias features (§4.5), training only. (G, 3) -> (G,)"""

    def __init__(self, sizes: dict[str, int], dim: int):
        super().__init__()
        self.field = FieldEmbedding([sizes[f] for f in BIAS_FIELDS], dim)
        self.out = nn.Linear(len(BIAS_FIELDS) * dim, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.out(self.field(codes)).squeeze(-1)


class PDNModel(nn.Module):
    """Scalar PDN: scores every candidate slot of a :class:`PDNBatch` by Eq. 12 (Eq. 14 without the bias)."""

    def __init__(self, cfg: PDNConfig, sizes: dict[str, int]):
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.item_field = FieldEmbedding([sizes[f] for f in ITEM_FIELDS], d)  # E(x), shared by x_j and x_i
        self.a_field = FieldEmbedding([sizes[f] for f in A_FIELDS], d)  # E(a_uj)
        self.user_field = UserField(sizes["length"], d)  # E(z_u), categories from E(x)
        self.trignet = TrigNet(d, cfg.hidden)
        self.simnet = SimNet(d, cfg.hidden, [sizes[f] for f in C_FIELDS])  # owns E(c_ji)
        self.direct = DirectNet(sizes, d, cfg.hidden[:1], cfg.direct_dim) if cfg.direct_net else None
        self.bias = BiasNet(sizes, d) if cfg.bias_net else None

    def trigger_scores(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """t_uj of every trigger slot (G, L) (Eq. 8)."""
        z = self.user_field(b["user_len"], b["user_cats"], self.item_field.tables[ITEM_FIELDS.index("category_id")])
        return self.trignet(z, self.a_field(b["trig_a"]), self.item_field(b["trig_x"]))

    def path_scores(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """s_ji of every path (P,) (Eq. 9)."""
        hj, hi = self.simnet.project(self.item_field(b["trig_x"]), self.item_field(b["cand_x"]))
        g, li, c = b["path_g"], b["path_l"], b["path_c"]
        return self.simnet.head(hj[g, li], b["path_cji"], hi[g, c])

    def direct_scores(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """d_ui of every candidate slot (G, C) (Eq. 11); zeros when the direct net is off."""
        if self.direct is None:
            return torch.zeros(b["cand_x"].shape[:2])
        p = self.direct.users(b["user_len"], b["user_cats"])
        q = self.direct.items(b["cand_x"])
        return (q * p[:, None, :]).sum(-1)

    def forward(self, b: dict[str, torch.Tensor], with_bias: bool = True) -> dict[str, torch.Tensor]:
        t = self.trigger_scores(b)
        s = self.path_scores(b)
        g, li, c = b["path_g"], b["path_l"], b["path_c"]
        path = F.softplus(t[g, li] + s)  # ln(1 + e^t e^s)  (Eq. 10)
        G, C = b["cand_x"].shape[:2]
        y = torch.zeros(G * C, dtype=path.dtype).index_add_(0, g * C + c, path).view(G, C)
        if self.direct is not None:
            y = y + F.softplus(self.direct_scores(b))  # (Eq. 12, first term)
        serve = y  # Eq. 14: what retrieval ranks by
        if with_bias and self.bias is not None:
            y = y + F.softplus(self.bias(b["bias"]))[:, None]  # (Eq. 12, last term; removed at serving)
        return {"y": y, "serve": serve, "t": t, "s": s}


def pdn_loss(y: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    """Slot 0 is the clicked target, the other valid slots its negatives.

    ``bce`` (Eq. 13): p = 1 − e^{−ŷ}, −[log p] for the positive and −[log(1 − p)] = ŷ for each negative;
    ``softmax``: cross-entropy of log ŷ over the slots."""
    y = y.clamp_min(1e-6)
    if kind == "softmax":
        logits = torch.log(y).masked_fill(~valid, float("-inf"))
        return -torch.log_softmax(logits, -1)[:, 0].mean()
    pos = -torch.log(-torch.expm1(-y[:, 0]))
    neg = (y[:, 1:] * valid[:, 1:]).sum(1)
    return ((pos + neg) / valid.sum(1).clamp_min(1)).mean()


def to_tensors(b: PDNBatch) -> dict[str, Any]:
    return {k: torch.from_numpy(v) for k, v in vars(b).items()}


# --------------------------------------------------------------------------------------------- training loop
def _evaluate(model: PDNModel, ss: Any, feat: Featurizer, rows: RowIndex, idx: np.ndarray, kind: str,
              batch_size: int) -> np.ndarray:
    """Sums over ``idx``: [count, loss, hits@1, hits@10] of the positive among its sample's candidates
    (ranked by the serving score, Eq. 14)."""
    out = np.zeros(4)
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            b = sample_batch(ss, feat, rows, idx[s:s + batch_size])
            tb = to_tensors(b)
            valid = tb["cand_items"] >= 0
            res = model(tb)
            loss = pdn_loss(res["y"], valid, kind)
            serve = res["serve"].masked_fill(~valid, -1.0)
            rank = (serve[:, 1:] > serve[:, :1]).sum(1)
            out += [len(rank), loss.item() * len(rank), (rank < 1).sum().item(), (rank < 10).sum().item()]
    model.train()
    return out


def pdn_loop(config: dict) -> None:
    """One Ray Train worker (or the driver when ``train.num_workers = 0``)."""
    import ray.train
    import ray.train.torch

    cfg = Config.model_validate(config["cfg"])
    tc, pc = cfg.train, cfg.methods.pdn
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed)
    # One intra-op thread unless train.torch_threads says otherwise: these models run many small ops, and on a
    # shared 2-core node 2 OpenMP threads ran 5-10x slower than 1 (benchmarks/results/methods.json notes).
    size_threads(tc.torch_threads or 1)
    ss, sampling = open_samples(config["samples_uri"], "pdn")
    columns = candidate_columns(ss.cands.shape[1], int(sampling.get("hard_negatives", 20)), pc.negatives)
    feat = Featurizer.load(config["featurizer_uri"])
    rows = RowIndex.build(I2IIndex.load(config["i2i_uri"]))
    train_idx, val_idx = user_split(np.asarray(ss.clicks.user_ids), np.asarray(ss.user), tc.val_fraction, tc.seed)
    rng = np.random.default_rng(tc.seed)
    if len(val_idx) > VAL_MAX_SAMPLES:
        val_idx = np.sort(rng.choice(val_idx, VAL_MAX_SAMPLES, replace=False))
    model = PDNModel(pc, feat.vocab_sizes)
    net = ray.train.torch.prepare_model(model) if world > 1 else model
    opt = adam(net.parameters(), tc.lr, tc.weight_decay)
    tracker = EpochTracker(model, tc.patience)
    for epoch in range(tc.epochs):
        t0 = time.perf_counter()
        perm = np.random.default_rng([tc.seed, epoch]).permutation(train_idx)
        n_batches = max(1, len(perm) // (tc.batch_size * world))
        cap = pc.max_batches_per_epoch or tc.max_batches_per_epoch
        if cap:
            n_batches = min(n_batches, cap)
        mine = perm[rank::world]
        tot, seen = 0.0, 0
        for bi in range(n_batches):
            idx = mine[bi * tc.batch_size:(bi + 1) * tc.batch_size]
            if not len(idx):
                break
            tb = to_tensors(sample_batch(ss, feat, rows, idx, columns))
            loss = pdn_loss(net(tb)["y"], tb["cand_items"] >= 0, pc.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            seen += len(idx)
        train_s = time.perf_counter() - t0
        ev = _evaluate(model, ss, feat, rows, val_idx[rank::world], pc.loss, tc.batch_size)
        tr = np.array([tot, seen], np.float64)
        if world > 1 and torch.distributed.is_initialized():
            t = torch.tensor(np.concatenate([ev, tr]), dtype=torch.float64)
            torch.distributed.all_reduce(t)
            ev, tr = t[:4].numpy(), t[4:].numpy()
        n = max(ev[0], 1.0)
        m = {"epoch": epoch + 1, "train_loss": float(tr[0] / max(tr[1], 1)), "val_loss": float(ev[1] / n),
             "val_hr1": float(ev[2] / n), "val_hr10": float(ev[3] / n), "val_samples": int(ev[0]),
             "train_samples": int(tr[1]), "epoch_seconds": round(train_s, 3),
             "train_samples_per_s": float(tr[1] / train_s) if train_s > 0 else None}
        if rank == 0 and config.get("progress"):
            print(f"[pdn] epoch {epoch + 1}: train_loss {m['train_loss']:.4f} val_loss {m['val_loss']:.4f} "
                  f"val_hr10 {m['val_hr10']:.4f} ({m['train_samples_per_s'] or 0:.0f} samples/s)", flush=True)
        if tracker.end_epoch(m):
            break


# --------------------------------------------------------------------------------------------- §5.2 index
def simnet_scores(model: PDNModel, feat: Featurizer, triggers: np.ndarray, targets: np.ndarray,
                  score: np.ndarray, rank: np.ndarray, row_top: np.ndarray) -> np.ndarray:
    """s_ji (Eq. 9) of pairs given by raw ids and their Swing row entries."""
    with torch.inference_mode():
        xj = model.item_field(torch.from_numpy(feat.item_x_of(triggers)))
        xi = model.item_field(torch.from_numpy(feat.item_x_of(targets)))
        return model.simnet(xj, torch.from_numpy(feat.cji(score, rank, row_top)), xi).numpy()


def build_index(model: PDNModel, feat: Featurizer, swing: I2IIndex, index_k: int) -> I2IIndex:
    """§5.2: SimNet scores every pair of the Swing rows; each trigger keeps its ``index_k`` best by s_ji."""
    model.eval()
    rows = RowIndex.build(swing)
    lens = np.diff(swing.indptr)
    row_of = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    trig = swing.triggers[row_of]
    s = np.empty(swing.num_pairs, np.float32)
    for a in range(0, swing.num_pairs, INDEX_CHUNK):
        z = slice(a, a + INDEX_CHUNK)
        s[a:a + INDEX_CHUNK] = simnet_scores(model, feat, trig[z], swing.targets[z],
                                             swing.scores[z].astype(np.float64), swing.ranks[z].astype(np.int64),
                                             rows.row_top[row_of[z]])
    order = np.lexsort((swing.targets, -s.astype(np.float64), row_of))
    r, tg, sc = row_of[order], swing.targets[order], s[order]
    rank = np.arange(len(r)) - swing.indptr[r]
    keep = rank < index_k
    table = pa.table({"trigger": pa.array(swing.triggers[r[keep]], pa.int64()),
                      "target": pa.array(tg[keep], pa.int64()), "score": pa.array(sc[keep], pa.float32()),
                      "rank": pa.array((rank[keep] + 1).astype(np.int32), pa.int32())}, schema=I2I_SCHEMA)
    return I2IIndex.from_table(table)
