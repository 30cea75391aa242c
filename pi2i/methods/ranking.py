"""Small ranking helpers shared by the learned methods (EASE, PDN, MTMH): dense and sparse top-k with the
user's seen items excluded, PAD-padded, ties broken by the smaller item id (deterministic everywhere)."""

from __future__ import annotations

import numpy as np

from pi2i.methods.base import PAD, Histories


def item_codes(vocab: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Position of each raw item id in the sorted ``vocab``, -1 where absent."""
    items = np.asarray(items, np.int64)
    if not len(vocab):
        return np.full(items.shape, -1, np.int64)
    at = np.minimum(np.searchsorted(vocab, items), len(vocab) - 1)
    return np.where(vocab[at] == items, at, -1).astype(np.int64)


def dense_topk(scores: np.ndarray, k: int, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns of each row of ``scores`` (n, V) over ``item_ids`` (V,) sorted ascending.

    ``-inf`` entries never appear; returns ``(items (n, k) PAD-padded, scores (n, k) float32, -inf at PAD)``;
    ties keep the smaller item id."""
    n, v = scores.shape
    kk = min(k, v)
    items = np.full((n, k), PAD, np.int64)
    out = np.full((n, k), -np.inf, np.float32)
    if kk == 0 or n == 0:
        return items, out
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < v else np.tile(np.arange(v), (n, 1))
    ps = np.take_along_axis(scores, part, 1)
    # inside the kept set: score desc, column (= item id order) asc
    order = np.lexsort((part, -ps.astype(np.float64)), axis=1)
    cols = np.take_along_axis(part, order, 1)
    s = np.take_along_axis(ps, order, 1)
    ok = np.isfinite(s)
    # argpartition may cut a tie at the boundary arbitrarily: recompute boundary ties exactly
    if kk < v:
        thr = s[:, -1:]
        tied = (scores == thr).sum(1) > (s == thr).sum(1)
        for r in np.flatnonzero(tied & ok[:, -1]):
            row = scores[r]
            o = np.lexsort((np.arange(v), -row.astype(np.float64)))[:kk]
            cols[r], s[r] = o, row[o]
    items[:, :kk] = np.where(ok, item_ids[cols], PAD)
    out[:, :kk] = np.where(ok, s, -np.inf).astype(np.float32)
    return items, out


def sparse_topk(rows: np.ndarray, items: np.ndarray, scores: np.ndarray, n_rows: int, k: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best ``k`` (item, score) per row of unique (row, item) triples. Returns ``(items (n, k), scores (n, k),
    index (n, k))`` where ``index`` points into the inputs (-1 at PAD); ties keep the smaller item id."""
    order = np.lexsort((items, -np.asarray(scores, np.float64), rows))
    r = rows[order]
    counts = np.bincount(r, minlength=n_rows)
    rank = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < k
    out_i = np.full((n_rows, k), PAD, np.int64)
    out_s = np.full((n_rows, k), -np.inf, np.float32)
    out_x = np.full((n_rows, k), -1, np.int64)
    sel = order[keep]
    out_i[r[keep], rank[keep]] = items[sel]
    out_s[r[keep], rank[keep]] = scores[sel]
    out_x[r[keep], rank[keep]] = sel
    return out_i, out_s, out_x


def seen_mask_pairs(batch: Histories, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True where ``items[x]`` is in the history of batch row ``rows[x]``."""
    if not len(rows) or not len(batch.items):
        return np.zeros(len(rows), bool)
    vocab = np.unique(batch.items)
    hist_rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(batch.indptr))
    base = np.int64(len(vocab) + 1)
    seen = hist_rows * base + item_codes(vocab, batch.items)
    code = item_codes(vocab, items)
    return (code >= 0) & np.isin(rows * base + code, seen)


def distinct_recent(batch: Histories, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per batch row the last ``n`` distinct items, most recent first: ``(indptr, items, latest_ts)``."""
    rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(batch.indptr))
    back = np.asarray(batch.indptr)[rows + 1] - np.arange(len(batch.items))  # 1 = newest
    order = np.lexsort((back, batch.items, rows))
    r, it, b, ts = rows[order], batch.items[order], back[order], batch.ts[order]
    first = np.ones(len(r), bool)
    first[1:] = (r[1:] != r[:-1]) | (it[1:] != it[:-1])
    r, it, b, ts = r[first], it[first], b[first], ts[first]
    order = np.lexsort((b, r))
    r, it, ts = r[order], it[order], ts[order]
    counts = np.bincount(r, minlength=len(batch))
    rank = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < n
    indptr = np.zeros(len(batch) + 1, np.int64)
    np.cumsum(np.bincount(r[keep], minlength=len(batch)), out=indptr[1:])
    return indptr, it[keep], ts[keep]
