"""Offline evaluation on a temporal split: every method on the same test users, HR@K (paper Eq. 5) side by side.

Four steps, one function each, and no step knows any method by name:

1. :func:`read_inputs` — train/test events, the Swing i2i index, item side info;
2. :func:`prepare_users` — the test users and what every method is given about them (:class:`EvalUsers`);
3. :func:`build_methods` + :func:`run_methods` — fit (``trained=False``) or load (from a model dir whose
   ``method.json`` names the method) each :class:`~pi2i.methods.base.Retriever`, then run them all, chunk by
   chunk, through the same metric code;
4. :func:`score_live` + :func:`pi2i.evaluation.gate.decide` — the live version of the registry re-scored on
   the same users, and the gate on the paired difference; then the report.

Protocol (paper §3.1 Eq. 5, §4.2; DESIGN.md "Evaluation gate"):

* **Clicks** are the events of ``sampling.behaviors`` — the notion the PRS sampler trains on — for histories,
  test sets, popularity and the long tail alike.
* **Test users**: users with at least one click before the cut (train split) and at least one after it (test
  split); their test set is the distinct items clicked after the cut. ``eval.max_users > 0`` evaluates a seeded
  sample of them. Every method sees exactly these users.
* **History** given to every method: the user's train clicks, oldest first, back-to-back repeats collapsed when
  ``sampling.dedup_consecutive`` (as the sampler does) — all of them under ``eval.exclude_seen: all``, else the
  last ``max(sampling.seq_len, serving.history_len)``. Each method takes what it needs from it (Swing and
  PI2I: the last ``sampling.num_triggers`` distinct clicks as triggers, PI2I the last ``seq_len`` as sequence).
* **Seen items** (``eval.exclude_seen``): ``all`` (default) — no method recommends any item the user clicked in
  the train period, and those items leave the user's test set (a repeat click is not a retrieval target);
  ``window`` — the same with only the history window above (the former behaviour); ``none`` — nothing
  excluded, test sets kept whole. Users left with no test item are dropped and counted.
* **Metrics** (:mod:`pi2i.evaluation.metrics`): HR, recall, NDCG, tail HR (test clicks on items outside the
  most clicked ``eval.tail_head_share`` of the train catalog), and with item categories relevance (share of
  the top-K in a category of the user's last ``eval.relevance_recent`` distinct items) and category coverage.
  A set-valued method (``pool``) reports its candidate pool's HR as ``hr@K`` at every K (the ceiling of any
  re-ranking of it) and its ranking as ``ranked_hr@K``; any other method that exposes its pool gets
  ``pool_hr``. **Padding** (``eval.pad_with_popular``, default on): a list shorter than K is completed with the
  most clicked train items the user has not seen and the list does not hold — what serving answers — so a
  method is never scored below popularity at large K only for running out of pool; ``ranked_hr``/``pool_hr`` and
  the set HR of ``pool`` are unaffected. Off: each method is scored on what it retrieves alone.
* **K ladder**: ``eval.ks`` capped at the train catalog size (:func:`pi2i.evaluation.metrics.k_ladder`).

Writes ``metrics.json`` (``{"methods": {name: {"hr": {"K": v}, ...}}, "gate": {..., "live": {"hr": ...}}}``,
``paired``: the gate method's paired difference against every other method at every K),
``report.html`` and ``report.md`` into ``out_dir``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
from pi2i.data.events import (
    CSR,
    clicks,
    fill_rows_with_popular,
    item_popularity,
    last_distinct,
    recent_histories,
    rows_of,
)
from pi2i.evaluation.metrics import MetricAccumulator, csr_from_pairs, k_ladder
from pi2i.ibs.i2i import I2IIndex
from pi2i.ids import IdPositions
from pi2i.methods import get_method, load_method, read_manifest
from pi2i.methods.base import Histories, MethodError, Retriever, TrainInputs
from pi2i.methods.baselines import not_seen

log = logging.getLogger(__name__)

#: Methods evaluated when none are named: the baselines, then the methods of the given model dirs.
DEFAULT_METHODS = ("popularity", "swing", "pool")


# ------------------------------------------------------------------------------------------- 1. inputs
@dataclass
class EvalInputs:
    """What evaluation reads once: the split, the Swing index and item side info."""

    train_dir: str
    test_dir: str
    i2i_uri: str
    train: pa.Table
    test: pa.Table
    i2i: I2IIndex
    items: pa.Table | None

    def train_inputs(self, i2i: I2IIndex | None = None) -> TrainInputs:
        """What methods are fitted/loaded from (the live version brings its own i2i)."""
        return TrainInputs(events=self.train, i2i=self.i2i if i2i is None else i2i, items=self.items)

    def categories(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(item ids, category ids) of the train items table, or None without categories."""
        t = self.items
        if t is None or "category_id" not in t.column_names:
            return None
        t = t.filter(pc.is_valid(t.column("category_id")))
        return (t.column("item_id").to_numpy().astype(np.int64),
                t.column("category_id").to_numpy().astype(np.int64))


