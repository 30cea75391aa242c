"""Trigger–target features of PRS: ONE feature path for training, evaluation and serving (PI2I §3.2).

A *group* is one point in a user's click sequence: in training the position just before a target, at serving
the end of the user's history. From the clicks before that point the same compiled helpers take

* the **triggers**: the last ``L`` distinct items, most recent first, each with its age;
* the **behaviour sequence**: the last ``S`` clicks, most recent first;

and, for every candidate item of the group,

* the **multi-value trigger feature**: every trigger whose i2i row holds the candidate (most recent first, up to
  ``H`` kept), with the Swing score, the score relative to the row's best, the rank, and the trigger's position
  and age;
* the **cross features** (:data:`CROSS_FEATURES`) over *all* hitting triggers plus side information.

A candidate's features depend only on the group and the candidate itself — never on which other candidates are
scored beside it — so a candidate sampled for training and the same candidate in the serving pool get
bit-identical inputs (``tests/test_prs.py`` checks it). Serving candidates are the union of the
triggers' rows (:func:`candidate_union`); training picks the positive and sampled negatives from that same union
(:mod:`pi2i.prs.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba as nb
import numpy as np
import pyarrow as pa

from pi2i.data.events import drop_consecutive_repeats, rows_of
from pi2i.ibs.i2i import I2IIndex
from pi2i.ids import IdPositions

#: Per-hit dense inputs of the multi-value trigger feature.
HIT_FEATURES: tuple[str, ...] = ("score", "rel_score", "log_rank", "pos", "log_age_h")
#: Per-candidate cross features (trigger–target interactions and side-info comparisons).
CROSS_FEATURES: tuple[str, ...] = (
    "log_n_hits", "log_best_rank", "inv_best_rank", "max_score", "sum_score", "max_rel_score",
    "sum_rel_score", "min_pos", "log_min_age_h", "hit_by_recent", "same_cat_recent", "same_cat_any",
    "price_known", "log_price_ratio", "is_trigger", "log_popularity",
)
#: Per-group profile inputs (the user side beyond the sequence).
#: (No pool-size input: a training sample sees ~1+hard+easy candidates, serving the whole union.)
PROFILE_FEATURES: tuple[str, ...] = ("log_history_len", "log_num_triggers")
SIDE_FIELDS: tuple[str, ...] = ("category_id", "brand_id", "seller_id")
_US_PER_HOUR = 3.6e9


# --------------------------------------------------------------------------------------------- i2i lookups
@dataclass(frozen=True)
class RowLookup:
    """The i2i index with every row also sorted by target id: "does row r hold item x" by binary search, or for
    many sorted candidates at once by a merge (the features kernel)."""

    index: I2IIndex
    s_targets: np.ndarray  # int64, per row sorted by target
    s_scores: np.ndarray  # float32, aligned with s_targets
    s_ranks: np.ndarray  # int32, aligned with s_targets
    row_top: np.ndarray  # float32, best score of each row (for the relative score)
    log_rank: np.ndarray  # float64 [max rank + 1]: log(r) (index 0 unused)

    @classmethod
    def build(cls, index: I2IIndex) -> RowLookup:
        lens = np.diff(index.indptr)
        row_of = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
        order = np.lexsort((index.targets, row_of))
        top = np.zeros(len(lens), np.float32)
        nz = lens > 0
        if nz.any():
            top[nz] = np.maximum.reduceat(index.scores, index.indptr[:-1][nz])
        max_rank = int(index.ranks.max()) if len(index.ranks) else 0
        with np.errstate(divide="ignore"):
            log_rank = np.log(np.arange(max(max_rank, 0) + 1, dtype=np.float64))
        return cls(index, index.targets[order], index.scores[order], index.ranks[order], top, log_rank)

    def rows(self, items: np.ndarray) -> np.ndarray:
        """i2i row id of each item, -1 where it has none (pads, ``-1``, stay -1)."""
        items = np.asarray(items, np.int64)
        r = self.index.row_ids(items.ravel()).reshape(items.shape)
        return np.where(items < 0, -1, r)


# --------------------------------------------------------------------------------------------- side info
@dataclass(frozen=True)
class ItemInfo:
    """Item side information as sorted arrays: raw category/brand/seller id (-1 unknown), price (NaN) and the
    item's training click count as log(1 + count) (0 unknown) — the popularity prior the scorer needs to rank a
    pool at least as well as popularity does."""

    item_ids: np.ndarray  # int64 sorted
    side: np.ndarray  # int64 [n, 3] raw ids of SIDE_FIELDS, -1 unknown
    price: np.ndarray  # float64 [n], NaN unknown
    log_pop: np.ndarray | None = None  # float32 [n], log1p(click count); None = no popularity known

    @classmethod
    def from_table(cls, table: pa.Table | None, popularity: pa.Table | None = None) -> ItemInfo:
        """From ``items.parquet`` (side info) and ``popularity.parquet`` (item_id, count), either may be None."""
        if table is None or table.num_rows == 0:
            ids = np.empty(0, np.int64)
            side, price = np.empty((0, 3), np.int64), np.empty(0, np.float64)
        else:
            ids = table.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64)
            order = np.argsort(ids, kind="stable")
            ids = ids[order]
            keep = np.ones(len(ids), bool)
            keep[1:] = ids[1:] != ids[:-1]
            side = np.full((len(ids), 3), -1, np.int64)
            for j, f in enumerate(SIDE_FIELDS):
                if f in table.column_names:
                    col = table.column(f).cast(pa.int64()).fill_null(-1).to_numpy().astype(np.int64)
                    side[:, j] = col[order]
            price = np.full(len(ids), np.nan)
            if "price" in table.column_names:
                price = table.column("price").cast(pa.float64()).fill_null(np.nan).to_numpy()[order].astype(
                    np.float64)
            ids, side, price = ids[keep], side[keep], price[keep]
        if popularity is None or popularity.num_rows == 0:
            return cls(ids, side, price)
        pid = popularity.column("item_id").to_numpy().astype(np.int64)
        cnt = popularity.column("count").to_numpy().astype(np.float64)
        all_ids = np.union1d(ids, pid)
        at = np.searchsorted(all_ids, ids)
        side2 = np.full((len(all_ids), 3), -1, np.int64)
        side2[at] = side
        price2 = np.full(len(all_ids), np.nan)
        price2[at] = price
        log_pop = np.zeros(len(all_ids), np.float32)
        log_pop[np.searchsorted(all_ids, pid)] = np.log1p(cnt)
        return cls(all_ids, side2, price2, log_pop)

    @cached_property
    def _positions(self) -> IdPositions:
        return IdPositions(self.item_ids)

    def _find(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each item, clamped to a valid one; whether the item has a row)."""
        pos = self._positions(np.asarray(items, np.int64).ravel())
        return np.maximum(pos, 0), pos >= 0

    def lookup(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(side [..., 3] int64 with -1 unknown, price [...] with NaN unknown) of raw item ids (-1 = pad)."""
        items = np.asarray(items, np.int64)
        if len(self.item_ids) == 0:
            return np.full(items.shape + (3,), -1, np.int64), np.full(items.shape, np.nan)
        pos, found = self._find(items)
        side = np.where(found[:, None], self.side[pos], -1)
        price = np.where(found, self.price[pos], np.nan)
        return side.reshape(items.shape + (3,)), price.reshape(items.shape)

    def popularity(self, items: np.ndarray) -> np.ndarray:
        """log(1 + training clicks) [...] float32 of raw item ids (0 unknown or pad)."""
        items = np.asarray(items, np.int64)
        if self.log_pop is None or len(self.item_ids) == 0:
            return np.zeros(items.shape, np.float32)
        pos, found = self._find(items)
        return np.where(found, self.log_pop[pos], 0.0).astype(np.float32).reshape(items.shape)


# --------------------------------------------------------------------------------------------- sequences
@nb.njit(cache=True, inline="always")
def _last_distinct(items, ts, lo, hi, L, out_items, out_ts, out_idx):
    """Walk back from ``hi-1`` to ``lo`` collecting the last ``L`` distinct items (most recent first), with the
    time and index of each one's latest click. Used by the sampler and by :func:`build_groups` alike."""
    n = 0
    j = hi - 1
    while j >= lo and n < L:
        it = items[j]
        dup = False
        for q in range(n):
            if out_items[q] == it:
                dup = True
                break
        if not dup:
            out_items[n] = it
            out_ts[n] = ts[j]
            out_idx[n] = j
            n += 1
        j -= 1
    return n


@nb.njit(cache=True, parallel=True, nogil=True)
def _groups_kernel(items, ts, lo, hi, L, S, trig, trig_age, seq, profile):
    G = len(lo)
    for g in nb.prange(G):
        a, b = lo[g], hi[g]
        tts = np.empty(L, np.int64)
        tidx = np.empty(L, np.int64)
        n = _last_distinct(items, ts, a, b, L, trig[g], tts, tidx)
        ref = ts[b - 1] if b > a else 0
        for q in range(n):
            trig_age[g, q] = (ref - tts[q]) / _US_PER_HOUR
        m = min(S, b - a)
        for q in range(m):
            seq[g, q] = items[b - 1 - q]
        profile[g, 0] = np.log1p(b - a)
        profile[g, 1] = np.log1p(n)


def _serial(kernel):
    """The same kernel compiled without ``parallel``: a single serving request (one group) then runs on the
    calling thread and never wakes numba's OpenMP pool, which otherwise fights torch's own OpenMP threads for the
    cores (measured: 28 ms vs ~600 ms p50 for 10k candidates at 2 threads when both pools spin)."""
    return nb.njit(cache=False, nogil=True)(kernel.py_func)


_groups_kernel_1 = _serial(_groups_kernel)


@dataclass
class Groups:
    """Per-group context: triggers (most recent first), their ages, the behaviour sequence, profile inputs."""

    triggers: np.ndarray  # int64 [G, L], -1 pad
    trigger_age_h: np.ndarray  # float32 [G, L]
    seq: np.ndarray  # int64 [G, S], most recent first, -1 pad
    profile: np.ndarray  # float32 [G, len(PROFILE_FEATURES)]


def build_groups(items: np.ndarray, ts: np.ndarray, lo: np.ndarray, hi: np.ndarray, L: int, S: int) -> Groups:
    """Groups for click slices ``items[lo[g]:hi[g]]`` (oldest first, ts in µs): the context of a next-click
    prediction made right after ``items[hi[g]-1]``. Training and serving both come through here."""
    G = len(lo)
    trig = np.full((G, L), -1, np.int64)
    age = np.zeros((G, L), np.float32)
    seq = np.full((G, S), -1, np.int64)
    prof = np.zeros((G, len(PROFILE_FEATURES)), np.float32)
    (_groups_kernel_1 if G == 1 else _groups_kernel)(np.ascontiguousarray(items, np.int64), np.ascontiguousarray(ts, np.int64),
                   np.asarray(lo, np.int64), np.asarray(hi, np.int64), L, S, trig, age, seq, prof)
    return Groups(trig, age, seq, prof)


def serving_groups(histories: list[tuple[np.ndarray, np.ndarray]], L: int, S: int, dedup: bool) -> Groups:
    """Groups at serving time: each history (items, ts µs) seen as the sampler sees clicks — time order (ties
    keep the given order), back-to-back repeats collapsed with ``dedup`` — the context = all of it (the
    prediction is for the click after the last one)."""
    lens = np.array([len(i) for i, _ in histories], np.int64)
    indptr = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=indptr[1:])
    items = np.concatenate([np.asarray(i, np.int64) for i, _ in histories]) if len(lens) else np.empty(0, np.int64)
    ts = np.concatenate([np.asarray(t, np.int64) for _, t in histories]) if len(lens) else np.empty(0, np.int64)
    rows = rows_of(indptr)
    order = np.lexsort((ts, rows))  # stable
    items, ts = items[order], ts[order]
    if dedup and len(items):
        keep = drop_consecutive_repeats(indptr, items)
        items, ts, lens = items[keep], ts[keep], np.bincount(rows[keep], minlength=len(lens))
    hi = np.cumsum(lens)
    return build_groups(items, ts, hi - lens, hi, L, S)


