"""Non-learned methods that PI2I is compared against, over many users at once (no per-user Python).

Every user is described by CSR arrays over user rows ``0..n-1``:

* ``history``: the last clicks before the cut, oldest first (what the scorer receives, see evaluate);
* ``triggers``: the last ``L`` *distinct* clicks, most recent first (paper §3.2: the trigger list);
* ``seen``: items never recommended to that user (the exclusion policy of evaluate).

Methods:

* :func:`popularity_lists` — the train period's most clicked items, the same for everybody but the seen ones;
* :func:`i2i_lists` — item-based CF as traditionally served: the union of the triggers' i2i rows (each cut to a
  uniform ``truncation``, paper Fig. 2a), each candidate scored by its Swing score summed over the triggers
  whose row holds it, best ``k`` kept (ties: smaller item id);
  (a numba pass per user with a dense per-thread accumulator: O(pairs), no global sort);
* :func:`pool_pairs` — the whole candidate pool (untruncated rows) as (user, item) pairs: its HR as a set is the
  ceiling any re-ranking of the pool, PI2I included, can reach.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit, prange

from pi2i.ibs.i2i import I2IIndex
from pi2i.evaluation.metrics import PAD

CSR = tuple[np.ndarray, np.ndarray]


def _rows_of(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def user_histories(events: pa.Table, users: np.ndarray, length: int, behaviors: tuple[str, ...] = ("click",),
                   dedup_consecutive: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last ``length`` clicks (events of ``behaviors``) per user in ``users`` (sorted ids), oldest first.

    With ``dedup_consecutive`` back-to-back repeats of one item collapse to the first (as the PRS sampler's
    click sequences do, so the scorer sees the history it was trained on). Returns CSR ``(indptr, items,
    ts_us)`` aligned with ``users``; ties in time keep file order.
    """
    ev = events.filter(pc.is_in(events.column("behavior"), pa.array(list(behaviors))))
    u = ev.column("user_id").to_numpy().astype(np.int64)
    it = ev.column("item_id").to_numpy().astype(np.int64)
    ts = ev.column("ts").cast(pa.int64()).to_numpy().astype(np.int64)
    row = np.searchsorted(users, u)
    row_c = np.minimum(row, max(len(users) - 1, 0))
    keep = (users[row_c] == u) if len(users) else np.zeros(len(u), bool)
    row, it, ts = row_c[keep], it[keep], ts[keep]
    order = np.lexsort((np.arange(len(row)), ts, row))
    row, it, ts = row[order], it[order], ts[order]
    if dedup_consecutive and len(row):
        keep = np.ones(len(row), bool)
        keep[1:] = (row[1:] != row[:-1]) | (it[1:] != it[:-1])
        row, it, ts = row[keep], it[keep], ts[keep]
    counts = np.bincount(row, minlength=len(users))
    ends = np.cumsum(counts)
    pos_from_end = ends[row] - np.arange(len(row))  # 1 = newest
    keep = pos_from_end <= length
    row, it, ts = row[keep], it[keep], ts[keep]
    indptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=len(users)), out=indptr[1:])
    return indptr, it, ts


def last_distinct(indptr: np.ndarray, items: np.ndarray, n: int) -> CSR:
    """Per user the last ``n`` distinct items of a history (oldest first in), most recent first out."""
    rows = _rows_of(indptr)
    back = indptr[rows + 1] - np.arange(len(items))  # 1 = newest
    order = np.lexsort((back, items, rows))
    r, it, b = rows[order], items[order], back[order]
    first = np.ones(len(r), bool)
    first[1:] = (r[1:] != r[:-1]) | (it[1:] != it[:-1])
    r, it, b = r[first], it[first], b[first]
    order = np.lexsort((b, r))
    r, it = r[order], it[order]
    counts = np.bincount(r, minlength=len(indptr) - 1)
    rank = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < n
    out = np.zeros(len(indptr), np.int64)
    np.cumsum(np.bincount(r[keep], minlength=len(indptr) - 1), out=out[1:])
    return out, it[keep]