def read_inputs(train_dir: str, test_dir: str, i2i_uri: str) -> EvalInputs:
    items_uri = join(train_dir, ITEMS_FILE)
    return EvalInputs(train_dir, test_dir, i2i_uri, read_events(join(train_dir, EVENTS_FILE)),
                      read_events(join(test_dir, EVENTS_FILE)), I2IIndex.load(i2i_uri),
                      read_parquet(items_uri) if exists(items_uri) else None)


# ------------------------------------------------------------------------------------------- 2. users
@dataclass
class EvalUsers:
    """The test users and what every method is given about them (CSR arrays over rows 0..n-1)."""

    users: np.ndarray  # int64 sorted user ids
    test: CSR  # distinct items clicked after the cut
    history: Histories  # what methods receive; under exclude_seen != none also what they may not return
    recent: CSR  # last eval.relevance_recent distinct clicks, most recent first (relevance@K)
    tail: np.ndarray  # bool per test pair: the item is long-tail (tail_hr@K)
    summary: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def chunk(self, a: int, b: int) -> EvalUsers:
        def sl(ptr: np.ndarray, *arrs: np.ndarray) -> tuple:
            lo, hi = ptr[a], ptr[b]
            return (ptr[a:b + 1] - lo, *(x[lo:hi] for x in arrs))

        t_ptr, t_items, t_tail = sl(self.test[0], self.test[1], self.tail)
        h = self.history
        h_ptr, h_items, h_ts = sl(h.indptr, h.items, h.ts)
        return EvalUsers(self.users[a:b], (t_ptr, t_items), Histories(h.users[a:b], h_ptr, h_items, h_ts),
                         sl(*self.recent), t_tail)


def _take_rows(ptr: np.ndarray, rows: np.ndarray, *vals: np.ndarray) -> tuple[np.ndarray, ...]:
    lens = ptr[rows + 1] - ptr[rows]
    offs = np.cumsum(lens) - lens
    idx = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(offs, lens) + np.repeat(ptr[rows], lens)
    out = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=out[1:])
    return (out, *(v[idx] for v in vals))


def long_tail(popular: np.ndarray, head_share: float) -> np.ndarray:
    """The head: the most clicked ``head_share`` of the train catalog (``popular`` is most clicked first).
    Every other item — the rest of the catalog and items never clicked in train — is long-tail."""
    return np.sort(popular[: math.ceil(head_share * len(popular))])


