"""The popularity channel, merged into PI2I's ranked pool by per-slot hit rates measured on validation.

PI2I ranks a candidate pool (the union of the triggers' Swing rows). Deep in that ranking a pool item can be a
weaker bet than a popular item outside the pool: on the Taobao sample PI2I's HR@500 was .0205 against popularity's
.0216 while its list was its pool first and popular items after. Serving and evaluation both answer K items, so
each slot should hold the better of the two next candidates: the next pool item or the next popular item that is
neither in the pool nor seen. "Better" is measured, not assumed: on held-out validation users
(:func:`pi2i.prs.train.calibrate`) the hit rate of a pool item by its slot in the pool's ranking, and of a
popular item by its rank in the global popularity order (target hits / items offered there), in log-spaced bins,
fitted non-increasing with pool-adjacent violators. A popular item is rated by its global rank, not its slot in the
channel: a heavy user's pool holds most popular items, and what is left of the channel is obscure. Merging two
ordered lists by non-increasing values maximizes the expected hits in the top K for every K at once; on ties the
pool wins. A model trained without it (no ``calibration.merge`` in ``config.json``) ranks its pool only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: slots measured per channel; deeper slots take the last bin's rate
HORIZON = 4096


def slot_edges(horizon: int = HORIZON, bins: int = 48) -> np.ndarray:
    """Bin edges over slots [0, horizon): single slots at the top, log-spaced below."""
    deep = np.round(np.geomspace(1, horizon, bins)).astype(np.int64)
    return np.unique(np.concatenate([[0], deep, [horizon]]))


def slot_counts(edges: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Hits per bin of the 0-based ``slots`` (slots at or past the horizon are not counted)."""
    slots = np.asarray(slots, np.int64)
    slots = slots[(slots >= 0) & (slots < edges[-1])]
    return np.bincount(np.searchsorted(edges, slots, side="right") - 1, minlength=len(edges) - 1).astype(np.float64)


def slot_exposure(edges: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Slots per bin summed over users whose channel holds ``reach`` items each."""
    reach = np.asarray(reach, np.int64)[:, None]
    return np.clip(np.minimum(reach, edges[None, 1:]) - edges[None, :-1], 0, None).sum(0).astype(np.float64)


def decreasing_fit(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-increasing fit of ``y`` (pool-adjacent violators); entries with no weight take
    their left neighbour's value (the first ones the first weighted value; none weighted: 0)."""
    y, w = np.asarray(y, np.float64), np.asarray(w, np.float64)
    out = np.zeros(len(y))
    idx = np.flatnonzero(w > 0)
    if not len(idx):
        return out
    blocks: list[tuple[float, float, int]] = []  # (mean, weight, count) of each pooled run
    for i in idx:
        blocks.append((float(y[i]), float(w[i]), 1))
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append(((m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2))
    fitted = np.repeat(np.array([b[0] for b in blocks]), np.array([b[2] for b in blocks], np.int64))
    out[idx] = fitted
    last = np.maximum.accumulate(np.where(w > 0, np.arange(len(y)), -1))
    return np.where(last >= 0, out[np.maximum(last, 0)], fitted[0])


@dataclass(frozen=True)
class PopularMerge:
    """Hit rates by bin of :func:`slot_edges`: of a pool item by its slot in the pool's ranking, of a popular item
    by its rank in the global popularity order."""

    edges: np.ndarray  # int64 [B+1]: bin b holds slots (ranks) [edges[b], edges[b+1])
    pool: np.ndarray  # float64 [B]: fitted hit rate of a pool item at a slot in bin b
    popular: np.ndarray  # float64 [B]: fitted hit rate of a popular item outside the pool at a global rank in bin b

    @classmethod
    def fit(cls, edges: np.ndarray, pool_hits: np.ndarray, pool_exposure: np.ndarray,
            popular_hits: np.ndarray, popular_exposure: np.ndarray) -> PopularMerge:
        def rate(h: np.ndarray, e: np.ndarray) -> np.ndarray:
            return decreasing_fit(np.divide(h, e, out=np.zeros(len(h)), where=e > 0), e)

        return cls(np.asarray(edges, np.int64), rate(pool_hits, pool_exposure), rate(popular_hits, popular_exposure))

    def to_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "pool": self.pool.tolist(), "popular": self.popular.tolist()}

    @classmethod
    def from_dict(cls, d: dict | None) -> PopularMerge | None:
        if not d:
            return None
        edges = np.asarray(d["edges"], np.int64)
        pool, popular = np.asarray(d["pool"], np.float64), np.asarray(d["popular"], np.float64)
        if len(edges) < 2 or len(pool) != len(edges) - 1 or len(popular) != len(pool) or np.any(np.diff(edges) <= 0):
            raise ValueError("calibration.merge: edges must increase and hold one more entry than each rate list")
        return cls(edges, pool, popular)

    def _rate(self, per_bin: np.ndarray, at: np.ndarray) -> np.ndarray:
        b = np.searchsorted(self.edges, np.asarray(at, np.int64), side="right") - 1
        return per_bin[np.clip(b, 0, len(per_bin) - 1)]

    def pool_rates(self, n: int) -> np.ndarray:
        """Fitted hit rate of each of the first ``n`` slots of the pool's ranking."""
        return self._rate(self.pool, np.arange(n))

    def popular_rates(self, ranks: np.ndarray) -> np.ndarray:
        """Fitted hit rate of popular items at these global popularity ranks (0 = the most clicked)."""
        return self._rate(self.popular, ranks)

    @staticmethod
    def positions(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each entry of two non-increasing rate lists lands in their merge (ties: ``p`` first)."""
        return (np.arange(len(p)) + np.searchsorted(-q, -p, side="left"),
                np.arange(len(q)) + np.searchsorted(-p, -q, side="right"))

    def merge(self, pool_items: np.ndarray, popular_items: np.ndarray, popular_ranks: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` of the ranked ``pool_items`` and ``popular_items`` (disjoint; the latter most popular first,
        at ``popular_ranks``) merged by rate: (items, rates, is_pool); a channel that runs out leaves its slots to
        the other."""
        p, q = self.pool_rates(len(pool_items)), self.popular_rates(popular_ranks)
        at_p, at_q = self.positions(p, q)
        n = len(p) + len(q)
        items, rates, is_pool = np.empty(n, np.int64), np.empty(n, np.float32), np.zeros(n, bool)
        items[at_p], items[at_q] = pool_items, popular_items
        rates[at_p], rates[at_q] = p, q
        is_pool[at_p] = True
        return items[:k], rates[:k], is_pool[:k]
