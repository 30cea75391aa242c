"""The PRS scorer (PI2I §3.2.2–3.2.3): a light target-attention model over the trigger–target candidate pool.

::

    E_item(x)  = Σ_f Emb_f(x_f)   over the item's id, category, brand, seller (vocab: 0 pad, 1 OOV)
    E_trigger  = mean over the hitting triggers h of  E_item(h) + W·hitdense(h)   (the multi-value feature)
    E_target   = E_item(candidate)
    E_cross    = MLP(cross(candidate))                                          (standardized inputs)
    Q          = MLP(E_trigger ⊕ E_target ⊕ E_cross)                                                   (8)
    MHA        = MultiHeadAttention(query Q, keys/values E_item(seq) + E_pos)  (padding masked)    (9–10)
    E_profile  = [masked mean of the sequence ⊕ W·profile]
    logit      = MLP(MHA ⊕ E_profile ⊕ E_trigger ⊕ E_target ⊕ E_cross)                               (11)
    loss       = softmax cross-entropy of the positive (slot 0) against the sample's negatives        (12)

Every candidate of a group queries the same sequence, so one ``nn.MultiheadAttention`` call scores a whole
group: the query length is the number of candidates (queries never attend to each other).

Ablations (``ModelConfig``): ``attention="self"`` — self-attention over the sequence, mean-pooled, no query from
the candidate; ``trigger_feature="random"`` — one random hitting trigger instead of all; ``"none"`` — no trigger
feature at all (E_trigger = 0; the cross features stay).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pi2i.config import ModelConfig
from pi2i.prs.candidates import (
    CROSS_FEATURES,
    HIT_FEATURES,
    PROFILE_FEATURES,
    SIDE_FIELDS,
    Features,
    ItemInfo,
)

PAD, OOV = 0, 1
NUM_FIELDS = 1 + len(SIDE_FIELDS)


# --------------------------------------------------------------------------------------------- vocabulary
@dataclass
class Vocab:
    """Id vocabularies built at training time: items (by click count) and side-info values (from items.parquet).
    Index 0 = padding, 1 = out of vocabulary, 2.. = known values in sorted order."""

    items: np.ndarray  # int64 sorted known item ids
    side_values: list[np.ndarray]  # per SIDE_FIELDS: sorted known raw values
    info: ItemInfo  # raw side info, to encode items the id vocabulary has never seen

    @classmethod
    def build(cls, clicked_items: np.ndarray, info: ItemInfo, min_count: int) -> Vocab:
        ids, counts = np.unique(np.asarray(clicked_items, np.int64), return_counts=True)
        side_values = []
        for j in range(len(SIDE_FIELDS)):
            v = info.side[:, j]
            side_values.append(np.unique(v[v >= 0]))
        return cls(ids[counts >= min_count], side_values, info)

    @property
    def sizes(self) -> list[int]:
        return [len(self.items) + 2] + [len(v) + 2 for v in self.side_values]

    @staticmethod
    def _index(values: np.ndarray, x: np.ndarray) -> np.ndarray:
        if len(values) == 0:
            return np.where(x < 0, PAD, OOV)
        p = np.minimum(np.searchsorted(values, x), len(values) - 1)
        return np.where(x < 0, PAD, np.where(values[p] == x, p + 2, OOV))

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw item ids [...] (-1 = pad) → int64 [..., NUM_FIELDS] (id, category, brand, seller indices)."""
        raw = np.asarray(raw, np.int64)
        out = np.empty(raw.shape + (NUM_FIELDS,), np.int64)
        out[..., 0] = self._index(self.items, raw)
        side, _ = self.info.lookup(raw)
        for j in range(len(SIDE_FIELDS)):
            s = side[..., j]
            idx = self._index(self.side_values[j], s)
            out[..., 1 + j] = np.where(raw < 0, PAD, np.where(s < 0, OOV, idx))
        return out

    def to_table(self) -> pa.Table:
        """One long table ``field, value`` (the on-disk vocab of a model dir; index = position + 2)."""
        fields = ["item_id"] + list(SIDE_FIELDS)
        vals = [self.items] + self.side_values
        return pa.table({"field": pa.array(np.repeat(fields, [len(v) for v in vals]).tolist(), pa.string()),
                         "value": pa.array(np.concatenate(vals).astype(np.int64), pa.int64())})

    @classmethod
    def from_table(cls, t: pa.Table, info: ItemInfo) -> Vocab:
        f = np.asarray(t.column("field").to_pylist(), dtype=object)
        v = t.column("value").to_numpy()
        get = lambda name: np.sort(v[f == name]).astype(np.int64)
        return cls(get("item_id"), [get(s) for s in SIDE_FIELDS], info)