def prepare_users(train: pa.Table, test: pa.Table, cfg: Config, popular: np.ndarray | None = None) -> EvalUsers:
    """Test users, their test sets, histories, recent items and long-tail flags (policy in the module doc)."""
    e = cfg.eval
    behaviors = tuple(cfg.sampling.behaviors)
    hist_len = None if e.exclude_seen == "all" else max(cfg.sampling.seq_len, cfg.serving.history_len)
    test_clicks = clicks(test, behaviors)
    tu = test_clicks.column("user_id").to_numpy().astype(np.int64)
    ti = test_clicks.column("item_id").to_numpy().astype(np.int64)
    train_users = np.unique(clicks(train, behaviors).column("user_id").to_numpy().astype(np.int64))
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
    row = np.minimum(np.searchsorted(users, tu), max(len(users) - 1, 0))
    ok = (users[row] == tu) if len(users) else np.zeros(len(tu), bool)
    t_ptr, t_items = csr_from_pairs(row[ok], ti[ok], len(users))
    _, h_ptr, h_items, h_ts = recent_histories(train, hist_len, behaviors, cfg.sampling.dedup_consecutive, users)
    summary["test_pairs_before_seen_policy"] = len(t_items)
    if e.exclude_seen != "none":  # repeat clicks of seen items leave the test sets, then users left empty
        rows = rows_of(t_ptr)
        keep = not_seen(rows, t_items, (h_ptr, h_items))
        t_ptr, t_items = csr_from_pairs(rows[keep], t_items[keep], len(users))
        alive = np.flatnonzero(np.diff(t_ptr) > 0)
        summary["test_pairs_removed_as_seen"] = int((~keep).sum())
        summary["test_users_dropped_all_seen"] = int(len(users) - len(alive))
        if len(alive) < len(users):
            users = users[alive]
            t_ptr, t_items = _take_rows(t_ptr, alive, t_items)
            h_ptr, h_items, h_ts = _take_rows(h_ptr, alive, h_items, h_ts)
    if popular is None:
        popular, _ = item_popularity(train, behaviors)
    head = long_tail(popular, e.tail_head_share)
    at = np.minimum(np.searchsorted(head, t_items), max(len(head) - 1, 0))
    tail = ~((head[at] == t_items) if len(head) else np.zeros(len(t_items), bool))
    recent = last_distinct(h_ptr, h_items, e.relevance_recent)
    n = len(users)
    summary.update({
        "test_users": n, "test_pairs": len(t_items), "test_pairs_long_tail": int(tail.sum()),
        "long_tail_items_share": round(1.0 - len(head) / len(popular), 4) if len(popular) else 0.0,
        "mean_test_items_per_user": float(len(t_items) / n) if n else 0.0,
        "mean_history_len": float(np.diff(h_ptr).mean()) if n else 0.0,
        "history_len": hist_len or "all", "num_triggers": cfg.sampling.num_triggers,
        "exclude_seen": e.exclude_seen, "pad_with_popular": e.pad_with_popular,
    })
    return EvalUsers(users, (t_ptr, t_items), Histories(users, h_ptr, h_items, h_ts), recent, tail, summary)


# ------------------------------------------------------------------------------------------- 3. methods
def build_methods(names: Sequence[str] | None, model_dirs: Sequence[str], inputs: EvalInputs, cfg: Config,
                  ablations: dict[str, str] | None = None) -> dict[str, Retriever]:
    """The Retrievers to evaluate, by report name.

    ``names`` (None: :data:`DEFAULT_METHODS` then the methods of ``model_dirs``) are registered methods: a
    trained one is loaded from the model dir whose ``method.json`` names it, any other is fitted from the train
    split (or loaded, when a model dir of it is given). ``ablations`` adds NAME -> model dir, loaded as the
    method its manifest records.
    """
    by_method: dict[str, str] = {}
    for d in model_dirs:
        m = read_manifest(d)["method"]
        if m in by_method:
            raise MethodError(f"two --model dirs hold a {m} model ({by_method[m]}, {d}); "
                              "evaluate the second as --ablation NAME=DIR")
        by_method[m] = d
    if names is None:
        names = list(DEFAULT_METHODS) + [m for m in by_method if m not in DEFAULT_METHODS]
    names = list(dict.fromkeys(names))
    stray = [f"{d} ({m})" for m, d in by_method.items() if m not in names]
    if stray:
        raise MethodError(f"--model {', '.join(stray)} not among the requested methods {names}")
    train_inputs = inputs.train_inputs()
    out: dict[str, Retriever] = {}
    for name in names:
        cls = get_method(name)
        if name in by_method:
            out[name] = cls.load(by_method[name], train_inputs, cfg)
        elif cls.trained:
            given = ", ".join(f"{d}={m}" for m, d in by_method.items()) or "none"
            raise MethodError(f"method {name} is trained by `pi2i train --method {name}`: give its model dir "
                              f"with --model (model dirs given: {given})")
        else:
            out[name] = cls.fit(train_inputs, cfg)
    for name, d in (ablations or {}).items():
        if name in out:
            raise MethodError(f"ablation name {name!r} collides with a method of this evaluation {list(out)}")
        out[name] = load_method(d, train_inputs, cfg)
    return out


