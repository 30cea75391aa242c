"""Truncation study (paper §3.1, Fig. 4): hit rate of the I2I candidate pool as a function of the cut ``T``.

For every test user, the triggers are the last ``L`` distinct items of the user's training history; the pool at
``T`` is the union of the top-``T`` rows of those triggers. For a ladder of ``T`` we report (paper Eq. 5)::

    HR(T) = mean over users of |pool_T ∩ clicked_after| / |clicked_after|

and the mean pool size — the cost side of choosing ``T``. One pass per user computes every ``T`` at once: each
candidate enters the pool at its best rank over the user's triggers, so ``pool_T = {j : minrank(j) <= T}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from numba import njit, prange

from pi2i.config import Config
from pi2i.contracts import BEHAVIORS
from pi2i.data.events import clicks, event_arrays, last_distinct, recent_histories
from pi2i.ibs.i2i import I2IIndex

DEFAULT_LADDER: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000, 1250, 2000)

SWEEP_SCHEMA = pa.schema([
    pa.field("T", pa.int64()), pa.field("hr", pa.float64()), pa.field("mean_pool_size", pa.float64()),
    pa.field("median_pool_size", pa.float64()), pa.field("users", pa.int64()),
])


@njit(parallel=True, nogil=True, cache=True)
def _pool_kernel(trig_indptr, trig_rows, row_indptr, row_targets, row_ranks, test_indptr, test_items,
                 ladder, n_dense, bounds):
    """Per user: pool size and hits at every ladder T (minrank of each candidate over the user's triggers)."""
    n_users = len(trig_indptr) - 1
    nl = len(ladder)
    pool = np.zeros((n_users, nl), np.int64)
    hits = np.zeros((n_users, nl), np.int64)
    big = np.iinfo(np.int32).max
    for c in prange(len(bounds) - 1):
        minrank = np.full(n_dense, big, np.int32)
        touched = np.empty(n_dense, np.int32)
        hist = np.zeros(nl + 1, np.int64)
        for x in range(bounds[c], bounds[c + 1]):
            nt = 0
            for p in range(trig_indptr[x], trig_indptr[x + 1]):
                r = trig_rows[p]
                if r < 0:
                    continue
                for q in range(row_indptr[r], row_indptr[r + 1]):
                    t = row_targets[q]
                    rk = row_ranks[q]
                    if minrank[t] == big:
                        touched[nt] = t
                        nt += 1
                    minrank[t] = min(minrank[t], rk)
            hist[:] = 0
            for k in range(nt):
                hist[np.searchsorted(ladder, minrank[touched[k]])] += 1
            s = 0
            for b in range(nl):
                s += hist[b]
                pool[x, b] = s
            hist[:] = 0
            for p in range(test_indptr[x], test_indptr[x + 1]):
                t = test_items[p]
                if minrank[t] != big:
                    hist[np.searchsorted(ladder, minrank[t])] += 1
            s = 0
            for b in range(nl):
                s += hist[b]
                hits[x, b] = s
            for k in range(nt):
                minrank[touched[k]] = big
    return pool, hits


def sweep(train_events: pa.Table, test_events: pa.Table, i2i_table: pa.Table,
          t_ladder: Sequence[int] = DEFAULT_LADDER, num_triggers: int = 20,
          behaviors: Sequence[str] = BEHAVIORS,
          exclude_history: bool = False) -> pa.Table:
    """HR of the I2I candidate pool and its size for each ``T`` of the ladder (capped by the longest row).

    Users: those with clicks in the test period and at least one training click (the others have no
    triggers; they are counted in the summary as ``cold_users``). ``exclude_history`` drops, per user, test
    items already in the training history from ``clicked_after`` (users left with none are skipped).
    Returns a table of SWEEP_SCHEMA; :func:`sweep_summary` reads the summary stored in its metadata.
    """
    if num_triggers < 1:
        raise ValueError(f"sweep: num_triggers must be >= 1 (got {num_triggers})")
    idx = I2IIndex.from_table(i2i_table)
    max_len = int(np.diff(idx.indptr).max()) if len(idx) else 0
    ladder = sorted({int(t) for t in t_ladder if int(t) >= 1})
    if not ladder:
        raise ValueError("sweep: the T ladder is empty")
    capped = [t for t in ladder if t < max_len] + ([max_len] if max_len and ladder[-1] >= max_len else [])
    ladder_arr = np.array(capped or [ladder[0]], np.int64)

    su, si, _ = event_arrays(clicks(test_events, behaviors))
    if len(su) == 0:
        raise ValueError("sweep: no test events")
    hu, h_ptr, h_items, _ = recent_histories(train_events, None, behaviors, dedup_consecutive=False)
    hptr, hitems = last_distinct(h_ptr, h_items, num_triggers)  # the trigger list, most recent first
    # test users with a history, distinct test items per user
    pairs = np.unique(np.stack([su, si], 1), axis=0)
    pu, pi = pairs[:, 0], pairs[:, 1]
    test_users = np.unique(pu)
    warm = np.isin(test_users, hu)
    users = test_users[warm]
    m = np.isin(pu, users)
    pu, pi = pu[m], pi[m]
    if exclude_history:
        seen = np.unique(np.stack([np.repeat(hu, np.diff(h_ptr)), h_items], 1), axis=0)
        pk = np.stack([pu, pi], 1)
        view = lambda a: np.ascontiguousarray(a).view([("u", np.int64), ("i", np.int64)]).ravel()
        m = ~np.isin(view(pk), view(seen))
        pu, pi = pu[m], pi[m]
        users = np.unique(pu)
    # dense ids over every target and test item
    vocab = np.unique(np.concatenate([idx.targets, pi]))
    row_targets = np.searchsorted(vocab, idx.targets).astype(np.int32)
    test_items = np.searchsorted(vocab, pi).astype(np.int32)
    _, tcnt = np.unique(pu, return_counts=True)
    test_indptr = np.concatenate(([0], np.cumsum(tcnt))).astype(np.int64)
    # triggers of the evaluated users -> row ids
    hpos = np.searchsorted(hu, users)
    lens = hptr[hpos + 1] - hptr[hpos]
    first = np.concatenate(([0], np.cumsum(lens)[:-1])) if len(lens) else np.zeros(0, np.int64)
    take = np.repeat(hptr[hpos] - first, lens) + np.arange(int(lens.sum()))  # rows of hitems, user by user
    trig_rows = idx.row_ids(hitems[take]).astype(np.int64)
    trig_indptr = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
    n = len(users)
    bounds = np.linspace(0, n, min(n, 64) + 1).astype(np.int64) if n else np.zeros(1, np.int64)
    pool, hits = _pool_kernel(trig_indptr, trig_rows, idx.indptr, row_targets, idx.ranks.astype(np.int32),
                              test_indptr, test_items, ladder_arr, len(vocab), bounds)
    denom = np.maximum(tcnt, 1)[:, None].astype(np.float64)
    hr = (hits / denom).mean(0) if n else np.zeros(len(ladder_arr))
    table = pa.table({"T": ladder_arr, "hr": hr, "mean_pool_size": pool.mean(0) if n else np.zeros(len(ladder_arr)),
                      "median_pool_size": np.median(pool, 0) if n else np.zeros(len(ladder_arr)),
                      "users": np.full(len(ladder_arr), n, np.int64)}, schema=SWEEP_SCHEMA)
    summary = {"users": int(n), "cold_users": int((~warm).sum()), "num_triggers": int(num_triggers),
               "ladder_requested": ladder, "ladder": ladder_arr.tolist(), "max_row_length": max_len,
               "triggers_per_user_mean": float(lens.mean()) if n else 0.0,
               "triggers_with_row_fraction": float((trig_rows >= 0).mean()) if len(trig_rows) else 0.0,
               "exclude_history": bool(exclude_history), "rows": table.to_pylist()}
    return table.replace_schema_metadata({b"pi2i.ibs.sweep": json.dumps(summary).encode()})


def sweep_summary(table: pa.Table) -> dict:
    """The summary :func:`sweep` stored in the table's metadata (users, cold users, ladder, rows ...)."""
    meta = table.schema.metadata or {}
    return json.loads(meta[b"pi2i.ibs.sweep"]) if b"pi2i.ibs.sweep" in meta else {"rows": table.to_pylist()}


def run_sweep(train_dir: str, test_dir: str, out_dir: str, i2i_uri: str | None = None,
              cfg: Config | None = None, t_ladder: Sequence[int] = DEFAULT_LADDER, num_triggers: int | None = None, workers: int = 1,
              exclude_history: bool = False) -> dict:
    """CLI body: read the split, build (or read) the i2i table, write sweep.parquet/.csv/.png/.json."""
    import pyarrow.csv as pacsv

    from pi2i.contracts import (
        EVENTS_FILE,
        join,
        makedirs,
        read_events,
        read_i2i,
        write_bytes,
        write_json,
        write_parquet,
    )

    cfg = cfg or Config()
    train = read_events(join(train_dir, EVENTS_FILE))
    test = read_events(join(test_dir, EVENTS_FILE))
    built = None
    if i2i_uri:
        i2i = read_i2i(i2i_uri)
    else:
        from pi2i.ibs.swing import build_swing

        scfg = cfg.swing.model_copy(update={"top_t": max(int(t) for t in t_ladder)})
        i2i, built = build_swing(train, scfg, workers=workers)
    L = int(num_triggers or cfg.sampling.num_triggers)
    table = sweep(train, test, i2i, t_ladder, L, behaviors=cfg.swing.behaviors, exclude_history=exclude_history)
    summary = sweep_summary(table)
    makedirs(out_dir)
    write_parquet(table, join(out_dir, "sweep.parquet"))
    if "://" not in out_dir:
        pacsv.write_csv(table, join(out_dir, "sweep.csv"))
    from pi2i.evaluation.report import plot_sweep  # the one HR-vs-T plot (the evaluation report shows it too)

    write_bytes(plot_sweep(table, title=f"Swing truncation study (L={L} triggers)"), join(out_dir, "sweep.png"))
    summary["i2i"] = i2i_uri or "built from train"
    if built is not None:
        summary["swing_stats"] = built
    write_json(summary, join(out_dir, "sweep.json"))
    return summary
