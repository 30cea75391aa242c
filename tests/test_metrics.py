"""Metrics are exact: the vectorised code equals a per-user brute force written straight from paper Eq. 5."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi2i.evaluation.metrics import (
    PAD,
    MetricAccumulator,
    csr_from_pairs,
    k_ladder,
    pad_lists,
    ranking_metrics,
)


def brute(lists, tests, ks, cat=None, tail=None, recent=None):
    """Per-user Python: HR (Eq. 5), pooled recall, NDCG, tail HR, relevance, category coverage."""
    out = {"hr": {}, "recall": {}, "ndcg": {}, "coverage": {}, "catalog_coverage": {}, "tail_hr": {},
           "relevance": {}}
    all_cats = set(cat.values()) if cat else set()
    for k in ks:
        hr, hit_sum, size_sum, nd, cc, seen, th, rel = [], 0, 0, [], [], set(), [], []
        for u, (lst, t) in enumerate(zip(lists, tests)):
            top = []
            for x in lst:  # a repeated item counts once, at its first position
                if x not in top:
                    top.append(x)
            top_k = list(lst[:k])
            uniq_top = []
            for x in top_k:
                if x not in uniq_top:
                    uniq_top.append(x)
            h = len(set(top_k) & set(t))
            hr.append(h / len(t))
            hit_sum += h
            size_sum += len(t)
            dcg = sum(1 / math.log2(i + 2) for i, x in enumerate(top_k) if x in t and top_k.index(x) == i)
            idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(t))))
            nd.append(dcg / idcg)
            if tail is not None:
                tt = {x for x in t if x in tail}
                if tt:
                    th.append(len(set(top_k) & tt) / len(tt))
            if cat is not None:
                tc = {cat[x] for x in t if x in cat}
                lc = {cat[x] for x in top_k if x in cat}
                seen |= lc
                if tc:
                    cc.append(len(tc & lc) / len(tc))
                if recent is not None:
                    rc = {cat[x] for x in recent[u] if x in cat}
                    known = [cat[x] for x in top_k if x in cat]  # every list position, repeats included
                    if rc and known:
                        rel.append(sum(c in rc for c in known) / len(known))
        out["hr"][k] = float(np.mean(hr))
        out["recall"][k] = hit_sum / size_sum
        out["ndcg"][k] = float(np.mean(nd))
        if tail is not None:
            out["tail_hr"][k] = float(np.mean(th))
        if cat is not None:
            out["coverage"][k] = float(np.mean(cc))
            out["catalog_coverage"][k] = len(seen) / len(all_cats)
            if recent is not None:
                out["relevance"][k] = float(np.mean(rel))
    return out


def random_case(seed, n_users=60, n_items=300, big_ids=False):
    rng = np.random.default_rng(seed)
    base = 10**15 if big_ids else 0  # ids far beyond int32: keys must still not collide
    items = base + rng.choice(10**6, n_items, replace=False).astype(np.int64)
    lists, tests = [], []
    for _ in range(n_users):
        n = int(rng.integers(0, 80))
        lst = rng.choice(items, n, replace=True)  # duplicates on purpose
        lists.append(lst)
        t = rng.choice(items, int(rng.integers(1, 15)), replace=False)
        t[: min(len(t), 3)] = rng.choice(lst, min(len(t), 3)) if n else t[: min(len(t), 3)]
        tests.append(np.unique(t))
    cat = {int(i): int(rng.integers(0, 12)) for i in items if rng.random() < 0.9}  # some items unknown
    return lists, tests, cat


@pytest.mark.parametrize("seed,big", [(0, False), (1, True), (2, False), (3, True)])
def test_ranking_metrics_equal_brute_force(seed, big):
    lists, tests, cat = random_case(seed, big_ids=big)
    ks = [1, 5, 20, 50, 100]
    ranked = pad_lists(lists)
    users = np.concatenate([np.full(len(t), u) for u, t in enumerate(tests)])
    indptr, titems = csr_from_pairs(users, np.concatenate(tests), len(tests))
    ids = np.array(sorted(cat), np.int64)
    rng = np.random.default_rng(seed)
    tail = {int(x) for x in titems if rng.random() < 0.4}
    recent = [rng.choice(lst, min(len(lst), 3), replace=False) if len(lst) else np.empty(0, np.int64)
              for lst in lists]
    r_ptr = np.concatenate([[0], np.cumsum([len(r) for r in recent])]).astype(np.int64)
    got = ranking_metrics(ranked, indptr, titems, ks, item_categories=(ids, np.array([cat[i] for i in ids])),
                          chunk_users=7,  # several chunks
                          tail=np.isin(titems, list(tail)),
                          recent=(r_ptr, np.concatenate(recent).astype(np.int64)))
    want = brute([list(map(int, x)) for x in lists], [set(map(int, t)) for t in tests], ks, cat, tail,
                 [list(map(int, r)) for r in recent])
    for m in want:
        for k in ks:
            assert got[m][k] == pytest.approx(want[m][k], abs=1e-12), (m, k)


def test_hr_hand_example():
    # user 0: clicked {1,2,3,4}; top list 1,9,3 -> HR@1 = 1/4, HR@3 = 2/4
    # user 1: clicked {7};       top list 8,7   -> HR@1 = 0,   HR@3 = 1
    ranked = np.array([[1, 9, 3], [8, 7, PAD]])
    indptr, items = np.array([0, 4, 5]), np.array([1, 2, 3, 4, 7])
    m = ranking_metrics(ranked, indptr, items, [1, 3])
    assert m["hr"] == {1: pytest.approx(0.125), 3: pytest.approx(0.75)}
    assert m["recall"][3] == pytest.approx(3 / 5)
    assert "coverage" not in m and "relevance" not in m and "tail_hr" not in m


def test_set_hit_rate_matches_sets():
    lists, tests, _ = random_case(5)
    tu = np.concatenate([np.full(len(t), u) for u, t in enumerate(tests)])
    indptr, titems = csr_from_pairs(tu, np.concatenate(tests), len(tests))
    rows = np.repeat(np.arange(len(tests)), np.diff(indptr))
    tail = titems % 3 == 0
    acc = MetricAccumulator([10])
    acc.add_set(np.array([int(x) in set(map(int, lists[r])) for r, x in zip(rows, titems)]), indptr, tail)
    want = [len(set(map(int, x)) & set(map(int, t))) / len(t) for x, t in zip(lists, tests)]
    assert acc.user_set_hr().tolist() == pytest.approx(want)
    assert acc.set_result()["hr"] == pytest.approx(np.mean(want))
    want_tail = [len(set(map(int, x)) & {int(y) for y in t if y % 3 == 0}) / sum(y % 3 == 0 for y in t)
                 for x, t in zip(lists, tests) if any(y % 3 == 0 for y in t)]
    assert acc.set_result()["tail_hr"] == pytest.approx(np.mean(want_tail))


def test_k_ladder_caps_to_data():
    assert k_ladder([20, 50, 100, 4000], 150) == [20, 50, 100]
    assert k_ladder([20, 50], 10) == [10]  # always at least one column
    assert k_ladder([500, 20, 20], 10**6) == [20, 500]


def test_empty_rows_and_validation():
    m = ranking_metrics(np.full((2, 0), PAD), np.array([0, 1, 2]), np.array([5, 6]), [10])
    assert m["hr"][10] == 0.0 and m["ndcg"][10] == 0.0
    with pytest.raises(ValueError):
        ranking_metrics(np.zeros((3, 2), np.int64), np.array([0, 1, 2]), np.array([5, 6]), [10])


# ------------------------------------------------------------------------------------ invariants (hypothesis)
@st.composite
def ranking_case(draw):
    n_users = draw(st.integers(1, 6))
    items = st.integers(0, 30)
    lists = [draw(st.lists(items, max_size=25)) for _ in range(n_users)]
    tests = [sorted(draw(st.sets(items, min_size=1, max_size=8))) for _ in range(n_users)]
    ks = sorted(draw(st.sets(st.integers(1, 30), min_size=1, max_size=5)))
    return lists, tests, ks


def _csr(tests):
    users = np.concatenate([np.full(len(t), u) for u, t in enumerate(tests)])
    return csr_from_pairs(users, np.concatenate([np.asarray(t, np.int64) for t in tests]), len(tests))


@settings(max_examples=150, deadline=None)
@given(ranking_case())
def test_metric_invariants(case):
    """HR, recall, NDCG in [0, 1]; HR and recall non-decreasing in K."""
    lists, tests, ks = case
    indptr, titems = _csr(tests)
    m = ranking_metrics(pad_lists([np.asarray(x, np.int64) for x in lists], 30), indptr, titems, ks)
    for metric in ("hr", "recall", "ndcg"):
        vals = [m[metric][k] for k in ks]
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in vals)
        if metric != "ndcg":
            assert vals == sorted(vals)


@settings(max_examples=100, deadline=None)
@given(ranking_case())
def test_perfect_list_scores_one(case):
    """A list that starts with exactly the clicked items has HR = recall = NDCG = 1 at every K >= |test|."""
    _, tests, ks = case
    indptr, titems = _csr(tests)
    m = ranking_metrics(pad_lists([np.asarray(t, np.int64) for t in tests], 40), indptr, titems, ks + [8])
    assert m["hr"][8] == pytest.approx(1.0) and m["recall"][8] == pytest.approx(1.0)
    assert m["ndcg"][8] == pytest.approx(1.0)
    for k in ks:  # below |test| a perfect list still hits min(K, |test|) of them
        want = np.mean([min(k, len(t)) / len(t) for t in tests])
        assert m["hr"][k] == pytest.approx(want)


@settings(max_examples=100, deadline=None)
@given(ranking_case())
def test_set_hr_bounds_every_ranking_of_the_set(case):
    """The HR of a candidate set (the pool ceiling) is >= the HR@K of any list drawn from it."""
    lists, tests, ks = case
    indptr, titems = _csr(tests)
    acc = MetricAccumulator(ks)
    acc.add(pad_lists([np.asarray(x, np.int64) for x in lists], 30), indptr, titems)
    rows = np.repeat(np.arange(len(tests)), np.diff(indptr))
    in_set = np.array([int(x) in set(lists[r]) for r, x in zip(rows, titems)])
    acc.add_set(in_set, indptr)
    ceiling = acc.set_result()["hr"]
    assert all(v <= ceiling + 1e-12 for v in acc.result()["hr"].values())
    assert np.allclose(acc.user_set_hr().mean(), ceiling)
    assert np.allclose(acc.user_hr(ks[-1]).mean(), acc.result()["hr"][ks[-1]])