@dataclass
class MethodRun:
    """One method's accumulating numbers over the chunks of users."""

    retriever: Retriever
    acc: MetricAccumulator
    seconds: float = 0.0
    list_len: int = 0
    candidates: int = 0
    has_candidates: bool = False

    def per_user_hr(self, k: int) -> np.ndarray:
        """The per-user HR@k the method's headline ``hr`` averages (the set HR for a set-valued method)."""
        return self.acc.user_set_hr() if self.retriever.set_valued else self.acc.user_hr(k)

    def result(self, n: int) -> dict[str, Any]:
        r: dict[str, Any] = {m: {str(k): v for k, v in d.items()} for m, d in self.acc.result().items()}
        if self.acc.set_n:  # the method exposed its candidate pool
            s = self.acc.set_result()
            if self.retriever.set_valued:  # its value is the set: hr@K = the pool's HR at every K
                r["ranked_hr"] = r["hr"]
                r["hr"] = {k: s["hr"] for k in r["hr"]}
                if "tail_hr" in s:
                    r["ranked_tail_hr"] = r.get("tail_hr")
                    r["tail_hr"] = {k: s["tail_hr"] for k in r["hr"]}
            else:
                r["pool_hr"] = s["hr"]
        r.update({"description": self.retriever.describe(), "trained": self.retriever.trained,
                  "seconds": round(self.seconds, 3), "mean_list_len": self.list_len / n if n else 0.0})
        if self.has_candidates:
            r["mean_candidates"] = self.candidates / n if n else 0.0
        return r


def run_methods(methods: dict[str, Retriever], users: EvalUsers, ks: list[int], cfg: Config,
                categories: tuple[np.ndarray, np.ndarray] | None, popular: np.ndarray | None = None
                ) -> dict[str, MethodRun]:
    """Every method on every chunk of users, scored by the same accumulator; no method is special. With
    ``popular`` (most clicked first) and ``eval.pad_with_popular`` short lists are padded as serving pads them."""
    kmax = max(ks) if ks else 1
    exclude = cfg.eval.exclude_seen != "none"
    pad = popular if cfg.eval.pad_with_popular and popular is not None and len(popular) else None
    runs = {name: MethodRun(r, MetricAccumulator(ks, categories)) for name, r in methods.items()}
    n = len(users)
    for a in range(0, n, cfg.eval.chunk_users):
        b = min(n, a + cfg.eval.chunk_users)
        u = users.chunk(a, b)
        q_rows = rows_of(u.test[0])
        for run in runs.values():
            t0 = time.perf_counter()
            rec = run.retriever.recommend(u.history, kmax, exclude_seen=exclude)
            items = rec.items[:, :kmax]
            run.list_len += int((items >= 0).sum())
            if pad is not None and not run.retriever.set_valued and (items < 0).any():
                items = fill_rows_with_popular(items, pad, kmax, (u.history.indptr, u.history.items)
                                               if exclude else None)
            run.acc.add(items, u.test[0], u.test[1], u.tail, u.recent)
            in_pool = run.retriever.pool_contains(u.history, q_rows, u.test[1], exclude_seen=exclude)
            if in_pool is not None:
                run.acc.add_set(in_pool, u.test[0], u.tail)
            if rec.num_candidates is not None:
                run.has_candidates = True
                run.candidates += int(np.sum(rec.num_candidates))
            run.seconds += time.perf_counter() - t0
        log.info("users %d..%d of %d: %s", a, b, n,
                 ", ".join(f"{name} {run.seconds:.1f}s" for name, run in runs.items()))
    return runs


def recency_segments(history: Histories, categories: tuple[np.ndarray, np.ndarray] | None, window: int
                     ) -> np.ndarray | None:
    """Per user: 1 when the last click's category is the dominant (most clicked, ties included) category of
    the last ``window`` clicks, 0 when it is not (the user just moved away), -1 when unknown. None without
    categories. Splits HR into "recency agrees with the history" vs "one click off the history" (issue 13.5)."""
    if categories is None:
        return None
    ids, cats = categories
    order = np.argsort(ids, kind="stable")
    ids, cats = ids[order], cats[order]
    ptr, items = history.indptr, history.items
    rows = rows_of(ptr)
    recent = ptr[rows + 1] - np.arange(len(items)) <= window  # the last `window` clicks of each row
    rows, items = rows[recent], items[recent]
    cat = IdPositions(ids).take(cats, items, -1)
    n = len(ptr) - 1
    out = np.full(n, -1, np.int8)
    has = np.diff(ptr) > 0
    last_cat = np.full(n, -1, np.int64)
    last_cat[has] = cat[np.cumsum(np.bincount(rows, minlength=n))[has] - 1]
    known = cat >= 0
    key, cnt = np.unique(rows[known] * np.int64(cats.max(initial=0) + 1) + cat[known], return_counts=True)
    k_rows, k_cat = key // (cats.max(initial=0) + 1), key % (cats.max(initial=0) + 1)
    best = np.zeros(n, np.int64)
    np.maximum.at(best, k_rows, cnt)
    last_cnt = np.zeros(n, np.int64)
    hit = k_cat == last_cat[k_rows]
    last_cnt[k_rows[hit]] = cnt[hit]
    ok = last_cat >= 0
    out[ok] = (last_cnt[ok] == best[ok]).astype(np.int8)
    return out


