"""``popularity``: the most clicked items of the train period, the same list for everybody (seen removed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pi2i.config import Config
from pi2i.contracts import join, makedirs, read_parquet, write_parquet
from pi2i.data.events import fill_rows_with_popular, item_popularity
from pi2i.layout import POPULARITY_FILE
from pi2i.methods.base import PAD, Histories, MethodError, Recommendations, Retriever, TrainInputs, Why
from pi2i.methods.manifest import read_manifest, save_manifest


class Popularity(Retriever):
    name = "popularity"
    description = "most clicked items of the train period (seen items removed)"

    def __init__(self, items: np.ndarray, counts: np.ndarray, cfg: Config):
        self.items, self.counts, self.cfg = np.asarray(items, np.int64), np.asarray(counts, np.int64), cfg
        order = np.argsort(self.items)
        self._sorted, self._count_of = self.items[order], self.counts[order]

    @classmethod
    def fit(cls, inputs: TrainInputs, cfg: Config) -> Popularity:
        if inputs.events is None:
            raise MethodError("popularity is fitted from the train events; none were given")
        items, counts = item_popularity(inputs.events, cfg.sampling.behaviors)
        return cls(items, counts, cfg)

    def recommend(self, batch: Histories, k: int, *, exclude_seen: bool = True,
                  explain: bool = False) -> Recommendations:
        seen = (batch.indptr, batch.items) if exclude_seen else None
        ranked = fill_rows_with_popular(np.full((len(batch), 1), PAD, np.int64), self.items, k, seen)
        at = np.minimum(np.searchsorted(self._sorted, ranked), max(len(self._sorted) - 1, 0))
        scores = np.where(ranked != PAD, self._count_of[at] if len(self._sorted) else 0, -np.inf)
        why: list[list[Why]] | None = ([[[] for _ in range(int((row != PAD).sum()))] for row in ranked]
                                       if explain else None)
        return Recommendations(ranked, scores.astype(np.float32), why)

    def save(self, out_dir: str) -> None:
        makedirs(out_dir)
        write_parquet(pa.table({"item_id": self.items, "count": self.counts}), join(out_dir, POPULARITY_FILE))
        save_manifest(out_dir, self.name, self.cfg)

    @classmethod
    def load(cls, model_dir: str, inputs: TrainInputs, cfg: Config) -> Popularity:
        read_manifest(model_dir, cls.name)
        t = read_parquet(join(model_dir, POPULARITY_FILE))
        return cls(t.column("item_id").to_numpy(), t.column("count").to_numpy(), cfg)
