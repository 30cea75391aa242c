"""Training the PRS scorer with Ray Train (``TorchTrainer``): one code path for every scale.

``train.num_workers = 0`` runs the loop in this process (Ray Train V2 local mode, used by tests and small runs);
``N >= 1`` starts N Ray workers (CPU here, ``train.use_gpu`` on a GPU cluster) with DDP. ``ray.init`` is local
and in-process unless ``RAY_ADDRESS`` names a cluster.

Per epoch every worker takes its shard of a seeded permutation of the training samples, builds features batch
by batch with :meth:`pi2i.prs.sampling.SampleSet.features` (the serving feature code), optimizes Eq. 12, then scores
the validation samples (a seeded, user-disjoint split): loss, HR@10 / HR@1 and MRR of the positive among its
sample's candidates. Each epoch reports the metrics with a checkpoint holding the best weights so far (so the
latest checkpoint is always the best); ``train.patience`` epochs without a better validation loss stop the run.

After training, :func:`calibrate` chooses the weights of the popularity and Swing terms of the final score
(:func:`pi2i.prs.scoring.calibrated_scores`) by full-pool HR@``eval.gate_k`` of held-out validation clicks, on an
i2i index rebuilt without them (the sampled objective ranks ~100 drawn candidates whose features saw the click;
serving ranks the whole pool of an index that never did), and on the same users it measures the hit rates that
merge popular items from outside the pool into the ranking (:mod:`pi2i.prs.merge`, ``train.popular_merge``). Both
are stored in ``config.json`` (``calibration``) and reported in ``train_stats.json``.

The model directory ``M`` is self-contained: ``config.json``, ``model.safetensors``, ``vocab.parquet``,
``items.parquet``, ``popularity.parquet``, ``histories.parquet``, ``train_metrics.json``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pi2i.config import Config
from pi2i.contracts import (
    ITEMS_FILE,
    exists,
    join,
    makedirs,
    read_json,
    read_parquet,
    write_json,
    write_parquet,
)
from pi2i.ids import IdPositions
from pi2i.prs.candidates import CROSS_FEATURES, Groups, RowLookup
from pi2i.prs.io import copy_file, read_bytes
from pi2i.prs.io import uri as _uri
from pi2i.prs.launch import adam, numba_threadsafe, single_thread_worker
from pi2i.prs.model import PRSModel, Vocab, positive_rank, softmax_loss, to_tensors
from pi2i.prs.sampling import HISTORIES_FILE, I2I_FILE, POPULARITY_FILE, SampleSet

CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, METRICS_FILE = (
    "config.json", "model.safetensors", "vocab.parquet", "train_metrics.json")
HISTORY_FILE = "history.json"
STATS_FILE = "train_stats.json"
SWING_FEATURE_INDEX = CROSS_FEATURES.index("sum_score")
MODEL_FORMAT = "pi2i-prs/2"  # 2: the log_popularity cross feature  # the contract: samples_per_s, val_hr10
VAL_MAX_SAMPLES = 5000
NORM_FIT_SAMPLES = 2048


def split_samples(ss: SampleSet, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """User-disjoint train/validation split of sample indices (a seeded hash of the user id)."""
    uid = np.asarray(ss.clicks.user_ids)
    h = (uid.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)) >> np.uint64(11)
    is_val_user = (h % np.uint64(1_000_000)).astype(np.float64) / 1e6 < val_fraction
    is_val = is_val_user[np.asarray(ss.user)]
    if is_val.all() or (~is_val).all():  # tiny data: fall back to a seeded per-sample split
        is_val = np.random.default_rng(seed).random(len(ss)) < val_fraction
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


#: weights tried for each of the popularity and Swing terms of the calibrated score (0 = off; 100 ≈ that ordering)
CALIBRATION_GRID = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
CALIBRATION_CELLS = 1 << 17
CALIBRATION_TARGETS = 10  # a validation user's clicks after the cut that count as targets


def holdout_cuts(ss: SampleSet, val_idx: np.ndarray, n_max: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One cut per validation user (at most ``n_max`` users, seeded): (user rows, click positions). The position
    of a random validation sample of the user: its clicks before the cut are the context, those after it the
    targets — the per-user split, inside the training data."""
    rng = np.random.default_rng([seed, 7])
    idx = rng.permutation(np.asarray(val_idx, np.int64))
    _, first = np.unique(np.asarray(ss.user[idx]), return_index=True)
    pick = idx[first]
    if len(pick) > n_max:
        pick = np.sort(rng.choice(pick, n_max, replace=False))
    return np.asarray(ss.user[pick], np.int64), np.asarray(ss.pos[pick], np.int64)


