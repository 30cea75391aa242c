"""Temporal train/test split (paper §4.2: train on the past, test on what each user clicks next).

* **cut**: an explicit time, or ``max(ts) − test_days``, or the time below which ``1 − fraction`` of the events
  fall. Exactly one of the three (none: ``data.test_days`` of the default config).
* **train** = every event (all behaviours) strictly before the cut.
* **test** = for each user *with at least one training event* (their history), the distinct items they
  *clicked* at or after the cut, one row per (user, item) carrying the time of its first click after the cut
  (``behavior`` = ``click``). Users whose first event is after the cut are cold: they cannot be scored from a
  history, so they are left out of test and counted (``cold_users_dropped``). Non-click events after the cut
  are not test targets (HR is defined on clicks, paper Eq. 5) and are counted too.

Both sides are data dirs of the contract (``events.parquet`` sorted by (user_id, ts), ``items.parquet`` and
``users.parquet`` copied when present, an empty ``quarantine.parquet``, ``summary.json``).
"""

from __future__ import annotations

import datetime as dt

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

_US = 1_000_000
_DAY_US = 86_400 * _US


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / _US, dt.UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str | dt.datetime | int) -> int:
    """Microseconds since the epoch from an ISO string (UTC when no offset), a datetime, or an int (us)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"cannot parse cut time {value!r}; use ISO 8601, e.g. 2017-12-02T00:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return round(value.timestamp() * _US)


def choose_cut(ts_us: np.ndarray, test_days: float | None = None, cut=None, fraction: float | None = None) -> int:
    """The cut time in microseconds (see the module docstring)."""
    given = [x is not None for x in (test_days, cut, fraction)]
    if sum(given) > 1:
        raise ValueError("give only one of test_days, cut, fraction")
    if ts_us.size == 0:
        raise ContractError("cannot split: no events")
    if cut is not None:
        return parse_time(cut)
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
    order = np.lexsort((t, i, u))
    u, i, t = u[order], i[order], t[order]
    first = np.ones(u.size, bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    u, i, t = u[first], i[first], t[first]
    order = np.lexsort((i, t, u))
    test = pa.table({
        "user_id": pa.array(u[order], pa.int64()), "item_id": pa.array(i[order], pa.int64()),
        "behavior": pa.array(np.full(u.size, "click", object), pa.string()),
        "ts": pa.array(t[order], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    }).cast(events.schema)
    counts = {
        "events_after_cut": int(after.num_rows),
        "non_click_events_after_cut": int(after.num_rows - clicks.num_rows),
        "cold_users_dropped": int(cold_users.size),
        "cold_clicks_dropped": int((~warm).sum()),
        "repeat_clicks_merged": int(warm.sum() - u.size),
    }
    return train, test, counts


def _side_summary(events: pa.Table, cut_us: int, side: str, extra: dict) -> dict:
    ts = events.column("ts").cast(pa.int64()).to_numpy()
    return {
        "side": side, "cut": _iso(cut_us), "events": events.num_rows,
        "users": int(pc.count_distinct(events.column("user_id")).as_py()),
        "items": int(pc.count_distinct(events.column("item_id")).as_py()),
        "ts_min": _iso(int(ts.min())) if ts.size else None, "ts_max": _iso(int(ts.max())) if ts.size else None,
        **extra,
    }


def split(data_dir: str, out_dir: str, test_days: float | None = None, cut=None,
          fraction: float | None = None) -> dict:
    """Write ``out_dir/train`` and ``out_dir/test`` from ``data_dir``; returns the combined summary."""
    from pi2i.data.loaders import QUARANTINE_SCHEMA

    events = read_events(join(data_dir, EVENTS_FILE))
    ts = events.column("ts").cast(pa.int64()).to_numpy()
    cut_us = choose_cut(ts, test_days=test_days, cut=cut, fraction=fraction)
    train, test, counts = split_events(events, cut_us)
    if train.num_rows == 0:
        raise ContractError(f"cut {_iso(cut_us)} leaves no training events (data spans "
                            f"{_iso(int(ts.min()))} .. {_iso(int(ts.max()))})")
    if test.num_rows == 0:
        raise ContractError(f"cut {_iso(cut_us)} leaves no test clicks by users with history (data spans "
                            f"{_iso(int(ts.min()))} .. {_iso(int(ts.max()))})")
    rule = ({"cut": str(cut)} if cut is not None else {"fraction": fraction} if fraction is not None
            else {"test_days": test_days if test_days is not None else "default"})
    sides = {"train": (train, {}), "test": (test, counts)}
    summary: dict = {"source": data_dir, "cut": _iso(cut_us), "rule": rule}
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