def to_tensors(feat: Features, vocab: Vocab, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Encode features into the model's input tensors."""
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)
    return {
        "cand": t(vocab.encode(feat.cands), torch.long),
        "cand_mask": t(feat.cands >= 0, torch.bool),
        "trig": t(vocab.encode(feat.triggers), torch.long),
        "hit_slot": t(feat.hit_slot, torch.long),
        "hit_dense": t(feat.hit_dense, torch.float32),
        "cross": t(feat.cross, torch.float32),
        "seq": t(vocab.encode(feat.seq), torch.long),
        "profile": t(feat.profile, torch.float32),
    }


# --------------------------------------------------------------------------------------------- model
def mlp(dims: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class SplitLinear(nn.Module):
    """``Linear(concat(parts))`` computed as ``Σ_i W_i·part_i + b`` — identical maths, but per-group parts (the
    attention summary under self-attention, the profile) are projected once per group and broadcast instead of
    being copied to every candidate, and no [G, C, ΣD] concatenation is materialized."""

    def __init__(self, in_dims: list[int], out: int):
        super().__init__()
        self.in_dims = list(in_dims)
        self.lin = nn.Linear(sum(in_dims), out)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out, o = None, 0
        for p, d in zip(parts, self.in_dims):
            y = nn.functional.linear(p, self.lin.weight[:, o:o + d])
            out = y if out is None else out + y
            o += d
        return out + self.lin.bias


class MLPHead(nn.Module):
    """MLP over a concatenation of parts (first layer a :class:`SplitLinear`)."""

    def __init__(self, in_dims: list[int], hidden: list[int], out: int, dropout: float):
        super().__init__()
        self.first = SplitLinear(in_dims, hidden[0] if hidden else out)
        rest: list[nn.Module] = []
        if hidden:
            rest = [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            rest.append(mlp([*hidden, out], dropout))
        self.rest = nn.Sequential(*rest)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.rest(self.first(parts))


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on training features (stored with the weights)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def fit(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        v = x[mask]
        if len(v) > 1:
            self.mean.copy_(v.mean(0))
            self.std.copy_(v.std(0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PRSModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_sizes: list[int], seq_len: int):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.emb = nn.ModuleList([nn.Embedding(n, D, padding_idx=PAD) for n in vocab_sizes])
        self.pos = nn.Embedding(seq_len, D)
        self.hit_norm = Standardize(len(HIT_FEATURES))
        self.cross_norm = Standardize(len(CROSS_FEATURES))
        self.hit_proj = nn.Linear(len(HIT_FEATURES), D)
        self.cross_proj = mlp([len(CROSS_FEATURES), D, D], cfg.dropout)
        self.profile_proj = nn.Linear(len(PROFILE_FEATURES), D)
        self.query = MLPHead([D, D, D], cfg.hidden, D, cfg.dropout)
        self.mha = nn.MultiheadAttention(D, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.head = MLPHead([D, D, D, D, D, D], cfg.hidden, 1, cfg.dropout)
        for e in self.emb:
            nn.init.normal_(e.weight, std=0.05)
            with torch.no_grad():
                e.weight[PAD].zero_()

    def item_emb(self, x: torch.Tensor) -> torch.Tensor:
        """[..., NUM_FIELDS] indices → [..., D] (sum of the field embeddings)."""
        out = self.emb[0](x[..., 0])
        for j in range(1, len(self.emb)):
            out = out + self.emb[j](x[..., j])
        return out

    def hit_mask(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """[G, C, H] hits the trigger feature uses: all (multi), one random per candidate (random), none."""
        mask = b["hit_slot"] >= 0
        mode = self.cfg.trigger_feature
        if mode == "none":
            return torch.zeros_like(mask)
        if mode == "random":
            H = mask.shape[-1]
            r = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
            mask = mask & (torch.arange(H, device=mask.device) == r.argmax(-1, keepdim=True))
        return mask

    def trigger_feature(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """E_trigger [G, C, D]: mean over the used hits h of E_item(trigger_h) + W·x_h.

        Pool first, then project (the mean commutes with the linear map): ``A @ E_item(triggers)`` with A [G, C, L]
        the hit-averaging matrix, so no [G, C, H, D] tensor is formed."""
        G, C, _ = b["hit_slot"].shape
        if self.cfg.trigger_feature == "none":
            return b["cross"].new_zeros(G, C, self.cfg.embed_dim)
        m = self.hit_mask(b).to(b["hit_dense"].dtype)
        n = m.sum(2, keepdim=True)
        inv = 1.0 / n.clamp_min(1.0)
        A = torch.zeros(G, C, b["trig"].shape[1], dtype=m.dtype, device=m.device)
        A.scatter_add_(2, b["hit_slot"].clamp_min(0), m)
        pooled = torch.bmm(A * inv, self.item_emb(b["trig"]))
        x = (self.hit_norm(b["hit_dense"]) * m.unsqueeze(-1)).sum(2) * inv
        return pooled + self.hit_proj(x) * (n > 0).to(x.dtype)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [G, C]; padded candidates get -inf."""
        e_trig = self.trigger_feature(b)
        e_tgt = self.item_emb(b["cand"])
        e_cross = self.cross_proj(self.cross_norm(b["cross"]))
        S = b["seq"].shape[1]
        seq = self.item_emb(b["seq"]) + self.pos.weight[:S]
        pad = b["seq"][..., 0] == PAD  # [G, S]
        empty = pad.all(1)
        if empty.any():  # an empty sequence attends to its first (padding) slot instead of giving NaN
            pad = pad.clone()
            pad[empty, 0] = False
        if self.cfg.attention == "target":
            q = self.query([e_trig, e_tgt, e_cross])
            att, _ = self.mha(q, seq, seq, key_padding_mask=pad, need_weights=False)
        else:  # ablation: self-attention over the sequence, pooled; blind to the candidate
            sa, _ = self.mha(seq, seq, seq, key_padding_mask=pad, need_weights=False)
            w = (~pad).unsqueeze(-1).to(sa.dtype)
            att = ((sa * w).sum(1) / w.sum(1).clamp_min(1.0)).unsqueeze(1)  # [G, 1, D], broadcast
        valid = (~pad).unsqueeze(-1).to(seq.dtype)
        seq_mean = ((seq * valid).sum(1) / valid.sum(1).clamp_min(1.0)).unsqueeze(1)  # [G, 1, D]
        prof = self.profile_proj(b["profile"]).unsqueeze(1)  # [G, 1, D]
        logit = self.head([att, seq_mean, prof, e_trig, e_tgt, e_cross]).squeeze(-1)
        return logit.masked_fill(~b["cand_mask"], float("-inf"))

    @torch.no_grad()
    def fit_normalizers(self, b: dict[str, torch.Tensor]) -> None:
        self.hit_norm.fit(b["hit_dense"], b["hit_slot"] >= 0)
        self.cross_norm.fit(b["cross"], b["cand_mask"])


def softmax_loss(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 12: -log softmax of the positive (slot 0) against the sample's (masked) negatives, batch mean."""
    return -torch.log_softmax(logits, -1)[:, 0].mean()


def positive_rank(logits: torch.Tensor) -> torch.Tensor:
    """0-based rank of the positive among its sample's candidates (ties count against it)."""
    return (logits[:, 1:] >= logits[:, :1]).sum(1)
