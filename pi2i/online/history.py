"""Online user histories: the behaviour sequence that PRS turns into triggers at inference time.

Serving reads a user's recent clicks (oldest first) and appends each new click (paper §4.7: a click triggers
the nearline recompute). ``InMemoryHistoryStore`` is the embedded default, seeded from the model dir's
``histories.parquet``; ``pi2i.data.features.FeastHistoryStore`` implements the same protocol over Feast's online store.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pi2i.contracts import join, read_parquet

HISTORIES_FILE = "histories.parquet"

_EMPTY_I = np.empty(0, np.int64)


@runtime_checkable
class HistoryStore(Protocol):
    def get(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(items int64, ts int64 microseconds), oldest first; empty arrays for an unknown user."""
        ...

    def append(self, user_id: int, item_id: int, ts_us: int) -> None:
        """Record one click."""
        ...


class InMemoryHistoryStore:
    """Seed histories in CSR arrays (no per-user objects) plus a small overlay of online clicks.

    ``get`` returns the seed history followed by the user's online clicks newer than it, the last ``max_len``.
    ``reseed`` swaps the seed (a new version's histories) and keeps the online clicks: they stay visible until
    a seed covering them arrives. Thread-safe.
    """

    def __init__(self, seed: pa.Table | None = None, max_len: int = 50) -> None:
        self.max_len = int(max_len)
        self._lock = threading.Lock()
        self._online: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._set_seed(seed)

    @classmethod
    def from_model_dir(cls, model_dir: str, max_len: int = 50) -> InMemoryHistoryStore:
        return cls(load_histories(model_dir), max_len=max_len)

    def _set_seed(self, seed: pa.Table | None) -> None:
        if seed is None or seed.num_rows == 0:
            users, indptr, items, ts = _EMPTY_I, np.zeros(1, np.int64), _EMPTY_I, _EMPTY_I
        else:
            seed = seed.sort_by("user_id")
            users = seed.column("user_id").to_numpy().astype(np.int64)
            it = seed.column("items").combine_chunks()
            tt = seed.column("ts").combine_chunks()
            lens = pc.fill_null(pc.list_value_length(it), 0).to_numpy().astype(np.int64)
            indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            items = pc.list_flatten(it).to_numpy().astype(np.int64)
            ts = pc.list_flatten(tt).cast(pa.int64()).to_numpy().astype(np.int64)
        with self._lock:
            self._users, self._indptr, self._items, self._ts = users, indptr, items, ts

    def reseed(self, seed: pa.Table | None) -> None:
        self._set_seed(seed)

    def _seed_row(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        pos = int(np.searchsorted(self._users, user_id))
        if pos < len(self._users) and self._users[pos] == user_id:
            a, b = self._indptr[pos], self._indptr[pos + 1]
            return self._items[a:b], self._ts[a:b]
        return _EMPTY_I, _EMPTY_I

    def get(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            items, ts = self._seed_row(int(user_id))
            online = self._online.get(int(user_id))
        if online is not None:
            last = ts[-1] if len(ts) else np.iinfo(np.int64).min
            newer = online[1] > last
            items = np.concatenate([items, online[0][newer]])
            ts = np.concatenate([ts, online[1][newer]])
        return items[-self.max_len:].copy(), ts[-self.max_len:].copy()

    def append(self, user_id: int, item_id: int, ts_us: int) -> None:
        with self._lock:
            items, ts = self._online.get(int(user_id), (_EMPTY_I, _EMPTY_I))
            pos = int(np.searchsorted(ts, ts_us, side="right"))  # keep time order for late clicks
            items = np.insert(items, pos, np.int64(item_id))[-self.max_len:]
            ts = np.insert(ts, pos, np.int64(ts_us))[-self.max_len:]
            self._online[int(user_id)] = (items, ts)

    def __len__(self) -> int:
        with self._lock:
            return len(set(self._users.tolist()) | set(self._online))


def load_histories(model_dir: str) -> pa.Table | None:
    """The model dir's ``histories.parquet`` (user_id, items, ts), or None when it has none."""
    from pi2i.contracts import exists

    uri = join(str(model_dir), HISTORIES_FILE)
    return read_parquet(uri) if exists(uri) else None