def kept_clicks(ss: SampleSet, users: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user row of every click, mask of the clicks before the cut of each cut user — all of the others')."""
    ptr = np.asarray(ss.clicks.user_ptr)
    row = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    cut_of = np.full(len(ptr) - 1, np.iinfo(np.int64).max)
    cut_of[users] = cuts
    return row, np.arange(len(row)) < cut_of[row]


def holdout_lookup(ss: SampleSet, users: np.ndarray, cuts: np.ndarray, cfg: Config) -> RowLookup:
    """The i2i index rebuilt (Swing, ``cfg.swing``) without the validation users' clicks from their cut on.

    The index the samples come with holds every training click, so a validation click would sit in the rows that
    retrieve and describe it (its own co-clicks raise its Swing scores): full-pool validation on that index is
    measured on a pool that has seen the answer (on MovieLens: HR@100 0.82 there vs 0.18 on held-out clicks).
    Test and serving clicks are never in the index; this index reproduces that."""
    import pyarrow as pa

    from pi2i.contracts import TS_TYPE
    from pi2i.ibs.i2i import I2IIndex
    from pi2i.ibs.swing import build_swing

    row, keep = kept_clicks(ss, users, cuts)
    uid = np.asarray(ss.clicks.user_ids)[row[keep]]
    events = pa.table({"user_id": pa.array(uid, pa.int64()),
                       "item_id": pa.array(np.asarray(ss.clicks.items)[keep], pa.int64()),
                       "behavior": pa.array([cfg.swing.behaviors[0]] * int(keep.sum()), pa.string()),
                       "ts": pa.array(np.asarray(ss.clicks.ts)[keep], pa.int64()).cast(TS_TYPE)})
    table, _ = build_swing(events, cfg.swing)
    return RowLookup.build(I2IIndex.from_table(table))


def calibrate(model: PRSModel, cfg: Config, meta: dict, vocab: Vocab, ss: SampleSet, val_idx: np.ndarray,
              k: int, grid: tuple[float, ...] = CALIBRATION_GRID) -> dict:
    """Choose the weights ``(a, b)`` of :func:`pi2i.prs.scoring.calibrated_scores` by full-pool HR@k of held-out
    validation clicks, scored exactly as serving scores (:class:`pi2i.prs.scoring.Scorer`).

    Each validation user is cut once (:func:`holdout_cuts`); the context is the clicks before the cut, the pool
    the union of its triggers' rows in an index that never saw the clicks from the cut on
    (:func:`holdout_lookup`) minus the context's items, the targets the next ``CALIBRATION_TARGETS`` clicks not
    in the context; a hit is a target within the top k of the pool. The sampled-softmax objective ranks ~100
    drawn candidates per sample; this measures the ranking serving does. The grid holds ``(0, 0)`` (the model
    alone) and weights large enough to reduce to the popularity / Swing order of the pool, so the chosen score
    is never worse on validation than those orderings; ties go to the smaller weights (the model)."""
    from pi2i.prs.candidates import build_groups, candidate_union
    from pi2i.prs.scoring import POPULARITY_FEATURE, Scorer, standardize_rows

    t0 = time.perf_counter()
    users, cuts = holdout_cuts(ss, val_idx, cfg.train.calibration_samples, cfg.train.seed)
    lookup = holdout_lookup(ss, users, cuts, cfg)
    swing_s = time.perf_counter() - t0
    scorer = Scorer(model, cfg, meta, vocab, lookup, ss.info, np.empty(0, np.int64))
    items, ts = np.asarray(ss.clicks.items), np.asarray(ss.clicks.ts)
    ptr = np.asarray(ss.clicks.user_ptr)
    lo, end = ptr[users], ptr[users + 1]
    seen = [items[a:b] for a, b in zip(lo, cuts)]
    targets = np.full((len(users), CALIBRATION_TARGETS), -1, np.int64)
    for u, (c, e) in enumerate(zip(cuts, end)):
        t = pd_unique(items[c:e])
        t = t[~np.isin(t, seen[u])][:CALIBRATION_TARGETS]
        targets[u, :len(t)] = t
    n_targets = int((targets >= 0).sum())
    groups = build_groups(items, ts, lo, cuts, cfg.sampling.num_triggers, cfg.sampling.seq_len)
    cands = candidate_union(lookup, groups.triggers, seen)
    weights = [(a, b) for a in grid for b in grid]
    hits = np.zeros(len(weights), np.int64)
    found_ranks: list[list[np.ndarray]] = [[] for _ in weights]  # (user, pool slot) of each found target
    n = (cands >= 0).sum(1)
    order = np.argsort(-n, kind="stable")
    order = order[n[order] > 0]
    in_pool = 0
    s = 0
    while s < len(order):
        width = int(n[order[s]])
        chunk = order[s:s + max(1, CALIBRATION_CELLS // max(width, 1))]
        s += len(chunk)
        g = Groups(*(getattr(groups, f)[chunk] for f in Groups.__dataclass_fields__))
        c = cands[chunk, :width]
        feat = scorer.features(g, c)
        logits = scorer.model_scores(g, feat)
        valid = np.isfinite(logits)
        z = [standardize_rows(x, valid) for x in (logits, feat.cross[..., POPULARITY_FEATURE],
                                                      feat.cross[..., SWING_FEATURE_INDEX])]
        tg = targets[chunk]  # [G, T]: the slot of each target in the pool (pools are sorted by item id)
        slot = np.stack([np.searchsorted(c[j, :int(n[u])], tg[j]) for j, u in enumerate(chunk)])
        slot = np.minimum(slot, width - 1)
        found = (tg >= 0) & (np.take_along_axis(c, slot, 1) == tg)
        in_pool += int(found.sum())
        for w, (a, b) in enumerate(weights):
            sc = np.where(valid, z[0] + a * z[1] + b * z[2], -np.inf)
            at = np.take_along_axis(sc, slot, 1)  # [G, T]
            rank = (sc[:, None, :] >= at[:, :, None]).sum(-1) - 1  # ties count against the target
            hits[w] += int((found & (rank < k)).sum())
            found_ranks[w].append(np.stack([np.broadcast_to(chunk[:, None], found.shape)[found], rank[found]]))
    hr = hits / max(n_targets, 1)
    best = max(range(len(weights)), key=lambda w: (hr[w], -sum(weights[w]), -weights[w][0]))
    at_w = {wt: float(h) for wt, h in zip(weights, hr)}
    a, b = weights[best]
    merge = None
    if cfg.train.popular_merge:
        pool_hits = np.concatenate(found_ranks[best], 1) if found_ranks[best] else np.empty((2, 0), np.int64)
        merge = fit_popular_merge(ss, users, cuts, seen, targets, cands, pool_hits, k)
    return {"popularity": a, "swing": b, "k": k, "val_users": len(users), "val_targets": n_targets,
            **(merge or {}),
            "val_in_pool": in_pool / max(n_targets, 1),
            f"val_hr{k}": float(hr[best]), f"val_hr{k}_model": at_w[(0.0, 0.0)],
            f"val_hr{k}_popularity_in_pool": at_w[(grid[-1], 0.0)], f"val_hr{k}_swing_in_pool": at_w[(0.0, grid[-1])],
            "seconds": round(time.perf_counter() - t0, 3), "swing_seconds": round(swing_s, 3),
            "grid": {f"{wa:g},{wb:g}": round(float(h), 5) for (wa, wb), h in zip(weights, hr)}}


def fit_popular_merge(ss: SampleSet, users: np.ndarray, cuts: np.ndarray, seen: list[np.ndarray],
                      targets: np.ndarray, cands: np.ndarray, pool_hits: np.ndarray, k: int) -> dict:
    """The hit rates of :class:`pi2i.prs.merge.PopularMerge` on the calibration users: the pool's from
    ``pool_hits`` ([2, H]: user row, calibrated pool slot of every target found in a pool), the popular items' from
    the global popularity rank of every other target, over the popular items each user is offered (neither in its
    pool nor in its context). Popularity is counted without the validation users' clicks from their cut on (as
    the held-out index is built), so a target never raises its own rank. Also reports validation HR@k of the
    merged lists."""
    from pi2i.prs.merge import PopularMerge, slot_counts, slot_edges, slot_exposure

    edges = slot_edges()
    _, keep = kept_clicks(ss, users, cuts)
    ids, counts = np.unique(np.asarray(ss.clicks.items)[keep], return_counts=True)
    rank_of = np.empty(len(ids), np.int64)
    rank_of[np.lexsort((ids, -counts))] = np.arange(len(ids))  # most clicked first, then by id

    positions = IdPositions(ids)
    pop_rank = lambda x: positions.take(rank_of, x, -1)  # global popularity rank; -1: never clicked

    n_pool = (cands >= 0).sum(1)
    offered = slot_exposure(edges, np.full(len(users), len(ids)))  # every rank bin, before the blocked items
    blocked_per_bin = np.zeros(len(edges) - 1)
    pop_user, pop_rank_hit, blocked_of = [], [], []
    for u in range(len(users)):
        pool = cands[u, :n_pool[u]]
        blocked = np.sort(pop_rank(np.unique(np.concatenate([seen[u], pool]))))
        blocked = blocked[blocked >= 0]
        blocked_of.append(blocked)
        blocked_per_bin += slot_counts(edges, blocked)
        t = targets[u][targets[u] >= 0]
        r = pop_rank(t[~np.isin(t, pool)])
        pop_rank_hit.append(r[r >= 0])
        pop_user.append(np.full(int((r >= 0).sum()), u, np.int64))
    hit_ranks = np.concatenate(pop_rank_hit) if pop_rank_hit else np.empty(0, np.int64)
    merge = PopularMerge.fit(edges, slot_counts(edges, pool_hits[1]), slot_exposure(edges, n_pool),
                             slot_counts(edges, hit_ranks), offered - blocked_per_bin)
    # validation HR@k of the merged lists
    hits = taken = listed = 0
    pool_slot_of = [pool_hits[1][pool_hits[0] == u] for u in range(len(users))]
    for u in range(len(users)):
        blocked = blocked_of[u]
        channel = np.arange(min(len(ids), k + len(blocked)))
        channel = channel[~np.isin(channel, blocked)][:k]  # the user's popular items, as global ranks
        at_p, at_q = PopularMerge.positions(merge.pool_rates(min(int(n_pool[u]), k)), merge.popular_rates(channel))
        n_list = min(k, len(at_p) + len(at_q))
        taken += int((at_p < n_list).sum())
        listed += n_list
        slots = pool_slot_of[u]
        hits += int((at_p[slots[slots < len(at_p)]] < n_list).sum())
        ranks = pop_rank_hit[u][np.isin(pop_rank_hit[u], channel)]
        hits += int((at_q[np.searchsorted(channel, ranks)] < n_list).sum())
    n_targets = max(int((targets >= 0).sum()), 1)
    return {"merge": merge.to_dict(), f"val_hr{k}_merged": hits / n_targets,
            f"merge_pool_share{k}": taken / max(listed, 1)}


def pd_unique(x: np.ndarray) -> np.ndarray:
    """Distinct values of ``x`` in first-occurrence order."""
    _, first = np.unique(x, return_index=True)
    return x[np.sort(first)]


def build_model(cfg: Config, vocab_sizes: list[int]) -> PRSModel:
    return PRSModel(cfg.model, vocab_sizes, cfg.sampling.seq_len)


def _features(ss: SampleSet, idx: np.ndarray, cfg: Config, with_logq: bool = False):
    return ss.features(idx, cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits,
                       with_logq=with_logq)


def make_batch(ss: SampleSet, idx: np.ndarray, vocab: Vocab, cfg: Config,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Model inputs of training samples ``idx`` (with ``logq`` when the logQ correction is on)."""
    feat = _features(ss, idx, cfg, with_logq=cfg.train.logq_correction)
    leave_one_out_popularity(feat)
    b = to_tensors(feat, vocab, device)
    if feat.logq is not None:
        b["logq"] = torch.from_numpy(np.ascontiguousarray(feat.logq[:, :b["cand"].shape[1]])).to(device)
    return b


def batch_loss(net: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 12 on a batch, logQ-corrected when the batch carries ``logq``."""
    logits = net(b)
    return softmax_loss(logits - b["logq"] if "logq" in b else logits)


def batches(ss: SampleSet, index_batches: list[np.ndarray], vocab: Vocab, cfg: Config,
            device: torch.device | str = "cpu", prefetch: Callable[[], bool] = lambda: True
            ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Model inputs of each index batch. While ``prefetch()`` says so, the next batch is built on a background
    thread (the compiled feature kernels release the GIL, so feature assembly overlaps the forward/backward
    pass); otherwise it is built inline, with this thread's numba pool (all of the quota)."""
    if not index_batches:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="pi2i-batches", initializer=single_thread_worker) as pool:
        fut = None
        for i, idx in enumerate(index_batches):
            b = fut.result() if fut is not None else make_batch(ss, idx, vocab, cfg, device)
            fut = (pool.submit(make_batch, ss, index_batches[i + 1], vocab, cfg, device)
                   if i + 1 < len(index_batches) and prefetch() else None)
            yield idx, b


def leave_one_out_popularity(feat) -> None:
    """The positive's popularity feature without the click being predicted (in place): training counts include
    that click, serving never sees a future click counted — otherwise an item clicked once looks like a likely
    positive to the model (its only click is always a positive)."""
    j = CROSS_FEATURES.index("log_popularity")
    x = feat.cross[:, 0, j]
    feat.cross[:, 0, j] = np.where(feat.cands[:, 0] >= 0, np.log1p(np.maximum(np.expm1(x) - 1.0, 0.0)), x)


class Tuner:
    """Keeps the fastest of a few settings by measured step time: every ``period`` steps it times ``trial`` steps
    of each option and keeps the one with the lowest median time per sample. The right setting depends on what
    else runs on the node, so it is measured, not guessed."""

    def __init__(self, options: list[int], period: int = 100, trial: int = 3):
        self.options = sorted(set(options))
        self.period, self.trial = period, trial
        self.step = 0
        self.times: dict[int, list[float]] = {n: [] for n in self.options}
        self.current = self.options[0]
        self._last = time.perf_counter()

    def tick(self, n_samples: int) -> None:
        """End of a step of ``n_samples``: record its wall time (batch building included), pick the next setting."""
        now = time.perf_counter()
        n_trial = self.trial * len(self.options)
        phase = self.step % self.period
        if len(self.options) > 1 and 0 < phase <= n_trial:  # skip the first step of a trial window (switch cost)
            self.times[self.current].append((now - self._last) / max(n_samples, 1))
        self._last = now
        self.step += 1
        phase = self.step % self.period
        if len(self.options) > 1:
            if phase < n_trial:
                self.current = self.options[phase // self.trial]
            elif phase == n_trial:
                self.current = min(self.options,
                                   key=lambda n: float(np.median(self.times[n][-self.trial:] or [np.inf])))


class StepRunner:
    """The optimizer steps of one training worker: how a batch becomes a step on this worker's CPU quota.

    **Sliced** (CPU, one worker, the default): the batch is cut into ``n`` slices computed at once on ``n``
    threads with one torch and one numba thread each, features included. A step is ~100 small kernels over ~26k
    candidate rows: one intra-op pool spread over them gains little (1.3x from 2 threads here) and stalls whenever
    another process preempts one of its threads (OpenMP barriers), while independent slices scale ~1.7x and lose
    only the CPU share they are denied. Each slice's gradient comes back from ``torch.autograd.grad`` weighted by
    its share of the batch and the slices are summed in order: the step is the full-batch step, reproducibly.
    The slice count is fixed (``train.shards``, default the CPU quota) so the result never depends on the threads.
    With more slices than cores they run on as many threads as the quota or on one thread each, chosen by
    :class:`Tuner`: under contention the scheduler shares the cores per thread, so more threads win back CPU share
    (measured: ``shards: 4`` on 2 cores, ~14% slower quiet, ~28% faster beside two busy processes). The next
    step's slice inputs are queued behind the current step's slices, so a thread that finishes early builds them
    instead of idling until the slowest slice and the optimizer step are done.

    **Whole** (GPU, DDP workers, ``train.shards = 1``, pinned ``train.torch_threads``, or layers that draw from
    torch's global generator — dropout, the random trigger ablation — which racing threads would make
    irreproducible): the batch goes through one intra-op pool, the next one built on a background thread when
    the tuner leaves a core for it."""

    def __init__(self, net: torch.nn.Module, opt: torch.optim.Optimizer, ss: SampleSet, vocab: Vocab, cfg: Config,
                 device: torch.device, quota: int, world: int):
        tc = cfg.train
        self.net, self.opt, self.ss, self.vocab, self.cfg, self.device, self.quota = (
            net, opt, ss, vocab, cfg, device, quota)
        self.parts = tc.shards or quota
        self.sliced = (self.parts > 1 and not tc.torch_threads and world == 1 and device.type == "cpu"
                       and cfg.model.dropout == 0 and cfg.model.trigger_feature != "random" and numba_threadsafe())
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.pool: ThreadPoolExecutor | None = None
        if self.sliced:
            self.tuner = Tuner([min(quota, self.parts), self.parts])
            self.pool = ThreadPoolExecutor(self.parts, thread_name_prefix="pi2i-slice",
                                           initializer=single_thread_worker)
        else:
            self.tuner = Tuner([tc.torch_threads] if tc.torch_threads else [max(1, quota - 1), quota])
            torch.set_num_threads(self.tuner.current)

    def describe(self) -> str:
        if self.sliced:
            return f"{self.parts} slices on {self.tuner.current} threads"
        return f"{self.tuner.current} threads"

    def steps(self, index_batches: list[np.ndarray]) -> Iterator[tuple[np.ndarray, float]]:
        """One optimizer step per index batch; yields (indices, mean loss) after each."""
        if self.sliced:
            ahead = self._build_slices(index_batches[0]) if index_batches else []
            for s, idx in enumerate(index_batches):
                work = self._submit_slices(idx, ahead)
                # the next step's inputs are queued behind this step's slices: a thread that finishes its slice
                # early builds them (features need no weights), so it neither idles at the step's end nor adds a
                # feature pass to the next step
                ahead = self._build_slices(index_batches[s + 1]) if s + 1 < len(index_batches) else []
                yield idx, self._finish(idx, self._sum_slices(idx, work))
            return
        for idx, b in batches(self.ss, index_batches, self.vocab, self.cfg, self.device,
                              lambda: self.tuner.current < self.quota):
            loss = batch_loss(self.net, b)
            self.opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
            yield idx, self._finish(idx, loss.detach())
            if torch.get_num_threads() != self.tuner.current:
                torch.set_num_threads(self.tuner.current)

    def _parts(self, idx: np.ndarray) -> list[np.ndarray]:
        """The slices of a batch: always ``self.parts`` of them (fewer only when the batch is smaller), the samples
        ordered by context length first, so that a slice of short histories attends over short sequences
        (:func:`pi2i.prs.model.to_tensors` trims the padding)."""
        ctx = np.asarray(self.ss.pos[idx]) - np.asarray(self.ss.clicks.user_ptr)[np.asarray(self.ss.user[idx])]
        ordered = idx[np.argsort(np.minimum(ctx, self.cfg.sampling.seq_len), kind="stable")]
        return [p for p in np.array_split(ordered, self.parts) if len(p)]

    def _build_slices(self, idx: np.ndarray) -> list[Future]:
        """Queue the model inputs of each slice of batch ``idx`` on the slice threads."""
        assert self.pool is not None
        return [self.pool.submit(make_batch, self.ss, p, self.vocab, self.cfg) for p in self._parts(idx)]

    def _slice(self, batch: Future, n: int, n_total: int) -> tuple[torch.Tensor, tuple]:
        loss = batch_loss(self.net, batch.result())
        if not torch.isfinite(loss):
            return loss.detach(), ()
        return loss.detach(), torch.autograd.grad(loss * (n / n_total), self.params, allow_unused=True)

    def _submit_slices(self, idx: np.ndarray, inputs: list[Future]) -> list[Future]:
        """Queue the gradients of each slice (inputs from :meth:`_build_slices`): slice ``i`` runs on thread
        ``i mod n_threads``, the slices of a thread one after the other. A slice waits only on inputs queued
        before it (the queue is FIFO), so a waiting thread never blocks the work it waits for."""
        assert self.pool is not None
        sizes = [len(p) for p in self._parts(idx)]
        n_threads = min(self.tuner.current, len(sizes))
        run = lambda t: [self._slice(inputs[i], sizes[i], len(idx)) for i in range(t, len(sizes), n_threads)]
        return [self.pool.submit(run, t) for t in range(n_threads)]

    def _sum_slices(self, idx: np.ndarray, work: list[Future]) -> torch.Tensor:
        """Set every parameter's ``grad`` to the gradient of the batch's mean loss; returns that loss. The batch is
        always cut into the same slices and their gradients summed in slice order; the tuner only decides how
        many threads share them, so the numbers never depend on it."""
        parts = self._parts(idx)
        done = [f.result() for f in work]
        n_threads = len(done)
        out = [done[i % n_threads][i // n_threads] for i in range(len(parts))]
        loss = sum((lo * len(p) for (lo, _), p in zip(out, parts)), torch.zeros(())) / len(idx)
        if torch.isfinite(loss):
            for j, prm in enumerate(self.params):
                gs = [g[j] for _, g in out if g[j] is not None]
                prm.grad = functools.reduce(torch.add, gs) if gs else None
        return loss

    def _finish(self, idx: np.ndarray, loss: torch.Tensor) -> float:
        if not torch.isfinite(loss):
            raise ValueError(f"non-finite training loss: NaN/inf in the features of samples {idx[:5].tolist()}... "
                             f"(check the i2i scores and times)")
        self.opt.step()
        self.tuner.tick(len(idx))
        return float(loss)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _evaluate(model: PRSModel, ss: SampleSet, idx: np.ndarray, vocab: Vocab, cfg: Config,
              device: torch.device) -> np.ndarray:
    """Sums over ``idx``: [count, loss, hits@1, hits@10, reciprocal rank]."""
    out = np.zeros(5)
    model.eval()
    bs = cfg.train.batch_size
    with torch.inference_mode():
        for _, b in batches(ss, [idx[s:s + bs] for s in range(0, len(idx), bs)], vocab, cfg, device):
            logits = model(b)
            lp = -torch.log_softmax(logits, -1)[:, 0]
            r = positive_rank(logits).double()
            out += [len(r), lp.sum().item(), (r < 1).sum().item(), (r < 10).sum().item(),
                    (1.0 / (r + 1)).sum().item()]
    model.train()
    return out


def _write_checkpoint(state: dict, history: list, d: str) -> None:
    """A checkpoint: the best weights so far and the metric history."""
    from safetensors.torch import save_file

    save_file(state, os.path.join(d, WEIGHTS_FILE))
    Path(d, HISTORY_FILE).write_text(json.dumps(history))


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker (or in-process for num_workers=0)."""
    import ray.train
    import ray.train.torch

    from pi2i.prs.launch import keep_freed_memory, set_threads

    cfg = Config.model_validate(config["cfg"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc.seed)
    quota = set_threads(tc.torch_threads or None)
    keep_freed_memory()
    ss = SampleSet(config["samples_uri"])
    vocab = Vocab.from_table(read_parquet(config["vocab_uri"]), ss.info)
    train_idx, val_idx = split_samples(ss, tc.val_fraction, tc.seed)
    rng = np.random.default_rng(tc.seed)
    if len(val_idx) > VAL_MAX_SAMPLES:
        val_idx = np.sort(rng.choice(val_idx, VAL_MAX_SAMPLES, replace=False))
    device = ray.train.torch.get_device() if world > 1 or tc.use_gpu else torch.device("cpu")

    model = build_model(cfg, config["vocab_sizes"])
    norm_idx = np.sort(rng.choice(train_idx, min(NORM_FIT_SAMPLES, len(train_idx)), replace=False))
    model.fit_normalizers(to_tensors(_features(ss, norm_idx, cfg), vocab))
    model.to(device)
    net = ray.train.torch.prepare_model(model) if world > 1 else model
    opt = adam(net.parameters(), tc.lr, tc.weight_decay)
    my_val = val_idx[rank::world]
    runner = StepRunner(net, opt, ss, vocab, cfg, device, quota, world)
    try:
        _epochs(config, cfg, model, runner, ss, train_idx, my_val, vocab, device, rank, world)
    finally:
        runner.close()


def _epochs(config: dict, cfg: Config, model: PRSModel, runner: StepRunner, ss: SampleSet, train_idx: np.ndarray,
            my_val: np.ndarray, vocab: Vocab, device: torch.device, rank: int, world: int) -> None:
    """The epochs of one worker: steps, validation, best-weights checkpoint, early stopping."""
    from pi2i.prs.launch import report_epoch

    tc = cfg.train
    best, bad, history = float("inf"), 0, []
    best_state: dict = {}
    for epoch in range(tc.epochs):
        t0 = time.perf_counter()
        perm = np.random.default_rng([tc.seed, epoch]).permutation(train_idx)
        n_batches = len(perm) // (tc.batch_size * world)
        if len(perm) and n_batches == 0:
            n_batches = 1
        if tc.max_batches_per_epoch:
            n_batches = min(n_batches, tc.max_batches_per_epoch)
        mine = perm[rank::world]
        tot_loss, seen = 0.0, 0
        idx_batches = [np.sort(mine[bi * tc.batch_size:(bi + 1) * tc.batch_size]) for bi in range(n_batches)]
        idx_batches = [i for i in idx_batches if len(i)]
        for bi, (idx, loss) in enumerate(runner.steps(idx_batches)):
            tot_loss += loss * len(idx)
            seen += len(idx)
            if rank == 0 and config.get("progress") and (bi + 1) % max(1, n_batches // 5) == 0:
                print(f"[train] epoch {epoch + 1} batch {bi + 1}/{n_batches} loss {tot_loss / seen:.4f} "
                      f"({seen / (time.perf_counter() - t0):.0f} samples/s, {runner.describe()})", flush=True)
        train_s = time.perf_counter() - t0
        ev = _evaluate(model, ss, my_val, vocab, cfg, device)
        tr = np.array([tot_loss, seen], dtype=np.float64)
        if world > 1 and torch.distributed.is_initialized():
            t = torch.tensor(np.concatenate([ev, tr]), dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            ev, tr = t[:5].cpu().numpy(), t[5:].cpu().numpy()
        n = max(ev[0], 1.0)
        m = {"epoch": epoch + 1, "train_loss": float(tr[0] / max(tr[1], 1)), "val_loss": float(ev[1] / n),
             "val_hr1": float(ev[2] / n), "val_hr10": float(ev[3] / n), "val_mrr": float(ev[4] / n),
             "val_samples": int(ev[0]), "train_samples": int(tr[1]), "epoch_seconds": round(train_s, 3),
             "train_samples_per_s": float(tr[1] / train_s) if train_s > 0 else None}
        val_loss = float(m["val_loss"] or 0.0)
        if val_loss < best - 1e-6 or not best_state:
            best, bad = val_loss, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        m["best_val_loss"] = best
        history.append(m)
        if rank == 0 and config.get("progress"):
            print(f"[train] epoch {epoch + 1}: train_loss {m['train_loss']:.4f} val_loss {m['val_loss']:.4f} "
                  f"val_hr10 {m['val_hr10']:.4f} ({m['train_samples_per_s'] or 0:.0f} samples/s)", flush=True)

        report_epoch(m, functools.partial(_write_checkpoint, best_state, history))
        if tc.patience and bad >= tc.patience:
            break


def train(samples_dir: str, out_dir: str, cfg: Config, progress: bool = True) -> dict:
    """Train the scorer on a samples directory through Ray Train and write the model directory ``out_dir``.
    Returns the metrics also written to ``train_metrics.json``."""
    from pi2i.prs.launch import cleanup_local_checkpoints, run_ray_train

    t0 = time.perf_counter()
    check_out_dir(out_dir)
    ss = SampleSet(samples_dir)
    if len(ss) == 0:
        raise ValueError(f"no training samples in {samples_dir}")
    check_samples(ss, samples_dir)
    tc = cfg.train
    train_idx, val_idx = split_samples(ss, tc.val_fraction, tc.seed)
    # vocabulary from the clicks of the training users only
    train_users = np.unique(np.asarray(ss.user)[train_idx])
    ptr = np.asarray(ss.clicks.user_ptr)
    lens = ptr[train_users + 1] - ptr[train_users]
    clicked = np.asarray(ss.clicks.items)[np.repeat(ptr[train_users], lens) + (
        np.arange(lens.sum()) - np.repeat(np.concatenate([[0], np.cumsum(lens)[:-1]]), lens))]
    vocab = Vocab.build(clicked, ss.info, cfg.model.vocab_min_count)
    makedirs(out_dir)
    vocab_path = join(out_dir, VOCAB_FILE)
    write_parquet(vocab.to_table(), vocab_path)
    for f in (ITEMS_FILE, POPULARITY_FILE, HISTORIES_FILE):
        copy_file(join(samples_dir, f), join(out_dir, f))

    loop_cfg = {"cfg": cfg.model_dump(), "samples_uri": _uri(samples_dir), "vocab_uri": _uri(vocab_path),
                "vocab_sizes": vocab.sizes, "progress": progress}
    try:
        result = run_ray_train(_train_loop, loop_cfg, cfg, "prs")
    except Exception as e:  # Ray wraps the loop's errors: surface a bad-input one as the one line it is
        cause = _user_error(e)
        if cause is not None:
            raise ValueError(str(cause)) from None
        raise
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        copy_file(os.path.join(d, WEIGHTS_FILE), join(out_dir, WEIGHTS_FILE))
        history = json.loads(Path(d, HISTORY_FILE).read_text())
    cleanup_local_checkpoints()
    best = min(history, key=lambda m: m["val_loss"])
    model_meta = {
        "format": MODEL_FORMAT, "config": cfg.model_dump(), "vocab_sizes": vocab.sizes,
        "num_triggers": cfg.sampling.num_triggers, "seq_len": cfg.sampling.seq_len,
        "max_trigger_hits": cfg.model.max_trigger_hits, "dedup_consecutive": cfg.sampling.dedup_consecutive,
        "samples_dir": _uri(samples_dir),
    }
    calibration = None
    if tc.calibration_samples > 0 and len(val_idx):
        model, _, _ = _model_from(out_dir, model_meta)
        calibration = calibrate(model, cfg, model_meta, vocab, ss, val_idx, cfg.eval.gate_k)
        model_meta["calibration"] = {k: calibration[k] for k in ("popularity", "swing", "k", "merge")
                                     if k in calibration}
        if progress:
            k = calibration["k"]
            print(f"[train] calibration on {calibration['val_users']} held-out validation users: popularity "
                  f"{calibration['popularity']:g}, swing {calibration['swing']:g} -> full-pool val HR@{k} "
                  f"{calibration[f'val_hr{k}']:.4f} (model alone {calibration[f'val_hr{k}_model']:.4f}, "
                  f"popularity {calibration[f'val_hr{k}_popularity_in_pool']:.4f}, swing "
                  f"{calibration[f'val_hr{k}_swing_in_pool']:.4f})", flush=True)
            if "merge" in calibration:
                print(f"[train] popularity channel merged by validation slot hit rates: val HR@{k} "
                      f"{calibration[f'val_hr{k}_merged']:.4f}, {calibration[f'merge_pool_share{k}']:.0%} of the "
                      f"top {k} from the pool", flush=True)
    write_json(model_meta, join(out_dir, CONFIG_FILE))
    metrics = {
        "epochs_run": len(history), "best_epoch": best["epoch"], "best": best, "history": history,
        "train_samples": len(train_idx), "val_samples": int(min(len(val_idx), VAL_MAX_SAMPLES)),
        "vocab_sizes": vocab.sizes, "num_workers": tc.num_workers, "use_gpu": tc.use_gpu,
        "seconds": round(time.perf_counter() - t0, 3), "ray_storage": result.path,
        "stopped_early": len(history) < tc.epochs, "calibration": calibration,
    }
    write_json(metrics, join(out_dir, METRICS_FILE))
    write_json({"samples_per_s": best.get("train_samples_per_s"), "val_hr10": best["val_hr10"],
                "val_hr1": best["val_hr1"], "val_mrr": best["val_mrr"], "val_loss": best["val_loss"],
                "epochs_run": len(history), "best_epoch": best["epoch"], "train_samples": len(train_idx),
                "seconds": metrics["seconds"],
                "calibration": None if calibration is None else {k: v for k, v in calibration.items() if k != "grid"},
                "samples_per_s_by_epoch": [m.get("train_samples_per_s") for m in history]},
               join(out_dir, STATS_FILE))
    from pi2i.methods.manifest import save_manifest

    save_manifest(out_dir, "pi2i", cfg)
    if progress:
        print(f"[train] best epoch {best['epoch']}: val_loss {best['val_loss']:.4f} val_hr10 {best['val_hr10']:.4f}"
              f" -> {out_dir}", flush=True)
    return metrics


def _user_error(e: BaseException | None) -> ValueError | None:
    """The ValueError in ``e``'s chain of causes or among its worker failures (Ray wraps loop errors)."""
    todo, seen = [e], 0
    while todo and seen < 20:
        x = todo.pop()
        seen += 1
        if x is None:
            continue
        if isinstance(x, ValueError):
            return x
        todo += [x.__cause__, x.__context__, getattr(x, "cause", None)]
        failures = getattr(x, "worker_failures", None)
        if isinstance(failures, dict):
            todo += list(failures.values())
    return None


def check_out_dir(out_dir: str) -> None:
    """Refuse to overwrite a model directory of another method."""
    from pi2i.methods.base import METHOD_FILE

    uri = join(out_dir, METHOD_FILE)
    if exists(uri):
        method = (read_json(uri) or {}).get("method")
        if method != "pi2i":
            raise ValueError(f"--out {out_dir} holds a {method} model; train pi2i into another directory")


def check_samples(ss: SampleSet, samples_dir: str) -> None:
    """Inputs the features are computed from must be finite: i2i scores, ranks >= 1, click times."""
    lk = ss.lookup
    if not np.isfinite(lk.s_scores).all():
        raise ValueError(f"{samples_dir}/{I2I_FILE}: {int((~np.isfinite(lk.s_scores)).sum())} non-finite i2i "
                         f"scores (NaN/inf) would make NaN features; rebuild the i2i index")
    if len(lk.s_ranks) and lk.s_ranks.min() < 1:
        raise ValueError(f"{samples_dir}/{I2I_FILE}: i2i ranks must be >= 1 (found {int(lk.s_ranks.min())})")
    cands = np.asarray(ss.cands)
    if cands.ndim != 2 or (len(cands) and (cands[:, 0] < 0).any()):
        raise ValueError(f"{samples_dir}: samples without a positive in slot 0 (not a samples directory of "
                         f"this version?)")


def _model_from(model_dir: str, meta: dict) -> tuple[PRSModel, Config, dict]:
    """(model in eval mode, config, meta) from ``meta`` and the weights file of ``model_dir``."""
    from safetensors.torch import load as load_bytes

    cfg = Config.model_validate(meta["config"])
    model = build_model(cfg, meta["vocab_sizes"])
    model.load_state_dict(load_bytes(read_bytes(join(model_dir, WEIGHTS_FILE))))
    model.eval()
    return model, cfg, meta


def load_model(model_dir: str) -> tuple[PRSModel, Config, dict]:
    """(model in eval mode, config, config.json contents) of a model directory."""

    from pi2i.methods.base import METHOD_FILE

    if exists(join(model_dir, METHOD_FILE)):
        method = (read_json(join(model_dir, METHOD_FILE)) or {}).get("method")
        if method != "pi2i":
            raise ValueError(f"{model_dir} holds a {method} model, not a pi2i one")
    if not exists(join(model_dir, CONFIG_FILE)) or not exists(join(model_dir, WEIGHTS_FILE)):
        raise ValueError(f"{model_dir} is not a pi2i model directory (no {CONFIG_FILE} / {WEIGHTS_FILE})")
    meta = read_json(join(model_dir, CONFIG_FILE))
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{model_dir} holds a pi2i model of format {meta.get('format')!r}; this code reads "
                         f"{MODEL_FORMAT!r}: retrain it")
    return _model_from(model_dir, meta)
