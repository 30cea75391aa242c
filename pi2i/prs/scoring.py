"""Candidate scoring (PI2I §3.2.4): ONE function path shared by evaluation and serving.

history → triggers (last L distinct clicks) → candidates = union of the triggers' i2i rows (minus ``exclude``)
→ features (:func:`pi2i.prs.candidates.featurize`, the training feature code) → batched model scores → top-K, each
item with the triggers whose row retrieved it (the explanation) → with a model calibrated with the popularity
channel (``calibration.merge``), the popular items outside the pool merged in where their validation hit rate beats
the pool's slot (:mod:`pi2i.prs.merge`; they have no triggers, and every score is then that hit rate).

:meth:`Scorer.recommend_many` scores many users at once: users are sorted by pool size and packed into chunks of
at most ``cells`` padded candidate slots, so one forward pass handles many small pools or one large pool; the
chunks are scored at once on one thread per core of the CPU quota.
An empty pool (no trigger has a row) gives an empty list and a list never reaches past the pool and the popular
items: callers fall back to :attr:`Scorer.popularity` (``source=fallback``), see :func:`pad_with_popularity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pi2i.contracts import ITEMS_FILE, join, read_parquet
from pi2i.ibs.i2i import I2IIndex
from pi2i.prs.candidates import (
    CROSS_FEATURES,
    Features,
    Groups,
    ItemInfo,
    RowLookup,
    candidate_union,
    featurize,
    serving_groups,
)
from pi2i.prs.merge import PopularMerge
from pi2i.prs.model import Vocab, to_tensors
from pi2i.prs.sampling import POPULARITY_FILE


@dataclass
class Recommendation:
    items: np.ndarray  # int64, best first
    scores: np.ndarray  # float32
    triggers: list[np.ndarray]  # per item: the trigger ids whose i2i row retrieved it; [] when not explained
    num_candidates: int


#: the cross features the calibration adds to the model's logit: the item's log popularity, and its summed Swing
#: score over the hitting triggers (the classic Swing I2I ranking of the pool)
POPULARITY_FEATURE, SWING_FEATURE = (CROSS_FEATURES.index("log_popularity"), CROSS_FEATURES.index("sum_score"))


def standardize_rows(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row z-score over the valid entries (a row with one value or no spread gets 0); invalid entries 0."""
    n = np.maximum(valid.sum(1, keepdims=True), 1)
    xv = np.where(valid, x, 0.0).astype(np.float64)
    mean = xv.sum(1, keepdims=True) / n
    var = (np.where(valid, xv - mean, 0.0) ** 2).sum(1, keepdims=True) / n
    return np.where(valid, (xv - mean) / np.sqrt(np.maximum(var, 1e-12)), 0.0)


def calibrated_scores(logits: np.ndarray, cross: np.ndarray, a: float, b: float) -> np.ndarray:
    """``z(logit) + a·z(log popularity) + b·z(Σ Swing score)``, z = per-user standardization over the user's
    pool (-inf pads stay -inf). ``a = b = 0`` returns the logits unchanged (the pure model ordering); large ``a``
    (``b``) orders the pool by popularity (Swing) with the model breaking ties. ``a, b`` are chosen at training
    time on validation users by full-pool HR@K (:func:`pi2i.prs.train.calibrate`): the sampled-softmax objective
    ranks a sample's ~100 candidates, serving ranks the whole pool, and how much the popularity / Swing priors
    should count there is measured, not assumed."""
    if a == 0 and b == 0:
        return logits
    valid = np.isfinite(logits)
    s = standardize_rows(logits, valid)
    if a:
        s = s + a * standardize_rows(cross[..., POPULARITY_FEATURE], valid)
    if b:
        s = s + b * standardize_rows(cross[..., SWING_FEATURE], valid)
    return np.where(valid, s, -np.inf).astype(np.float32)


def _empty() -> Recommendation:
    return Recommendation(np.empty(0, np.int64), np.empty(0, np.float32), [], 0)


