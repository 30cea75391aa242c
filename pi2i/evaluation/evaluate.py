"""Offline evaluation on a temporal split: every method on the same test users, HR@K (paper Eq. 5) side by side.

Protocol (paper §3.1 Eq. 5, §4.2; DESIGN.md "Evaluation gate"):

* **Clicks** are the events of ``sampling.behaviors`` — the same notion the PRS sampler trains on (its
  targets), for histories, test sets and popularity alike.
* **Test users**: users with at least one click before the cut (train split) and at least one click after it
  (test split); their test set is the distinct items clicked after the cut. ``eval.max_users > 0`` evaluates a seeded sample of them. Every method sees exactly these users.
* **History**: from the train split's clicks, the last ``max(sampling.seq_len, serving.history_len)`` clicks,
  oldest first, back-to-back repeats collapsed when ``sampling.dedup_consecutive`` (as the sampler does) —
  what :class:`pi2i.prs.scoring.Scorer` receives (it takes the last ``sampling.num_triggers``
  distinct ones as triggers and the last ``seq_len`` as the sequence). The classic Swing baseline uses the same
  triggers: the last ``sampling.num_triggers`` distinct clicks of that history.
* **Seen-item policy** (``eval.exclude_seen``, default on): the items of that history window are excluded from
  every method's list *and* removed from the user's test set (a repeat click is not a retrieval target);
  users left with no test item are dropped and counted. Off: nothing excluded, test sets kept whole.
* **Methods**: ``popularity`` (train-period clicks), ``swing`` (classic I2I: rows cut to
  ``eval.classic_truncation``, Swing scores summed over triggers), ``swing_relaxed`` (same with the full rows of
  the index, ``swing.top_t``), ``swing_pool`` (the pool ceiling: HR of the whole candidate pool — the union of
  the triggers' full rows — taken as a *set*; the same value at every K, the most any re-ranking of the pool,
  PI2I included, can reach), ``pi2i`` (``Scorer.recommend_many``) and one entry per ablation model.
  No list is padded with popular items (serving's cold-user fallback is not evaluated here): each method is
  scored on what it retrieves, so ``pi2i`` and ``swing_relaxed`` never exceed ``swing_pool``.
* **K ladder**: ``eval.ks`` capped at the train catalog size (the longest list any method — popularity — can
  produce); see :func:`pi2i.evaluation.metrics.k_ladder`.

Writes ``metrics.json`` (``{"methods": {name: {"hr": {"K": v}, ...}}, "gate": {...}, ...}``), ``report.html``
and ``report.md`` into ``out_dir``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pi2i.methods import baselines as bl
from pi2i.config import Config
from pi2i.contracts import (
    EVENTS_FILE,
    ITEMS_FILE,
    SUMMARY_FILE,
    exists,
    join,
    makedirs,
    read_events,
    read_json,
    read_parquet,
    write_json,
)
from pi2i.ibs.i2i import I2IIndex
from pi2i.evaluation.metrics import PAD, MetricAccumulator, csr_from_pairs, k_ladder, pad_lists

log = logging.getLogger(__name__)

BUILTIN = ("popularity", "swing", "swing_relaxed", "swing_pool", "pi2i")
DESCRIPTIONS = {
    "popularity": "most clicked items of the train period (seen items removed)",
    "swing": "classic I2I: each trigger's Swing row cut to {trunc}, scores summed over the triggers",
    "swing_relaxed": "Swing with the relaxed T: full rows (T={top_t}), scores summed over the triggers",
    "swing_pool": "pool ceiling: the whole candidate pool as a set (same value at every K)",
    "pi2i": "PI2I: the personalized scorer ranking the full candidate pool",
}


@dataclass
class EvalUsers:
    """The test users and what every method is given about them (CSR arrays over rows 0..n-1)."""

    users: np.ndarray  # int64 sorted user ids
    test: tuple[np.ndarray, np.ndarray]  # distinct items clicked after the cut
    history: tuple[np.ndarray, np.ndarray, np.ndarray]  # (indptr, items, ts_us), oldest first
    triggers: tuple[np.ndarray, np.ndarray]  # last L distinct clicks, most recent first
    seen: tuple[np.ndarray, np.ndarray] | None  # excluded items (the history window) or None
    summary: dict[str, Any]

    def __len__(self) -> int:
        return len(self.users)

    def chunk(self, a: int, b: int) -> EvalUsers:
        def sl(ptr: np.ndarray, *arrs: np.ndarray) -> tuple:
            lo, hi = ptr[a], ptr[b]
            return (ptr[a:b + 1] - lo, *(x[lo:hi] for x in arrs))

        return EvalUsers(self.users[a:b], sl(*self.test), sl(*self.history), sl(*self.triggers),
                         sl(*self.seen) if self.seen is not None else None, {})


def _clicks(events: pa.Table, behaviors: tuple[str, ...]) -> pa.Table:
    return events.filter(pc.is_in(events.column("behavior"), pa.array(list(behaviors))))


def _distinct_clicks(events: pa.Table, behaviors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    ev = _clicks(events, behaviors)
    u = ev.column("user_id").to_numpy().astype(np.int64)
    i = ev.column("item_id").to_numpy().astype(np.int64)
    return u, i


def prepare_users(train: pa.Table, test: pa.Table, cfg: Config) -> EvalUsers:
    """Test users, their test sets, histories, triggers and seen sets under the policy in the module doc."""
    e = cfg.eval
    hist_len = max(cfg.sampling.seq_len, cfg.serving.history_len)
    clicks = tuple(cfg.sampling.behaviors)
    tu, ti = _distinct_clicks(test, clicks)
    train_users = np.unique(_clicks(train, clicks).column("user_id").to_numpy().astype(np.int64))
    test_users_all = np.unique(tu)
    users = np.intersect1d(test_users_all, train_users)
    summary: dict[str, Any] = {
        "test_users_with_clicks": len(test_users_all),
        "test_users_without_train_clicks": int(len(test_users_all) - len(users)),
    }
    if e.max_users and len(users) > e.max_users:
        rng = np.random.default_rng(e.seed)
        users = np.sort(rng.choice(users, e.max_users, replace=False))
        summary["sampled_users"] = int(e.max_users)
    row = np.searchsorted(users, tu)
    row_c = np.minimum(row, max(len(users) - 1, 0))
    ok = (users[row_c] == tu) if len(users) else np.zeros(len(tu), bool)
    t_ptr, t_items = csr_from_pairs(row_c[ok], ti[ok], len(users))
    history = bl.user_histories(train, users, hist_len, clicks, cfg.sampling.dedup_consecutive)
    seen = (history[0], history[1]) if e.exclude_seen else None
    summary["test_pairs_before_seen_policy"] = len(t_items)
    if seen is not None:  # drop repeat clicks of the window from the test sets, then users left empty
        rows = np.repeat(np.arange(len(users)), np.diff(t_ptr))
        keep = bl._drop_seen(rows, t_items, seen)
        t_ptr, t_items = csr_from_pairs(rows[keep], t_items[keep], len(users))
        alive = np.diff(t_ptr) > 0
        summary["test_pairs_removed_as_seen"] = int((~keep).sum())
        summary["test_users_dropped_all_seen"] = int((~alive).sum())
        if not alive.all():
            idx = np.flatnonzero(alive)
            users = users[idx]
            t_ptr, t_items = _take_rows(t_ptr, t_items, idx)
            h_ptr, h_items, h_ts = history
            h_ptr2, h_items2 = _take_rows(h_ptr, h_items, idx)
            _, h_ts2 = _take_rows(h_ptr, h_ts, idx)
            history = (h_ptr2, h_items2, h_ts2)
            seen = (history[0], history[1])
    triggers = bl.last_distinct(history[0], history[1], cfg.sampling.num_triggers)
    summary.update({
        "test_users": len(users), "test_pairs": len(t_items),
        "mean_test_items_per_user": float(len(t_items) / len(users)) if len(users) else 0.0,
        "mean_history_len": float(np.diff(history[0]).mean()) if len(users) else 0.0,
        "mean_triggers": float(np.diff(triggers[0]).mean()) if len(users) else 0.0,
        "history_len": hist_len, "num_triggers": cfg.sampling.num_triggers, "exclude_seen": e.exclude_seen,
    })
    return EvalUsers(users, (t_ptr, t_items), history, triggers, seen, summary)


def _take_rows(ptr: np.ndarray, vals: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lens = ptr[rows + 1] - ptr[rows]
    offs = np.cumsum(lens) - lens
    idx = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(offs, lens) + np.repeat(ptr[rows], lens)
    out = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=out[1:])
    return out, vals[idx]


def _compact_unseen(ranked: np.ndarray, seen: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Remove seen items (and holes) from ranked lists, keeping order: a uniform guard for every method."""
    if seen is None:
        return ranked
    n, w = ranked.shape
    users = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], (n, w)).ravel()
    items = ranked.ravel()
    keep = (items != PAD) & bl._drop_seen(users, items, seen)
    pos = np.broadcast_to(np.arange(w, dtype=np.float64)[None, :], (n, w)).ravel()
    return bl.topk_pairs(users[keep], items[keep], -pos[keep], n, w)


