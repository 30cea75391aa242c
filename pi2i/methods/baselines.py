"""Vectorised kernels of the non-learned methods (:mod:`~pi2i.methods.swing`, :mod:`~pi2i.methods.pool`):
many users at once, no per-user Python.

Users are CSR rows ``0..n-1``: ``triggers`` are each user's last ``L`` distinct clicks, most recent first
(:func:`pi2i.data.events.last_distinct`), ``seen`` the items never recommended to that user.

* :func:`i2i_lists` — item-based CF as traditionally served: the union of the triggers' i2i rows (each cut to a
  uniform ``truncation``, paper Fig. 2a), each candidate scored by its Swing score summed over the triggers
  whose row holds it, best ``k`` kept (ties: smaller item id); a numba pass per user with a dense per-thread
  accumulator: O(pairs), no global sort;
* :func:`pool_membership` — is an item in a user's whole candidate pool (untruncated rows)? Its HR as a set
  is the ceiling any re-ranking of the pool, PI2I included, can reach;
* :func:`trigger_contributions` — why an item is in a summed-score list: its triggers and their scores.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from pi2i.data.events import CSR, rows_of
from pi2i.ibs.i2i import I2IIndex
from pi2i.methods.base import PAD


def _pair_keys(users: np.ndarray, items: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """int64 key of (user row, item) via dense item codes in ``vocab`` (sorted); -1 code for unknown items."""
    at = np.minimum(np.searchsorted(vocab, items), max(len(vocab) - 1, 0))
    code = np.where((vocab[at] == items) if len(vocab) else False, at, len(vocab))
    return users * np.int64(len(vocab) + 1) + code


def not_seen(users: np.ndarray, items: np.ndarray, seen: CSR | None) -> np.ndarray:
    """Mask of (user, item) pairs NOT in the user's seen set."""
    if seen is None or not len(seen[1]):
        return np.ones(len(users), bool)
    s_ptr, s_items = seen
    vocab = np.unique(s_items)
    s_keys = _pair_keys(rows_of(s_ptr), s_items, vocab)
    return ~np.isin(_pair_keys(users, items, vocab), s_keys)


