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
from typing import cast

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pi2i.config import ModelConfig
from pi2i.ids import IdPositions
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

    def _encode_slow(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, np.int64)
        out = np.empty(raw.shape + (NUM_FIELDS,), np.int64)
        out[..., 0] = self._index(self.items, raw)
        side, _ = self.info.lookup(raw)
        for j in range(len(SIDE_FIELDS)):
            s = side[..., j]
            idx = self._index(self.side_values[j], s)
            out[..., 1 + j] = np.where(raw < 0, PAD, np.where(s < 0, OOV, idx))
        return out

    def _table(self) -> tuple[IdPositions, np.ndarray]:
        """Every item the vocabulary or the side info knows, sorted, with its encoded row (built once)."""
        tab = self.__dict__.get("_tab")
        if tab is None:
            ids = np.union1d(self.items, self.info.item_ids).astype(np.int64)
            tab = (IdPositions(ids), self._encode_slow(ids))
            self.__dict__["_tab"] = tab
        return tab

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw item ids [...] (-1 = pad) → int64 [..., NUM_FIELDS] (id, category, brand, seller indices): one
        lookup (:class:`pi2i.ids.IdPositions`) into a table encoded once (an item neither clicked nor described is
        OOV everywhere)."""
        raw = np.asarray(raw, np.int64)
        positions, rows = self._table()
        if len(rows) == 0:
            return self._encode_slow(raw)
        p = positions(raw)
        out = rows[np.maximum(p, 0)]
        miss = p < 0
        if miss.any():
            out[miss] = np.where((raw[miss] < 0)[:, None], PAD, OOV)
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
    """Encode features into the model's input tensors. Candidates come as ``cand`` [G, C] indices into
    ``items`` [U, NUM_FIELDS], the batch's distinct candidate items: an item drawn by many samples of a batch is
    embedded (and projected) once. Trailing columns that are padding in every group are trimmed, of the
    candidates and of the sequences (most recent first: a batch of short histories attends over few keys)."""
    cands = feat.cands
    valid = cands >= 0
    cols = np.flatnonzero(valid.any(0))
    width = int(cols[-1]) + 1 if len(cols) else min(1, cands.shape[1])
    sl = slice(0, width)
    seq_len = max(1, int((feat.seq >= 0).sum(1).max(initial=0)))  # one slot at least: an empty history
    uniq, inv = np.unique(cands[:, sl], return_inverse=True)
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)
    return {
        "items": t(vocab.encode(uniq), torch.long),
        "cand": t(inv.reshape(len(cands), width), torch.long),
        "cand_mask": t(valid[:, sl], torch.bool),
        "trig": t(vocab.encode(feat.triggers), torch.long),
        "hit_slot": t(feat.hit_slot[:, sl], torch.long),
        "hit_dense": t(feat.hit_dense[:, sl], torch.float32),
        "cross": t(feat.cross[:, sl], torch.float32),
        "seq": t(vocab.encode(feat.seq[:, :seq_len]), torch.long),
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
        out: torch.Tensor = self.lin.bias
        o = 0
        for p, d in zip(parts, self.in_dims):
            out = out + nn.functional.linear(p, self.lin.weight[:, o:o + d])
            o += d
        return out


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

    mean: torch.Tensor
    std: torch.Tensor

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
            assert isinstance(e, nn.Embedding)
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
        """Logits [G, C]; padded candidates get -inf.

        Eq. 8–11 exactly, computed in an order that does each piece of work once. Linear maps that follow each
        other are applied as their product (so per candidate only one of them runs): the target embedding,
        the pooled trigger embedding, the per-hit inputs and the cross MLP's output reach the first layers of
        the query MLP and of the head only through ``W_first·W``; ``E_item`` of a target is projected once
        per distinct item of the batch and of a trigger once per group; the query MLP's last layer is merged
        with the attention's query projection, the attention's output projection with the head's first layer;
        per-group parts (sequence mean, profile) are projected once per group."""
        if self.cfg.attention != "target":
            return self._forward_self_attention(b)
        D = self.cfg.embed_dim
        wq, wh = self.query.first.lin.weight, self.head.first.lin.weight  # [Hq, 3D] over (trig, tgt, cross)
        hq = wq.shape[0]  # [Hh, 6D] over (att, seq_mean, profile, trig, tgt, cross)
        w_trig = torch.cat([wq[:, :D], wh[:, 3 * D:4 * D]])  # [Hq+Hh, D]: E_trigger's columns of both layers
        w_tgt = torch.cat([wq[:, D:2 * D], wh[:, 4 * D:5 * D]])
        w_cross = torch.cat([wq[:, 2 * D:], wh[:, 5 * D:]])
        cross_out = cast(nn.Linear, self.cross_proj[-1])  # E_cross = cross_out(z)
        z = self.cross_proj[:-1](self.cross_norm(b["cross"]))  # [G, C, D]
        bias = torch.cat([self.query.first.lin.bias, self.head.first.lin.bias]) + w_cross @ cross_out.bias
        # the per-candidate pre-activations [G, C, Hq+Hh] are the batch's largest tensors: each is written once and
        # updated in place (mm and baddbmm keep their inputs, not their outputs, for the backward pass), and the
        # bias rides on the per-item target table instead of a pass over every candidate
        target = self.item_emb(b["items"]) @ w_tgt.t() + bias  # [U, Hq+Hh]: W·E_item(x) + bias per distinct item
        if self.cfg.trigger_feature == "none":
            pre = z @ (w_cross @ cross_out.weight).t()
        else:
            # E_trigger = mean over used hits of E_item(trigger) + W_hit·standardize(x): the mean commutes with
            # the affine maps, so pool the raw per-hit inputs and A·(W·E_item(triggers)) instead (A [G, C, L])
            m = self.hit_mask(b).to(b["hit_dense"].dtype)
            n = m.sum(2, keepdim=True)
            inv = 1.0 / n.clamp_min(1.0)
            has = (n > 0).to(m.dtype)
            x = self.hit_norm((b["hit_dense"] * m.unsqueeze(-1)).sum(2) * inv) * has  # [G, C, 5]
            dense = torch.cat([x, has, z], -1)
            w_dense = torch.cat([w_trig @ self.hit_proj.weight, (w_trig @ self.hit_proj.bias).unsqueeze(1),
                                 w_cross @ cross_out.weight], 1)
            pre = dense @ w_dense.t()  # [G, C, Hq+Hh]; matmul's result is no view: in-place is cheap
            A = torch.zeros(*b["cand"].shape, b["trig"].shape[1], dtype=m.dtype, device=m.device)
            A.scatter_add_(2, b["hit_slot"].clamp_min(0), m)
            trig_proj = self.item_emb(b["trig"]) @ w_trig.t()  # [G, L, Hq+Hh]
            pre = pre.baddbmm_(A * inv, trig_proj)
        pre = pre.add_(nn.functional.embedding(b["cand"], target))
        pre_q, pre_h = pre.split([hq, pre.shape[-1] - hq], -1)  # split: its backward concatenates, no zero fill
        seq, pad, valid = self._sequence(b)
        group = self._group_part(seq, valid, b["profile"], wh, D)  # [G, Hh]
        # Eq. 9–10: the query MLP's last layer merged with the attention's query projection
        last = self._last_linear(self.query)
        h = self._before_last(self.query, pre_q)
        w_in, b_in = self.mha.in_proj_weight, self.mha.in_proj_bias
        F = nn.functional
        q = F.linear(h, w_in[:D] @ last.weight, w_in[:D] @ last.bias + b_in[:D])
        k = F.linear(seq, w_in[D:2 * D], b_in[D:2 * D])
        v = F.linear(seq, w_in[2 * D:], b_in[2 * D:])
        nh = self.mha.num_heads
        heads = lambda t: t.unflatten(-1, (nh, D // nh)).transpose(1, 2)  # [G, nh, *, D/nh]
        o = F.scaled_dot_product_attention(
            heads(q), heads(k), heads(v), attn_mask=(~pad)[:, None, None, :],
            dropout_p=self.mha.dropout if self.training else 0.0).transpose(1, 2).flatten(2)  # [G, C, D]
        # Eq. 11: the attention's output projection merged with the head's first layer
        w_att = wh[:, :D]
        out_proj = self.mha.out_proj
        h = (pre_h + (group + w_att @ out_proj.bias).unsqueeze(1)).baddbmm_(
            o, (w_att @ out_proj.weight).t().expand(len(o), D, -1))
        logit = self.head.rest(h).squeeze(-1)
        return logit.masked_fill(~b["cand_mask"], float("-inf"))

    @staticmethod
    def _last_linear(head: MLPHead) -> nn.Linear:
        return cast(nn.Linear, cast(nn.Sequential, head.rest[-1])[-1])

    @staticmethod
    def _before_last(head: MLPHead, x: torch.Tensor) -> torch.Tensor:
        """``head.rest`` up to (not including) its last linear layer."""
        rest = list(head.rest.children())
        for mod in rest[:-1] + list(cast(nn.Sequential, rest[-1]).children())[:-1]:
            x = mod(x)
        return x

    def _sequence(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E_item(seq) + E_pos [G, S, D], the padding mask [G, S] and its float complement [G, S, 1]."""
        S = b["seq"].shape[1]
        seq = self.item_emb(b["seq"]) + self.pos.weight[:S]
        pad = b["seq"][..., 0] == PAD
        empty = pad.all(1)
        if empty.any():  # an empty sequence attends to its first (padding) slot instead of giving NaN
            pad = pad.clone()
            pad[empty, 0] = False
        return seq, pad, (~pad).unsqueeze(-1).to(seq.dtype)

    def _group_part(self, seq, valid, profile, wh, D: int) -> torch.Tensor:
        """The head's first layer on the per-group parts (sequence mean, profile) plus its bias, [G, Hh]."""
        seq_mean = (seq * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        prof = self.profile_proj(profile)
        return seq_mean @ wh[:, D:2 * D].t() + prof @ wh[:, 2 * D:3 * D].t()

    def _forward_self_attention(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Ablation: self-attention over the sequence, mean-pooled — blind to the candidate."""
        e_trig = self.trigger_feature(b)
        e_tgt = nn.functional.embedding(b["cand"], self.item_emb(b["items"]))
        e_cross = self.cross_proj(self.cross_norm(b["cross"]))
        seq, pad, valid = self._sequence(b)
        sa, _ = self.mha(seq, seq, seq, key_padding_mask=pad, need_weights=False)
        att = ((sa * valid).sum(1) / valid.sum(1).clamp_min(1.0)).unsqueeze(1)  # [G, 1, D], broadcast
        seq_mean = ((seq * valid).sum(1) / valid.sum(1).clamp_min(1.0)).unsqueeze(1)
        prof = self.profile_proj(b["profile"]).unsqueeze(1)
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
