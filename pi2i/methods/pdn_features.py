"""PDN inputs (pdn.txt §4.2): the four feature fields, discretised into one-hot codes, for training and serving.

One *group* is a user at one point of the click sequence (training: just before a target; serving: the end of
the history), with reference time ``T`` = the group's last click. From the clicks before that point:

* **user field** ``z_u``: history-length bucket and the categories of the last ``S`` clicks (mean-pooled);
* **triggers** ``j``: the last ``L`` distinct items, most recent first (the PI2I sampler's trigger list), each
  with its **behaviour field** ``a_uj``: click-count bucket, recency position, age bucket and the bit mask of the
  non-click behaviours (cart/fav/buy) ``u`` did on ``j`` before ``T`` (from the train events);
* **item field** ``x``: id (vocabulary, 0 = out of vocabulary), category, brand, seller, price bucket,
  popularity bucket — the same codes for triggers and targets;
* **paths** ``(j, i)``: one per candidate ``i`` that the Swing row of trigger ``j`` holds, with the
  **co-occurrence field** ``c_ji``: Swing-score quantile bucket, log2 rank bucket, score-relative-to-row-best
  bucket. A candidate outside every trigger's row has no 2-hop path;
* **bias field** (training only, §4.5): hour of day and day of week of ``T`` and the session depth (clicks since
  the last 30-minute gap) — the selection-bias features this data has (no display positions are logged).

Everything is plain int64 numpy arrays (:class:`PDNBatch`); :class:`Featurizer` holds the lookup tables and is
saved with the model so serving encodes exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np
import pyarrow as pa

from pi2i.contracts import BEHAVIORS, join, read_json, read_parquet, write_json, write_parquet
from pi2i.ibs.i2i import I2IIndex
from pi2i.methods.item_features import ItemCodes
from pi2i.methods.ranking import item_codes

NON_CLICK: tuple[str, ...] = tuple(b for b in BEHAVIORS if b != "click")  # bits of the behaviour mask
AGE_BUCKETS, LEN_BUCKETS, COUNT_BUCKETS = 16, 16, 9
RANK_BUCKETS, REL_BUCKETS, HOURS, DAYS, DEPTH_BUCKETS = 16, 11, 24, 7, 8
SESSION_GAP_US = 30 * 60 * 1_000_000
_US_PER_HOUR = 3_600_000_000
NEVER = np.iinfo(np.int64).max
FEATURIZER_FILE, ITEM_CODES_FILE, BEHAVIOR_FILE = "pdn_features.json", "pdn_items.parquet", "pdn_behaviors.parquet"


@dataclass
class PDNBatch:
    """Model inputs of ``G`` groups, ``L`` trigger slots, ``C`` candidate slots and ``P`` paths."""

    user_len: np.ndarray  # (G,) history-length bucket
    user_cats: np.ndarray  # (G, S) category codes of the last S clicks, 0 = pad
    trig_items: np.ndarray  # (G, L) raw ids, -1 = pad
    trig_x: np.ndarray  # (G, L, 6) item-field codes
    trig_a: np.ndarray  # (G, L, 4) behaviour-field codes: count, position, age, behaviour mask
    cand_items: np.ndarray  # (G, C) raw ids, -1 = pad
    cand_x: np.ndarray  # (G, C, 6)
    path_g: np.ndarray  # (P,) group
    path_l: np.ndarray  # (P,) trigger slot
    path_c: np.ndarray  # (P,) candidate slot
    path_cji: np.ndarray  # (P, 3) co-occurrence codes: score bucket, rank bucket, relative-score bucket
    bias: np.ndarray  # (G, 3) hour, day of week, session depth bucket


# --------------------------------------------------------------------------------------------- kernels
@nb.njit(cache=True, parallel=True)
def _context_kernel(items, ts, lo, hi, L, S, trig, count, last_ts, hist, hist_len, depth):  # pragma: no cover
    """Per group: last L distinct items of items[lo:hi] (most recent first) with click count and latest ts;
    last S clicks (most recent first); history length; session depth at the end."""
    for g in nb.prange(len(lo)):
        a, b = lo[g], hi[g]
        hist_len[g] = b - a
        n = 0
        for p in range(b - 1, a - 1, -1):
            x = items[p]
            dup = -1
            for q in range(n):
                if trig[g, q] == x:
                    dup = q
                    break
            if dup >= 0:
                count[g, dup] += 1
            elif n < L:
                trig[g, n] = x
                count[g, n] = 1
                last_ts[g, n] = ts[p]
                n += 1
        for s in range(min(S, b - a)):
            hist[g, s] = items[b - 1 - s]
        d = 0
        for p in range(b - 1, a, -1):
            if ts[p] - ts[p - 1] > 1_800_000_000:
                break
            d += 1
        depth[g] = d


@nb.njit(cache=True, parallel=True)
def _paths_kernel(trig_rows, cands, indptr, s_targets, s_scores, s_ranks, count_only, offs,
                  out_g, out_l, out_c, out_score, out_rank, out_row):  # pragma: no cover
    """For every (group, trigger slot, candidate slot) whose trigger row holds the candidate: one path.
    Per group a merge join of the sorted candidates with each trigger row (sorted by target). The count pass
    writes ``offs[g + 1]`` = paths of group g; the fill pass writes from ``offs[g]`` (prefix-summed)."""
    G, L = trig_rows.shape
    C = cands.shape[1]
    for g in nb.prange(G):
        order = np.argsort(cands[g])
        k = offs[g]
        n = 0
        for t in range(L):
            r = trig_rows[g, t]
            if r < 0:
                continue
            j, b = indptr[r], indptr[r + 1]
            for q in range(C):
                c = order[q]
                x = cands[g, c]
                if x < 0:
                    continue
                while j < b and s_targets[j] < x:
                    j += 1
                if j == b:
                    break
                if s_targets[j] == x:
                    if not count_only:
                        out_g[k + n] = g
                        out_l[k + n] = t
                        out_c[k + n] = c
                        out_score[k + n] = s_scores[j]
                        out_rank[k + n] = s_ranks[j]
                        out_row[k + n] = r
                    n += 1
        if count_only:
            offs[g + 1] = n


# --------------------------------------------------------------------------------------------- featurizer
@dataclass
class Featurizer:
    """Lookup tables turning raw ids, times and Swing rows into :class:`PDNBatch` codes."""

    item_ids: np.ndarray  # (n,) sorted raw ids known to the tables
    item_x: np.ndarray  # (n, 6) item-field codes (0 = unknown)
    vocab_sizes: dict[str, int]  # embedding table sizes of every coded feature
    score_edges: np.ndarray  # Swing-score quantile edges
    num_triggers: int  # L
    seq_len: int  # S
    dedup_consecutive: bool
    beh_keys: np.ndarray  # (m,) sorted (user code, item code) keys of the behaviour table
    beh_users: np.ndarray  # sorted user ids of the behaviour table
    beh_first: np.ndarray  # (m, len(NON_CLICK)) first µs of each non-click behaviour, NEVER when none

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, items: pa.Table, popularity: pa.Table, clicked: np.ndarray, events: pa.Table | None,
              index: I2IIndex, num_triggers: int, seq_len: int, dedup_consecutive: bool, min_count: int,
              score_buckets: int) -> Featurizer:
        """Vocabularies from the training data: ``clicked`` (training users' clicks) for the id vocabulary,
        ``items`` for side info, ``popularity`` for popularity buckets, ``events`` for behaviour masks."""
        codes = ItemCodes.build(items, popularity, clicked, min_count, [index.triggers, index.targets])
        ids_all, x, sizes = codes.item_ids, codes.x, dict(codes.sizes)
        q = np.linspace(0, 1, score_buckets + 1)[1:-1]
        score_edges = np.unique(np.quantile(index.scores, q)) if len(index.scores) else np.zeros(0)
        sizes.update(score=len(score_edges) + 1, rank=RANK_BUCKETS, rel=REL_BUCKETS, count=COUNT_BUCKETS,
                     position=num_triggers, age=AGE_BUCKETS, behavior=2 ** len(NON_CLICK), length=LEN_BUCKETS,
                     hour=HOURS, day=DAYS, depth=DEPTH_BUCKETS)
        beh_users, beh_keys, beh_first = _behavior_table(events, ids_all)
        return cls(ids_all, x, sizes, score_edges.astype(np.float64), num_triggers, seq_len, dedup_consecutive,
                   beh_keys, beh_users, beh_first)

    # ------------------------------------------------------------------ encode
    def item_x_of(self, items: np.ndarray) -> np.ndarray:
        """(..., 6) item-field codes of raw ids (pads and unknown items: zeros)."""
        return ItemCodes(self.item_ids, self.item_x, self.vocab_sizes).lookup(items)

    def cji(self, score: np.ndarray, rank: np.ndarray, row_top: np.ndarray) -> np.ndarray:
        """Co-occurrence codes (P, 3) of Swing entries: score quantile, log2 rank, score / row's best."""
        rel = np.where(row_top > 0, score / np.maximum(row_top, 1e-30), 0.0)
        return np.stack([np.searchsorted(self.score_edges, score, side="right"),
                         np.minimum(np.floor(np.log2(np.maximum(rank, 1))), RANK_BUCKETS - 1),
                         np.minimum(np.floor(rel * 10.0), REL_BUCKETS - 1)], -1).astype(np.int64)

    def behavior_mask(self, users: np.ndarray, items: np.ndarray, t_ref: np.ndarray) -> np.ndarray:
        """Bit mask of the non-click behaviours of ``users[x]`` on ``items[x]`` at or before ``t_ref[x]``."""
        out = np.zeros(len(users), np.int64)
        if not len(self.beh_keys) or not len(users):
            return out
        uc = item_codes(self.beh_users, users)
        ic = item_codes(self.item_ids, items)
        key = uc * np.int64(len(self.item_ids) + 1) + ic
        at = np.minimum(np.searchsorted(self.beh_keys, key), len(self.beh_keys) - 1)
        hit = (uc >= 0) & (ic >= 0) & (self.beh_keys[at] == key)
        for bit in range(len(NON_CLICK)):
            out |= (hit & (self.beh_first[at, bit] <= t_ref)).astype(np.int64) << bit
        return out

    def groups(self, items: np.ndarray, ts: np.ndarray, lo: np.ndarray, hi: np.ndarray, users: np.ndarray,
               cands: np.ndarray, index: RowIndex) -> PDNBatch:
        """Features of groups ``items[lo[g]:hi[g]]`` (oldest first) of ``users[g]`` against candidate slots
        ``cands`` (G, C) (raw ids, -1 pad), paths from the Swing rows of ``index``."""
        G, L, S = len(lo), self.num_triggers, self.seq_len
        trig = np.full((G, L), -1, np.int64)
        count = np.zeros((G, L), np.int64)
        last = np.zeros((G, L), np.int64)
        hist = np.full((G, S), -1, np.int64)
        hist_len = np.zeros(G, np.int64)
        depth = np.zeros(G, np.int64)
        items = np.asarray(items, np.int64)
        ts = np.asarray(ts, np.int64)
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        _context_kernel(items, ts, lo, hi, L, S, trig, count, last, hist, hist_len, depth)
        t_ref = np.where(hi > lo, ts[np.maximum(hi - 1, 0)] if len(ts) else 0, 0)
        valid = trig >= 0
        age_h = np.maximum(t_ref[:, None] - last, 0) / _US_PER_HOUR
        age = np.minimum(np.floor(np.log2(1.0 + age_h)), AGE_BUCKETS - 1).astype(np.int64)
        beh = np.zeros((G, L), np.int64)
        gi, li = np.nonzero(valid)
        beh[gi, li] = self.behavior_mask(np.asarray(users, np.int64)[gi], trig[gi, li], t_ref[gi])
        trig_a = np.stack([np.minimum(count, COUNT_BUCKETS - 1), np.broadcast_to(np.arange(L), (G, L)),
                           age, beh], -1) * valid[..., None]
        hcat = self.item_x_of(hist)[..., 1] * (hist >= 0)
        cands = np.asarray(cands, np.int64)
        pg, pl, pc, score, rank, row = index.paths(trig, cands)
        cji = self.cji(score, rank, index.row_top[row])
        hour = (t_ref // _US_PER_HOUR) % HOURS
        day = (t_ref // (24 * _US_PER_HOUR) + 4) % DAYS  # 1970-01-01 was a Thursday
        dep = np.minimum(np.floor(np.log2(1.0 + depth)), DEPTH_BUCKETS - 1).astype(np.int64)
        return PDNBatch(
            user_len=np.minimum(np.floor(np.log2(1.0 + hist_len)), LEN_BUCKETS - 1).astype(np.int64),
            user_cats=hcat, trig_items=trig, trig_x=self.item_x_of(trig) * valid[..., None], trig_a=trig_a,
            cand_items=cands, cand_x=self.item_x_of(cands) * (cands >= 0)[..., None],
            path_g=pg, path_l=pl, path_c=pc, path_cji=cji, bias=np.stack([hour, day, dep], -1).astype(np.int64))

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str) -> None:
        ItemCodes(self.item_ids, self.item_x, self.vocab_sizes).save(join(out_dir, ITEM_CODES_FILE))
        bu = self.beh_keys // np.int64(len(self.item_ids) + 1)
        bi = self.beh_keys % np.int64(len(self.item_ids) + 1)
        beh = {"user_id": pa.array(self.beh_users[bu] if len(bu) else bu, pa.int64()),
               "item_id": pa.array(self.item_ids[bi] if len(bi) else bi, pa.int64())}
        beh.update({f"first_{b}": pa.array(self.beh_first[:, k], pa.int64()) for k, b in enumerate(NON_CLICK)})
        write_parquet(pa.table(beh), join(out_dir, BEHAVIOR_FILE))
        write_json({"vocab_sizes": self.vocab_sizes, "score_edges": self.score_edges.tolist(),
                    "num_triggers": self.num_triggers, "seq_len": self.seq_len,
                    "dedup_consecutive": self.dedup_consecutive}, join(out_dir, FEATURIZER_FILE))

    @classmethod
    def load(cls, model_dir: str) -> Featurizer:
        meta = read_json(join(model_dir, FEATURIZER_FILE))
        codes = ItemCodes.load(join(model_dir, ITEM_CODES_FILE), meta["vocab_sizes"])
        ids, x = codes.item_ids, codes.x
        b = read_parquet(join(model_dir, BEHAVIOR_FILE))
        first = np.stack([b.column(f"first_{n}").to_numpy().astype(np.int64) for n in NON_CLICK], -1) \
            if b.num_rows else np.zeros((0, len(NON_CLICK)), np.int64)
        users, keys, first = _keyed(b.column("user_id").to_numpy().astype(np.int64),
                                    b.column("item_id").to_numpy().astype(np.int64), first, ids)
        return cls(ids, x, dict(meta["vocab_sizes"]),
                   np.asarray(meta["score_edges"], np.float64), int(meta["num_triggers"]), int(meta["seq_len"]),
                   bool(meta["dedup_consecutive"]), keys, users, first)


def _behavior_table(events: pa.Table | None, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, keys, first µs per non-click behaviour) of every (user, item) with such a behaviour."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(NON_CLICK)), np.int64))
    if events is None or events.num_rows == 0:
        return empty
    from pi2i.data.events import clicks, event_arrays

    us, its, tss, bits = [], [], [], []
    for k, b in enumerate(NON_CLICK):
        u, i, t = event_arrays(clicks(events, [b]))
        us.append(u)
        its.append(i)
        tss.append(t)
        bits.append(np.full(len(u), k, np.int64))
    u, i, t, bit = (np.concatenate(a) for a in (us, its, tss, bits))
    if not len(u):
        return empty
    return _keyed(u, i, None, item_ids, t, bit)


def _keyed(u: np.ndarray, i: np.ndarray, first: np.ndarray | None, item_ids: np.ndarray,
           t: np.ndarray | None = None, bit: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key the behaviour table by (user code, item code in ``item_ids``); from raw events when ``t``/``bit``
    are given (first time per behaviour), else re-key an existing ``first`` table."""
    known = item_codes(item_ids, i) >= 0
    u, i = u[known], i[known]
    if first is not None:
        first = first[known]
    else:
        assert t is not None and bit is not None
        t, bit = t[known], bit[known]
    users = np.unique(u)
    key = item_codes(users, u) * np.int64(len(item_ids) + 1) + item_codes(item_ids, i)
    keys, inv = np.unique(key, return_inverse=True)
    out = np.full((len(keys), len(NON_CLICK)), NEVER, np.int64)
    if first is not None:
        out[inv] = first
    elif bit is not None and t is not None:
        np.minimum.at(out, (inv, bit), t)
    return users, keys, out


@dataclass(frozen=True)
class RowIndex:
    """An i2i index with every row also sorted by target id (O(log T) "does row r hold i" for the paths)."""

    index: I2IIndex
    s_targets: np.ndarray
    s_scores: np.ndarray
    s_ranks: np.ndarray
    row_top: np.ndarray

    @classmethod
    def build(cls, index: I2IIndex) -> RowIndex:
        """PI2I's per-row target-sorted lookup (:class:`pi2i.prs.candidates.RowLookup`), widened for the kernels."""
        from pi2i.prs.candidates import RowLookup

        lk = RowLookup.build(index)
        return cls(index, lk.s_targets, lk.s_scores.astype(np.float64), lk.s_ranks.astype(np.int64),
                   lk.row_top.astype(np.float64))

    def paths(self, trig: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, ...]:
        """(group, trigger slot, candidate slot, score, rank, row) of every path trigger -> candidate."""
        rows = np.where(trig >= 0, self.index.row_ids(trig.ravel()).reshape(trig.shape), -1)
        G = len(trig)
        offs = np.zeros(G + 1, np.int64)
        e = np.zeros(0, np.int64)
        ef = np.zeros(0, np.float64)
        _paths_kernel(rows, cands, self.index.indptr, self.s_targets, self.s_scores, self.s_ranks, True, offs,
                      e, e, e, ef, e, e)
        np.cumsum(offs, out=offs)
        n = int(offs[-1])
        out_g, out_l, out_c, out_rank, out_row = (np.zeros(n, np.int64) for _ in range(5))
        out_score = np.zeros(n, np.float64)
        _paths_kernel(rows, cands, self.index.indptr, self.s_targets, self.s_scores, self.s_ranks, False, offs,
                      out_g, out_l, out_c, out_score, out_rank, out_row)
        return out_g, out_l, out_c, out_score, out_rank, out_row


def candidate_columns(n_cols: int, hard: int, negatives: int) -> np.ndarray:
    """Columns of a samples ``cands`` matrix ([positive, hard…, easy…]) to keep: the positive and the first
    ``negatives`` negatives split in the samples' hard:easy ratio (the sampler draws in random order, so a
    prefix is a random subset). ``negatives = 0`` keeps every column."""
    if negatives <= 0 or negatives >= n_cols - 1:
        return np.arange(n_cols)
    hard = min(hard, n_cols - 1)
    n_hard = round(negatives * hard / (n_cols - 1))
    return np.concatenate([[0], 1 + np.arange(n_hard), 1 + hard + np.arange(negatives - n_hard)]).astype(np.int64)


def sample_batch(ss: Any, feat: Featurizer, rows: RowIndex, idx: np.ndarray,
                 columns: np.ndarray | None = None) -> PDNBatch:
    """The groups of samples ``idx``: context = the user's clicks before the target position; candidates = the
    sample's ``columns`` (default all)."""
    idx = np.sort(np.asarray(idx, np.int64))
    u = np.asarray(ss.user[idx]).astype(np.int64)
    ptr = np.asarray(ss.clicks.user_ptr)
    cands = np.asarray(ss.cands[idx]).astype(np.int64)
    if columns is not None:
        cands = cands[:, columns]
    return feat.groups(np.asarray(ss.clicks.items), np.asarray(ss.clicks.ts), ptr[u],
                       np.asarray(ss.pos[idx]).astype(np.int64), np.asarray(ss.clicks.user_ids)[u], cands, rows)
