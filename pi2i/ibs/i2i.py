"""The i2i table in memory: a CSR index ``trigger -> (targets, scores, ranks)`` for fast row lookups.

Built once from the contract's parquet (sorted by trigger, rank) and shared by sampling, evaluation and
serving, so every stage sees the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pi2i.contracts import I2I_SCHEMA, check_schema, read_i2i
from pi2i.ids import IdPositions


@dataclass(frozen=True)
class I2IIndex:
    triggers: np.ndarray  # int64, sorted unique trigger ids
    indptr: np.ndarray  # int64, len(triggers)+1; row r is targets[indptr[r]:indptr[r+1]]
    targets: np.ndarray  # int64
    scores: np.ndarray  # float32
    ranks: np.ndarray  # int32 (1 = best)

    @classmethod
    def from_table(cls, table: pa.Table) -> I2IIndex:
        t = check_schema(table, I2I_SCHEMA, "i2i table")
        t = t.sort_by([("trigger", "ascending"), ("rank", "ascending")])
        trig = t.column("trigger").to_numpy()
        uniq, starts = np.unique(trig, return_index=True)
        indptr = np.append(starts, len(trig)).astype(np.int64)
        return cls(uniq.astype(np.int64), indptr, t.column("target").to_numpy().astype(np.int64),
                   t.column("score").to_numpy().astype(np.float32),
                   t.column("rank").to_numpy().astype(np.int32))

    @classmethod
    def load(cls, uri: str) -> I2IIndex:
        return cls.from_table(read_i2i(uri))

    def to_table(self) -> pa.Table:
        lens = np.diff(self.indptr)
        return pa.table({"trigger": np.repeat(self.triggers, lens), "target": self.targets,
                         "score": self.scores, "rank": self.ranks}, schema=I2I_SCHEMA)

    def __len__(self) -> int:
        return len(self.triggers)

    @property
    def num_pairs(self) -> int:
        return int(self.indptr[-1])

    def row_ids(self, items: np.ndarray) -> np.ndarray:
        """Row number of each item, -1 where the item has no row."""
        return self._positions(items)

    @cached_property
    def _positions(self) -> IdPositions:
        return IdPositions(self.triggers)

    def row(self, item: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(targets, scores, ranks) of one trigger, best first; empty arrays when it has no row."""
        r = int(self.row_ids(np.array([item]))[0])
        if r < 0:
            return (np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int32))
        a, b = self.indptr[r], self.indptr[r + 1]
        if limit is not None:
            b = min(b, a + limit)
        return self.targets[a:b], self.scores[a:b], self.ranks[a:b]

    def truncated(self, t: int) -> I2IIndex:
        """The same index with every row cut to its top ``t`` (classic I2I uses a small uniform cut)."""
        return I2IIndex.from_table(self.to_table().filter(pc.less_equal(pc.field("rank"), t)))
