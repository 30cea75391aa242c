"""Online user histories: the behaviour sequence that PRS turns into triggers at inference time.

Serving reads a user's recent clicks (oldest first) and appends each new click (paper §4.7: a click triggers
the nearline recompute). ``InMemoryHistoryStore`` is the embedded default, seeded from the model dir's
``histories.parquet``; ``pi2i.data.features.FeastHistoryStore`` implements the same protocol over Feast's online
store. Memory is bounded: at most ``max_len`` clicks per user and ``max_users`` users with online clicks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pi2i.contracts import exists, join, read_parquet
from pi2i.layout import HISTORIES_FILE

_EMPTY_I = np.empty(0, np.int64)


@runtime_checkable
class HistoryStore(Protocol):
    def get(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(items int64, ts int64 microseconds), oldest first; empty arrays for an unknown user."""
        ...

    def append(self, user_id: int, item_id: int, ts_us: int) -> None:
        """Record one click."""
        ...


class _Overlay:
    """Online clicks per user (time-ordered, at most ``max_len``), for at most ``max_users`` users (LRU)."""

    def __init__(self, max_len: int, max_users: int) -> None:
        self.max_len, self.max_users = int(max_len), int(max_users)
        self.lock = threading.Lock()
        self.users: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.evicted = 0


class InMemoryHistoryStore:
    """Seed histories in CSR arrays (no per-user objects) plus a bounded overlay of online clicks.

    ``get`` merges the seed row with the user's online clicks in time order (a click present in both, same item
    and ts, counts once) and returns the last ``max_len``. :meth:`with_seed` gives a store over a new version's
    seed that shares the overlay, so online clicks survive a swap and stay visible until a seed covers them.
    Thread-safe.
    """

    def __init__(self, seed: pa.Table | None = None, max_len: int = 50, max_users: int = 100_000,
                 _overlay: _Overlay | None = None) -> None:
        self.max_len = int(max_len)
        self._ov = _overlay if _overlay is not None else _Overlay(max_len, max_users)
        self._users, self._indptr, self._items, self._ts = _csr(seed)

    def with_seed(self, seed: pa.Table | None) -> InMemoryHistoryStore:
        return InMemoryHistoryStore(seed, self.max_len, _overlay=self._ov)

    def _seed_row(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        pos = int(np.searchsorted(self._users, user_id))
        if pos < len(self._users) and self._users[pos] == user_id:
            a, b = self._indptr[pos], self._indptr[pos + 1]
            return self._items[a:b], self._ts[a:b]
        return _EMPTY_I, _EMPTY_I

    def get(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        items, ts = self._seed_row(int(user_id))
        online = self._ov.users.get(int(user_id))  # a dict read is atomic; the tuple is replaced, never mutated
        if online is not None:
            items, ts = _merge(items, ts, online[0], online[1])
        return items[-self.max_len:].copy(), ts[-self.max_len:].copy()

    def append(self, user_id: int, item_id: int, ts_us: int) -> None:
        ov, u = self._ov, int(user_id)
        with ov.lock:
            items, ts = ov.users.pop(u, (_EMPTY_I, _EMPTY_I))
            pos = int(np.searchsorted(ts, ts_us, side="right"))  # keep time order for late clicks
            ov.users[u] = (np.insert(items, pos, np.int64(item_id))[-ov.max_len:],
                           np.insert(ts, pos, np.int64(ts_us))[-ov.max_len:])
            while len(ov.users) > ov.max_users:
                ov.users.popitem(last=False)
                ov.evicted += 1

    def online_users(self) -> int:
        return len(self._ov.users)

    def __len__(self) -> int:
        with self._ov.lock:
            return len(set(self._users.tolist()) | set(self._ov.users))


def _csr(seed: pa.Table | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if seed is None or seed.num_rows == 0:
        return _EMPTY_I, np.zeros(1, np.int64), _EMPTY_I, _EMPTY_I
    seed = seed.sort_by("user_id")
    it, tt = seed.column("items").combine_chunks(), seed.column("ts").combine_chunks()
    lens = pc.fill_null(pc.list_value_length(it), 0).to_numpy().astype(np.int64)
    return (seed.column("user_id").to_numpy().astype(np.int64),
            np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            pc.list_flatten(it).to_numpy().astype(np.int64),
            pc.list_flatten(tt).cast(pa.int64()).to_numpy().astype(np.int64))


def _merge(items: np.ndarray, ts: np.ndarray, o_items: np.ndarray, o_ts: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Seed row + online clicks in time order (stable: seed first on equal ts); exact duplicates once."""
    if len(items) == 0:
        return o_items, o_ts
    if len(ts) and len(o_ts) and o_ts[0] > ts[-1]:  # the common case: every online click is newer
        return np.concatenate([items, o_items]), np.concatenate([ts, o_ts])
    dup = np.isin(o_ts, ts)
    if dup.any():  # drop online clicks the seed already holds (same ts and item)
        seed_pairs = set(zip(ts.tolist(), items.tolist()))
        keep = np.fromiter(((t, i) not in seed_pairs for t, i in zip(o_ts.tolist(), o_items.tolist())),
                           bool, len(o_ts))
        o_items, o_ts = o_items[keep], o_ts[keep]
    all_ts = np.concatenate([ts, o_ts])
    order = np.argsort(all_ts, kind="stable")
    return np.concatenate([items, o_items])[order], all_ts[order]


def load_histories(model_dir: str) -> pa.Table | None:
    """The model dir's ``histories.parquet`` (user_id, items, ts), or None when it has none."""
    uri = join(str(model_dir), HISTORIES_FILE)
    return read_parquet(uri) if exists(uri) else None
