"""Metrics are exact: the vectorised code equals a per-user brute force written straight from paper Eq. 5."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pi2i.evaluation.metrics import PAD, csr_from_pairs, k_ladder, pad_lists, ranking_metrics, set_hit_rate


def brute(lists, tests, ks, cat=None):
    """Per-user Python: HR (Eq. 5), pooled recall, NDCG, category coverage."""
    out = {"hr": {}, "recall": {}, "ndcg": {}, "category_coverage": {}, "catalog_category_coverage": {}}
    all_cats = set(cat.values()) if cat else set()
    for k in ks:
        hr, hit_sum, size_sum, nd, cc, seen = [], 0, 0, [], [], set()
        for lst, t in zip(lists, tests):
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
            if cat is not None:
                tc = {cat[x] for x in t if x in cat}
                lc = {cat[x] for x in top_k if x in cat}
                seen |= lc
                if tc:
                    cc.append(len(tc & lc) / len(tc))
        out["hr"][k] = float(np.mean(hr))
        out["recall"][k] = hit_sum / size_sum
        out["ndcg"][k] = float(np.mean(nd))
        if cat is not None:
            out["category_coverage"][k] = float(np.mean(cc))
            out["catalog_category_coverage"][k] = len(seen) / len(all_cats)
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
    got = ranking_metrics(ranked, indptr, titems, ks, item_categories=(ids, np.array([cat[i] for i in ids])),
                          chunk_users=7)  # several chunks
    want = brute([list(map(int, x)) for x in lists], [set(map(int, t)) for t in tests], ks, cat)
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
    assert "category_coverage" not in m


def test_set_hit_rate_matches_sets():
    lists, tests, _ = random_case(5)
    users = np.concatenate([np.full(len(x), u) for u, x in enumerate(lists)]).astype(np.int64)
    tu = np.concatenate([np.full(len(t), u) for u, t in enumerate(tests)])
    indptr, titems = csr_from_pairs(tu, np.concatenate(tests), len(tests))
    hr, per_user = set_hit_rate(users, np.concatenate(lists), indptr, titems)
    want = [len(set(map(int, x)) & set(map(int, t))) for x, t in zip(lists, tests)]
    assert per_user.tolist() == want
    assert hr == pytest.approx(np.mean([w / len(t) for w, t in zip(want, tests)]))


def test_k_ladder_caps_to_data():
    assert k_ladder([20, 50, 100, 4000], 150) == [20, 50, 100]
    assert k_ladder([20, 50], 10) == [10]  # always at least one column
    assert k_ladder([500, 20, 20], 10**6) == [20, 500]


def test_empty_rows_and_validation():
    m = ranking_metrics(np.full((2, 0), PAD), np.array([0, 1, 2]), np.array([5, 6]), [10])
    assert m["hr"][10] == 0.0 and m["ndcg"][10] == 0.0
    with pytest.raises(ValueError):
        ranking_metrics(np.zeros((3, 2), np.int64), np.array([0, 1, 2]), np.array([5, 6]), [10])
