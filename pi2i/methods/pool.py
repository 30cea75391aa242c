"""``pool``: the relaxed-``T`` Swing candidate pool (PI2I §3.1) and its ceiling.

The pool is the union of the triggers' *whole* Swing rows (``swing.top_t`` targets each). As a set its HR is
the most any re-ranking of it — PI2I included — can reach, so evaluation reports that ceiling as ``hr@K``
(the same at every K, :attr:`~pi2i.methods.base.Retriever.set_valued`); as a ranking (Swing scores summed
over the triggers, as classic Swing but untruncated) it is ``ranked_hr@K``.
"""

from __future__ import annotations

import numpy as np

from pi2i.methods.base import Histories
from pi2i.methods.baselines import PairSet, pool_membership
from pi2i.methods.swing import Swing


class Pool(Swing):
    name = "pool"
    description = ("pool ceiling: the triggers' full Swing rows (T={truncation}) as a set; "
                   "ranked_hr orders it by summed Swing score")
    classic = False
    set_valued = True
    _pairs: PairSet | None = None

    def pool_contains(self, batch: Histories, rows: np.ndarray, items: np.ndarray, *,
                      exclude_seen: bool = True) -> np.ndarray:
        if self._pairs is None:
            self._pairs = PairSet(self.i2i)
        seen = (batch.indptr, batch.items) if exclude_seen else None
        return pool_membership(self._pairs, self.triggers(batch), rows, items, seen)
