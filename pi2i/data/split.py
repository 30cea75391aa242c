"""Temporal train/test split (paper §4.2: train on the past, test on what each user clicks next).

* **cut**: an explicit time, or ``max(ts) − test_days``, or the time below which ``1 − fraction`` of the events
  fall. Exactly one of the three (none: ``data.test_days`` of the default config).
* **train** = every event (all behaviours) strictly before the cut.
* **test** = for each user *with at least one training event* (their history), the distinct items they
  *clicked* at or after the cut, one row per (user, item) carrying the time of its first click after the cut
  (``behavior`` = ``click``). Users whose first event is after the cut are cold: they cannot be scored from a
  history, so they are left out of test and counted (``cold_users_dropped``). Non-click events after the cut
  are not test targets (HR is defined on clicks, paper Eq. 5) and are counted too.

**Per-user split** (``per_user_fraction``, the MovieLens-style protocol): for every user with at least
``min_events`` (3) events, the last ``max(1, floor(fraction · n))`` of their ``n`` events (by time; ties by
input order) are the test part, the rest is train; users with fewer events are train only. Test rows are the
distinct items *clicked* in the test part, as above.

A split whose test side is implausibly small (fewer test clicks than ``min_test_share`` of all events, default
0.1%) is refused with the cause (e.g. a far-future timestamp that moved the cut), unless ``allow_small_test``.

Both sides are data dirs of the contract (``events.parquet`` sorted by (user_id, ts), ``items.parquet`` and
``users.parquet`` copied when present, an empty ``quarantine.parquet``, ``summary.json``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pi2i.contracts import (
    EVENTS_FILE,
    ITEMS_FILE,
    QUARANTINE_FILE,
    SUMMARY_FILE,
    USERS_FILE,
    ContractError,
    exists,
    join,
    read_events,
    read_parquet,
    write_json,
    write_parquet,
)
from pi2i.data.events import to_iso, to_us

_US = 1_000_000
_DAY_US = 86_400 * _US


def choose_cut(ts_us: np.ndarray, test_days: float | None = None, cut=None, fraction: float | None = None) -> int:
    """The cut time in microseconds (see the module docstring)."""
    given = [x is not None for x in (test_days, cut, fraction)]
    if sum(given) > 1:
        raise ValueError("give only one of test_days, cut, fraction")
    if ts_us.size == 0:
        raise ContractError("cannot split: no events")
    if cut is not None:
        try:
            return to_us(cut)
        except ValueError as e:
            raise ValueError(f"cut: {e}") from None
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        s = np.sort(ts_us)
        return int(s[min(int(np.ceil(s.size * (1.0 - fraction))), s.size - 1)])
    if test_days is None:
        from pi2i.config import DataConfig

        test_days = DataConfig().test_days
    if test_days <= 0:
        raise ValueError(f"test_days must be > 0, got {test_days}")
    return int(ts_us.max()) - round(test_days * _DAY_US)


def _sort(events: pa.Table) -> pa.Table:
    return events.sort_by([("user_id", "ascending"), ("ts", "ascending")])


def _test_table(u: np.ndarray, i: np.ndarray, t: np.ndarray, schema: pa.Schema) -> tuple[pa.Table, int]:
    """Distinct (user, item) clicks at their first time, sorted by (user, ts, item); and how many repeats
    were merged."""
    order = np.lexsort((t, i, u))
    u, i, t = u[order], i[order], t[order]
    first = np.ones(u.size, bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    merged = int(u.size - first.sum())
    u, i, t = u[first], i[first], t[first]
    order = np.lexsort((i, t, u))
    return pa.table({
        "user_id": pa.array(u[order], pa.int64()), "item_id": pa.array(i[order], pa.int64()),
        "behavior": pa.array(np.full(u.size, "click", object), pa.string()),
        "ts": pa.array(t[order], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    }).cast(schema), merged


def split_per_user(events: pa.Table, fraction: float, min_events: int = 3) -> tuple[pa.Table, pa.Table, dict]:
    """(train events, test events, counts) of the per-user split; see the module docstring."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"per-user fraction must be in (0, 1), got {fraction}")
    u = events.column("user_id").to_numpy()
    ts = events.column("ts").cast(pa.int64()).to_numpy()
    order = np.lexsort((np.arange(len(u)), ts, u))  # stable: equal times keep input order
    us = u[order]
    starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]]) if len(us) else np.empty(0, np.int64)
    n = np.diff(np.r_[starts, len(us)])
    n_test = np.where(n >= min_events, np.maximum(1, np.floor(fraction * n).astype(np.int64)), 0)
    rank = np.arange(len(us)) - np.repeat(starts, n)
    is_test_sorted = rank >= np.repeat(n - n_test, n)
    is_test = np.zeros(len(u), bool)
    is_test[order] = is_test_sorted
    train = _sort(events.filter(pa.array(~is_test)))
    tail = events.filter(pa.array(is_test))
    is_click = pc.equal(tail.column("behavior"), "click").to_numpy(zero_copy_only=False)
    clicks = tail.filter(pa.array(is_click))
    test, merged = _test_table(clicks.column("user_id").to_numpy(), clicks.column("item_id").to_numpy(),
                               clicks.column("ts").cast(pa.int64()).to_numpy(), events.schema)
    counts = {
        "events_in_test_part": int(tail.num_rows),
        "non_click_events_in_test_part": int(tail.num_rows - clicks.num_rows),
        "users_split": int((n_test > 0).sum()), "users_train_only": int((n_test == 0).sum()),
        "repeat_clicks_merged": merged,
    }
    return train, test, counts