def _item_categories(train_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
    uri = join(train_dir, ITEMS_FILE)
    if not exists(uri):
        return None
    t = read_parquet(uri)
    if "category_id" not in t.column_names:
        return None
    t = t.filter(pc.is_valid(t.column("category_id")))
    return (t.column("item_id").to_numpy().astype(np.int64), t.column("category_id").to_numpy().astype(np.int64))


def _find_json(dir_uri: str, names: tuple[str, ...]) -> dict | None:
    for n in names:
        uri = join(dir_uri, n)
        if exists(uri):
            try:
                return read_json(uri)
            except Exception:  # noqa: BLE001 - side information only
                log.warning("could not read %s", uri)
    return None


class _Method:
    def __init__(self, name: str, ks: list[int], cats, description: str):
        self.name, self.description = name, description
        self.acc = MetricAccumulator(ks, cats)
        self.seconds = 0.0
        self.list_len = 0
        self.extra: dict[str, float] = {}

    def add(self, ranked: np.ndarray, u: EvalUsers, t0: float) -> None:
        self.acc.add(ranked, u.test[0], u.test[1])
        self.list_len += int((ranked != PAD).sum())
        self.seconds += time.perf_counter() - t0

    def result(self, n: int) -> dict[str, Any]:
        r = {m: {str(k): v for k, v in d.items()} for m, d in self.acc.result().items()}
        r.update({"description": self.description, "seconds": round(self.seconds, 3),
                  "mean_list_len": self.list_len / n if n else 0.0})
        r.update(self.extra)
        return r


def evaluate(train_dir: str, test_dir: str, i2i_uri: str, model_dir: str | None, out_dir: str, cfg: Config,
             live_metrics: dict | None = None, sweep: Any = None, ablations: dict[str, str] | None = None,
             samples_stats: dict | None = None, live_version: str | None = None) -> dict:
    """Evaluate every method on the same test users; write metrics.json, report.html, report.md; return metrics."""
    from pi2i.evaluation import gate as gate_mod
    from pi2i.evaluation import report as report_mod

    e = cfg.eval
    t_start = time.perf_counter()
    train = read_events(join(train_dir, EVENTS_FILE))
    test = read_events(join(test_dir, EVENTS_FILE))
    i2i = I2IIndex.load(i2i_uri)
    cats = _item_categories(train_dir)
    popular, _ = bl.popularity_ranking(train, tuple(cfg.sampling.behaviors))
    u_all = prepare_users(train, test, cfg)
    n = len(u_all)
    ks = k_ladder(e.ks, len(popular))
    kmax = max(ks) if ks else 1
    log.info("evaluating %d users at K=%s", n, ks)

    methods: dict[str, _Method] = {
        "popularity": _Method("popularity", ks, cats, DESCRIPTIONS["popularity"]),
        "swing": _Method("swing", ks, cats, DESCRIPTIONS["swing"].format(trunc=e.classic_truncation)),
        "swing_relaxed": _Method("swing_relaxed", ks, cats, DESCRIPTIONS["swing_relaxed"].format(
            top_t=int(np.diff(i2i.indptr).max(initial=0)))),
    }
    scorers: dict[str, Any] = {}
    if model_dir is not None or ablations:
        from pi2i.prs.scoring import Scorer  # the PRS area's single scoring path (also used by serving)

        if model_dir is not None:
            scorers["pi2i"] = Scorer.load(model_dir, i2i)
        for name, mdir in (ablations or {}).items():
            if name in BUILTIN:
                raise ValueError(f"ablation name {name!r} collides with a built-in method {BUILTIN}")
            scorers[name] = Scorer.load(mdir, i2i)
    for name in scorers:
        desc = DESCRIPTIONS["pi2i"] if name == "pi2i" else f"ablation: scorer from {ablations[name]}"
        methods[name] = _Method(name, ks, cats, desc)

    pool_hits = 0.0
    pool_size = 0
    empty_pool = 0
    cands = {name: 0 for name in scorers}
    for a in range(0, n, e.chunk_users):
        b = min(n, a + e.chunk_users)
        u = u_all.chunk(a, b)
        t0 = time.perf_counter()
        methods["popularity"].add(bl.popularity_lists(popular, b - a, kmax, u.seen), u, t0)
        t0 = time.perf_counter()
        methods["swing"].add(bl.i2i_lists(i2i, u.triggers, kmax, e.classic_truncation, u.seen), u, t0)
        t0 = time.perf_counter()
        ranked, sizes, in_pool = bl.i2i_lists(i2i, u.triggers, kmax, None, u.seen, test=u.test)
        methods["swing_relaxed"].add(ranked, u, t0)
        rows = np.repeat(np.arange(b - a), np.diff(u.test[0]))  # pool ceiling from the same pass
        per_user = np.bincount(rows, weights=in_pool, minlength=b - a)
        pool_hits += float(np.sum(per_user / np.diff(u.test[0])))
        pool_size += int(sizes.sum())
        empty_pool += int((sizes == 0).sum())
        hists = [(u.history[1][u.history[0][j]:u.history[0][j + 1]], u.history[2][u.history[0][j]:u.history[0][j + 1]])
                 for j in range(b - a)]
        for name, sc in scorers.items():
            t0 = time.perf_counter()
            recs = sc.recommend_many(hists, kmax, exclude_seen=e.exclude_seen)
            cands[name] += int(sum(r.num_candidates for r in recs))
            ranked = _compact_unseen(pad_lists([r.items for r in recs], kmax), u.seen)
            methods[name].add(ranked, u, t0)

    out_methods = {name: m.result(n) for name, m in methods.items()}
    ceiling = pool_hits / n if n else float("nan")
    out_methods["swing_pool"] = {
        "hr": {str(k): ceiling for k in ks}, "description": DESCRIPTIONS["swing_pool"],
        "mean_list_len": pool_size / n if n else 0.0,
        "users_with_empty_pool": empty_pool,
    }
    for name in scorers:
        out_methods[name]["mean_candidates"] = cands[name] / n if n else 0.0
    # order: baselines first, then pi2i, then ablations
    order = ["popularity", "swing", "swing_relaxed", "swing_pool"] + list(scorers)
    out_methods = {k: out_methods[k] for k in order}

    data = dict(u_all.summary)
    data.update({
        "train_events": train.num_rows, "test_events": test.num_rows,
        "train_users": len(np.unique(train.column("user_id").to_numpy())),
        "train_items_clicked": len(popular), "i2i_triggers": len(i2i), "i2i_pairs": i2i.num_pairs,
        "i2i_max_row": int(np.diff(i2i.indptr).max(initial=0)),
        "i2i_mean_row": float(np.diff(i2i.indptr).mean()) if len(i2i) else 0.0,
        "users_with_empty_pool": empty_pool,
    })
    for side, d in (("train", train_dir), ("test", test_dir)):
        s = _find_json(d, (SUMMARY_FILE,))
        if s is not None:
            data[f"{side}_summary"] = s
    model_info = _find_json(model_dir, ("train_metrics.json", "metrics.json")) if model_dir else None
    if isinstance(model_info, dict):  # keep the summary, not the per-epoch history
        model_info = {k: v for k, v in model_info.items() if k not in ("history",)}
    samples = samples_stats
    if samples is None and model_dir is not None:  # the model's config.json names the samples dir it came from
        samples = _find_json(model_dir, ("samples_stats.json", "stats.json"))
        mcfg = _find_json(model_dir, ("config.json",))
        if samples is None and isinstance(mcfg, dict) and mcfg.get("samples_dir"):
            samples = _find_json(mcfg["samples_dir"], ("stats.json",))

    metrics: dict[str, Any] = {
        "methods": out_methods,
        "ks": ks,
        "data": data,
        "samples": samples,
        "model": model_info,
        "eval_config": e.model_dump(),
        "inputs": {"train": train_dir, "test": test_dir, "i2i": i2i_uri, "model": model_dir,
                   "ablations": ablations or {}},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    metrics["gate"] = gate_mod.decide(out_methods, e.gate_k, e.gate_tolerance, live_metrics, live_version)
    makedirs(out_dir)
    sweep_data = report_mod.load_sweep(sweep) if sweep is not None else None
    if sweep_data is not None:
        metrics["sweep"] = sweep_data
    write_json(metrics, join(out_dir, "metrics.json"))
    report_mod.write_report(metrics, out_dir)
    return metrics
