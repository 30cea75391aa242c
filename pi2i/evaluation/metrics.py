"""Retrieval metrics over many users at once: HR@K (paper Eq. 5), recall@K, NDCG@K and category coverage.

Inputs, shared by every method so all are scored by the same code:

* ``ranked``: a padded 2-D ``int64`` array, one row per test user, best item first; ``PAD`` (-1) fills rows
  shorter than the widest one. A repeated item in a row counts once, at its first position.
* the test sets as CSR: ``test_indptr`` (``n_users + 1``) and ``test_items`` — user ``u`` clicked, after the
  cut, the distinct items ``test_items[test_indptr[u]:test_indptr[u+1]]``. Every user has at least one.

The core step finds, for every (user, test item) pair, the 0-based position of the item in that user's ranked
list (``ABSENT`` when absent): the few test pairs are sorted as (user, item) keys and every list entry is looked
up among them with ``searchsorted`` — no per-user Python, no sort of the lists. Every metric at every K then follows from those positions by ``bincount``:

* ``hr@K``   = mean over users of |top-K ∩ clicked_after| / |clicked_after|            (paper Eq. 5: macro recall)
* ``recall@K`` = Σ_u |top-K ∩ clicked_after| / Σ_u |clicked_after|                       (pooled / micro recall)
* ``ndcg@K`` = mean over users of DCG@K / IDCG@K, binary gains, IDCG with min(K, |clicked_after|) hits
* ``category_coverage@K`` = mean over users (with a known test category) of the fraction of the categories
  of their clicked-after items present among the categories of their top-K      (coarse, category-level HR)
* ``catalog_category_coverage@K`` = fraction of the catalog's categories that appear in at least one user's
  top-K (aggregate diversity)

Users are processed in chunks so memory stays at ``chunk × n_cols`` whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = -1
ABSENT = np.int64(2**62)  # position of an item not in the list: beyond every K
DEFAULT_KS: tuple[int, ...] = (20, 50, 100, 200, 500, 1000, 2000, 4000)


def k_ladder(ks: Sequence[int], max_len: int) -> list[int]:
    """The K values that the data allows: those not larger than ``max_len``.

    ``max_len`` is the longest list any method can produce — at most the number of candidate items (the
    train-period catalog). A K beyond it only repeats the value at ``max_len`` for every method, so it is
    dropped. If every K is too large, ``[max_len]`` alone is kept so there is always one column.
    """
    ks = sorted({int(k) for k in ks if int(k) >= 1})
    kept = [k for k in ks if k <= max_len]
    if not kept and max_len >= 1:
        kept = [int(max_len)]
    return kept


def csr_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of distinct items per user from (user index, item) pairs; users are 0..n_users-1."""
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    if len(users):
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        keep = np.ones(len(users), bool)
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[keep], items[keep]
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items


