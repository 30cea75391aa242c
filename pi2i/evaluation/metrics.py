"""Retrieval metrics over many users at once: HR@K (paper Eq. 5), recall, NDCG, relevance, coverage, tail HR.

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
* ``tail_hr@K`` = HR (Eq. 5) over the test clicks on long-tail items only, mean over users with at least one
  (which items are long-tail is the caller's ``tail`` mask over the test pairs)
* ``relevance@K`` = mean over users of the share of their top-K items (of known category) whose category is
  one of the categories of the user's recent items (MTMH's semantic relevance, user level)
* ``coverage@K`` = mean over users (with a known test category) of the fraction of the categories of their
  clicked-after items present among the categories of their top-K      (category coverage: coarse HR)
* ``catalog_coverage@K`` = fraction of the catalog's categories that appear in at least one user's top-K
  (aggregate diversity)

The category metrics need item categories; without them they are left out. A candidate *set* (a pool, not
a ranking) is scored by :meth:`MetricAccumulator.add_set`: its HR is the same at every K.

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
        self.tail_hr = np.zeros(len(self.ks))
        self.tail_n = 0
        self.rel = np.zeros(len(self.ks))
        self.rel_n = np.zeros(len(self.ks), np.int64)
        self.set_hr = 0.0
        self.set_tail_hr = 0.0
        self.set_n = 0
        self.set_tail_n = 0
        self._set_user_hr: list[np.ndarray] = []
        self._user_hr: list[np.ndarray] = []  # per chunk (n, len(ks)): the paired gate needs per-user HR
        self._ideal = np.cumsum(1.0 / np.log2(np.arange(max(self.ks, default=1)) + 2.0))
        self.cat_ids: np.ndarray | None = None
        self.cat_codes = np.empty(0, np.int64)
        self.n_cats = 0
        if item_categories is not None:
            ids, cats = (np.asarray(x, np.int64) for x in item_categories)
            order = np.argsort(ids, kind="stable")
            uc, cinv = np.unique(cats[order], return_inverse=True)
            self.cat_ids, self.cat_codes, self.n_cats = ids[order], cinv.astype(np.int64), len(uc)
            self.cat_first = np.full(max(self.n_cats, 1), ABSENT, np.int64)

    def _cats(self, a: np.ndarray) -> np.ndarray:
        assert self.cat_ids is not None
        return _lookup(self.cat_ids, self.cat_codes, a)

    def add(self, ranked: np.ndarray, test_indptr: np.ndarray, test_items: np.ndarray,
            tail: np.ndarray | None = None, recent: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """One chunk of users: ``ranked`` lists, test CSR, optional long-tail mask over the test pairs and the
        users' recent items as CSR (for relevance)."""
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
        user_hr = np.zeros((n, len(self.ks)))
        tail_w = None if tail is None else np.asarray(tail, bool)[: len(q_users)].astype(np.float64)
        tail_sizes = None if tail_w is None else np.bincount(q_users, weights=tail_w, minlength=n)
        for j, k in enumerate(self.ks):
            h = np.bincount(q_users, weights=inside[j], minlength=n)
            d = np.bincount(q_users, weights=inside[j] * gain, minlength=n)
            user_hr[:, j] = h / sizes
            self.hits[j] += h.sum()
            self.ndcg[j] += np.sum(d / self._ideal[np.minimum(sizes, k) - 1])
            if tail_w is not None and tail_sizes is not None:
                th = np.bincount(q_users, weights=inside[j] * tail_w, minlength=n)
                self.tail_hr[j] += np.sum(th[tail_sizes > 0] / tail_sizes[tail_sizes > 0])
        self.hr += user_hr.sum(0)
        self._user_hr.append(user_hr)
        if tail_sizes is not None:
            self.tail_n += int((tail_sizes > 0).sum())
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
        if recent is not None:
            self._add_relevance(rc, recent)

    def _add_relevance(self, rc: np.ndarray, recent: tuple[np.ndarray, np.ndarray]) -> None:
        """relevance@K: share of the top-K items (of known category) in a category of the user's recent items."""
        n, w = rc.shape
        r_ptr, r_items = (np.asarray(x, np.int64) for x in recent)
        r_ptr = r_ptr - r_ptr[0]
        r_cat = self._cats(r_items[: r_ptr[-1]])
        r_users = np.repeat(np.arange(n, dtype=np.int64), np.diff(r_ptr))
        span = np.int64(self.n_cats + 1)
        keys = np.unique((r_users * span + r_cat)[r_cat >= 0])
        has_recent = np.bincount(r_users[r_cat >= 0], minlength=n) > 0
        known = rc >= 0
        lk = np.arange(n, dtype=np.int64)[:, None] * span + rc
        relevant = known & np.isin(lk, keys)
        known_cum = np.cumsum(known, axis=1)
        rel_cum = np.cumsum(relevant, axis=1)
        for j, k in enumerate(self.ks):
            if w == 0:
                break
            c = min(k, w) - 1
            ok = has_recent & (known_cum[:, c] > 0)
            self.rel[j] += np.sum(rel_cum[ok, c] / known_cum[ok, c])
            self.rel_n[j] += int(ok.sum())

    def add_set(self, in_set: np.ndarray, test_indptr: np.ndarray, tail: np.ndarray | None = None) -> None:
        """One chunk of users scored as a candidate *set*: ``in_set`` flags each test pair found in the user's
        set. HR of a set = mean over users of |set ∩ clicked_after| / |clicked_after| (the ceiling of any
        ranking of it); ``tail`` as in :meth:`add`."""
        test_indptr = np.asarray(test_indptr, np.int64) - int(test_indptr[0])
        n = len(test_indptr) - 1
        sizes = np.diff(test_indptr)
        q_users = np.repeat(np.arange(n, dtype=np.int64), sizes)
        hit = np.asarray(in_set, np.float64)
        per_user = np.bincount(q_users, weights=hit, minlength=n) / np.maximum(sizes, 1)
        self.set_hr += float(per_user.sum())
        self.set_n += n
        self._set_user_hr.append(per_user)
        if tail is not None:
            tw = np.asarray(tail, np.float64)
            ts = np.bincount(q_users, weights=tw, minlength=n)
            th = np.bincount(q_users, weights=hit * tw, minlength=n)
            self.set_tail_hr += float(np.sum(th[ts > 0] / ts[ts > 0]))
            self.set_tail_n += int((ts > 0).sum())

    def user_hr(self, k: int) -> np.ndarray:
        """Per-user HR@k over every user added so far, in the order added (for paired comparisons)."""
        j = self.ks.index(int(k))
        return np.concatenate([u[:, j] for u in self._user_hr]) if self._user_hr else np.empty(0)

    def user_set_hr(self) -> np.ndarray:
        """Per-user HR of the candidate set (see :meth:`add_set`), in the order added."""
        return np.concatenate(self._set_user_hr) if self._set_user_hr else np.empty(0)

    def result(self) -> dict[str, dict[int, float]]:
        nan = float("nan")
        n = self.n
        out: dict[str, dict[int, float]] = {
            "hr": {k: float(self.hr[j] / n) if n else nan for j, k in enumerate(self.ks)},
            "recall": {k: float(self.hits[j] / self.size_sum) if n else nan for j, k in enumerate(self.ks)},
            "ndcg": {k: float(self.ndcg[j] / n) if n else nan for j, k in enumerate(self.ks)},
        }
        if self.tail_n:
            out["tail_hr"] = {k: float(self.tail_hr[j] / self.tail_n) for j, k in enumerate(self.ks)}
        if self.cat_ids is not None:
            out["coverage"] = {k: float(self.cat_cov[j] / self.cat_n) if self.cat_n else nan
                               for j, k in enumerate(self.ks)}
            out["catalog_coverage"] = {
                k: float((self.cat_first < k).sum() / self.n_cats) if self.n_cats else nan
                for j, k in enumerate(self.ks)}
            if self.rel_n.any():
                out["relevance"] = {k: float(self.rel[j] / self.rel_n[j]) if self.rel_n[j] else nan
                                    for j, k in enumerate(self.ks)}
        return out

    def set_result(self) -> dict[str, float]:
        """``{"hr": ..., "tail_hr": ...}`` of the candidate sets added with :meth:`add_set`."""
        nan = float("nan")
        out = {"hr": self.set_hr / self.set_n if self.set_n else nan}
        if self.set_tail_n:
            out["tail_hr"] = self.set_tail_hr / self.set_tail_n
        return out