# --------------------------------------------------------------------------------------------- candidates
@nb.njit(cache=True, parallel=True, nogil=True)
def _union(trig_rows, indptr, s_targets, excl_ptr, excl, counts, out, fill):
    """Per group: the distinct targets of its triggers' rows minus its excluded items. Two passes over the
    same code: ``fill=False`` writes only ``counts[g]``, ``fill=True`` writes the items into ``out[g]``."""
    G, L = trig_rows.shape
    for g in nb.prange(G):
        tot = 0
        for q in range(L):
            r = trig_rows[g, q]
            if r >= 0:
                tot += indptr[r + 1] - indptr[r]
        buf = np.empty(tot, np.int64)
        k = 0
        for q in range(L):
            r = trig_rows[g, q]
            if r >= 0:
                for j in range(indptr[r], indptr[r + 1]):
                    buf[k] = s_targets[j]
                    k += 1
        buf.sort()
        e0, e1 = excl_ptr[g], excl_ptr[g + 1]
        c = 0
        for j in range(tot):
            if j > 0 and buf[j] == buf[j - 1]:
                continue
            x = buf[j]
            if e1 > e0:
                p = np.searchsorted(excl[e0:e1], x)
                if p < e1 - e0 and excl[e0 + p] == x:
                    continue
            if fill:
                out[g, c] = x
            c += 1
        counts[g] = c