class Scorer:
    """A trained PRS model bound to an i2i index. Thread-safe for concurrent ``recommend`` calls (no state is
    mutated after load)."""

    def __init__(self, model, cfg, meta: dict, vocab: Vocab, lookup: RowLookup, info: ItemInfo,
                 popularity: np.ndarray, cells: int = 65536, stability: float | None = None):
        self.model, self.cfg, self.meta = model, cfg, meta
        self.vocab, self.lookup, self.info = vocab, lookup, info
        self.popularity = popularity
        self.num_triggers = int(meta["num_triggers"])
        self.seq_len = int(meta["seq_len"])
        self.max_hits = int(meta["max_trigger_hits"])
        self.dedup = bool(meta.get("dedup_consecutive", True))
        self.cells = cells
        #: weight of the history's category mix in the final score (``model.stability``; see :meth:`adjust`)
        self.stability = float(cfg.model.stability if stability is None else stability)
        cal = meta.get("calibration") or {}
        #: (a, b) of :func:`calibrated_scores`, chosen on validation users by full-pool HR@K (see train.py)
        self.calibration = (float(cal.get("popularity", 0.0)), float(cal.get("swing", 0.0)))
        #: the popularity channel merged into the ranking by validation slot hit rates (None: the pool only)
        self.merge = PopularMerge.from_dict(cal.get("merge"))
        order = np.argsort(popularity, kind="stable")
        self._pop_sorted = (popularity[order], order)  # ids ascending, their rank in the popularity order

    @classmethod
    def load(cls, model_dir: str, i2i: I2IIndex, stability: float | None = None) -> Scorer:
        from pi2i.prs.train import VOCAB_FILE, load_model

        model, cfg, meta = load_model(model_dir)
        pop_table = read_parquet(join(model_dir, POPULARITY_FILE))
        info = ItemInfo.from_table(read_parquet(join(model_dir, ITEMS_FILE)), pop_table)
        vocab = Vocab.from_table(read_parquet(join(model_dir, VOCAB_FILE)), info)
        pop = pop_table.column("item_id").to_numpy().astype(np.int64)
        return cls(model, cfg, meta, vocab, RowLookup.build(i2i), info, pop, stability=stability)

    # ----------------------------------------------------------------------------------------- public API
    def recommend(self, history_items: np.ndarray, history_ts: np.ndarray, k: int,
                  exclude: np.ndarray | None = None) -> Recommendation:
        """Top-``k`` for one user's history (oldest → newest, ts in µs); ``exclude`` items are never returned."""
        ex = None if exclude is None else [np.asarray(exclude, np.int64)]
        return self._score([(history_items, history_ts)], k, ex)[0]

    def recommend_many(self, histories: list[tuple[np.ndarray, np.ndarray]], k: int,
                       exclude_seen: bool = True, fill_popular: bool = False,
                       explain: bool = True) -> list[Recommendation]:
        """Batched :meth:`recommend` for many users (evaluation); ``exclude_seen`` drops each user's history.
        ``fill_popular`` continues a list shorter than ``k`` (a small pool) with the most popular remaining
        items, scored below every pool item (their ``triggers`` are empty; ``num_candidates`` stays the pool
        size), so PI2I's list at large K is never shorter than popularity's. ``explain=False`` leaves
        ``triggers`` empty (at K in the thousands, listing each item's triggers costs as much as scoring)."""
        ex = [np.asarray(h[0], np.int64) for h in histories] if exclude_seen else None
        recs = self._score(histories, k, ex, explain)
        if fill_popular:
            recs = [self._fill(r, k, None if ex is None else ex[i]) for i, r in enumerate(recs)]
        return recs

    def _fill(self, rec: Recommendation, k: int, exclude: np.ndarray | None) -> Recommendation:
        if len(rec.items) >= k:
            return rec
        from pi2i.data.events import fill_with_popular

        items = fill_with_popular(rec.items, self.popularity, k, exclude)
        extra = len(items) - len(rec.items)
        low = float(rec.scores.min()) if len(rec.scores) else 0.0
        scores = np.concatenate([rec.scores, (low - 1.0 - np.arange(extra) * 1e-3).astype(np.float32)])
        empty = np.empty(0, np.int64)
        why = list(rec.triggers) + [empty] * extra if len(rec.triggers) == len(rec.items) else []
        return Recommendation(items, scores.astype(np.float32), why, rec.num_candidates)

    # ----------------------------------------------------------------------------------------- internals
    def groups(self, histories: list[tuple[np.ndarray, np.ndarray]]) -> Groups:
        """Serving groups: each history normalized as the sampler normalizes clicks, context = all of it."""
        return serving_groups(histories, self.num_triggers, self.seq_len, self.dedup)

    def features(self, groups: Groups, cands: np.ndarray) -> Features:
        return featurize(groups, cands, self.lookup, self.info, self.max_hits)

    @torch.inference_mode()
    def model_scores(self, groups: Groups, feat: Features) -> np.ndarray:
        """Model logits [G, C] with the recency/stability prior (:meth:`adjust`); -1 pad → -inf."""
        return self.adjust(groups, feat.cands, self.model(to_tensors(feat, self.vocab)).numpy())

    def score_candidates(self, groups: Groups, cands: np.ndarray) -> np.ndarray:
        """Final scores [G, C] of candidates [G, C] (-1 pad → -inf): model logits, calibrated
        (:func:`calibrated_scores`) with the weights chosen at training time."""
        feat = self.features(groups, cands)
        return calibrated_scores(self.model_scores(groups, feat), feat.cross, *self.calibration)

    def adjust(self, groups: Groups, cands: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Recency vs stability: ``logit + stability · log((n_c + 1) / (n + 1))`` with ``n_c`` the clicks of the
        candidate's category among the user's last ``seq_len`` clicks (``n`` of them). The scorer weighs the
        latest click heavily (it predicts the next click best on average); the prior keeps the categories the
        history stands for in the list. Items without a category, and empty histories, are unchanged."""
        if self.stability <= 0 or not len(cands):
            return logits
        cat_c = self.info.lookup(cands)[0][..., 0]  # [G, C]
        cat_s = self.info.lookup(groups.seq)[0][..., 0]  # [G, S]
        n = (groups.seq >= 0).sum(1, keepdims=True)
        n_c = (cat_c[:, :, None] == np.where(cat_s >= 0, cat_s, -2)[:, None, :]).sum(-1)
        prior = np.log((n_c + 1.0) / (n + 1.0))
        return logits + (self.stability * np.where(cat_c >= 0, prior, 0.0)).astype(logits.dtype)

    def _score(self, histories, k: int, excludes: list[np.ndarray] | None,
               explain: bool = True) -> list[Recommendation]:
        G = len(histories)
        if G == 0:
            return []
        groups = self.groups(histories)
        cands = candidate_union(self.lookup, groups.triggers, excludes)
        n = (cands >= 0).sum(1)
        out: list[Recommendation] = [_empty()] * G
        order = np.argsort(-n, kind="stable")
        order = order[n[order] > 0]
        chunks, s = [], 0
        while s < len(order):  # chunks of users with similar pool sizes, at most `cells` padded slots
            e = s + max(1, self.cells // max(int(n[order[s]]), 1))
            chunks.append(order[s:e])
            s = e
        for chunk, recs in zip(chunks, _map_chunks(lambda c: self._score_chunk(groups, cands, n, c, k, explain),
                                                   chunks)):
            for u, rec in zip(chunk, recs):
                out[u] = rec
        if self.merge is not None and len(self.popularity):
            for u in np.flatnonzero(n > 0):
                out[u] = self._merge_popular(out[u], cands[u, :n[u]], None if excludes is None else excludes[u], k)
        return out

    def popularity_rank(self, items: np.ndarray) -> np.ndarray:
        """Rank of each item (all in :attr:`popularity`) in the global popularity order, 0 = the most clicked."""
        ids, rank = self._pop_sorted
        return rank[np.searchsorted(ids, items)]

    def _merge_popular(self, rec: Recommendation, pool: np.ndarray, exclude: np.ndarray | None,
                       k: int) -> Recommendation:
        """``rec`` (the pool's top k) merged with the popular items outside the pool and ``exclude``
        (:class:`pi2i.prs.merge.PopularMerge`); scores become the slots' validation hit rates, popular items have
        no triggers."""
        from pi2i.data.events import fill_with_popular

        assert self.merge is not None
        blocked = pool if exclude is None else np.concatenate([pool, exclude])
        popular = fill_with_popular(np.empty(0, np.int64), self.popularity, k, blocked)
        items, rates, is_pool = self.merge.merge(rec.items, popular, self.popularity_rank(popular), k)
        why: list[np.ndarray] = []
        if len(rec.triggers) == len(rec.items):
            pool_why, empty = iter(rec.triggers), np.empty(0, np.int64)
            why = [next(pool_why) if p else empty for p in is_pool]
        return Recommendation(items, rates, why, rec.num_candidates)

    def _score_chunk(self, groups: Groups, cands: np.ndarray, n: np.ndarray, chunk: np.ndarray,
                     k: int, explain: bool) -> list[Recommendation]:
        """Top-``k`` of the users ``chunk`` (rows of ``groups``/``cands``, pools sorted largest first)."""
        width = int(n[chunk[0]])
        g = Groups(*(getattr(groups, f)[chunk] for f in Groups.__dataclass_fields__))
        c = cands[chunk, :width]
        logits = self.score_candidates(g, c)
        kk = min(k, width)
        top = np.argpartition(-logits, kk - 1, axis=1)[:, :kk] if kk < width else np.tile(np.arange(width), (len(chunk), 1))
        tl = np.take_along_axis(logits, top, 1)
        o = np.argsort(-tl, axis=1, kind="stable")
        top, tl = np.take_along_axis(top, o, 1), np.take_along_axis(tl, o, 1)
        items = np.take_along_axis(c, top, 1)
        # explanation: every trigger whose row holds the item (same kernel as the features, H = L)
        slots = featurize(g, items, self.lookup, self.info, self.num_triggers).hit_slot if explain else None
        recs = []
        for j, u in enumerate(chunk):
            m = int(np.isfinite(tl[j, :min(kk, n[u])]).sum())
            trig = g.triggers[j]
            why = [trig[sl[sl >= 0]] for sl in slots[j, :m]] if slots is not None else []
            recs.append(Recommendation(items[j, :m].astype(np.int64), tl[j, :m].astype(np.float32), why, int(n[u])))
        return recs


def _map_chunks(fn, chunks: list) -> list:
    """``[fn(c) for c in chunks]``, with several chunks scored at once on one thread per core of the CPU quota
    (one torch and one numba thread each) when there are several: as in training (``StepRunner``), independent
    slices use two cores far better than one intra-op pool spread over a forward pass of small kernels. A single
    chunk (a serving request) runs on the calling thread."""
    if len(chunks) < 2:  # the serving path: no quota lookup, no pool
        return [fn(c) for c in chunks]
    from pi2i.prs.launch import cpu_quota, numba_threadsafe, single_thread_worker

    workers = min(len(chunks), cpu_quota())
    if workers < 2 or not numba_threadsafe():
        return [fn(c) for c in chunks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="pi2i-score", initializer=single_thread_worker) as pool:
        return list(pool.map(fn, chunks))


def pad_with_popularity(rec: Recommendation, popularity: np.ndarray, k: int,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Items of ``rec`` followed by popular items (not already present or excluded) up to ``k``; also returns how
    many came from the scorer."""
    head = rec.items[:k]
    if len(head) >= k:
        return head, len(head)
    drop = np.concatenate([head, np.asarray(exclude if exclude is not None else [], np.int64)])
    fill = popularity[~np.isin(popularity, drop)][: k - len(head)]
    return np.concatenate([head, fill]).astype(np.int64), len(head)