def paired_at_every_k(runs: dict[str, MethodRun], candidate: str, ks: list[int]) -> dict[str, Any]:
    """The candidate's paired HR difference against every other method at every K (mean over the same users,
    standard error, normal 95% interval): whether a gap between two methods is more than sampling noise."""
    from pi2i.evaluation.gate import paired_difference

    out: dict[str, Any] = {"candidate": candidate, "vs": {}}
    for k in ks:
        cand = runs[candidate].per_user_hr(k)
        out["vs"][str(k)] = {name: paired_difference(cand, run.per_user_hr(k))
                             for name, run in runs.items() if name != candidate}
    return out


def segment_results(runs: dict[str, MethodRun], segments: np.ndarray, ks: list[int]) -> dict[str, Any]:
    """HR@K of every method (its ranking) within each recency segment, from the per-user HR already kept."""
    names = {1: "last_click_in_dominant_category", 0: "last_click_off_dominant_category"}
    out: dict[str, Any] = {"users": {names[s]: int((segments == s).sum()) for s in names}, "hr": {}}
    for name, run in runs.items():
        per_k = {k: run.acc.user_hr(k) for k in ks}
        out["hr"][name] = {names[s]: {str(k): float(v[segments == s].mean()) if (segments == s).any() else None
                                      for k, v in per_k.items()} for s in names}
    return out


# ------------------------------------------------------------------------------------------- 4. live version
def score_live(registry: str, inputs: EvalInputs, users: EvalUsers, ks: list[int], cfg: Config,
               popular: np.ndarray | None = None) -> tuple[dict[str, Any], MethodRun | None]:
    """The registry's live version re-scored on the same test users: ``({"version", "method", "hr": ...}, run)``.

    No live version: ``({"version": None}, None)``. A live version that cannot be loaded by this code (another
    model format, a missing file) is reported with its error and no numbers — the gate says so.
    """
    from pi2i.publish import registry as reg

    version = reg.current(registry)
    if version is None:
        return {"version": None}, None
    vdir = reg.version_path(registry, version)
    model_dir = join(vdir, reg.MODEL_DIR)
    try:
        method = read_manifest(model_dir)["method"]
        i2i = I2IIndex.load(join(vdir, reg.I2I_FILE))
        retriever = load_method(model_dir, inputs.train_inputs(i2i), cfg)
    except (ValueError, OSError) as e:  # MethodError, ContractError, FileNotFoundError
        log.warning("live version %s not re-scored: %s", version, e)
        return {"version": version, "error": str(e)}, None
    run = run_methods({"live": retriever}, users, ks, cfg, None, popular)["live"]
    res = run.result(len(users))
    return {"version": version, "method": method, "users": len(users), "hr": res["hr"],
            "seconds": res["seconds"]}, run


# ------------------------------------------------------------------------------------------- the whole run
def _find_json(dir_uri: str, names: tuple[str, ...]) -> dict | None:
    for n in names:
        uri = join(dir_uri, n)
        if exists(uri):
            try:
                return read_json(uri)
            except Exception:  # noqa: BLE001 - side information only
                log.warning("could not read %s", uri)
    return None


def _model_info(model_dirs: Sequence[str]) -> tuple[dict[str, Any], dict | None]:
    """Training summaries per trained model dir, and the samples stats the first one names."""
    models: dict[str, Any] = {}
    samples = None
    for d in model_dirs:
        info = _find_json(d, ("train_metrics.json", "train_stats.json"))
        if isinstance(info, dict):
            models[read_manifest(d)["method"]] = {k: v for k, v in info.items() if k != "history"}
        mcfg = _find_json(d, ("config.json",))
        if samples is None and isinstance(mcfg, dict) and mcfg.get("samples_dir"):
            samples = _find_json(mcfg["samples_dir"], ("stats.json",))
    return models, samples