def gather_rows(i2i: I2IIndex, triggers: CSR, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All (user, trigger, target, score) of the triggers' i2i rows, each row cut to ``limit``."""
    t_ptr, t_items = triggers
    t_users = rows_of(t_ptr)
    rid = i2i.row_ids(t_items)
    ok = rid >= 0
    t_users, t_items, rid = t_users[ok], t_items[ok], rid[ok]
    starts = i2i.indptr[rid]
    lens = i2i.indptr[rid + 1] - starts
    if limit is not None:
        lens = np.minimum(lens, limit)
    offs = np.cumsum(lens) - lens
    idx = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(offs, lens) + np.repeat(starts, lens)
    return (np.repeat(t_users, lens), np.repeat(t_items, lens), i2i.targets[idx], i2i.scores[idx])


def i2i_lists(i2i: I2IIndex, triggers: CSR, k: int, truncation: int | None = None,
              seen: CSR | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classic item-based CF: candidates from the triggers' rows (cut to ``truncation``), summed scores.

    Returns ``(items, scores, pool_size)``: the padded ``(n_users, k)`` best-first lists, their summed Swing
    scores (-inf where PAD) and each user's pool size (distinct candidates, seen removed).
    """
    n = len(triggers[0]) - 1
    vocab, tcode = np.unique(i2i.targets, return_inverse=True)  # code order = id order (tie-break)
    code = np.arange(len(vocab), dtype=np.int64)
    t_ptr, t_items = triggers
    s_ptr, s_items = seen if seen is not None else (np.zeros(n + 1, np.int64), np.empty(0, np.int64))
    lim = int(np.diff(i2i.indptr).max(initial=0)) if truncation is None else int(truncation)
    threads = max(1, min(numba.get_num_threads(), n))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    out_codes, out_scores, pool_size = _sum_topk_kernel(
        t_ptr, i2i.row_ids(t_items), i2i.indptr, tcode.astype(np.int64).ravel(), i2i.scores, lim,
        s_ptr, _lookup(vocab, code, s_items), k, len(vocab), bounds)
    ranked = np.where(out_codes >= 0, vocab[np.maximum(out_codes, 0)] if len(vocab) else PAD, PAD)
    return ranked, out_scores, pool_size


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.int64)
    if not len(sorted_keys):
        return np.full(len(a), -1, np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, a), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == a, values[at], -1).astype(np.int64)


@njit(parallel=True, cache=True)
def _sum_topk_kernel(t_ptr, t_rows, indptr, tcode, scores, lim, s_ptr, s_code, k, n_codes,
                     bounds):  # pragma: no cover - numba
    """Per user: acc[j] += score over the triggers' rows (row order, float64), seen removed, top-k by
    (score desc, code asc). One dense accumulator per thread; only touched entries are reset."""
    n = len(t_ptr) - 1
    out = np.full((n, k), -1, np.int64)
    out_sc = np.full((n, k), -np.inf, np.float32)
    pool_size = np.zeros(n, np.int64)
    for c in prange(len(bounds) - 1):
        acc = np.zeros(n_codes, np.float64)
        hit = np.zeros(n_codes, np.bool_)
        banned = np.zeros(n_codes, np.bool_)
        touched = np.empty(n_codes, np.int64)
        for u in range(bounds[c], bounds[c + 1]):
            m = 0
            for t in range(t_ptr[u], t_ptr[u + 1]):
                r = t_rows[t]
                if r < 0:
                    continue
                a = indptr[r]
                b = min(indptr[r + 1], a + lim)
                for e in range(a, b):
                    j = tcode[e]
                    if not hit[j]:
                        hit[j] = True
                        touched[m] = j
                        m += 1
                    acc[j] += scores[e]
            for s in range(s_ptr[u], s_ptr[u + 1]):
                if s_code[s] >= 0:
                    banned[s_code[s]] = True
            cand = np.empty(m, np.int64)
            mc = 0
            for x in range(m):
                j = touched[x]
                if not banned[j]:
                    cand[mc] = j
                    mc += 1
            cand = np.sort(cand[:mc])
            pool_size[u] = mc
            sc = np.empty(mc, np.float64)
            for x in range(mc):
                sc[x] = -acc[cand[x]]
            order = np.argsort(sc, kind="mergesort")  # stable: ties keep ascending code = smaller id
            for x in range(min(k, mc)):
                out[u, x] = cand[order[x]]
                out_sc[u, x] = acc[cand[order[x]]]
            for x in range(m):
                j = touched[x]
                acc[j] = 0.0
                hit[j] = False
            for s in range(s_ptr[u], s_ptr[u + 1]):
                if s_code[s] >= 0:
                    banned[s_code[s]] = False
    return out, out_sc, pool_size


class PairSet:
    """The (trigger, target) pairs of an i2i index (rows cut to ``limit``) as sorted int64 keys, for
    vectorised membership tests: is ``target`` in ``trigger``'s row?"""

    def __init__(self, i2i: I2IIndex, limit: int | None = None):
        self.i2i = i2i
        self.vocab = np.unique(i2i.targets)
        lens = np.diff(i2i.indptr)
        rank = np.arange(len(i2i.targets)) - np.repeat(i2i.indptr[:-1], lens)
        keep = rank < limit if limit is not None else np.ones(len(rank), bool)
        rows = np.repeat(np.arange(len(i2i), dtype=np.int64), lens)[keep]
        self.span = np.int64(len(self.vocab) + 1)
        keys = rows * self.span + np.searchsorted(self.vocab, i2i.targets[keep])
        order = np.argsort(keys, kind="stable")
        self.keys, self.pair = keys[order], np.flatnonzero(keep)[order]

    def find(self, triggers: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Index into the i2i arrays of each (trigger, target) pair; -1 where the row does not hold it."""
        rid = self.i2i.row_ids(np.asarray(triggers, np.int64))
        code = _lookup(self.vocab, np.arange(len(self.vocab), dtype=np.int64), np.asarray(targets, np.int64))
        key = rid * self.span + code
        if not len(self.keys):
            return np.full(len(key), -1, np.int64)
        at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return np.where((rid >= 0) & (code >= 0) & (self.keys[at] == key), self.pair[at], -1)

    def contains(self, triggers: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return self.find(triggers, targets) >= 0


def pool_membership(pairs: PairSet, triggers: CSR, q_rows: np.ndarray, q_items: np.ndarray,
                    seen: CSR | None = None) -> np.ndarray:
    """Whether each query (user row, item) is in the user's candidate pool: the union of its triggers' rows
    (as held by ``pairs``), seen items removed."""
    t_ptr, t_items = triggers
    q_rows = np.asarray(q_rows, np.int64)
    q_items = np.asarray(q_items, np.int64)
    lens = t_ptr[q_rows + 1] - t_ptr[q_rows]
    offs = np.cumsum(lens) - lens
    idx = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(offs, lens) + np.repeat(t_ptr[q_rows], lens)
    qi = np.repeat(np.arange(len(q_rows)), lens)
    hit = pairs.contains(t_items[idx], q_items[qi])
    out = np.zeros(len(q_rows), bool)
    out[qi[hit]] = True
    if seen is not None:
        out &= not_seen(q_rows, q_items, seen)
    return out


def trigger_contributions(i2i: I2IIndex, triggers: CSR, ranked: np.ndarray,
                          limit: int | None = None) -> list[list[list[tuple[int, float]]]]:
    """Per user, per ranked item: the triggers whose (cut) row holds it with their Swing score, strongest
    first — the explanation of a summed-score I2I list."""
    users, trig, targets, scores = gather_rows(i2i, triggers, limit)
    n, k = ranked.shape
    pos_users = np.repeat(np.arange(n, dtype=np.int64), k)
    flat = ranked.ravel()
    ok = flat != PAD
    vocab = np.unique(flat[ok])
    rkeys = _pair_keys(pos_users[ok], flat[ok], vocab)
    order = np.argsort(rkeys, kind="stable")
    skeys, spos = rkeys[order], np.flatnonzero(ok)[order]
    gkeys = _pair_keys(users, targets, vocab)
    at = np.minimum(np.searchsorted(skeys, gkeys), max(len(skeys) - 1, 0))
    m = (skeys[at] == gkeys) if len(skeys) else np.zeros(len(gkeys), bool)
    slot, trig, scores = spos[at[m]], trig[m], scores[m]
    o = np.lexsort((trig, -scores.astype(np.float64), slot))
    why: list[list[list[tuple[int, float]]]] = [[[] for _ in range(int((ranked[u] != PAD).sum()))]
                                                for u in range(n)]
    for s, t, sc in zip(slot[o].tolist(), trig[o].tolist(), scores[o].tolist()):
        why[s // k][s % k].append((int(t), float(sc)))
    return why
