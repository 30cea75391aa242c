"""The popularity channel merge (pi2i.prs.merge): the monotone fit and the two-list merge against brute force."""

import itertools

import numpy as np
import pytest

from pi2i.prs.merge import PopularMerge, decreasing_fit, slot_counts, slot_edges, slot_exposure


def brute_decreasing_fit(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-increasing fit by enumerating every partition into consecutive blocks."""
    n, best, best_cost = len(y), None, np.inf
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        fit = np.concatenate([np.full(b - a, np.average(y[a:b], weights=w[a:b])) for a, b in itertools.pairwise(bounds)])
        if np.all(np.diff(fit) <= 1e-12):
            cost = float(np.sum(w * (y - fit) ** 2))
            if cost < best_cost - 1e-12:
                best, best_cost = fit, cost
    return best


@pytest.mark.parametrize("seed", range(30))
def test_decreasing_fit_is_the_least_squares_monotone_fit(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    y, w = rng.random(n), rng.integers(1, 5, n).astype(float)
    assert np.allclose(decreasing_fit(y, w), brute_decreasing_fit(y, w))


def test_decreasing_fit_carries_values_over_unweighted_entries():
    assert np.allclose(decreasing_fit(np.array([0.1, 0.3, 0.2, 9.0, 0.05, 0.01]), np.array([1, 1, 1, 0, 2, 1.0])),
                       [0.2, 0.2, 0.2, 0.2, 0.05, 0.01])
    assert np.allclose(decreasing_fit(np.array([9.0, 0.5, 0.1]), np.array([0, 1, 1.0])), [0.5, 0.5, 0.1])
    assert np.allclose(decreasing_fit(np.ones(3), np.zeros(3)), 0)


def test_slot_bins_count_hits_and_exposure():
    e = slot_edges(64, 8)
    assert e[0] == 0 and e[-1] == 64 and np.all(np.diff(e) > 0)
    hits = slot_counts(e, np.array([0, 0, 3, 63, 64, 1000, -1]))  # past the horizon / negative: not counted
    assert hits.sum() == 4 and hits[0] == 2
    expo = slot_exposure(e, np.array([0, 5, 64, 100]))
    assert expo.sum() == 5 + 64 + 64 and np.all(expo <= 3 * np.diff(e))


@pytest.mark.parametrize("seed", range(20))
def test_merge_equals_a_stable_sort_by_rate(seed):
    rng = np.random.default_rng(seed)
    e = slot_edges(256, 12)
    m = PopularMerge.fit(e, rng.integers(0, 5, len(e) - 1), np.full(len(e) - 1, 10.0),
                         rng.integers(0, 5, len(e) - 1), np.full(len(e) - 1, 10.0))
    n_pool, n_pop, k = (int(x) for x in rng.integers(0, 40, 3))
    pool = rng.permutation(1000)[:n_pool]
    ranks = np.sort(rng.choice(300, n_pop, replace=False))
    popular = 5000 + ranks
    items, rates, is_pool = m.merge(pool, popular, ranks, k)
    # reference: every candidate with its rate, pool entries first on ties, each channel in its own order
    ref = sorted([(-r, 0, i, x) for i, (x, r) in enumerate(zip(pool, m.pool_rates(n_pool)))]
                 + [(-r, 1, i, x) for i, (x, r) in enumerate(zip(popular, m.popular_rates(ranks)))])[:k]
    assert items.tolist() == [x for *_, x in ref] and is_pool.tolist() == [c == 0 for _, c, _, _ in ref]
    assert np.allclose(rates, [-r for r, *_ in ref]) and np.all(np.diff(rates) <= 0)


def test_merge_round_trips_and_refuses_a_bad_table():
    e = slot_edges(128, 10)
    m = PopularMerge.fit(e, np.ones(len(e) - 1), np.full(len(e) - 1, 4.0), np.zeros(len(e) - 1), np.ones(len(e) - 1))
    back = PopularMerge.from_dict(m.to_dict())
    assert back is not None and np.array_equal(back.pool, m.pool) and np.array_equal(back.edges, m.edges)
    assert PopularMerge.from_dict(None) is None
    with pytest.raises(ValueError, match="edges"):
        PopularMerge.from_dict({"edges": [0, 1], "pool": [0.1, 0.2], "popular": [0.1]})