def _pair_keys(users: np.ndarray, items: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """int64 key of (user row, item) via dense item codes in ``vocab`` (sorted); -1 code for unknown items."""
    at = np.minimum(np.searchsorted(vocab, items), max(len(vocab) - 1, 0))
    code = np.where((vocab[at] == items) if len(vocab) else False, at, len(vocab))
    return users * np.int64(len(vocab) + 1) + code


def _drop_seen(users: np.ndarray, items: np.ndarray, seen: CSR | None) -> np.ndarray:
    """Mask of (user, item) pairs NOT in the user's seen set."""
    if seen is None or not len(seen[1]):
        return np.ones(len(users), bool)
    s_ptr, s_items = seen
    vocab = np.unique(s_items)
    s_keys = _pair_keys(_rows_of(s_ptr), s_items, vocab)
    return ~np.isin(_pair_keys(users, items, vocab), s_keys)


def topk_pairs(users: np.ndarray, items: np.ndarray, scores: np.ndarray, n_users: int, k: int) -> np.ndarray:
    """Padded (n_users, k) array of each user's best ``k`` items by score (ties: smaller item id)."""
    order = np.lexsort((items, -scores.astype(np.float64), users))
    u, it = users[order], items[order]
    counts = np.bincount(u, minlength=n_users)
    rank = np.arange(len(u)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < k
    out = np.full((n_users, k), PAD, np.int64)
    out[u[keep], rank[keep]] = it[keep]
    return out


def popularity_ranking(events: pa.Table, behaviors: tuple[str, ...] = ("click",)) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, counts) of the period's events of ``behaviors``, most popular first (ties: smaller id)."""
    ev = events.filter(pc.is_in(events.column("behavior"), pa.array(list(behaviors))))
    items, counts = np.unique(ev.column("item_id").to_numpy().astype(np.int64), return_counts=True)
    order = np.lexsort((items, -counts))
    return items[order], counts[order]


def popularity_lists(popular: np.ndarray, n_users: int, k: int, seen: CSR | None = None) -> np.ndarray:
    """Top-``k`` popular items per user, the user's seen items removed (so lists stay ``k`` long)."""
    if seen is None:
        seen = (np.zeros(n_users + 1, np.int64), np.empty(0, np.int64))
    s_ptr, s_items = seen
    order = np.argsort(popular, kind="stable")
    rank_of_seen = _lookup_rank(popular[order], order, s_items)  # popularity rank of each seen item, -1 if none
    return _pop_kernel(np.asarray(popular, np.int64), s_ptr, rank_of_seen, k, n_users)


def _lookup_rank(sorted_ids: np.ndarray, pos: np.ndarray, a: np.ndarray) -> np.ndarray:
    if not len(sorted_ids):
        return np.full(len(a), -1, np.int64)
    at = np.minimum(np.searchsorted(sorted_ids, a), len(sorted_ids) - 1)
    return np.where(sorted_ids[at] == a, pos[at], -1).astype(np.int64)


@njit(parallel=True, cache=True)
def _pop_kernel(popular, s_ptr, s_rank, k, n_users):  # pragma: no cover - numba
    out = np.full((n_users, k), -1, np.int64)
    for u in prange(n_users):
        # seen ranks sorted: walk the popularity list skipping them
        sr = np.sort(s_rank[s_ptr[u]:s_ptr[u + 1]])
        j = 0
        c = 0
        r = 0
        while c < k and r < len(popular):
            while j < len(sr) and sr[j] < r:
                j += 1
            if not (j < len(sr) and sr[j] == r):
                out[u, c] = popular[r]
                c += 1
            r += 1
    return out


def gather_rows(i2i: I2IIndex, triggers: CSR, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All (user, trigger, target, score) of the triggers' i2i rows, each row cut to ``limit``."""
    t_ptr, t_items = triggers
    t_users = _rows_of(t_ptr)
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
              seen: CSR | None = None, test: CSR | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classic item-based CF: candidates from the triggers' rows (cut to ``truncation``), summed scores.

    Returns the padded ``(n_users, k)`` best-first lists. With ``test`` given, also returns, from the same pass,
    the pool size per user and a flag per test pair telling whether the (truncated) pool holds it.
    """
    n = len(triggers[0]) - 1
    vocab, tcode = np.unique(i2i.targets, return_inverse=True)  # code order = id order (tie-break)
    code = np.arange(len(vocab), dtype=np.int64)
    t_ptr, t_items = triggers
    s_ptr, s_items = seen if seen is not None else (np.zeros(n + 1, np.int64), np.empty(0, np.int64))
    q_ptr, q_items = test if test is not None else (np.zeros(n + 1, np.int64), np.empty(0, np.int64))
    lim = int(np.diff(i2i.indptr).max(initial=0)) if truncation is None else int(truncation)
    threads = max(1, min(numba.get_num_threads(), n))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    out_codes, pool_size, in_pool = _sum_topk_kernel(
        t_ptr, i2i.row_ids(t_items), i2i.indptr, tcode.astype(np.int64).ravel(), i2i.scores, lim,
        s_ptr, _lookup(vocab, code, s_items), q_ptr, _lookup(vocab, code, q_items), k, len(vocab), bounds)
    ranked = np.where(out_codes >= 0, vocab[np.maximum(out_codes, 0)] if len(vocab) else PAD, PAD)
    if test is None:
        return ranked
    return ranked, pool_size, in_pool


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.int64)
    if not len(sorted_keys):
        return np.full(len(a), -1, np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, a), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == a, values[at], -1).astype(np.int64)


@njit(parallel=True, cache=True)
def _sum_topk_kernel(t_ptr, t_rows, indptr, tcode, scores, lim, s_ptr, s_code, q_ptr, q_code, k, n_codes,
                     bounds):  # pragma: no cover - numba
    """Per user: acc[j] += score over the triggers' rows (row order, float64), seen removed, top-k by
    (score desc, code asc). One dense accumulator per thread; only touched entries are reset."""
    n = len(t_ptr) - 1
    out = np.full((n, k), -1, np.int64)
    pool_size = np.zeros(n, np.int64)
    in_pool = np.zeros(len(q_code), np.bool_)
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
            for q in range(q_ptr[u], q_ptr[u + 1]):
                j = q_code[q]
                in_pool[q] = j >= 0 and hit[j] and not banned[j]
            sc = np.empty(mc, np.float64)
            for x in range(mc):
                sc[x] = -acc[cand[x]]
            order = np.argsort(sc, kind="mergesort")  # stable: ties keep ascending code = smaller id
            for x in range(min(k, mc)):
                out[u, x] = cand[order[x]]
            for x in range(m):
                j = touched[x]
                acc[j] = 0.0
                hit[j] = False
            for s in range(s_ptr[u], s_ptr[u + 1]):
                if s_code[s] >= 0:
                    banned[s_code[s]] = False
    return out, pool_size, in_pool


def pool_pairs(i2i: I2IIndex, triggers: CSR, seen: CSR | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs of the full candidate pool (every trigger's whole row), seen items removed."""
    users, _, targets, _ = gather_rows(i2i, triggers)
    keep = _drop_seen(users, targets, seen)
    return users[keep], targets[keep]