def pad_lists(lists: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Stack variable-length ranked lists into the padded ``int64`` array the metrics take."""
    lens = np.fromiter((len(x) for x in lists), np.int64, count=len(lists))
    w = int(lens.max(initial=0)) if width is None else int(width)
    out = np.full((len(lists), w), PAD, np.int64)
    if len(lists) and w:
        lens = np.minimum(lens, w)
        flat = np.concatenate([np.asarray(x, np.int64)[:w] for x in lists]) if lens.sum() else np.empty(0, np.int64)
        rows = np.repeat(np.arange(len(lists)), lens)
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        out[rows, cols] = flat
    return out


def _first_positions(codes: np.ndarray, q_users: np.ndarray, q_codes: np.ndarray) -> np.ndarray:
    """Position (0-based) of each query (user row, code) in the 2-D ``codes`` (-1 = pad / not a query code);
    ``ABSENT`` where absent. Queries must be distinct pairs.

    Only the few query pairs are sorted; every list entry is looked up among them (``searchsorted``), and
    ``np.minimum.at`` keeps the first (smallest) position of a repeated item.
    """
    n, w = codes.shape
    pos = np.full(len(q_users), ABSENT, np.int64)
    if not len(q_users) or not w:
        return pos
    span = np.int64(max(int(codes.max(initial=0)), int(q_codes.max(initial=0))) + 1)
    qk = q_users * span + q_codes
    order = np.argsort(qk, kind="stable")
    sq = qk[order]
    valid = codes >= 0
    keys = (np.arange(n, dtype=np.int64)[:, None] * span + codes)[valid]
    cols = np.broadcast_to(np.arange(w, dtype=np.int64)[None, :], (n, w))[valid]
    at = np.minimum(np.searchsorted(sq, keys), len(sq) - 1)
    match = sq[at] == keys
    np.minimum.at(pos, order[at[match]], cols[match])
    return pos


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, a: np.ndarray, default: int = -1) -> np.ndarray:
    """values[i] where sorted_keys[i] == a, else ``default`` (vectorised dictionary lookup)."""
    a = np.asarray(a, np.int64)
    if not len(sorted_keys):
        return np.full(a.shape, default, np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, a), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == a, values[at], default).astype(np.int64)


class MetricAccumulator:
    """Accumulates per-user metric terms over chunks of users; :meth:`result` gives the means.

    Methods that produce their lists chunk by chunk (to bound memory) feed each chunk with :meth:`add`;
    :func:`ranking_metrics` is the one-shot form.
    """

    def __init__(self, ks: Sequence[int], item_categories: tuple[np.ndarray, np.ndarray] | None = None):
        self.ks = [int(k) for k in ks]
        self._kk = np.asarray(self.ks, np.int64)[:, None]
        self.n = 0
        self.size_sum = 0
        self.hr = np.zeros(len(self.ks))
        self.hits = np.zeros(len(self.ks))
        self.ndcg = np.zeros(len(self.ks))
        self.cat_cov = np.zeros(len(self.ks))
        self.cat_n = 0
        self._ideal = np.cumsum(1.0 / np.log2(np.arange(max(self.ks, default=1)) + 2.0))
        self.cat_ids = None
        if item_categories is not None:
            ids, cats = (np.asarray(x, np.int64) for x in item_categories)
            order = np.argsort(ids, kind="stable")
            uc, cinv = np.unique(cats[order], return_inverse=True)
            self.cat_ids, self.cat_codes, self.n_cats = ids[order], cinv.astype(np.int64), len(uc)
            self.cat_first = np.full(max(self.n_cats, 1), ABSENT, np.int64)

    def _cats(self, a: np.ndarray) -> np.ndarray:
        return _lookup(self.cat_ids, self.cat_codes, a)

    def add(self, ranked: np.ndarray, test_indptr: np.ndarray, test_items: np.ndarray) -> None:
        ranked = np.asarray(ranked, np.int64)
        test_indptr = np.asarray(test_indptr, np.int64) - int(test_indptr[0])
        test_items = np.asarray(test_items, np.int64)[: test_indptr[-1]] if len(test_indptr) else test_items[:0]
        n = len(test_indptr) - 1
        if ranked.ndim != 2 or ranked.shape[0] != n:
            raise ValueError(f"ranked must be (n_users={n}, width); got {ranked.shape}")
        if n == 0:
            return
        sizes = np.diff(test_indptr)
        if sizes.min() < 1:
            raise ValueError("every test user needs at least one clicked-after item")
        vocab = np.unique(test_items)  # only test items can hit: other list entries get code -1
        code = np.arange(len(vocab), dtype=np.int64)
        q_users = np.repeat(np.arange(n, dtype=np.int64), sizes)
        pos = _first_positions(_lookup(vocab, code, ranked), q_users, _lookup(vocab, code, test_items))
        inside = pos[None, :] < self._kk  # (n_ks, n_pairs)
        gain = np.where(pos < ABSENT, 1.0 / np.log2(np.minimum(pos, 2**40) + 2.0), 0.0)
        for j, k in enumerate(self.ks):
            h = np.bincount(q_users, weights=inside[j], minlength=n)
            d = np.bincount(q_users, weights=inside[j] * gain, minlength=n)
            self.hr[j] += np.sum(h / sizes)
            self.hits[j] += h.sum()
            self.ndcg[j] += np.sum(d / self._ideal[np.minimum(sizes, k) - 1])
        self.n += n
        self.size_sum += int(sizes.sum())
        if self.cat_ids is None:
            return
        tc = self._cats(test_items)
        known = tc >= 0
        cu, cc = q_users[known], tc[known]
        if len(cu):  # distinct (user, category) test pairs
            key = np.unique(cu * np.int64(self.n_cats + 1) + cc)
            cu, cc = key // (self.n_cats + 1), key % (self.n_cats + 1)
        rc = self._cats(ranked)  # PAD is never an item id: -1
        cpos = _first_positions(rc, cu, cc)
        ncat = np.bincount(cu, minlength=n)
        self.cat_n += int((ncat > 0).sum())
        valid = rc >= 0  # earliest position at which each category appears in any list
        cols = np.broadcast_to(np.arange(rc.shape[1], dtype=np.int64)[None, :], rc.shape)[valid]
        np.minimum.at(self.cat_first, rc[valid], cols)
        for j, k in enumerate(self.ks):
            got = np.bincount(cu, weights=cpos < k, minlength=n)
            self.cat_cov[j] += np.sum(got[ncat > 0] / ncat[ncat > 0])

    def result(self) -> dict[str, dict[int, float]]:
        nan = float("nan")
        n = self.n
        out: dict[str, dict[int, float]] = {
            "hr": {k: float(self.hr[j] / n) if n else nan for j, k in enumerate(self.ks)},
            "recall": {k: float(self.hits[j] / self.size_sum) if n else nan for j, k in enumerate(self.ks)},
            "ndcg": {k: float(self.ndcg[j] / n) if n else nan for j, k in enumerate(self.ks)},
        }
        if self.cat_ids is not None:
            out["category_coverage"] = {k: float(self.cat_cov[j] / self.cat_n) if self.cat_n else nan
                                        for j, k in enumerate(self.ks)}
            out["catalog_category_coverage"] = {
                k: float((self.cat_first < k).sum() / self.n_cats) if self.n_cats else nan
                for j, k in enumerate(self.ks)}
        return out


def ranking_metrics(ranked: np.ndarray, test_indptr: np.ndarray, test_items: np.ndarray, ks: Sequence[int],
                    item_categories: tuple[np.ndarray, np.ndarray] | None = None,
                    chunk_users: int = 4096) -> dict[str, dict[int, float]]:
    """HR / recall / NDCG / category coverage at every K in ``ks`` (see the module docstring).

    ``item_categories`` is ``(item_ids, category_ids)`` from the items table; without it the category
    metrics are left out. Returns ``{metric: {K: value}}``; NaN when there are no test users.
    """
    test_indptr = np.asarray(test_indptr, np.int64)
    n = len(test_indptr) - 1
    ranked = np.asarray(ranked, np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != n:
        raise ValueError(f"ranked must be (n_users={n}, width); got {ranked.shape}")
    acc = MetricAccumulator(ks, item_categories)
    for a in range(0, n, chunk_users):
        b = min(n, a + chunk_users)
        acc.add(ranked[a:b], test_indptr[a:b + 1], test_items[test_indptr[a]:])
    return acc.result()


def set_hit_rate(pool_users: np.ndarray, pool_items: np.ndarray, test_indptr: np.ndarray,
                 test_items: np.ndarray) -> tuple[float, np.ndarray]:
    """HR of an unordered candidate set per user: mean of |pool_u ∩ clicked_after_u| / |clicked_after_u|.

    ``pool_users`` are user row indices (0..n-1), ``pool_items`` the candidate item ids (duplicates allowed).
    This is the ceiling any re-ranking of that pool can reach at any K. Returns (HR, per-user hit counts).
    """
    test_indptr = np.asarray(test_indptr, np.int64)
    test_items = np.asarray(test_items, np.int64)
    n = len(test_indptr) - 1
    sizes = np.diff(test_indptr)
    q_users = np.repeat(np.arange(n, dtype=np.int64), sizes)
    vocab = np.unique(test_items)
    at = np.searchsorted(vocab, pool_items)
    at_c = np.minimum(at, max(len(vocab) - 1, 0))
    ok = (vocab[at_c] == pool_items) if len(vocab) else np.zeros(len(pool_items), bool)
    span = np.int64(len(vocab) + 1)
    pool_keys = np.unique(np.asarray(pool_users, np.int64)[ok] * span + at_c[ok])
    test_keys = q_users * span + np.searchsorted(vocab, test_items)
    hit = np.isin(test_keys, pool_keys, assume_unique=False)
    per_user = np.bincount(q_users, weights=hit, minlength=n)
    return (float(np.mean(per_user / sizes)) if n else float("nan")), per_user