def _data_summary(inputs: EvalInputs, users: EvalUsers, n_popular: int) -> dict[str, Any]:
    i2i = inputs.i2i
    data = dict(users.summary)
    data.update({
        "train_events": inputs.train.num_rows, "test_events": inputs.test.num_rows,
        "train_users": len(np.unique(inputs.train.column("user_id").to_numpy())),
        "train_items_clicked": n_popular, "i2i_triggers": len(i2i), "i2i_pairs": i2i.num_pairs,
        "i2i_max_row": int(np.diff(i2i.indptr).max(initial=0)),
        "i2i_mean_row": float(np.diff(i2i.indptr).mean()) if len(i2i) else 0.0,
    })
    for side, d in (("train", inputs.train_dir), ("test", inputs.test_dir)):
        s = _find_json(d, (SUMMARY_FILE,))
        if s is not None:
            data[f"{side}_summary"] = s
    return data


def evaluate(train_dir: str, test_dir: str, i2i_uri: str, model_dirs: str | Sequence[str] | None, out_dir: str,
             cfg: Config, *, methods: Sequence[str] | None = None, registry: str | None = None, sweep: Any = None,
             ablations: dict[str, str] | None = None, samples_stats: dict | None = None) -> dict:
    """Evaluate every method on the same test users, re-score the live version of ``registry`` on them, decide
    the gate; write metrics.json, report.html, report.md into ``out_dir``; return the metrics."""
    from pi2i.evaluation import gate as gate_mod
    from pi2i.evaluation import report as report_mod

    t_start = time.perf_counter()
    dirs = [model_dirs] if isinstance(model_dirs, str) else list(model_dirs or [])
    inputs = read_inputs(train_dir, test_dir, i2i_uri)
    popular, _ = item_popularity(inputs.train, cfg.sampling.behaviors)
    users = prepare_users(inputs.train, inputs.test, cfg, popular)
    ks = k_ladder(cfg.eval.ks, len(popular))
    retrievers = build_methods(methods, dirs, inputs, cfg, ablations)
    log.info("evaluating %s on %d users at K=%s", list(retrievers), len(users), ks)
    categories = inputs.categories()
    runs = run_methods(retrievers, users, ks, cfg, categories, popular)
    results = {name: run.result(len(users)) for name, run in runs.items()}
    segments = recency_segments(users.history, categories, cfg.sampling.seq_len)

    gate_k = gate_mod.pick_k(ks, cfg.eval.gate_k)
    live, live_run = score_live(registry, inputs, users, ks, cfg, popular) if registry else (None, None)
    per_user = {name: run.per_user_hr(gate_k) for name, run in runs.items()} if gate_k else {}
    if live_run is not None and gate_k:
        per_user[gate_mod.LIVE] = live_run.per_user_hr(gate_k)
    models, samples = _model_info(dirs)
    metrics: dict[str, Any] = {
        "methods": results,
        "ks": ks,
        "data": _data_summary(inputs, users, len(popular)),
        "samples": samples_stats if samples_stats is not None else samples,
        "models": models,
        "eval_config": cfg.eval.model_dump(),
        "inputs": {"train": train_dir, "test": test_dir, "i2i": i2i_uri, "models": dirs,
                   "ablations": ablations or {}, "registry": registry},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if segments is not None:
        metrics["segments"] = segment_results(runs, segments, ks)
    metrics["gate"] = gate_mod.decide(results, cfg.eval.gate_k, cfg.eval.gate_tolerance, cfg.eval.gate_method,
                                      live, per_user)
    if cfg.eval.gate_method in runs:
        metrics["paired"] = paired_at_every_k(runs, cfg.eval.gate_method, ks)
    if sweep is not None:
        metrics["sweep"] = report_mod.load_sweep(sweep)
    metrics["seconds"] = round(time.perf_counter() - t_start, 3)
    makedirs(out_dir)
    write_json(metrics, join(out_dir, "metrics.json"))
    report_mod.write_report(metrics, out_dir)
    return metrics
