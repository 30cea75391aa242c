"""Event helpers shared by every stage: the ONE place for each of these concepts.

An events table follows ``contracts.EVENTS_SCHEMA`` (``user_id``, ``item_id``, ``behavior``, ``ts``).
Per-user sequences are CSR arrays: ``indptr`` (``n + 1`` offsets) over flat ``items`` / ``ts`` (µs since the
epoch, UTC).

* :func:`clicks` — the behaviour filter (which events count as clicks for a stage);
* :func:`to_us` / :func:`to_iso` — ISO-8601 / datetime / int <-> µs since the epoch (UTC);
* :func:`event_arrays` — ``(users, items, ts_us)`` as int64 numpy arrays;
* :func:`item_popularity` — items by click count, most popular first;
* :func:`recent_histories` — each user's last ``n`` clicks, oldest first;
* :func:`drop_consecutive_repeats` — collapse back-to-back clicks on one item (the PRS sampler's view);
* :func:`last_distinct` — each user's last ``L`` distinct items, most recent first (paper §3.2 trigger list);
* :func:`fill_with_popular` / :func:`fill_rows_with_popular` — pad short lists with popular items;
* :func:`splitmix64` / :func:`splitmix64_next` — the fixed hash / seeded stream behind every sampled choice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CSR = tuple[np.ndarray, np.ndarray]
PAD = -1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)


# --------------------------------------------------------------------------------------------- filter / time
def clicks(events: pa.Table, behaviors: Iterable[str] | None) -> pa.Table:
    """Rows of ``events`` whose behaviour is in ``behaviors`` (None: every row); no copy when all match."""
    if behaviors is None:
        return events
    mask = pc.is_in(events.column("behavior"), value_set=pa.array(list(behaviors), pa.string()))
    if (pc.sum(mask).as_py() or 0) == events.num_rows:
        return events
    return events.filter(mask)


def to_us(value: str | dt.datetime | int | np.integer) -> int:
    """µs since the epoch from an ISO-8601 string or a datetime (UTC when no offset), or an int (µs).

    Exact integer arithmetic (no float rounding). Raises ValueError naming the value when a string is not a
    time (TypeError for other types).
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"cannot parse time {value!r}; use ISO 8601, e.g. 2017-12-02T00:00:00Z"
                             ) from None
    if not isinstance(value, dt.datetime):
        raise TypeError(f"not a time: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // _ONE_US


def to_iso(us: int) -> str:
    """``2017-12-02T00:00:00Z`` for µs since the epoch (the inverse of :func:`to_us`)."""
    return (_EPOCH + dt.timedelta(microseconds=int(us))).isoformat().replace("+00:00", "Z")


def event_arrays(events: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user_id, item_id, ts_us)`` columns as int64 numpy arrays."""
    u = events.column("user_id").to_numpy().astype(np.int64, copy=False)
    i = events.column("item_id").to_numpy().astype(np.int64, copy=False)
    ts = events.column("ts")
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(ts, pa.timestamp("us", tz="UTC"))
    t = ts.cast(pa.int64()).to_numpy().astype(np.int64, copy=False)
    return u, i, t


# --------------------------------------------------------------------------------------------- popularity
def item_popularity(events: pa.Table, behaviors: Iterable[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, counts) of the events of ``behaviors``, most popular first (ties: smaller id first)."""
    ids = clicks(events, behaviors).column("item_id").to_numpy().astype(np.int64, copy=False)
    items, counts = np.unique(ids, return_counts=True)
    order = np.lexsort((items, -counts))
    return items[order], counts[order].astype(np.int64)


# --------------------------------------------------------------------------------------------- sequences
def rows_of(indptr: np.ndarray) -> np.ndarray:
    """Row index of every flat element of a CSR."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def drop_consecutive_repeats(indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Keep-mask of ``items``: the first of back-to-back repeats of one item within each row is kept."""
    items = np.asarray(items)
    keep = np.ones(len(items), bool)
    if len(items) > 1:
        keep[1:] = items[1:] != items[:-1]
    indptr = np.asarray(indptr, np.int64)
    keep[indptr[:-1][np.diff(indptr) > 0]] = True  # a row's first click always counts
    return keep


def recent_histories(events: pa.Table, n: int | None, behaviors: Iterable[str] | None = ("click",),
                     dedup_consecutive: bool = True, users: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's last ``n`` clicks (None: all), oldest first: ``(users, indptr, items, ts_us)``.

    Clicks are the events of ``behaviors`` in time order, ties keeping file order. With ``dedup_consecutive``
    back-to-back repeats collapse to the first *before* the cut to ``n`` (the PRS sampler's click sequence, so
    the scorer sees the history it was trained on). ``users`` (sorted ids) fixes the rows, empty for users
    without clicks; by default the rows are the users with clicks, sorted.
    """
    if n is not None and n < 1:
        raise ValueError(f"history length must be >= 1, got {n}")
    u, it, ts = event_arrays(clicks(events, behaviors))
    if users is None:
        order = np.lexsort((ts, u))  # stable: ties in time keep file order
        u, it, ts = u[order], it[order], ts[order]
        first = np.ones(len(u), bool)
        first[1:] = u[1:] != u[:-1]
        users, row = u[first], np.cumsum(first) - 1
    else:
        users = np.asarray(users, np.int64)
        row = np.minimum(np.searchsorted(users, u), max(len(users) - 1, 0))
        known = (users[row] == u) if len(users) else np.zeros(len(u), bool)
        row, it, ts = row[known], it[known], ts[known]
        order = np.lexsort((ts, row))
        row, it, ts = row[order], it[order], ts[order]
    if dedup_consecutive and len(row):
        keep = np.ones(len(row), bool)
        keep[1:] = (row[1:] != row[:-1]) | (it[1:] != it[:-1])
        row, it, ts = row[keep], it[keep], ts[keep]
    counts = np.bincount(row, minlength=len(users))
    if n is not None:
        from_end = np.cumsum(counts)[row] - np.arange(len(row))  # 1 = newest
        keep = from_end <= n
        row, it, ts = row[keep], it[keep], ts[keep]
        counts = np.minimum(counts, n)
    indptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return users, indptr, it, ts


def last_distinct(indptr: np.ndarray, items: np.ndarray, L: int) -> CSR:
    """Per row the last ``L`` distinct items of a sequence (oldest first in), most recent first out.

    The paper's trigger list (§3.2): an item clicked twice counts once, at its latest click.
    """
    indptr = np.asarray(indptr, np.int64)
    items = np.asarray(items, np.int64)
    rows = rows_of(indptr)
    back = indptr[rows + 1] - np.arange(len(items))  # 1 = newest
    order = np.lexsort((back, items, rows))
    r, it, b = rows[order], items[order], back[order]
    first = np.ones(len(r), bool)
    first[1:] = (r[1:] != r[:-1]) | (it[1:] != it[:-1])
    r, it, b = r[first], it[first], b[first]
    order = np.lexsort((b, r))
    r, it = r[order], it[order]
    counts = np.bincount(r, minlength=len(indptr) - 1)
    rank = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < L
    out = np.zeros(len(indptr), np.int64)
    np.cumsum(np.bincount(r[keep], minlength=len(indptr) - 1), out=out[1:])
    return out, it[keep]


# --------------------------------------------------------------------------------------------- popular fill
@nb.njit(cache=True)
def _fill_row(head, popular, excl, k, out):  # pragma: no cover - numba
    """``out[:k]`` = the non-PAD items of ``head`` then popular items in neither ``head`` nor ``excl``."""
    c = 0
    for x in head:
        if x != -1 and c < k:
            out[c] = x
            c += 1
    if c == k:
        return c
    skip = np.sort(np.concatenate((out[:c], excl)))
    r = 0
    while c < k and r < len(popular):
        x = popular[r]
        j = np.searchsorted(skip, x)
        if not (j < len(skip) and skip[j] == x):
            out[c] = x
            c += 1
        r += 1
    return c


@nb.njit(cache=True, parallel=True)
def _fill_rows(rows, popular, e_ptr, e_items, k, out):  # pragma: no cover - numba
    for u in nb.prange(rows.shape[0]):
        _fill_row(rows[u], popular, e_items[e_ptr[u]:e_ptr[u + 1]], k, out[u])


def fill_rows_with_popular(rows: np.ndarray, popular: np.ndarray, k: int, exclude: CSR | None = None
                           ) -> np.ndarray:
    """``(n, k)`` lists: each row's items (PAD = -1 skipped) then popular items not already in the row nor in
    its ``exclude`` CSR row, until ``k`` long (PAD where the popular items run out)."""
    rows = np.ascontiguousarray(rows, np.int64).reshape(len(rows), -1)
    n = rows.shape[0]
    e_ptr, e_items = exclude if exclude is not None else (np.zeros(n + 1, np.int64), np.empty(0, np.int64))
    out = np.full((n, k), PAD, np.int64)
    _fill_rows(rows, np.ascontiguousarray(popular, np.int64), np.asarray(e_ptr, np.int64),
               np.asarray(e_items, np.int64), k, out)
    return out


def fill_with_popular(items: np.ndarray, popular: np.ndarray, k: int, exclude: np.ndarray | None = None
                      ) -> np.ndarray:
    """One list: ``items`` then popular items (not already present or in ``exclude``) up to ``k`` long.

    Runs on the calling thread (no parallel pool is woken for a single serving request).
    """
    out = np.full(k, PAD, np.int64)
    excl = np.asarray(exclude if exclude is not None else [], np.int64)
    c = _fill_row(np.asarray(items, np.int64), np.ascontiguousarray(popular, np.int64), excl, k, out)
    return out[:c]


# --------------------------------------------------------------------------------------------- hashing
def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014), vectorised: a fixed, platform-independent hash."""
    x = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@nb.njit(cache=True, inline="always")
def splitmix64_next(state):  # pragma: no cover - numba
    """One step of the splitmix64 stream inside numba: ``(new state, 64 random bits)``."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))
