"""Trigger–target sampling: PRS training samples from click sequences and the i2i table (PI2I §3.2.1, Alg. 1).

Per user, clicks in time order. For every position ``t`` (``t >= min_history``) the click ``items[t]`` (with
``sampling.target_horizon = h > 1``: one of the clicks ``t .. t+h-1``, seeded, so the scorer learns the user's
next few clicks rather than only the next one) is the **target** and the last ``L`` distinct earlier items are the **triggers**. Triggers whose i2i row holds the target
are the **positive triggers** ``P``; a position with ``P = ∅`` is dropped and counted. Negatives, all excluding
the target and sampled without replacement where the pool allows (seeded, independent of thread count):

* **hard**: from the rows of ``P`` (``sampling.hard_negatives``),
* **easy**: from the rows of the other triggers (``sampling.easy_negatives``);
* never the user's next ``sampling.future_exclusion`` clicks (they are positives of later positions, not
  negatives; a false negative teaches the scorer to push down what the user does click soon);
* **fill** (``sampling.fill_negatives``): where the other triggers' rows hold fewer than that (few triggers, a
  small catalogue), the remaining easy slots are drawn from the positive triggers' rows, so a sample keeps its
  full set of negatives instead of padding.

Every candidate is an item of the union of the triggers' rows — the serving pool — and its features are built
later by :func:`pi2i.prs.candidates.featurize`, the very function serving uses, from the stored (user, position,
candidates) triple. A sample therefore stores only ids; features never drift between training and serving.

Samples directory layout (all written by :func:`build_samples`)::

    clicks/{user_ids,user_ptr,items,ts}.npy   per-user click sequences (CSR, oldest first, ts in µs)
    samples/{user,pos,cands}.npy              user row, target position in clicks, [N, 1+hard+easy] item ids
                                              (slot 0 = positive, -1 = pad; int32 when ids fit)
    samples/rates.npy                         [N, 2] float32 draws per row entry, positive / other triggers'
                                              rows (the logQ correction, with per-candidate hit counts)
    i2i_table.parquet                         the i2i table the samples were drawn from (features need it)
    items.parquet  popularity.parquet  histories.parquet  stats.json  meta.json

(file names: :mod:`pi2i.layout`)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numba as nb
import numpy as np
import pyarrow as pa

from pi2i.config import Config
from pi2i.contracts import (
    ITEM_SIDE_INFO,
    ITEMS_FILE,
    TS_TYPE,
    exists,
    join,
    makedirs,
    parent,
    read_events,
    read_json,
    read_parquet,
    write_json,
    write_parquet,
)
from pi2i.data.events import item_popularity, recent_histories
from pi2i.data.events import splitmix64_next as _rng
from pi2i.ibs.i2i import I2IIndex
from pi2i.layout import (
    CLICKS_SUBDIR,
    HISTORIES_FILE,
    I2I_FILE,
    POPULARITY_FILE,
    SAMPLES_SUBDIR,
)
from pi2i.layout import SAMPLES_META_FILE as META_FILE
from pi2i.layout import SAMPLES_STATS_FILE as STATS_FILE
from pi2i.prs.candidates import (
    Features,
    ItemInfo,
    RowLookup,
    _last_distinct,
    build_groups,
    featurize,
)
from pi2i.prs.io import load_npy, save_npy

# seeded draws: one splitmix64 stream per sample (_rng), so results are independent of the thread count.
# File names of a samples dir (re-exported for pi2i.prs.train / scoring and the methods)
__all__ = ["CLICKS_SUBDIR", "HISTORIES_FILE", "I2I_FILE", "META_FILE", "POPULARITY_FILE", "SAMPLES_SUBDIR",
           "STATS_FILE", "Clicks", "SampleSet", "build_samples", "items_table", "popularity_table"]


@nb.njit(cache=True, inline="always")
def _pool_item(i, rows, use, indptr, s_targets):
    """The ``i``-th item of the concatenated rows ``rows[q]`` with ``use[q]``."""
    for q in range(len(rows)):
        if not use[q]:
            continue
        r = rows[q]
        n = indptr[r + 1] - indptr[r]
        if i < n:
            return s_targets[indptr[r] + i]
        i -= n
    return -1


@nb.njit(cache=True, inline="always")
def _seen(out, c, x):
    for q in range(c):
        if out[q] == x:
            return True
    return False


@nb.njit(cache=True)
def _draw(rows, use, n_want, target, out, c, state, indptr, s_targets, future):
    """Append up to ``n_want`` distinct items of the pooled rows to ``out[c:]`` (never the target or an item
    already in ``out``). Small pools are walked in a random permutation (exact sampling without replacement),
    large ones by rejection with a bounded number of draws."""
    tot = 0
    for q in range(len(rows)):
        if use[q]:
            tot += indptr[rows[q] + 1] - indptr[rows[q]]
    if tot == 0 or n_want == 0:
        return c, state
    limit = c + n_want
    if tot <= 4 * n_want:
        perm = np.arange(tot)
        for i in range(tot - 1, 0, -1):
            state, v = _rng(state)
            j = np.int64(v % np.uint64(i + 1))
            perm[i], perm[j] = perm[j], perm[i]
        for i in range(tot):
            if c >= limit:
                break
            x = _pool_item(perm[i], rows, use, indptr, s_targets)
            if x != target and not _seen(out, c, x) and not _seen(future, len(future), x):
                out[c] = x
                c += 1
    else:
        tries = 0
        while c < limit and tries < 8 * n_want + 32:
            tries += 1
            state, v = _rng(state)
            x = _pool_item(np.int64(v % np.uint64(tot)), rows, use, indptr, s_targets)
            if x != target and not _seen(out, c, x) and not _seen(future, len(future), x):
                out[c] = x
                c += 1
    return c, state


@nb.njit(cache=True, parallel=True)
def _sample_kernel(items, ts, click_rows, pos_lo, pos_t, pos_end, horizon, n_future, L, n_hard, n_easy, fill, seed,
                   indptr, s_targets, cands, npos, nhard, neasy, nfill, rates):
    for p in nb.prange(len(pos_t)):
        lo, t = pos_lo[p], pos_t[p]
        target = items[t]
        if horizon > 1:  # the target: one of the next `horizon` clicks (seeded), context still before t
            span = min(horizon, pos_end[p] - t)
            _, v = _rng(np.uint64(seed + 7) * np.uint64(0xD1B54A32D192ED03) ^ np.uint64(p))
            target = items[t + np.int64(v % np.uint64(span))]
        ti = np.empty(L, np.int64)
        tt = np.empty(L, np.int64)
        tidx = np.empty(L, np.int64)
        n = _last_distinct(items, ts, lo, t, L, ti, tt, tidx)
        rows = np.empty(n, np.int64)
        pos_trig = np.zeros(n, np.bool_)
        neg_trig = np.zeros(n, np.bool_)
        k = 0
        for q in range(n):
            r = click_rows[tidx[q]]
            rows[q] = r
            if r < 0:
                continue
            a, b = indptr[r], indptr[r + 1]
            j = np.searchsorted(s_targets[a:b], target)
            if j < b - a and s_targets[a + j] == target:
                pos_trig[q] = True
                k += 1
            else:
                neg_trig[q] = True
        npos[p] = k
        if k == 0:
            continue
        out = cands[p]
        out[0] = target
        state = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(p)
        state, _ = _rng(state)
        future = items[t + 1:min(pos_end[p], t + 1 + n_future)]  # the user's next clicks are no negatives
        c, state = _draw(rows, pos_trig, n_hard, target, out, 1, state, indptr, s_targets, future)
        nhard[p] = c - 1
        c2, state = _draw(rows, neg_trig, n_easy, target, out, c, state, indptr, s_targets, future)
        neasy[p] = c2 - c
        if fill and c2 < c + n_easy:  # too few other triggers' items: fill the slots from the positive rows
            c3, state = _draw(rows, pos_trig, c + n_easy - c2, target, out, c2, state, indptr, s_targets, future)
            nfill[p] = c3 - c2
        # logQ rates: draws are uniform over the entries of the positive triggers' rows (hard + fill) and of the
        # other rows (easy): q(x) ~ min(1, rate_P · hits_P(x) + rate_E · hits_E(x)), hits counted at training
        tot_p = 0
        tot_e = 0
        for q in range(n):
            if rows[q] >= 0:
                ln = indptr[rows[q] + 1] - indptr[rows[q]]
                if pos_trig[q]:
                    tot_p += ln
                else:
                    tot_e += ln
        rates[p, 0] = (nhard[p] + nfill[p]) / tot_p if tot_p > 0 else 0.0
        rates[p, 1] = neasy[p] / tot_e if tot_e > 0 else 0.0


# --------------------------------------------------------------------------------------------- click data
@dataclass
class Clicks:
    """Per-user click sequences in time order (CSR)."""

    user_ids: np.ndarray  # int64 [U]
    user_ptr: np.ndarray  # int64 [U+1]
    items: np.ndarray  # int64
    ts: np.ndarray  # int64 µs

    @classmethod
    def from_events(cls, events: pa.Table, behaviors: list[str], dedup: bool) -> Clicks:
        """Every click of ``behaviors``, time order, back-to-back repeats collapsed with ``dedup``."""
        return cls(*recent_histories(events, None, behaviors, dedup))

    def save(self, d: str) -> None:
        for f in ("user_ids", "user_ptr", "items", "ts"):
            save_npy(getattr(self, f), join(d, f + ".npy"))

    @classmethod
    def load(cls, d: str) -> Clicks:
        return cls(*(load_npy(join(d, f + ".npy")) for f in ("user_ids", "user_ptr", "items", "ts")))

    def histories(self, n: int) -> pa.Table:
        """The last ``n`` clicks per user, oldest first (``histories.parquet`` of the contract)."""
        lens = np.diff(self.user_ptr)
        keep_len = np.minimum(lens, n)
        start = self.user_ptr[1:] - keep_len
        idx = np.repeat(start - np.concatenate([[0], np.cumsum(keep_len)[:-1]]), keep_len) + np.arange(keep_len.sum())
        offs = pa.array(np.concatenate([[0], np.cumsum(keep_len)]).astype(np.int32))
        items = pa.ListArray.from_arrays(offs, pa.array(self.items[idx], pa.int64()))
        ts = pa.ListArray.from_arrays(offs, pa.array(self.ts[idx], pa.int64()).cast(TS_TYPE))
        return pa.table({"user_id": pa.array(self.user_ids, pa.int64()), "items": items, "ts": ts})


def popularity_table(events: pa.Table, behaviors: list[str]) -> pa.Table:
    """``popularity.parquet``: item click counts, most popular first (ties: smaller id first)."""
    items, counts = item_popularity(events, behaviors)
    return pa.table({"item_id": pa.array(items, pa.int64()), "count": pa.array(counts, pa.int64())})


def items_table(items_uri: str | None, events_uri: str, clicks: Clicks) -> pa.Table:
    """Side info: ``items_uri``, else ``items.parquet`` beside the events, else bare ids from the clicks."""
    uri = items_uri
    if uri is None:
        sib = join(parent(events_uri), ITEMS_FILE)
        uri = sib if exists(sib) else None
    if uri is not None:
        t = read_parquet(uri)
        cols = {"item_id": t.column("item_id").cast(pa.int64())}
        for f, typ in ITEM_SIDE_INFO.items():
            if f in t.column_names:
                cols[f] = t.column(f).cast(typ)
        return pa.table(cols)
    return pa.table({"item_id": pa.array(np.unique(clicks.items), pa.int64())})


# --------------------------------------------------------------------------------------------- build
def build_samples(events_uri: str, i2i_uri: str, out_dir: str, cfg: Config, items_uri: str | None = None,
                  progress: bool = False) -> dict:
    """Draw trigger–target samples for every click position of ``events_uri`` against the i2i table and write
    the samples directory (layout in the module docstring). Returns the stats also written to ``stats.json``."""
    sc = cfg.sampling
    t0 = time.perf_counter()
    events = read_events(events_uri)
    clicks = Clicks.from_events(events, sc.behaviors, sc.dedup_consecutive)
    index = I2IIndex.load(i2i_uri)
    lookup = RowLookup.build(index)
    t_load = time.perf_counter() - t0

    # positions: every click with at least min_history earlier clicks of the same user
    lens = np.diff(clicks.user_ptr)
    npos_u = np.maximum(lens - sc.min_history, 0)
    user_of = np.repeat(np.arange(len(lens), dtype=np.int64), npos_u)
    first = clicks.user_ptr[:-1] + sc.min_history
    pos_t = np.repeat(first - np.concatenate([[0], np.cumsum(npos_u)[:-1]]), npos_u) + np.arange(npos_u.sum())
    pos_lo = clicks.user_ptr[user_of]
    C = 1 + sc.hard_negatives + sc.easy_negatives
    P = len(pos_t)
    cands = np.full((P, C), -1, np.int64)
    npos = np.zeros(P, np.int32)
    nhard = np.zeros(P, np.int32)
    neasy = np.zeros(P, np.int32)
    nfill = np.zeros(P, np.int32)
    rates = np.zeros((P, 2), np.float32)
    click_rows = lookup.rows(clicks.items)
    t1 = time.perf_counter()
    pos_end = clicks.user_ptr[user_of + 1]
    _sample_kernel(clicks.items, clicks.ts, click_rows, pos_lo, pos_t.astype(np.int64), pos_end,
                   sc.target_horizon, sc.future_exclusion, sc.num_triggers,
                   sc.hard_negatives, sc.easy_negatives, sc.fill_negatives, sc.seed, index.indptr,
                   lookup.s_targets, cands, npos, nhard, neasy, nfill, rates)
    t_kernel = time.perf_counter() - t1
    keep = npos > 0
    kept = np.flatnonzero(keep)
    if sc.max_samples and len(kept) > sc.max_samples:
        rng = np.random.default_rng(sc.seed)
        kept = np.sort(rng.choice(kept, sc.max_samples, replace=False))

    makedirs(out_dir)
    sdir = join(out_dir, SAMPLES_SUBDIR)
    save_npy(user_of[kept], join(sdir, "user.npy"))
    save_npy(pos_t[kept].astype(np.int64), join(sdir, "pos.npy"))
    out_c = cands[kept]
    if out_c.size and out_c.max() < np.iinfo(np.int32).max:  # halves the largest file when ids fit
        out_c = out_c.astype(np.int32)
    save_npy(out_c, join(sdir, "cands.npy"))
    save_npy(rates[kept], join(sdir, "rates.npy"))
    clicks.save(join(out_dir, CLICKS_SUBDIR))
    write_parquet(index.to_table(), join(out_dir, I2I_FILE))
    write_parquet(items_table(items_uri, events_uri, clicks), join(out_dir, ITEMS_FILE))
    write_parquet(popularity_table(events, sc.behaviors), join(out_dir, POPULARITY_FILE))
    write_parquet(clicks.histories(cfg.serving.history_len), join(out_dir, HISTORIES_FILE))
    total = time.perf_counter() - t0
    nk = int(keep.sum())
    stats = {
        "events": events.num_rows, "users": len(clicks.user_ids), "clicks": len(clicks.items),
        "positions": int(P), "samples": len(kept), "samples_kept_before_cap": nk,
        "dropped": int(P - nk), "drop_rate": float((P - nk) / P) if P else 0.0,
        "candidates_per_sample": C,
        "mean_positive_triggers": float(npos[keep].mean()) if nk else 0.0,
        "mean_hard_negatives": float(nhard[keep].mean()) if nk else 0.0,
        "mean_easy_negatives": float(neasy[keep].mean()) if nk else 0.0,
        "mean_fill_negatives": float(nfill[keep].mean()) if nk else 0.0,
        "mean_candidates": float(1 + (nhard + neasy + nfill)[keep].mean()) if nk else 0.0,
        "seconds_load": round(t_load, 3), "seconds_sampling": round(t_kernel, 3), "seconds_total": round(total, 3),
        "samples_per_s_sampling": float(P / t_kernel) if t_kernel > 0 else None,
        "samples_per_s": float(P / total) if total > 0 else None,
        "i2i_triggers": len(index), "i2i_pairs": index.num_pairs,
    }
    write_json(stats, join(out_dir, STATS_FILE))
    write_json({"config": cfg.model_dump(), "events": events_uri, "i2i": i2i_uri, "items": items_uri},
               join(out_dir, META_FILE))
    if progress:
        print(f"samples: {stats['samples']} of {P} positions (drop rate {stats['drop_rate']:.1%}), "
              f"{stats['samples_per_s_sampling']:.0f} positions/s in the sampler, {total:.1f}s total")
    return stats


# --------------------------------------------------------------------------------------------- reading back
class SampleSet:
    """A samples directory opened for training: ids memory-mapped, features built per batch by
    :func:`pi2i.prs.candidates.featurize` (the serving path)."""

    def __init__(self, samples_dir: str):
        self.dir = samples_dir
        sdir = join(samples_dir, SAMPLES_SUBDIR)
        self.user = load_npy(join(sdir, "user.npy"))
        self.pos = load_npy(join(sdir, "pos.npy"))
        self.cands = load_npy(join(sdir, "cands.npy"))
        rq = join(sdir, "rates.npy")
        #: per sample (rate_P, rate_E): draws per row entry of the positive / other triggers' rows (logQ)
        self.rates = load_npy(rq) if exists(rq) else None
        self.clicks = Clicks.load(join(samples_dir, CLICKS_SUBDIR))
        self.meta = read_json(join(samples_dir, META_FILE))
        self._lookup: RowLookup | None = None
        self._info: ItemInfo | None = None

    def __len__(self) -> int:
        return len(self.pos)

    @property
    def lookup(self) -> RowLookup:
        if self._lookup is None:
            self._lookup = RowLookup.build(I2IIndex.load(join(self.dir, I2I_FILE)))
        return self._lookup

    @property
    def info(self) -> ItemInfo:
        if self._info is None:
            self._info = ItemInfo.from_table(read_parquet(join(self.dir, ITEMS_FILE)),
                                             read_parquet(join(self.dir, POPULARITY_FILE)))
        return self._info

    def features(self, idx: np.ndarray, num_triggers: int, seq_len: int, max_hits: int,
                 with_logq: bool = False) -> Features:
        """Model inputs of samples ``idx``: context = the user's clicks before the target position; with
        ``with_logq`` also ``Features.logq`` [G, C], the log draw probability of each candidate."""
        idx = np.asarray(idx, np.int64)
        hi = np.asarray(self.pos[idx])
        lo = np.asarray(self.clicks.user_ptr)[np.asarray(self.user[idx])]
        groups = build_groups(self.clicks.items, self.clicks.ts, lo, hi, num_triggers, seq_len)
        want = with_logq and self.rates is not None
        feat = featurize(groups, np.asarray(self.cands[idx]), self.lookup, self.info, max_hits, hit_split=want)
        if want and self.rates is not None and feat.hits_pe is not None:
            r = np.asarray(self.rates[idx], np.float64)
            q = np.minimum(1.0, r[:, :1] * feat.hits_pe[..., 0] + r[:, 1:] * feat.hits_pe[..., 1])
            feat.logq = np.where(q > 0, np.log(np.maximum(q, 1e-30)), 0.0).astype(np.float32)
        return feat

    def user_ids(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.clicks.user_ids)[np.asarray(self.user[idx])]