_union_1 = _serial(_union)


def candidate_union(lookup: RowLookup, triggers: np.ndarray,
                    exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Serving candidates: per group the union of its triggers' i2i rows minus ``exclude[g]``, as int64
    [G, Cmax] sorted by item id, -1 padded."""
    rows = lookup.rows(triggers)
    G = len(triggers)
    if exclude is None:
        excl_ptr, excl = np.zeros(G + 1, np.int64), np.empty(0, np.int64)
    else:
        ex = [np.unique(np.asarray(e, np.int64)) for e in exclude]
        excl_ptr = np.zeros(G + 1, np.int64)
        excl_ptr[1:] = np.cumsum([len(e) for e in ex])
        excl = np.concatenate(ex) if ex else np.empty(0, np.int64)
    counts = np.zeros(G, np.int64)
    ip = lookup.index.indptr
    union = _union_1 if G == 1 else _union
    union(rows, ip, lookup.s_targets, excl_ptr, excl, counts, np.empty((G, 0), np.int64), False)
    out = np.full((G, int(counts.max()) if G else 0), -1, np.int64)
    union(rows, ip, lookup.s_targets, excl_ptr, excl, counts, out, True)
    return out


# --------------------------------------------------------------------------------------------- features
@nb.njit(cache=True, inline="always")
def _gallop(a, lo, hi, x):
    """First index ``p`` in ``[lo, hi)`` with ``a[p] >= x`` (``a`` sorted), searching outward from ``lo``: a
    merge of sorted candidates with a sorted row costs O(log gap) per candidate instead of O(log row)."""
    if lo >= hi or a[lo] >= x:
        return lo
    step = 1
    while lo + step < hi and a[lo + step] < x:  # a[lo] < x throughout
        lo += step
        step *= 2
    end = min(lo + step, hi)
    lo += 1
    while lo < end:
        mid = (lo + end) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            end = mid
    return lo


@nb.njit(cache=True, parallel=True, nogil=True)
def _features_kernel(cands, trig, trig_rows, trig_age, trig_cat, trig_price, cand_cat, cand_price, cand_pop,
                     indptr, s_targets, s_scores, s_ranks, row_top, log_rank, L, H,
                     hit_slot, hit_dense, cross, hits_pe):
    """Per group: each trigger's row (sorted by target) is merged with the group's candidates in id order; a
    candidate's hits accumulate in trigger order, so every feature equals the per-candidate definition.
    ``log_rank[r] = log(r)`` (a table up to the largest rank: no logarithm per hit)."""
    G, C = cands.shape
    LT = trig.shape[1]
    split = hits_pe.shape[0] > 0
    for g in nb.prange(G):
        ntrig = 0
        for q in range(LT):
            if trig[g, q] >= 0:
                ntrig += 1
        ptrig = np.zeros(LT, np.bool_)  # training: triggers whose row holds candidate 0 (the positive)
        if split and C > 0 and cands[g, 0] >= 0:
            for q in range(ntrig):
                r = trig_rows[g, q]
                if r >= 0:
                    a, b = indptr[r], indptr[r + 1]
                    p = np.searchsorted(s_targets[a:b], cands[g, 0])
                    ptrig[q] = p < b - a and s_targets[a + p] == cands[g, 0]
        order = np.argsort(cands[g])
        first = 0  # order[first:] are the valid candidates, ascending
        while first < C and cands[g, order[first]] < 0:
            first += 1
        nh = np.zeros(C, np.int64)
        best = np.full(C, 1 << 30, np.int64)
        mx = np.zeros(C)
        sm = np.zeros(C)
        mxr = np.zeros(C)
        smr = np.zeros(C)
        minpos = np.full(C, -1, np.int64)
        minage = np.zeros(C)
        recent = np.zeros(C)
        for q in range(ntrig):
            r = trig_rows[g, q]
            if r < 0:
                continue
            p, b = indptr[r], indptr[r + 1]
            rel_den = row_top[r]
            pos_q = q / L
            log_age_q = np.log1p(max(trig_age[g, q], 0.0))
            for o in range(first, C):
                c = order[o]
                x = cands[g, c]
                p = _gallop(s_targets, p, b, x)
                if p >= b:
                    break
                if s_targets[p] != x:
                    continue
                s = s_scores[p]
                rk = s_ranks[p]
                rel = s / rel_den if rel_den > 0 else 0.0
                k = nh[c]
                if k < H:
                    hit_slot[g, c, k] = q
                    hit_dense[g, c, k, 0] = s
                    hit_dense[g, c, k, 1] = rel
                    hit_dense[g, c, k, 2] = log_rank[rk]
                    hit_dense[g, c, k, 3] = pos_q
                    hit_dense[g, c, k, 4] = log_age_q
                if split:
                    if ptrig[q]:
                        hits_pe[g, c, 0] += 1
                    else:
                        hits_pe[g, c, 1] += 1
                if minpos[c] < 0:
                    minpos[c] = q
                    minage[c] = trig_age[g, q]
                if q == 0:
                    recent[c] = 1.0
                nh[c] = k + 1
                best[c] = min(best[c], rk)
                mx[c] = max(mx[c], s)
                sm[c] += s
                mxr[c] = max(mxr[c], rel)
                smr[c] += rel
        for c in range(C):
            x = cands[g, c]
            if x < 0:
                continue
            is_trig = 0.0
            same_any = 0.0
            for q in range(ntrig):
                if trig[g, q] == x:
                    is_trig = 1.0
                if cand_cat[g, c] >= 0 and trig_cat[g, q] == cand_cat[g, c]:
                    same_any = 1.0
            cross[g, c, 0] = np.log1p(nh[c])
            if nh[c] > 0:
                cross[g, c, 1] = np.log(best[c])
                cross[g, c, 2] = 1.0 / best[c]
                cross[g, c, 7] = minpos[c] / L
                cross[g, c, 8] = np.log1p(max(minage[c], 0.0))
            else:
                cross[g, c, 7] = 1.0
            cross[g, c, 3] = mx[c]
            cross[g, c, 4] = sm[c]
            cross[g, c, 5] = mxr[c]
            cross[g, c, 6] = smr[c]
            cross[g, c, 9] = recent[c]
            if ntrig > 0 and cand_cat[g, c] >= 0 and trig_cat[g, 0] == cand_cat[g, c]:
                cross[g, c, 10] = 1.0
            cross[g, c, 11] = same_any
            pc = cand_price[g, c]
            pt = trig_price[g, 0] if ntrig > 0 else np.nan
            if pc > 0 and pt > 0:
                cross[g, c, 12] = 1.0
                cross[g, c, 13] = np.log(pc / pt)
            cross[g, c, 14] = is_trig
            cross[g, c, 15] = cand_pop[g, c]


_features_kernel_1 = _serial(_features_kernel)


@dataclass
class Features:
    """Model inputs of G groups × C candidates (raw ids; the model's vocabulary encodes them)."""

    cands: np.ndarray  # int64 [G, C], -1 pad
    triggers: np.ndarray  # int64 [G, L], -1 pad
    hit_slot: np.ndarray  # int32 [G, C, H]: index into triggers[g], -1 pad
    hit_dense: np.ndarray  # float32 [G, C, H, len(HIT_FEATURES)]
    cross: np.ndarray  # float32 [G, C, len(CROSS_FEATURES)]
    seq: np.ndarray  # int64 [G, S], most recent first, -1 pad
    profile: np.ndarray  # float32 [G, len(PROFILE_FEATURES)]
    hits_pe: np.ndarray | None = None  # int32 [G, C, 2] training only: hits by positive / other triggers
    logq: np.ndarray | None = None  # float32 [G, C] training only: log draw probability (logQ correction)

    def take(self, g: np.ndarray) -> Features:
        parts = [None if getattr(self, f) is None else getattr(self, f)[g] for f in self.__dataclass_fields__]
        return Features(*parts)  # type: ignore[arg-type]


def featurize(groups: Groups, cands: np.ndarray, lookup: RowLookup, info: ItemInfo, H: int,
              hit_split: bool = False) -> Features:
    """Features of candidates ``cands`` [G, C] (-1 pad) for ``groups``: the one function training and serving
    share. ``hit_split`` (training) also counts each candidate's hits by the triggers whose row holds candidate
    0 (the positive) and by the others (``Features.hits_pe``)."""
    cands = np.ascontiguousarray(cands, np.int64)
    G, C = cands.shape
    L = groups.triggers.shape[1]
    trig_rows = lookup.rows(groups.triggers)
    tside, tprice = info.lookup(groups.triggers)
    cside, cprice = info.lookup(cands)
    hit_slot = np.full((G, C, H), -1, np.int32)
    hit_dense = np.zeros((G, C, H, len(HIT_FEATURES)), np.float32)
    cross = np.zeros((G, C, len(CROSS_FEATURES)), np.float32)
    hits_pe = np.zeros((G, C, 2) if hit_split else (0, 0, 2), np.int32)
    ip = lookup.index.indptr
    (_features_kernel_1 if G == 1 else _features_kernel)(cands, groups.triggers, trig_rows, groups.trigger_age_h,
                     np.ascontiguousarray(tside[..., 0]), np.ascontiguousarray(tprice),
                     np.ascontiguousarray(cside[..., 0]), np.ascontiguousarray(cprice), info.popularity(cands),
                     ip, lookup.s_targets, lookup.s_scores, lookup.s_ranks, lookup.row_top, lookup.log_rank, L, H,
                     hit_slot, hit_dense, cross, hits_pe)
    return Features(cands, groups.triggers, hit_slot, hit_dense, cross, groups.seq, groups.profile,
                    hits_pe if hit_split else None)
