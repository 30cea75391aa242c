"""Synthetic e-commerce click logs with a known generative story.

Why synthetic data: the real Taobao samples are far too sparse to judge a recommender, and PI2I's claim is
specific — a personalized scorer over a Swing candidate pool beats plain item-CF — so the data must carry *both*
kinds of signal, by construction, at any size.

The story (every draw is vectorised numpy; one RNG stream per stage, so the output is a pure function of
the parameters and the seed):

* **Catalogue.** ``items`` items are laid out in *categories* (~``items_per_category`` items) and, inside a
  category, in *clusters* of closely related products (~``items_per_cluster`` items, "running shoes" inside
  "sport"). Each category has ``brands_per_category`` brands (global brand ids); every brand has a price level,
  so an item's price = category base price × brand level × noise, and its *price tier* (budget / mid / premium,
  relative to its category) follows from the brand and the noise. Item popularity is Zipf(``zipf``) over a
  random ranking of the items; item ids are a random permutation, so ids leak nothing.
* **Users.** Activity (events per user) is lognormal (``activity_sigma``), at least ``min_events``, summing to
  exactly ``events``. Each user has 1–5 *interests* (categories drawn by category popularity) with Dirichlet
  weights; with probability ``drift`` one interest fades out over the time window while a new one fades in
  (the weights interpolate linearly in time), so interests *drift*.
* **Sessions.** A user's events fall into sessions (geometric length, mean ``session_mean``) at uniform random
  times over ``days`` days. A session picks an interest (by the time-interpolated weights), then a cluster of
  that category (by cluster popularity); its clicks stay in that cluster, except for a sibling cluster of the
  same category (``p_sibling``) or a random popular item anywhere (``p_noise``). Sessions are what give item
  co-occurrence — and hence Swing — real signal: items of one cluster are clicked together by many users.
* **Planted personal taste (what item-CF cannot see).** Which item of the cluster is clicked depends on the
  user: each user has a persistent *price tier* (global, across all categories) and a *preferred brand* in each
  of their interest categories. A click draws ``candidates`` items from the cluster by popularity and keeps one
  with probability ∝ ``exp(brand_beta·[brand = preferred] − price_beta·|tier − user tier|)`` (sampling-
  importance-resampling, i.e. approximately popularity × taste). The co-click graph is shared by all users and
  ranks a cluster's items by popularity for everyone; a scorer that reads the user's own history (the brands and
  price tiers they clicked before, even in other categories or before a drift) can rank the same candidate pool
  better. That gap is what PI2I is supposed to close.
* **Behaviours.** Mostly clicks; with probability ``p_action`` an event re-touches the previous item of the
  session as ``cart`` / ``fav`` / ``buy`` a few seconds later (as in Taobao, where a buy follows a view).

Outputs (data layout of ``docs/interfaces.md``): ``events.parquet`` sorted by (user_id, ts), ``items.parquet``
(item_id, category_id, brand_id, seller_id, price), ``users.parquet`` (user_id, segment: a *noisy* observed
price segment — 60 % equal to the hidden tier — and age_bucket, pure noise), an empty ``quarantine.parquet`` and
``summary.json``. Users are generated in chunks and streamed through a ``ParquetWriter``; memory is bounded by
the chunk size (about ``chunk_events`` events), whatever the total. Determinism: the files are a function of
every :class:`SynthParams` field and the seed (``chunk_events`` included: each chunk has its own RNG stream)
and of the pyarrow version that writes the parquet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pi2i.contracts import (
    BEHAVIORS,
    EVENTS_FILE,
    EVENTS_SCHEMA,
    ITEMS_FILE,
    QUARANTINE_FILE,
    SUMMARY_FILE,
    USERS_FILE,
    join,
    makedirs,
    resolve,
    write_json,
    write_parquet,
)
from pi2i.data.events import to_iso, to_us
from pi2i.data.loaders import QUARANTINE_SCHEMA, atomic_data_dir

_MAX_INTERESTS = 5  # slots 0..4 are the initial interests, slot 5 the one that drifts in
_US = 1_000_000


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the generative story (see the module docstring)."""

    users: int = 2_500
    items: int = 2_500
    events: int = 125_000
    seed: int = 0
    zipf: float = 0.8
    days: float = 14.0
    start: str = "2024-03-01T00:00:00Z"
    activity_sigma: float = 1.0
    min_events: int = 3
    session_mean: float = 6.0
    items_per_cluster: int = 25
    items_per_category: int = 125
    brands_per_category: int = 6
    mean_interests: float = 2.0
    drift: float = 0.5
    p_sibling: float = 0.15
    p_noise: float = 0.05
    p_action: float = 0.08
    brand_beta: float = 2.5
    price_beta: float = 1.5
    candidates: int = 8
    chunk_events: int = 500_000

    def validate(self) -> None:
        if self.users < 1 or self.items < 1 or self.events < 1:
            raise ValueError("users, items and events must all be >= 1")
        if self.events < self.users:
            raise ValueError(f"events ({self.events}) must be >= users ({self.users}): every user has an event")
        if self.zipf < 0:
            raise ValueError(f"zipf exponent must be >= 0, got {self.zipf}")
        if self.days <= 0:
            raise ValueError(f"days must be > 0, got {self.days}")
        for name in ("p_sibling", "p_noise", "p_action", "drift"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.p_sibling + self.p_noise > 1.0:
            raise ValueError("p_sibling + p_noise must be <= 1")
        if self.candidates < 1 or self.session_mean < 1 or self.chunk_events < 1:
            raise ValueError("candidates, session_mean and chunk_events must be >= 1")


#: Named sizes. ``tiny``: unit tests (<1 s). ``demo``: the README's main command — the whole pipeline on 2 CPU
#: cores in minutes, two weeks so the last day(s) can be the test period. ``swing-bench``: the Swing benchmark
#: shape of DESIGN.md (50k users, 20k items, ~1M distinct user-item pairs, Zipf(0.6), lognormal activity).
#: ``bench-10m``: the generator's own throughput benchmark.
PRESETS: dict[str, dict] = {
    "tiny": {"users": 200, "items": 300, "events": 4_000, "items_per_cluster": 15, "items_per_category": 60},
    "demo": {"users": 2_500, "items": 2_500, "events": 125_000},
    "swing-bench": {"users": 50_000, "items": 20_000, "events": 1_300_000, "zipf": 0.6, "activity_sigma": 1.0,
                    "session_mean": 4.0, "p_noise": 0.15, "items_per_cluster": 40, "items_per_category": 200},
    "bench-10m": {"users": 500_000, "items": 200_000, "events": 10_000_000},
}


# --------------------------------------------------------------------------------------------- the world
@dataclass
class World:
    """The latent state behind the data: catalogue and users (internal indices 0..n-1)."""

    p: SynthParams
    item_ids: np.ndarray          # internal item index -> public item_id
    item_cat: np.ndarray          # category index per item (items sorted by category, cluster)
    item_cluster: np.ndarray
    item_brand: np.ndarray        # global brand index
    item_tier: np.ndarray         # 0 budget, 1 mid, 2 premium (relative to the category)
    item_price: np.ndarray
    item_seller: np.ndarray
    item_cdf: _Cdf                # item popularity over internal item order
    cl_start: np.ndarray          # item range [cl_start, cl_end) of each cluster
    cl_end: np.ndarray
    cl_cdf: _Cdf                  # cluster popularity
    cat_cl_start: np.ndarray      # cluster range of each category
    cat_cl_end: np.ndarray
    user_events: np.ndarray       # events per user
    user_tier: np.ndarray
    user_cats: np.ndarray         # (users, 6) interest categories
    user_pref: np.ndarray         # (users, 6) preferred brand per interest slot
    w_old: np.ndarray             # (users, 6) interest weights at the start of the window
    w_new: np.ndarray             # (users, 6) ... and at its end
    user_segment: np.ndarray
    user_age: np.ndarray
    item_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # brand << 2 | tier

    def __post_init__(self) -> None:
        self.item_code = ((self.item_brand.astype(np.int64) << 2) | self.item_tier).astype(np.int32)


def _split_sizes(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """``parts`` positive sizes summing to ``total`` (uneven, Dirichlet(2))."""
    parts = max(1, min(parts, total))
    share = rng.dirichlet(np.full(parts, 2.0))
    return 1 + rng.multinomial(total - parts, share)


class _Cdf:
    """Inverse-CDF lookups over an inclusive cumulative sum, with a guide table (the cutpoint method).

    ``np.searchsorted`` on millions of random targets is branch- and cache-bound; a guide table of ``4·n``
    equal-mass buckets starts each lookup at most a few steps before its answer (0.25 steps on average, for
    any skew), so a lookup is a couple of vectorised gathers.
    """

    def __init__(self, weights: np.ndarray) -> None:
        self.cum = np.cumsum(weights, dtype=np.float64)
        self.base = self.cum - weights            # exclusive cumsum
        self.total = float(self.cum[-1])
        self.nb = 4 * weights.size
        self.guide = np.searchsorted(self.cum, np.arange(self.nb) * (self.total / self.nb), side="right")

    def lookup(self, x: np.ndarray) -> np.ndarray:
        """Smallest index i with cum[i] > x, for x in [0, total)."""
        g = np.minimum((x * (self.nb / self.total)).astype(np.int64), self.nb - 1)
        idx = self.guide[g]
        np.minimum(idx, self.cum.size - 1, out=idx)
        act = np.flatnonzero(self.cum[idx] <= x)
        for _ in range(32):
            if act.size == 0:
                return idx
            idx[act] += 1
            np.minimum(idx, self.cum.size - 1, out=idx)
            act = act[(self.cum[idx[act]] <= x[act]) & (idx[act] < self.cum.size - 1)]
        if act.size:
            idx[act] = np.searchsorted(self.cum, x[act], side="right")
        return idx

    def sample(self, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Index in [lo, hi) drawn ∝ weights (u uniform in [0, 1))."""
        base = self.base[lo]
        x = base + u * (self.cum[hi - 1] - base)
        return np.clip(self.lookup(x), lo, hi - 1)


def _activity(rng: np.random.Generator, p: SynthParams) -> np.ndarray:
    """Lognormal events per user, each >= min_events (when possible), summing to exactly ``p.events``."""
    floor = min(p.min_events, p.events // p.users)
    rest = p.events - floor * p.users
    w = rng.lognormal(0.0, p.activity_sigma, p.users)
    share = w / w.sum() * rest
    n = np.floor(share).astype(np.int64)
    short = rest - int(n.sum())
    if short:
        n[np.argsort(-(share - n), kind="stable")[:short]] += 1
    return n + floor


def build_world(p: SynthParams) -> World:
    """Catalogue and users, deterministic in ``p`` (and its seed)."""
    p.validate()
    rng = np.random.default_rng([p.seed, 0])
    m = p.items
    n_cat = max(1, round(m / p.items_per_category))
    n_cl = max(n_cat, round(m / p.items_per_cluster))
    n_cl = min(n_cl, m)
    n_cat = min(n_cat, n_cl)
    cl_size = _split_sizes(rng, m, n_cl)
    cat_ncl = _split_sizes(rng, n_cl, n_cat)
    cl_end = np.cumsum(cl_size)
    cl_start = cl_end - cl_size
    cat_cl_end = np.cumsum(cat_ncl)
    cat_cl_start = cat_cl_end - cat_ncl
    cl_cat = np.repeat(np.arange(n_cat), cat_ncl)
    item_cluster = np.repeat(np.arange(n_cl), cl_size)
    item_cat = cl_cat[item_cluster]

    rank = rng.permutation(m) + 1.0
    pop = rank ** -p.zipf
    cl_pop = np.add.reduceat(pop, cl_start)
    cat_pop = np.add.reduceat(cl_pop, cat_cl_start)

    nb = p.brands_per_category
    brand_w = np.cumsum(1.0 / np.arange(1, nb + 1) ** 0.7)
    local = np.searchsorted(brand_w, rng.random(m) * brand_w[-1], side="right").clip(0, nb - 1)
    item_brand = item_cat * nb + local
    brand_level = rng.normal(0.0, 0.5, n_cat * nb)
    noise = rng.normal(0.0, 0.25, m)
    z = brand_level[item_brand] + noise
    item_tier = np.digitize(z, [-0.24, 0.24]).astype(np.int64)
    cat_base = rng.normal(3.5, 0.9, n_cat)
    item_price = np.round(np.exp(cat_base[item_cat] + z), 2)
    item_seller = item_brand * 4 + rng.integers(0, 4, m)
    item_ids = rng.permutation(m).astype(np.int64) + 1

    urng = np.random.default_rng([p.seed, 1])
    n = p.users
    user_events = _activity(urng, p)
    k = np.clip(1 + urng.poisson(max(p.mean_interests - 1.0, 0.0), n), 1, _MAX_INTERESTS)
    cat_cdf = _Cdf(cat_pop)
    cats = cat_cdf.lookup(urng.random(n * (_MAX_INTERESTS + 1)) * cat_cdf.total).reshape(n, -1)
    w_old = urng.gamma(1.0, 1.0, (n, _MAX_INTERESTS + 1))
    w_old[np.arange(_MAX_INTERESTS + 1)[None, :] >= k[:, None]] = 0.0
    w_new = w_old.copy()
    drifting = urng.random(n) < p.drift
    fade = np.minimum((urng.random(n) * k).astype(np.int64), k - 1)
    rows = np.flatnonzero(drifting)
    w_new[rows, _MAX_INTERESTS] = w_old[rows, fade[rows]]
    w_new[rows, fade[rows]] = 0.0
    w_old /= w_old.sum(1, keepdims=True)
    w_new /= w_new.sum(1, keepdims=True)
    pref = cats * nb + urng.integers(0, nb, (n, _MAX_INTERESTS + 1))
    tier = urng.choice(3, size=n, p=[0.3, 0.4, 0.3]).astype(np.int64)
    segment = np.where(urng.random(n) < 0.6, tier, urng.integers(0, 3, n))
    age = urng.integers(0, 6, n)
    return World(p, item_ids, item_cat, item_cluster, item_brand, item_tier, item_price, item_seller, _Cdf(pop),
                 cl_start, cl_end, _Cdf(cl_pop), cat_cl_start, cat_cl_end, user_events, tier, cats, pref,
                 w_old, w_new, segment, age)


# --------------------------------------------------------------------------------------------- events
_BEHAVIOR_DICT = pa.array(list(BEHAVIORS), pa.string())


def _chunk_events(w: World, u0: int, u1: int, chunk: int, t0_us: int) -> tuple[pa.Table, int]:
    """Events of users [u0, u1) as a table sorted by (user_id, ts), and their distinct (user, item) count."""
    p = w.p
    rng = np.random.default_rng([p.seed, 2, chunk])
    counts = w.user_events[u0:u1]
    total = int(counts.sum())
    ev_user = np.repeat(np.arange(u0, u1), counts)
    first = np.cumsum(counts) - counts

    # sessions: geometric lengths, uniform start times, ordered in time within each user
    new_sess = rng.random(total) < 1.0 / p.session_mean
    new_sess[first] = True
    sess_of_ev = np.cumsum(new_sess) - 1
    su = ev_user[new_sess]
    period = p.days * 86400.0
    t_raw = rng.random(su.size) * period
    s_start = t_raw[np.lexsort((t_raw, su))]
    frac = s_start / period

    # interest of each session (drifting weights), its cluster, its preferred brand
    wts = (1.0 - frac)[:, None] * w.w_old[su] + frac[:, None] * w.w_new[su]
    cw = np.cumsum(wts, axis=1)
    slot = (cw < rng.random(su.size)[:, None] * cw[:, -1:]).sum(1).clip(0, _MAX_INTERESTS)
    s_cat = w.user_cats[su, slot]
    s_pref = w.user_pref[su, slot]
    s_cl = w.cl_cdf.sample(w.cat_cl_start[s_cat], w.cat_cl_end[s_cat], rng.random(su.size))

    # per event: session cluster, a sibling cluster, or noise
    mode_u = rng.random(total)
    ev_cl = s_cl[sess_of_ev]
    ev_cat = s_cat[sess_of_ev]
    sib = mode_u < p.p_sibling
    ev_cl[sib] = w.cl_cdf.sample(w.cat_cl_start[ev_cat[sib]], w.cat_cl_end[ev_cat[sib]],
                                 rng.random(int(sib.sum())))
    noise = (mode_u >= p.p_sibling) & (mode_u < p.p_sibling + p.p_noise)

    # popularity candidates inside the cluster, one kept by the user's taste: an exponential race
    # argmin(E_k / w_k) with w = exp(brand_beta·match − price_beta·|Δtier|), i.e. Gumbel-max / SIR
    r = p.candidates
    cdf = w.item_cdf
    cl_base = cdf.base[w.cl_start]
    target = rng.random((total, r))
    target *= (cdf.cum[w.cl_end - 1] - cl_base)[ev_cl][:, None]
    target += cl_base[ev_cl][:, None]
    cand = cdf.lookup(target.ravel()).reshape(total, r)
    del target
    np.clip(cand, w.cl_start[ev_cl][:, None], (w.cl_end[ev_cl] - 1)[:, None], out=cand)
    code = w.item_code[cand]
    widx = ((code >> 2) == s_pref[sess_of_ev][:, None]).astype(np.int8) * 3
    widx += np.abs((code & 3).astype(np.int8) - w.user_tier[ev_user].astype(np.int8)[:, None])
    del code
    inv_w = np.exp(-np.array([0, -p.price_beta, -2 * p.price_beta, p.brand_beta,
                              p.brand_beta - p.price_beta, p.brand_beta - 2 * p.price_beta])).astype(np.float32)
    key = rng.standard_exponential((total, r), dtype=np.float32)
    key *= inv_w[widx]
    pick = np.argmin(key, axis=1)
    item = cand[np.arange(total), pick]
    del cand, key, widx
    n_noise = int(noise.sum())
    m = p.items
    item[noise] = cdf.lookup(rng.random(n_noise) * cdf.total)

    # cart / fav / buy re-touch the previous item of the session
    act = (rng.random(total) < p.p_action) & ~new_sess
    idx = np.arange(total)
    src = np.maximum.accumulate(np.where(act, 0, idx))
    item = item[src]
    beh = np.where(act, rng.choice(np.array([1, 2, 3], np.int8), size=total, p=[0.55, 0.25, 0.2]), 0)
    beh = beh.astype(np.int8)

    # timestamps: session start + cumulative gaps (clicks ~45 s apart, actions ~15 s after)
    gap = np.where(act, rng.exponential(15.0, total), rng.exponential(45.0, total))
    gap[new_sess] = 0.0
    cg = np.cumsum(gap)
    cg -= cg[new_sess][sess_of_ev]
    ts = t0_us + ((s_start[sess_of_ev] + cg) * _US).astype(np.int64)

    order = np.lexsort((ts, ev_user))
    ev_user, item, beh, ts = ev_user[order], item[order], beh[order], ts[order]
    behavior = pa.DictionaryArray.from_arrays(pa.array(beh, pa.int8()), _BEHAVIOR_DICT).cast(pa.string())
    table = pa.Table.from_arrays(
        [pa.array(ev_user.astype(np.int64) + 1), pa.array(w.item_ids[item]), behavior,
         pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC"))],
        schema=EVENTS_SCHEMA)
    key = np.sort(ev_user.astype(np.int64) * m + item)
    return table, 1 + int(np.count_nonzero(np.diff(key)))


def items_table(w: World) -> pa.Table:
    order = np.argsort(w.item_ids, kind="stable")
    return pa.table({
        "item_id": pa.array(w.item_ids[order]),
        "category_id": pa.array(w.item_cat[order].astype(np.int64) + 1),
        "brand_id": pa.array(w.item_brand[order].astype(np.int64) + 1),
        "seller_id": pa.array(w.item_seller[order].astype(np.int64) + 1),
        "price": pa.array(w.item_price[order].astype(np.float64)),
    })


def users_table(w: World) -> pa.Table:
    return pa.table({
        "user_id": pa.array(np.arange(1, w.p.users + 1, dtype=np.int64)),
        "segment": pa.array(w.user_segment.astype(np.int64)),
        "age_bucket": pa.array(w.user_age.astype(np.int64)),
    })


def _chunks(counts: np.ndarray, chunk_events: int) -> list[tuple[int, int]]:
    """Contiguous user ranges of about ``chunk_events`` events each (deterministic)."""
    ends = np.cumsum(counts)
    bounds = np.searchsorted(ends, np.arange(chunk_events, int(ends[-1]), chunk_events), side="left") + 1
    edges = np.unique(np.concatenate([[0], bounds, [counts.size]]))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def generate(out_dir: str, users: int, items: int, events: int, seed: int = 0,
             progress: Callable[[int, int], None] | None = None, **opts: Any) -> dict:
    """Write a synthetic data dir (events, items, users, empty quarantine, summary); returns the summary.

    ``opts`` are any :class:`SynthParams` fields (``zipf``, ``days``, ``brand_beta`` ...). ``progress(done,
    total)`` is called after each chunk with event counts.
    """
    preset = opts.pop("preset", None)
    unknown = set(opts) - set(SynthParams.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown generator option(s) {sorted(unknown)}")
    p = SynthParams(users=int(users), items=int(items), events=int(events), seed=int(seed), **opts)
    started = time.perf_counter()
    w = build_world(p)
    t0_us = to_us(p.start)
    with atomic_data_dir(out_dir) as staging:  # a failed run leaves out_dir as it was
        summary = _write(w, p, t0_us, staging, progress, preset)
    summary["seconds"] = round(time.perf_counter() - started, 3)  # not in summary.json: same seed, same files
    return summary


def _write(w: World, p: SynthParams, t0_us: int, out_dir: str, progress: Callable[[int, int], None] | None,
           preset: str | None) -> dict:
    """Stream the events of world ``w`` into ``out_dir`` chunk by chunk, then items, users, the summary."""
    makedirs(out_dir)
    fs, path = resolve(join(out_dir, EVENTS_FILE))
    n_pairs = 0
    beh_counts = np.zeros(len(BEHAVIORS), np.int64)
    ts_min, ts_max = None, None
    done = 0
    with pq.ParquetWriter(path, EVENTS_SCHEMA, filesystem=fs) as writer:
        for c, (u0, u1) in enumerate(_chunks(w.user_events, p.chunk_events)):
            table, pairs = _chunk_events(w, u0, u1, c, t0_us)
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
            n_pairs += pairs
            vc = table.column("behavior").value_counts()
            for v, cnt in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
                beh_counts[BEHAVIORS.index(v)] += cnt
            ts = table.column("ts").cast(pa.int64()).to_numpy()
            ts_min = int(ts.min()) if ts_min is None else min(ts_min, int(ts.min()))
            ts_max = int(ts.max()) if ts_max is None else max(ts_max, int(ts.max()))
            done += table.num_rows
            if progress:
                progress(done, p.events)
    write_parquet(items_table(w), join(out_dir, ITEMS_FILE))
    write_parquet(users_table(w), join(out_dir, USERS_FILE))
    write_parquet(QUARANTINE_SCHEMA.empty_table(), join(out_dir, QUARANTINE_FILE))
    assert ts_min is not None and ts_max is not None  # p.events >= 1
    summary = {
        "source": "synthetic", "preset": preset,
        "rows_in": p.events, "rows_kept": p.events, "rows_quarantined": 0, "quarantine_reasons": {},
        "users": p.users, "items": p.items, "events": p.events, "distinct_user_items": int(n_pairs),
        "categories": int(w.item_cat.max()) + 1, "clusters": int(w.item_cluster.max()) + 1,
        "brands": int(np.unique(w.item_brand).size),
        "behaviors": {b: int(x) for b, x in zip(BEHAVIORS, beh_counts)},
        "ts_min": to_iso(ts_min), "ts_max": to_iso(ts_max),
        "params": asdict(p),
    }
    write_json(summary, join(out_dir, SUMMARY_FILE))
    return summary


def preset_params(name: str, seed: int = 0, **overrides: Any) -> SynthParams:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return replace(SynthParams(**PRESETS[name]), seed=seed, **overrides)


def generate_preset(name: str, out_dir: str, seed: int = 0,
                    progress: Callable[[int, int], None] | None = None, **overrides: Any) -> dict:
    """Generate a named preset (see :data:`PRESETS`); ``overrides`` replace any of its parameters."""
    p = asdict(preset_params(name, seed, **overrides))
    return generate(out_dir, p.pop("users"), p.pop("items"), p.pop("events"), p.pop("seed"),
                    progress=progress, preset=name, **p)


__all__ = [
    "PRESETS",
    "SynthParams",
    "World",
    "build_world",
    "generate",
    "generate_preset",
    "items_table",
    "preset_params",
    "users_table",
]