def ranking_metrics(ranked: np.ndarray, test_indptr: np.ndarray, test_items: np.ndarray, ks: Sequence[int],
                    item_categories: tuple[np.ndarray, np.ndarray] | None = None,
                    chunk_users: int = 4096, tail: np.ndarray | None = None,
                    recent: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, dict[int, float]]:
    """Every metric of the module docstring at every K in ``ks`` (the one-shot form of the accumulator).

    ``item_categories`` is ``(item_ids, category_ids)`` from the items table; without it the category
    metrics are left out. ``tail`` flags the long-tail test pairs (``tail_hr``), ``recent`` (CSR) the users'
    recent items (``relevance``). Returns ``{metric: {K: value}}``; NaN when there are no test users.
    """
    test_indptr = np.asarray(test_indptr, np.int64)
    n = len(test_indptr) - 1
    ranked = np.asarray(ranked, np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != n:
        raise ValueError(f"ranked must be (n_users={n}, width); got {ranked.shape}")
    acc = MetricAccumulator(ks, item_categories)
    for a in range(0, n, chunk_users):
        b = min(n, a + chunk_users)
        lo, hi = test_indptr[a], test_indptr[b]
        rec = None if recent is None else (recent[0][a:b + 1], recent[1])
        acc.add(ranked[a:b], test_indptr[a:b + 1], test_items[lo:hi], None if tail is None else tail[lo:hi],
                None if rec is None else (rec[0] - rec[0][0], rec[1][rec[0][0]:rec[0][-1]]))
    return acc.result()
