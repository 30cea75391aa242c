"""``swing``: classic item-based CF as traditionally served (PI2I Fig. 2a).

The user's triggers are the last ``sampling.num_triggers`` distinct clicks; each trigger's Swing row is cut to a
uniform ``eval.classic_truncation`` targets; a candidate's score is its Swing score summed over the triggers
whose row holds it; the best ``k`` are kept (ties: smaller item id). Why: those triggers with their scores.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pi2i.config import Config
from pi2i.contracts import makedirs
from pi2i.data.events import CSR, last_distinct
from pi2i.ibs.i2i import I2IIndex
from pi2i.methods.base import Histories, MethodError, Recommendations, Retriever, TrainInputs
from pi2i.methods.baselines import i2i_lists, trigger_contributions
from pi2i.methods.manifest import read_manifest, save_manifest


class Swing(Retriever):
    name = "swing"
    description = "classic I2I: each trigger's Swing row cut to {truncation}, scores summed over the triggers"
    #: rows cut to ``eval.classic_truncation`` (None: whole rows, see :class:`pi2i.methods.pool.Pool`)
    classic: ClassVar[bool] = True

    def __init__(self, i2i: I2IIndex, cfg: Config):
        self.i2i, self.cfg = i2i, cfg
        self.truncation: int | None = cfg.eval.classic_truncation if self.classic else None
        self.num_triggers = cfg.sampling.num_triggers

    @classmethod
    def fit(cls, inputs: TrainInputs, cfg: Config) -> Swing:
        if inputs.i2i is None:
            raise MethodError(f"{cls.name} needs the Swing i2i index (--i2i)")
        return cls(inputs.i2i, cfg)

    def describe(self) -> str:
        t = self.truncation or int(np.diff(self.i2i.indptr).max(initial=0))
        return self.description.format(truncation=t)

    def triggers(self, batch: Histories) -> CSR:
        """The last ``num_triggers`` distinct clicks of each row, most recent first (paper §3.2)."""
        return last_distinct(batch.indptr, batch.items, self.num_triggers)

    def recommend(self, batch: Histories, k: int, *, exclude_seen: bool = True,
                  explain: bool = False) -> Recommendations:
        triggers = self.triggers(batch)
        seen = (batch.indptr, batch.items) if exclude_seen else None
        items, scores, pool_size = i2i_lists(self.i2i, triggers, k, self.truncation, seen)
        why = trigger_contributions(self.i2i, triggers, items, self.truncation) if explain else None
        return Recommendations(items, scores, why, pool_size)

    def save(self, out_dir: str) -> None:
        """The rows live in the version's i2i table; the directory records the method and its config."""
        makedirs(out_dir)
        save_manifest(out_dir, self.name, self.cfg)

    @classmethod
    def load(cls, model_dir: str, inputs: TrainInputs, cfg: Config) -> Swing:
        manifest = read_manifest(model_dir, cls.name)
        if manifest.get("config"):
            cfg = Config.model_validate(manifest["config"])
        return cls.fit(inputs, cfg)
