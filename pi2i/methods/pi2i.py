"""``pi2i``: the Swing candidate pool re-ranked by the personalized target-attention scorer (PI2I §3.2).

A thin binding of :class:`pi2i.prs.scoring.Scorer` (the one scoring path, shared with serving) to the method
interface. Why: the triggers whose Swing row retrieved the item, strongest Swing score first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pi2i.config import Config
from pi2i.contracts import makedirs, resolve
from pi2i.methods.base import PAD, Histories, MethodError, Recommendations, Retriever, TrainInputs
from pi2i.methods.baselines import PairSet
from pi2i.methods.manifest import read_manifest, save_manifest


class PI2I(Retriever):
    name = "pi2i"
    trained = True
    description = "PI2I: the personalized scorer ranking the full candidate pool"

    def __init__(self, scorer: Any, i2i: Any, model_dir: str, cfg: Config):
        self.scorer, self.i2i, self.model_dir, self.cfg = scorer, i2i, model_dir, cfg
        self._pairs: PairSet | None = None

    @classmethod
    def fit(cls, inputs: TrainInputs, cfg: Config) -> PI2I:
        raise MethodError("pi2i is trained by `pi2i train --method pi2i`; evaluate its model dir (--model)")

    @classmethod
    def load(cls, model_dir: str, inputs: TrainInputs, cfg: Config) -> PI2I:
        read_manifest(model_dir, cls.name)
        if inputs.i2i is None:
            raise MethodError(f"pi2i model {model_dir} needs the Swing i2i index it re-ranks (--i2i)")
        from pi2i.prs.scoring import Scorer

        return cls(Scorer.load(model_dir, inputs.i2i), inputs.i2i, model_dir, cfg)

    def recommend(self, batch: Histories, k: int, *, exclude_seen: bool = True,
                  explain: bool = False) -> Recommendations:
        # the pool's ranking, with the popular items its popularity channel merged in (pi2i.prs.merge); a short
        # answer is padded by evaluation (eval.pad_with_popular) and serving as for every method
        recs = self.scorer.recommend_many([batch.row(r) for r in range(len(batch))], k, exclude_seen=exclude_seen,
                                          fill_popular=False, explain=explain)
        items = np.full((len(recs), k), PAD, np.int64)
        scores = np.full((len(recs), k), -np.inf, np.float32)
        for r, rec in enumerate(recs):
            m = min(k, len(rec.items))
            items[r, :m], scores[r, :m] = rec.items[:m], rec.scores[:m]
        pool = np.array([rec.num_candidates for rec in recs], np.int64)
        return Recommendations(items, scores, self._why(recs, k) if explain else None, pool)

    def _why(self, recs: list, k: int) -> list[list[list[tuple[int, float]]]]:
        """Each item's retrieving triggers with their Swing score s(trigger, item), strongest first."""
        if self._pairs is None:
            self._pairs = PairSet(self.i2i)
        out = []
        for rec in recs:
            per_item = []
            for item, trig in zip(rec.items[:k].tolist(), rec.triggers[:k]):
                trig = np.asarray(trig, np.int64)
                at = self._pairs.find(trig, np.full(len(trig), item, np.int64))
                sc = np.where(at >= 0, self.i2i.scores[np.maximum(at, 0)], 0.0).astype(np.float64)
                order = np.lexsort((trig, -sc))
                per_item.append([(int(trig[j]), float(sc[j])) for j in order])
            out.append(per_item)
        return out

    def save(self, out_dir: str) -> None:
        """Copy the self-contained model directory and record the method."""
        import pyarrow.fs as pafs

        makedirs(out_dir)
        src_fs, src = resolve(self.model_dir)
        dst_fs, dst = resolve(out_dir)
        pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
        trained_with = getattr(self.scorer, "cfg", None)  # the config the scorer was trained with, if it has one
        save_manifest(out_dir, self.name, trained_with if isinstance(trained_with, Config) else self.cfg)
