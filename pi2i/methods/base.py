"""The one interface every retrieval method implements (DESIGN.md "Retrieval methods").

A :class:`Retriever` is fitted from the train artifacts (:class:`TrainInputs`), recommends for a batch of user
histories (:class:`Histories`) and answers with ranked items, scores and, per item, *why*: the triggers or
paths that produced it, strongest first (:class:`Recommendations`). It saves to / loads from a model
directory whose ``method.json`` (:data:`METHOD_FILE`) records the method, its config and the code version
that wrote it; loading a directory written by an incompatible code version fails naming both versions.

Evaluation, publishing and serving only ever talk to this interface; adding a method is one module under
``pi2i/methods/`` and one line in :data:`pi2i.methods.METHODS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pi2i.config import Config
from pi2i.layout import METHOD_FILE  # noqa: F401 - re-exported: the model dir's method manifest

PAD = -1  # item id of an empty slot in a ranked list
# Bump when a saved model directory stops being loadable by the code that reads it.
FORMAT_VERSION = 2


class MethodError(ValueError):
    """A method cannot be fitted, saved or loaded as asked (one-line, user-facing)."""


@dataclass
class Histories:
    """A batch of user histories as CSR arrays: row ``r`` is ``items[indptr[r]:indptr[r+1]]``, oldest first.

    ``ts`` is int64 microseconds since the epoch, aligned with ``items``. ``users`` may be unknown (-1)."""

    users: np.ndarray  # (n,) int64
    indptr: np.ndarray  # (n+1,) int64
    items: np.ndarray  # (nnz,) int64
    ts: np.ndarray  # (nnz,) int64 µs

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.indptr[r]), int(self.indptr[r + 1])
        return self.items[lo:hi], self.ts[lo:hi]

    @classmethod
    def from_lists(cls, rows: list[tuple[np.ndarray, np.ndarray]], users: np.ndarray | None = None) -> Histories:
        lens = np.array([len(i) for i, _ in rows], np.int64)
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        items = np.concatenate([np.asarray(i, np.int64) for i, _ in rows]) if rows else np.empty(0, np.int64)
        ts = np.concatenate([np.asarray(t, np.int64) for _, t in rows]) if rows else np.empty(0, np.int64)
        u = np.full(len(rows), -1, np.int64) if users is None else np.asarray(users, np.int64)
        return cls(u, indptr, items, ts)


Why = list[tuple[int, float]]
"""Why an item was recommended: (source item — a trigger, or the path's first hop —, contribution), strongest
first. Methods without item-level reasons (popularity, two-tower ANN) return an empty list."""


@dataclass
class Recommendations:
    """Ranked lists for a batch: ``items[r]`` best first, ``PAD`` in empty slots; ``why[r][j]`` explains
    ``items[r, j]`` (filled only when asked with ``explain=True``)."""

    items: np.ndarray  # (n, k) int64, PAD-padded
    scores: np.ndarray  # (n, k) float32, -inf where PAD
    why: list[list[Why]] | None = None
    num_candidates: np.ndarray | None = None  # (n,) size of each user's scored pool, when the method has one


@dataclass
class TrainInputs:
    """What a method may be fitted from: the train split, its Swing index, item side info, and for trained
    methods the samples directory of ``pi2i samples`` (which also carries the train events)."""

    events: pa.Table | None = None  # contract events of the train split
    i2i: Any = None  # pi2i.ibs.i2i.I2IIndex
    items: pa.Table | None = None
    samples_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Retriever(ABC):
    """One retrieval method. Subclasses set :attr:`name` and implement fit / recommend / save / load.

    ``recommend(batch, k, exclude_seen=True)`` never returns an item of the row's history in ``batch`` (the
    evaluation passes every train click of a user when ``eval.exclude_seen: all``), and returns at most ``k``
    items per row, best first; it never pads with popular items (the serving fallback does that).
    ``load`` must check the directory's ``method.json`` with ``pi2i.methods.read_manifest(dir, cls.name)``.
    """

    name: ClassVar[str]
    #: ``True`` for methods fitted by ``pi2i train`` into a model directory; ``False`` for those fitted from the
    #: train split inside ``pi2i evaluate`` (popularity, swing, pool, ease).
    trained: ClassVar[bool] = False
    #: ``True`` for a method whose value is its candidate *set* (the pool ceiling: the most any re-ranking of
    #: that pool can reach), not its order: evaluation reports the set's HR as ``hr@K`` at every K (and the
    #: ranking's as ``ranked_hr@K``). Such a method implements :meth:`pool_contains`.
    set_valued: ClassVar[bool] = False
    #: One line for reports: what the method is.
    description: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def fit(cls, inputs: TrainInputs, cfg: Config) -> Retriever: ...

    @abstractmethod
    def recommend(self, batch: Histories, k: int, *, exclude_seen: bool = True,
                  explain: bool = False) -> Recommendations: ...

    @abstractmethod
    def save(self, out_dir: str) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, model_dir: str, inputs: TrainInputs, cfg: Config) -> Retriever: ...

    def pool_contains(self, batch: Histories, rows: np.ndarray, items: np.ndarray, *,
                      exclude_seen: bool = True) -> np.ndarray | None:
        """For query pairs (batch row, item): is the item in that row's whole candidate pool? ``None`` when
        the method has no pool (evaluation then reports no ceiling for it)."""
        return None

    def describe(self) -> str:
        """One line for reports (may name fitted settings, e.g. the truncation)."""
        return self.description or self.name
