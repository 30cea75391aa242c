"""Swing I2I index (IBS, paper §3.1): exact, multi-core, memory-bounded, optionally sharded over Ray.

Definition (DESIGN.md "Swing"). ``I_u`` = distinct items user ``u`` interacted with (behaviours of
``SwingConfig.behaviors``; optionally the ``max_items_per_user`` most recent), ``U_i`` = users of item ``i``
(optionally a deterministic seeded sample of ``max_users_per_item``)::

    w_u     = |I_u| ** -0.5
    s(i, j) = Σ_{u<v ; u,v ∈ U_i ∩ U_j}  w_u · w_v / (alpha + |I_u ∩ I_v|)          (i ≠ j)

Each trigger ``i`` keeps its top-``T`` targets by score (ties: smaller target id; rank 1 = best). Caps are edge
filters: the item cap shortens ``I_u`` (and so ``w_u`` and ``|I_u ∩ I_v|``); the user cap only thins the lists
``U_i`` that pairs are drawn from (``I_u`` keeps every item of ``u`` that survived the item cap).

Algorithm (per trigger ``i``; triggers are independent, so they shard over threads and Ray tasks):

1. *restricted inverted index*: for ``a`` over the users of ``U_i`` (ascending) and ``j ∈ I_{u_a}``, ``j ≠ i``,
   append ``a`` to ``L_j`` — so ``L_j`` = positions of ``U_i ∩ U_j`` in ``U_i``, sorted. Cost Σ_{u∈U_i} |I_u|.
2. for every ``a``: walking ``j ∈ I_{u_a}`` and the tail ``b > a`` of each ``L_j`` counts
   ``c[b] = |I_{u_a} ∩ I_{u_b}| - 1`` for every partner ``b`` at once (``i`` itself is the ``+1``); a second
   walk over the same tails adds ``w_a · w_b / (alpha + 1 + c[b])`` into the dense accumulator ``acc[j]``.
3. top-``T`` of the touched entries of ``acc`` through one 64-bit key ``(~float32 bits(score), j)`` (partition +
   sort), then only touched entries are reset.

Complexity: O(Σ_u |I_u|² + Σ_{u<v} k_uv·(k_uv − 1) + Σ_i r_i log T), where ``k_uv = |I_u ∩ I_v|`` and ``r_i`` the
number of candidate targets of ``i``. Pairs that share only the trigger (k = 1, the vast majority) cost nothing
beyond step 1, unlike the textbook loop "for i, for u<v in U_i, intersect I_u, I_v" which is
O(Σ_i |U_i|² · |I|). Users with a single item are dropped up front (they can only pair on ``(i, i)``).
Memory: CSR arrays O(#edges) + per thread O(n_items + max_i Σ_{u∈U_i}|I_u|) + output O(#triggers · T);
nothing grows with item × item.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import get_thread_id, njit, prange

from pi2i.config import SwingConfig
from pi2i.contracts import I2I_SCHEMA, SYNTHETIC_BEHAVIOR, read_events, write_json, write_parquet
from pi2i.data.events import clicks, event_arrays, splitmix64
from pi2i.layout import STATS_SUFFIX

__all__ = ["SwingGraph", "build_swing", "prepare_graph", "run_swing", "swing_kernel"]


# ----------------------------------------------------------------------------------------------------------
# Graph preparation (vectorised numpy): filter, dedupe, caps, dense ids, CSR both ways.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SwingGraph:
    """Dense-id CSR view of the (capped) user–item graph that Swing runs on."""

    item_ids: np.ndarray  # int64 [n_items]: dense item -> original id (sorted ascending)
    user_indptr: np.ndarray  # int64 [n_users+1]
    user_items: np.ndarray  # int32: dense item ids of I_u, ascending per user
    user_kept: np.ndarray  # uint8: 1 where u is in the (sampled) U_i of that item
    item_indptr: np.ndarray  # int64 [n_items+1]
    item_users: np.ndarray  # int32: dense user ids of U_i (sampled), ascending per item
    weight: np.ndarray  # float64 [n_users]: w_u = |I_u|^-1/2
    stats: dict[str, Any]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def trigger_cost(self) -> np.ndarray:
        """Estimated work per trigger, for balancing: Σ_{u∈U_i}|I_u| · sqrt|U_i| + |U_i|.

        The exact work is 2·Σ_{u∈U_i}|I_u| + 2·Σ_j C(|U_i ∩ U_j|, 2); on the swing-bench data this estimate
        tracks it within ~2x over 98% of triggers (|U_i|² overweights popular triggers by ~10x)."""
        m = np.diff(self.item_indptr).astype(np.float64)
        load = self.trigger_load().astype(np.float64)
        return load * np.sqrt(m) + m

    def trigger_load(self) -> np.ndarray:
        """Σ_{u∈U_i} |I_u| per item (size of the restricted inverted index)."""
        deg = np.diff(self.user_indptr).astype(np.int64)
        owner = np.repeat(np.arange(self.n_items), np.diff(self.item_indptr))
        return np.bincount(owner, weights=deg[self.item_users], minlength=self.n_items).astype(np.int64)

    def csr(self) -> Graph:
        """The arrays the kernel reads, as one struct."""
        return Graph(self.user_indptr, self.user_items, self.user_kept, self.item_indptr, self.item_users,
                     self.weight)


class Graph(NamedTuple):
    """The capped user–item graph as the kernel sees it (a tuple of arrays: numba passes it as one struct)."""

    user_indptr: np.ndarray  # int64 [n_users+1]
    user_items: np.ndarray  # int32: I_u, ascending
    user_kept: np.ndarray  # uint8: 1 where u is in the sampled U_j of that item j
    item_indptr: np.ndarray  # int64 [n_items+1]
    item_users: np.ndarray  # int32: U_i (sampled), ascending
    weight: np.ndarray  # float64 [n_users]: w_u


class Scratch(NamedTuple):
    """Per-thread work buffers of :func:`_one_trigger`, one row per thread slot (see the kernel's steps)."""

    lsize: np.ndarray  # int32 [slots, n_items]: |L_j|, then the end offset of L_j; zero between triggers
    cur: np.ndarray  # int32 [slots, n_items]: fill cursor of L_j (-1: a singleton, never pairs)
    acc: np.ndarray  # float64 [slots, n_items]: s(i, j) being summed; zero between triggers
    touched: np.ndarray  # int32 [slots, n_items]: the j with count[j] > 0
    seq_j: np.ndarray  # int32 [slots, max_load]: items of I_u for u in U_i, concatenated (pass A)
    seq_k: np.ndarray  # uint8 [slots, max_load]: their user_kept flags
    soff: np.ndarray  # int64 [slots, max_m+1]: offsets of each a's items in seq_j
    lbuf: np.ndarray  # int32 [slots, max_load]: the lists L_j back to back
    lkept: np.ndarray  # uint8 [slots, max_load]: kept flag of each L_j entry
    ent_s: np.ndarray  # int32 [slots, max_load]: per (a, j) entry, start of the tail of L_j after a
    ent_e: np.ndarray  # int32 [slots, max_load]: ... its end
    ent_j: np.ndarray  # int32 [slots, max_load]: ... the item j
    ent_k: np.ndarray  # uint8 [slots, max_load]: ... whether u_a is kept in U_j
    aptr: np.ndarray  # int64 [slots, max_m+1]: entries of each a
    cpair: np.ndarray  # int32 [slots, max_m]: |I_a ∩ I_b| - 1 per partner b
    fpair: np.ndarray  # float64 [slots, max_m]: w_b / (alpha + |I_a ∩ I_b|)
    tb: np.ndarray  # int32 [slots, max_m]: partners b touched for this a


def _scratch(n_slots: int, n_items: int, max_load: int, max_m: int) -> Scratch:
    """Zeroed / empty per-thread buffers (the zeroed ones must be zero between triggers)."""
    def z(n: int, dt: type) -> np.ndarray:
        return np.zeros((n_slots, n), dt)

    def e(n: int, dt: type) -> np.ndarray:
        return np.empty((n_slots, n), dt)

    return Scratch(z(n_items, np.int32), z(n_items, np.int32), z(n_items, np.float64), e(n_items, np.int32),
                   e(max_load, np.int32), e(max_load, np.uint8), e(max_m + 1, np.int64), e(max_load, np.int32),
                   e(max_load, np.uint8), e(max_load, np.int32), e(max_load, np.int32), e(max_load, np.int32),
                   e(max_load, np.uint8), e(max_m + 1, np.int64), z(max_m, np.int32), z(max_m, np.float64),
                   e(max_m, np.int32))


def _edge_hash(user_ids: np.ndarray, item_ids: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random key per (seed, user, item) on original ids: independent of input order."""
    with np.errstate(over="ignore"):
        s = splitmix64(np.array([seed], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))[0]
        h = splitmix64(user_ids.astype(np.uint64) ^ s)
        return splitmix64(h ^ (item_ids.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)))


def _dense_ids(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, dense index of every row) via a hash dictionary, not a full sort of the rows."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    uniq = enc.dictionary.to_numpy().astype(np.int64)
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    return uniq[order], rank[enc.indices.to_numpy()]


def _distinct_edges(us: np.ndarray, it: np.ndarray, n_items: int, ts: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Distinct (user, item) edges sorted by (user, item); with ``ts``, also each edge's latest timestamp."""
    key = us.astype(np.int64) * n_items + it
    if ts is not None:
        o1 = np.argsort(ts, kind="stable")
        order = o1[np.argsort(key[o1], kind="stable")]  # by key, then time
        ks = key[order]
        last = np.ones(len(ks), bool)
        last[:-1] = ks[1:] != ks[:-1]
        ks, ets = ks[last], ts[order][last]
    else:
        ks = np.sort(key)
        first = np.ones(len(ks), bool)
        first[1:] = ks[1:] != ks[:-1]
        ks, ets = ks[first], None
    return ks // n_items, ks % n_items, ets


def _cap_items_per_user(eu: np.ndarray, ei: np.ndarray, ets: np.ndarray, n_users: int, cap: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Cap 1: each user's ``cap`` most recent items (ties in time: the larger item id counts as more recent)."""
    o = np.lexsort((ei, ets, eu))  # per user, oldest first
    deg = np.bincount(eu, minlength=n_users)
    start = np.concatenate(([0], np.cumsum(deg)[:-1]))
    pos = np.arange(len(o)) - start[eu[o]]
    keep = np.zeros(len(o), bool)
    keep[o] = pos >= (deg[eu[o]] - cap)
    return eu[keep], ei[keep]


def _sample_users_per_item(user_of: np.ndarray, item_of: np.ndarray, ei: np.ndarray, n_items: int, cap: int,
                           seed: int) -> np.ndarray:
    """Cap 2: per item a seeded sample of ``cap`` users (the smallest hashes); 1 = edge kept in ``U_i``."""
    kept = np.ones(len(ei), np.uint8)
    if cap > 0 and len(ei):
        h = _edge_hash(user_of, item_of, seed)
        o = np.lexsort((h, ei))
        ideg = np.bincount(ei, minlength=n_items)
        start = np.concatenate(([0], np.cumsum(ideg)[:-1]))
        pos = np.arange(len(o)) - start[ei[o]]
        kept[o] = (pos < cap).astype(np.uint8)
    return kept


def prepare_graph(events: pa.Table, cfg: SwingConfig) -> SwingGraph:
    """Events of the contract -> capped CSR graph. Raises ValueError when nothing is left to index."""
    n_in = events.num_rows
    if n_in == 0:
        raise ValueError("swing: the events table is empty")
    missing = [c for c in ("user_id", "item_id", "behavior", "ts") if c not in events.column_names]
    if missing:
        raise ValueError(f"swing: events lack column(s) {missing}")
    counted = list(cfg.behaviors) + ([SYNTHETIC_BEHAVIOR] if cfg.include_synthetic else [])  # LLM-I2I rows
    ev = clicks(events, counted)  # no copy when every row counts
    if ev.num_rows == 0:
        raise ValueError(f"swing: no events with behaviour in {counted} (of {n_in} rows)")
    item_ids, it = _dense_ids(ev.column("item_id"))
    user_ids, us = _dense_ids(ev.column("user_id"))
    n_items, n_users = len(item_ids), len(user_ids)
    capped = cfg.max_items_per_user > 0
    eu, ei, ets = _distinct_edges(us, it, n_items, event_arrays(ev)[2] if capped else None)
    n_edges = len(eu)
    if capped:
        assert ets is not None
        eu, ei = _cap_items_per_user(eu, ei, ets, n_users, cfg.max_items_per_user)
    deg = np.bincount(eu, minlength=n_users)
    keep = deg[eu] >= 2  # users with a single item only ever pair on (i, i): drop them (exact)
    eu, ei = eu[keep], ei[keep]
    weight = np.zeros(n_users, np.float64)
    weight[deg > 0] = 1.0 / np.sqrt(deg[deg > 0])  # w_u = |I_u|^-1/2
    kept = _sample_users_per_item(user_ids[eu], item_ids[ei], ei, n_items, cfg.max_users_per_item, cfg.seed)

    # CSR user -> items (edges already sorted by user, then item)
    user_indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(eu, minlength=n_users), out=user_indptr[1:])
    user_items = ei.astype(np.int32)
    # CSR item -> sampled users, users ascending (stable sort of edges by item keeps user order)
    ks_ = np.flatnonzero(kept)
    o = ks_[np.argsort(ei[ks_], kind="stable")]
    item_indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.bincount(ei[ks_], minlength=n_items), out=item_indptr[1:])
    item_users = eu[o].astype(np.int32)

    stats = {"events_in": int(n_in), "events_used": int(ev.num_rows), "users": int(n_users),
             "items": int(n_items), "edges_distinct": int(n_edges), "edges_indexed": len(eu),
             "edges_sampled": int(kept.sum())}
    g = SwingGraph(item_ids=item_ids.astype(np.int64), user_indptr=user_indptr, user_items=user_items,
                   user_kept=kept, item_indptr=item_indptr, item_users=item_users, weight=weight, stats=stats)
    # read-only, like the zero-copy views a Ray task gets: one numba signature for both paths
    for a in (*g.csr(), g.item_ids):
        a.flags.writeable = False
    return g


# ----------------------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _one_trigger(i, g, alpha, top_t, sampled, scr, s, out_t, out_s):  # pragma: no cover - numba
    """Swing row of dense trigger ``i`` of graph ``g`` into out_t/out_s, with the scratch row ``s`` of ``scr``;
    returns (row length, pair-item updates)."""
    user_indptr, user_items, user_kept, item_indptr, item_users, weight = g
    count, cur, acc, touched = scr.lsize[s], scr.cur[s], scr.acc[s], scr.touched[s]
    seq_j, seq_k, soff, lbuf, lkept = scr.seq_j[s], scr.seq_k[s], scr.soff[s], scr.lbuf[s], scr.lkept[s]
    ent_s, ent_e, ent_j, ent_k, aptr = scr.ent_s[s], scr.ent_e[s], scr.ent_j[s], scr.ent_k[s], scr.aptr[s]
    cpair, fpair, tb = scr.cpair[s], scr.fpair[s], scr.tb[s]
    u0, u1 = item_indptr[i], item_indptr[i + 1]
    m = u1 - u0
    if m < 2:
        return 0, 0
    # 1. restricted inverted index L_j = positions a (in U_i) of the users of U_i ∩ U_j, ascending, kept only
    #    for |L_j| >= 2 (a j seen once can never pair). Pass A gathers the item lists of U_i into one contiguous
    #    buffer and counts; offsets (count[j] becomes the end of L_j; cur[j] = -1 marks a singleton); pass B
    #    fills L_j and records, per a, the entries (j, tail of L_j after a) that are non-empty -- all that
    #    step 2 reads.
    nt = 0
    n = 0
    soff[0] = 0
    for a in range(m):
        u = item_users[u0 + a]
        for p in range(user_indptr[u], user_indptr[u + 1]):
            j = user_items[p]
            if j == i:
                continue
            seq_j[n] = j
            seq_k[n] = user_kept[p]
            n += 1
            if count[j] == 0:
                touched[nt] = j
                nt += 1
            count[j] += 1
        soff[a + 1] = n
    off = 0
    for t in range(nt):
        j = touched[t]
        if count[j] >= 2:
            cur[j] = off
            off += count[j]
            count[j] = off
        else:
            cur[j] = -1
    ne = 0
    aptr[0] = 0
    for a in range(m):
        for x in range(soff[a], soff[a + 1]):
            j = seq_j[x]
            q = cur[j]
            if q < 0:
                continue
            cur[j] = q + 1
            lbuf[q] = a
            lkept[q] = seq_k[x]
            if q + 1 < count[j]:
                ent_s[ne] = q + 1
                ent_e[ne] = count[j]
                ent_j[ne] = j
                ent_k[ne] = seq_k[x]
                ne += 1
        aptr[a + 1] = ne
    # 2. per a: |I_a ∩ I_b| - 1 for every later partner b at once, then the contributions into acc[j]
    updates = 0
    for a in range(m - 1):
        x0, x1 = aptr[a], aptr[a + 1]
        if x0 == x1:
            continue
        ntb = 0
        for x in range(x0, x1):
            for q in range(ent_s[x], ent_e[x]):
                b = lbuf[q]
                if cpair[b] == 0:
                    tb[ntb] = b
                    ntb += 1
                cpair[b] += 1
            updates += ent_e[x] - ent_s[x]
        for t in range(ntb):
            b = tb[t]
            fpair[b] = weight[item_users[u0 + b]] / (alpha + 1.0 + cpair[b])
            cpair[b] = 0
        wa = weight[item_users[u0 + a]]
        for x in range(x0, x1):
            if ent_k[x] == 0:
                continue
            tot = 0.0
            if sampled:
                for q in range(ent_s[x], ent_e[x]):
                    if lkept[q]:
                        tot += fpair[lbuf[q]]
            else:
                for q in range(ent_s[x], ent_e[x]):
                    tot += fpair[lbuf[q]]
            acc[ent_j[x]] += wa * tot
    # 3. top-T by key (~float32 bits, j): ascending key = descending score, then ascending target
    nk = 0
    keys = np.empty(nt, np.uint64)
    sc = np.empty(1, np.float32)
    bits = sc.view(np.uint32)
    for t in range(nt):
        j = touched[t]
        if acc[j] > 0.0:
            sc[0] = np.float32(acc[j])
            keys[nk] = (np.uint64(0xFFFFFFFF - bits[0]) << np.uint64(32)) | np.uint64(j)
            nk += 1
        acc[j] = 0.0
        count[j] = 0
    keys = keys[:nk]
    if nk > top_t:
        keys = np.partition(keys, top_t - 1)[:top_t]
    keys = np.sort(keys)
    for r in range(len(keys)):
        k = keys[r]
        out_t[r] = np.int32(k & np.uint64(0xFFFFFFFF))
        bits[0] = np.uint32(0xFFFFFFFF - (k >> np.uint64(32)))
        out_s[r] = sc[0]
    return len(keys), updates


@njit(parallel=True, nogil=True, cache=True)
def swing_kernel(triggers, bounds, g, alpha, top_t, scr, sampled):
    """Rows of ``triggers`` (dense ids) of graph ``g``; chunk c = triggers[bounds[c]:bounds[c+1]] runs on one
    thread.

    Scratch ``scr`` is per thread (a row per slot >= pool size, indexed by ``get_thread_id``), so chunks can be handed out
    dynamically (``parallel_chunksize(1)``) without per-chunk O(n_items) allocations.
    Returns (targets [n, T] int32, scores [n, T] float32, lengths [n] int32, pair-item updates [n] int64).
    """
    n = len(triggers)
    out_t = np.empty((n, top_t), np.int32)
    out_s = np.empty((n, top_t), np.float32)
    lens = np.zeros(n, np.int32)
    upd = np.zeros(n, np.int64)
    for c in prange(len(bounds) - 1):
        s = get_thread_id()
        for r in range(bounds[c], bounds[c + 1]):
            lens[r], upd[r] = _one_trigger(triggers[r], g, alpha, top_t, sampled, scr, s, out_t[r], out_s[r])
    return out_t, out_s, lens, upd


# ----------------------------------------------------------------------------------------------------------
# Work split
# ----------------------------------------------------------------------------------------------------------


def balanced_ranges(cost: np.ndarray, parts: int) -> np.ndarray:
    """Boundaries of ``parts`` contiguous ranges of roughly equal total cost (may be fewer if cost is lumpy)."""
    n = len(cost)
    if n == 0:
        return np.zeros(1, np.int64)
    cum = np.cumsum(cost, dtype=np.float64)
    targets = cum[-1] * np.arange(1, parts) / parts
    cuts = np.searchsorted(cum, targets, side="left") + 1
    b = np.unique(np.concatenate(([0], np.clip(cuts, 1, n), [n])))
    return b.astype(np.int64)


def _rows(g: SwingGraph, triggers: np.ndarray, cfg: SwingConfig, chunks_per_thread: int = 32,
          batch_rows: int | None = None, progress_cb: Callable[[int], None] | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                      np.ndarray, int]:
    """Compute rows of dense ``triggers`` in batches; returns (trigger, target, score, lengths, updates)."""
    import numba

    top_t = int(cfg.top_t)
    cost = g.trigger_cost()[triggers] if len(triggers) else np.zeros(0)
    load = g.trigger_load()
    m_all = np.diff(g.item_indptr)
    threads = numba.get_num_threads()
    slots = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # get_thread_id() < this
    if batch_rows is None:  # bound the dense [rows, T] output buffers to ~32 MB
        batch_rows = max(256, (4 << 20) // max(top_t, 1))
    # batches: contiguous, cost-balanced, each at most batch_rows triggers
    n_batches = max(1, math.ceil(len(triggers) / batch_rows), 16 if progress_cb else 1)
    bb = balanced_ranges(cost, n_batches)
    # split further where a batch exceeds batch_rows
    fine = [bb[0]]
    for a, b in itertools.pairwise(bb):
        k = math.ceil((b - a) / batch_rows)
        fine.extend(np.linspace(a, b, k + 1).astype(np.int64)[1:].tolist())
    bb = np.array(fine, np.int64)
    tgt_parts, sc_parts, len_parts = [], [], []
    updates = 0
    for a, b in itertools.pairwise(bb):
        trig = triggers[a:b].astype(np.int64)
        bounds = balanced_ranges(cost[a:b], threads * chunks_per_thread)
        old_cs = numba.set_parallel_chunksize(1)  # dynamic hand-out of the cost-balanced chunks
        try:
            out_t, out_s, lens, upd = swing_kernel(
                trig, bounds, g.csr(), float(cfg.alpha), top_t,
                _scratch(slots, g.n_items, int(max(load[trig].max(), 1)), int(max(m_all[trig].max(), 1))),
                bool(len(g.user_kept) and g.user_kept.min() == 0))
        finally:
            numba.set_parallel_chunksize(old_cs)
        keep = np.arange(top_t)[None, :] < lens[:, None]
        tgt_parts.append(out_t[keep])
        sc_parts.append(out_s[keep])
        len_parts.append(lens)
        updates += int(upd.sum())
        if progress_cb is not None:
            progress_cb(b - a)
    lens = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int32)
    targets = np.concatenate(tgt_parts) if tgt_parts else np.zeros(0, np.int32)
    scores = np.concatenate(sc_parts) if sc_parts else np.zeros(0, np.float32)
    return triggers, targets, scores, lens, updates


def _shard_task(g: SwingGraph, triggers: np.ndarray, cfg_json: str) -> tuple:
    """Ray task body: one contiguous shard of triggers on one core."""
    import numba

    numba.set_num_threads(1)
    cfg = SwingConfig.model_validate_json(cfg_json)
    return _rows(g, triggers, cfg)


def _rows_ray(g: SwingGraph, triggers: np.ndarray, cfg: SwingConfig, workers: int,
              progress_cb: Callable[[int], None] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Shard triggers over Ray tasks (contiguous, cost-balanced; a few shards per worker for slack)."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address="auto", ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    g_ref = ray.put(g)  # numpy arrays inside are shared zero-copy by every task on a node
    task = ray.remote(num_cpus=1)(_shard_task)
    cost = g.trigger_cost()[triggers]
    bounds = balanced_ranges(cost, workers * 8)
    cfg_json = cfg.model_dump_json()
    refs = [task.remote(g_ref, triggers[a:b], cfg_json) for a, b in itertools.pairwise(bounds)]
    results: dict = {}
    pending = list(refs)
    index = {r: k for k, r in enumerate(refs)}
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        k = index[done[0]]
        results[k] = ray.get(done[0])
        if progress_cb is not None:
            progress_cb(int(bounds[k + 1] - bounds[k]))
    parts = [results[k] for k in range(len(refs))]
    if not parts:
        return triggers, np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32), 0
    return (triggers, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
            np.concatenate([p[3] for p in parts]), int(sum(p[4] for p in parts)))


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def build_swing(events: pa.Table, cfg: SwingConfig, workers: int = 1,
                progress: bool = False) -> tuple[pa.Table, dict]:
    """Swing i2i table of the contract (trigger, target, score float32, rank int32) + stats.

    ``workers`` = 1 runs in-process on all numba threads (no Ray); > 1 shards triggers over Ray tasks. Both give
    bit-identical output (each row is computed by the same code in the same order).
    """
    if cfg.top_t < 1:
        raise ValueError(f"swing: top_t must be >= 1 (got {cfg.top_t})")
    if workers < 1:
        raise ValueError(f"swing: workers must be >= 1 (got {workers})")
    t0 = time.perf_counter()
    g = prepare_graph(events, cfg)
    t_prep = time.perf_counter() - t0
    m = np.diff(g.item_indptr)
    triggers = np.flatnonzero(m >= 2).astype(np.int64)

    bar = None
    cb = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("swing"), BarColumn(), TextColumn("{task.completed}/{task.total} triggers"),
                       TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        bar.start()
        tid = bar.add_task("swing", total=len(triggers))

        def cb(n: int) -> None:
            bar.advance(tid, n)
    try:
        if workers == 1:
            _, targets, scores, lens, updates = _rows(g, triggers, cfg, progress_cb=cb)
        else:
            _, targets, scores, lens, updates = _rows_ray(g, triggers, cfg, workers, progress_cb=cb)
    finally:
        if bar is not None:
            bar.stop()
    trig_col = np.repeat(g.item_ids[triggers], lens)
    rank = _ranks(lens)
    table = pa.table({"trigger": trig_col, "target": g.item_ids[targets], "score": scores, "rank": rank},
                     schema=I2I_SCHEMA)
    wall = time.perf_counter() - t0
    nz = lens[lens > 0]
    pct = (lambda q: int(np.percentile(nz, q)) if len(nz) else 0)
    stats = dict(g.stats)
    stats.update({
        "top_t": int(cfg.top_t), "alpha": float(cfg.alpha), "behaviors": list(cfg.behaviors),
        "max_items_per_user": int(cfg.max_items_per_user), "max_users_per_item": int(cfg.max_users_per_item),
        "seed": int(cfg.seed), "workers": int(workers),
        "triggers_with_row": len(nz), "rows_total": int(table.num_rows),
        "row_length": {"min": int(nz.min()) if len(nz) else 0, "p50": pct(50), "p90": pct(90), "p99": pct(99),
                       "max": int(nz.max()) if len(nz) else 0, "mean": float(nz.mean()) if len(nz) else 0.0,
                       "rows_at_T": int((nz >= cfg.top_t).sum())},
        "user_pairs_visited": int((m * (m - 1) // 2).sum()),
        "pair_item_updates": int(updates),
        "prepare_s": round(t_prep, 4), "wall_s": round(wall, 4),
    })
    stats["user_pairs_per_s"] = stats["user_pairs_visited"] / wall if wall > 0 else 0.0
    return table, stats


def _ranks(lens: np.ndarray) -> np.ndarray:
    """1..len for each row, concatenated."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int32)
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    return (np.arange(total) - starts + 1).astype(np.int32)


def run_swing(events_uri: str, out_uri: str, cfg: SwingConfig, workers: int = 1,
              progress: bool = False) -> dict:
    """Read events, build, write ``out_uri`` (parquet) and ``<out_uri>.stats.json``; returns stats."""
    events = read_events(events_uri)
    table, stats = build_swing(events, cfg, workers=workers, progress=progress)
    write_parquet(table, out_uri)
    stats["events_uri"], stats["out_uri"] = events_uri, out_uri
    write_json(stats, stats_uri(out_uri))
    return stats


def stats_uri(out_uri: str) -> str:
    """Where the run statistics of the i2i table ``out_uri`` go: beside it."""
    return out_uri + STATS_SUFFIX