def check_test_size(test: pa.Table, events: pa.Table, rule: dict, min_test_share: float) -> None:
    """Refuse a test side smaller than ``min_test_share`` of all events, naming the likely cause."""
    need = max(1, int(np.ceil(min_test_share * events.num_rows)))
    if test.num_rows >= need:
        return
    ts = np.sort(events.column("ts").cast(pa.int64()).to_numpy())
    cause = ""
    if ts.size:
        p999 = int(ts[min(ts.size - 1, int(0.999 * ts.size))])
        gap_days = (int(ts[-1]) - p999) / _DAY_US
        if gap_days > 1.0:
            cause = (f"; the latest timestamp {to_iso(int(ts[-1]))} lies {gap_days:.0f} days after 99.9% of the "
                     f"events (<= {to_iso(p999)}): an outlier or future timestamp moved the cut — quarantine it "
                     f"or pass --cut")
    raise ContractError(f"split {rule} leaves only {test.num_rows} test clicks of {events.num_rows} events "
                        f"(< {min_test_share:.2%}){cause}; pass --allow-small-test to keep it anyway")


def split_events(events: pa.Table, cut_us: int) -> tuple[pa.Table, pa.Table, dict]:
    """(train events, test events, counts) for a cut time; see the module docstring."""
    ts = events.column("ts").cast(pa.int64()).to_numpy()
    before = ts < cut_us
    train = _sort(events.filter(pa.array(before)))
    train_users = np.unique(train.column("user_id").to_numpy())
    after = events.filter(pa.array(~before))
    is_click = pc.equal(after.column("behavior"), "click").to_numpy(zero_copy_only=False)
    clicks = after.filter(pa.array(is_click))
    u = clicks.column("user_id").to_numpy()
    warm = np.isin(u, train_users)
    cold_users = np.unique(u[~warm])
    u = u[warm]
    i = clicks.column("item_id").to_numpy()[warm]
    t = clicks.column("ts").cast(pa.int64()).to_numpy()[warm]
    test, merged = _test_table(u, i, t, events.schema)
    counts = {
        "events_after_cut": int(after.num_rows),
        "non_click_events_after_cut": int(after.num_rows - clicks.num_rows),
        "cold_users_dropped": int(cold_users.size),
        "cold_clicks_dropped": int((~warm).sum()),
        "repeat_clicks_merged": merged,
    }
    return train, test, counts


def _side_summary(events: pa.Table, cut_us: int | None, side: str, extra: dict) -> dict:
    ts = events.column("ts").cast(pa.int64()).to_numpy()
    return {
        "side": side, "cut": to_iso(cut_us) if cut_us is not None else None, "events": events.num_rows,
        "users": int(pc.count_distinct(events.column("user_id")).as_py()),
        "items": int(pc.count_distinct(events.column("item_id")).as_py()),
        "ts_min": to_iso(int(ts.min())) if ts.size else None, "ts_max": to_iso(int(ts.max())) if ts.size else None,
        **extra,
    }


def split(data_dir: str, out_dir: str, test_days: float | None = None, cut=None,
          fraction: float | None = None, per_user_fraction: float | None = None, min_events: int = 3,
          min_test_share: float = 0.001, allow_small_test: bool = False) -> dict:
    """Write ``out_dir/train`` and ``out_dir/test`` from ``data_dir``; returns the combined summary."""
    from pi2i.data.loaders import QUARANTINE_SCHEMA

    events = read_events(join(data_dir, EVENTS_FILE))
    ts = events.column("ts").cast(pa.int64()).to_numpy()
    cut_us: int | None
    if per_user_fraction is not None:
        if any(x is not None for x in (test_days, cut, fraction)):
            raise ValueError("give either a per-user fraction or one of test_days, cut, fraction")
        if ts.size == 0:
            raise ContractError("cannot split: no events")
        cut_us = None
        train, test, counts = split_per_user(events, per_user_fraction, min_events)
        rule: dict = {"per_user_fraction": per_user_fraction, "min_events": min_events}
        where = f"per-user fraction {per_user_fraction} (users with >= {min_events} events)"
    else:
        cut_us = choose_cut(ts, test_days=test_days, cut=cut, fraction=fraction)
        train, test, counts = split_events(events, cut_us)
        rule = ({"cut": str(cut)} if cut is not None else {"fraction": fraction} if fraction is not None
                else {"test_days": test_days if test_days is not None else "default"})
        where = f"cut {to_iso(cut_us)}"
    span = f"(data spans {to_iso(int(ts.min()))} .. {to_iso(int(ts.max()))})"
    if train.num_rows == 0:
        raise ContractError(f"{where} leaves no training events {span}")
    if test.num_rows == 0:
        raise ContractError(f"{where} leaves no test clicks by users with history {span}")
    if not allow_small_test:
        check_test_size(test, events, rule, min_test_share)
    sides = {"train": (train, {}), "test": (test, counts)}
    summary: dict = {"source": data_dir, "cut": to_iso(cut_us) if cut_us is not None else None, "rule": rule}
    for side, (table, extra) in sides.items():
        d = join(out_dir, side)
        write_parquet(table, join(d, EVENTS_FILE))
        for name in (ITEMS_FILE, USERS_FILE):
            src = join(data_dir, name)
            if exists(src):
                write_parquet(read_parquet(src), join(d, name))
        write_parquet(QUARANTINE_SCHEMA.empty_table(), join(d, QUARANTINE_FILE))
        s = _side_summary(table, cut_us, side, {"source": data_dir, "rule": rule, **extra})
        if side == "test":
            s["pairs"] = table.num_rows
        write_json(s, join(d, SUMMARY_FILE))
        summary[side] = {k: v for k, v in s.items() if k not in ("source", "rule", "cut", "side")}
    return summary
