"""PDN as a retrieval method (pdn.txt §4–5): trained on PI2I's trigger–target samples, served by greedy 2-hop
path retrieval.

Training (§4.6). Every sample of ``pi2i samples`` — a user's clicks before a target, the target and its hard
and easy negatives drawn from the triggers' Swing rows — is one group of :mod:`pi2i.methods.pdn_features`;
every candidate's 2-hop paths are the triggers whose Swing row holds it (the co-occurrence candidate pairs of
§5.2), so training sees exactly the paths serving can walk. Loss: Eq. 13 (``methods.pdn.loss``), under Ray
Train through :func:`pi2i.prs.launch.run_ray_train` with ``train.*`` (epochs, batch size, workers, early
stopping on a user-disjoint validation split).

Serving (§5):

1. **index generation** (offline, at the end of training): SimNet scores every (trigger, target) pair of the
   Swing rows; each trigger keeps its ``index_k`` best targets by ``s_ji`` — the PDN i2i index, saved in the
   model directory in the i2i table schema (``pdn_index.parquet``);
2. **trigger extraction**: TrigNet scores the user's last ``L`` distinct items; the ``top_m`` best that have an
   index row are kept;
3. **top-K retrieval**: their indexed targets are merged by Eq. 14,
   ``ŝ_ui = softplus(d_ui) + Σ_j softplus(t_uj + s_ji)`` (no bias net), the user's seen items removed.

Each recommendation carries its paths: ``why`` = (trigger, path weight) strongest first, and
:attr:`PDNRecommendations.paths` = (trigger, t_uj, s_ji). With ``top_m >= L`` and ``index_k`` at least the
longest Swing row, retrieval equals exhaustive 2-hop scoring of every reachable item (tested).

Departures from the paper: scalar PDN only (no vector-based variant); candidate pairs for the index come from
the Swing rows only (no same-brand pairs); the user field has no user-id embedding (a user-disjoint validation
split, and cold users at serving) but a category-interest profile; the bias net sees hour, weekday and session
depth (this data logs no display position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from pi2i.config import Config
from pi2i.contracts import exists, join, makedirs, read_json, read_parquet, write_json
from pi2i.ibs.i2i import I2IIndex
from pi2i.layout import I2I_FILE, ITEMS_FILE, POPULARITY_FILE, SERVING_INPUT_FILES, TRAIN_METRICS_FILE
from pi2i.methods.base import PAD, Histories, MethodError, Recommendations, Retriever, TrainInputs, Why
from pi2i.methods.learned import load_weights, open_samples, ray_fit, save_weights, staging_dir, user_split
from pi2i.methods.manifest import save_manifest
from pi2i.methods.pdn_features import Featurizer, RowIndex
from pi2i.methods.ranking import item_codes, seen_mask_pairs, sparse_topk

if TYPE_CHECKING:
    from pi2i.methods.pdn_model import PDNModel

INDEX_FILE, WEIGHTS_FILE = "pdn_index.parquet", "pdn.safetensors"  # besides layout.TRAIN_METRICS_FILE


def _softplus(x: np.ndarray) -> np.ndarray:
    """ln(1 + e^x), overflow-safe."""
    return np.logaddexp(0.0, x)


@dataclass
class PDNRecommendations(Recommendations):
    """:class:`Recommendations` plus, when explained, every item's paths (trigger, t_uj, s_ji)."""

    paths: list[list[list[tuple[int, float, float]]]] | None = None


# --------------------------------------------------------------------------------------------- the method
class PDN(Retriever):
    name: ClassVar[str] = "pdn"
    trained: ClassVar[bool] = True
    description: ClassVar[str] = "PDN: TrigNet top-m triggers × SimNet-scored Swing index, paths merged by Eq. 14"

    def __init__(self, model: PDNModel, feat: Featurizer, index: I2IIndex, cfg: Config,
                 metrics: dict | None = None):
        self.model = model.eval()
        self.feat = feat
        self.index = index  # the SimNet-scored i2i index (score = s_ji)
        self.cfg = cfg
        self.metrics = metrics or {}
        import torch

        with torch.inference_mode():  # q_i is static: inferred once for every known item (§5.1)
            self.item_q = (model.direct.items(torch.from_numpy(feat.item_x)).numpy()
                           if model.direct is not None else None)

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, inputs: TrainInputs, cfg: Config) -> PDN:
        if not inputs.samples_dir:
            raise MethodError("pdn: needs a samples directory (`pi2i samples`)")
        t0 = time.perf_counter()
        samples_dir = inputs.samples_dir
        ss, sampling = open_samples(samples_dir, "pdn")
        from pi2i.methods.pdn_model import PDNModel, build_index, pdn_loop
        from pi2i.prs.io import uri

        i2i_uri = uri(join(samples_dir, I2I_FILE))
        index = I2IIndex.load(i2i_uri)
        if len(index.scores) and not np.isfinite(index.scores).all():
            raise MethodError(f"pdn: non-finite Swing scores in {i2i_uri}")
        tc, pc = cfg.train, cfg.methods.pdn
        train_idx, _ = user_split(np.asarray(ss.clicks.user_ids), np.asarray(ss.user), tc.val_fraction, tc.seed)
        ptr = np.asarray(ss.clicks.user_ptr)
        train_users = np.unique(np.asarray(ss.user)[train_idx])
        click_user = np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr))
        clicked = np.asarray(ss.clicks.items)[np.isin(click_user, train_users)]
        events = inputs.events
        ev_uri = ss.meta.get("events")
        if events is None and ev_uri and exists(ev_uri):
            from pi2i.contracts import read_events

            events = read_events(ev_uri)
        feat = Featurizer.build(
            read_parquet(join(samples_dir, ITEMS_FILE)), read_parquet(join(samples_dir, POPULARITY_FILE)),
            clicked, events, index, int(sampling.get("num_triggers", cfg.sampling.num_triggers)),
            int(sampling.get("seq_len", cfg.sampling.seq_len)),
            bool(sampling.get("dedup_consecutive", cfg.sampling.dedup_consecutive)), pc.vocab_min_count,
            pc.score_buckets)
        stage = staging_dir(cfg, "pdn")
        feat.save(stage)
        loop_cfg = {"cfg": cfg.model_dump(), "samples_uri": uri(samples_dir), "featurizer_uri": uri(stage),
                    "i2i_uri": i2i_uri, "progress": bool(inputs.extra.get("progress", True))}
        state, history = ray_fit(pdn_loop, loop_cfg, cfg, "pdn")
        model = PDNModel(pc, feat.vocab_sizes)
        model.load_state_dict(state)
        t1 = time.perf_counter()
        pdn_index = build_index(model, feat, index, pc.index_k)
        best = min(history, key=lambda m: m["val_loss"])
        metrics = {"epochs_run": len(history), "best_epoch": best["epoch"], "best": best, "history": history,
                   "train_samples": len(train_idx), "vocab_sizes": feat.vocab_sizes,
                   "num_workers": tc.num_workers, "index_pairs": pdn_index.num_pairs,
                   "index_seconds": round(time.perf_counter() - t1, 3),
                   "seconds": round(time.perf_counter() - t0, 3), "samples_dir": uri(samples_dir)}
        return cls(model, feat, pdn_index, cfg, metrics)

    # ------------------------------------------------------------------ retrieval
    def _groups(self, batch: Histories):  # -> (PDNBatch, tensors)
        indptr, items, ts = np.asarray(batch.indptr, np.int64), np.asarray(batch.items, np.int64), batch.ts
        if self.feat.dedup_consecutive and len(items):
            from pi2i.data.events import drop_consecutive_repeats

            keep = drop_consecutive_repeats(indptr, items)
            rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(indptr))[keep]
            items, ts = items[keep], np.asarray(ts)[keep]
            indptr = np.zeros(len(batch) + 1, np.int64)
            np.cumsum(np.bincount(rows, minlength=len(batch)), out=indptr[1:])
        b = self.feat.groups(items, np.asarray(ts, np.int64), indptr[:-1], indptr[1:], batch.users,
                             np.full((len(batch), 0), PAD, np.int64), RowIndex.build(_EMPTY_INDEX))
        from pi2i.methods.pdn_model import to_tensors

        return b, to_tensors(b)

    def recommend(self, batch: Histories, k: int, *, exclude_seen: bool = True,
                  explain: bool = False) -> PDNRecommendations:
        pc = self.cfg.methods.pdn
        n = len(batch)
        import torch

        b, tb = self._groups(batch)
        with torch.inference_mode():
            t = self.model.trigger_scores(tb).numpy().astype(np.float64)  # t_uj (Eq. 8)
            p_u = self.model.direct.users(tb["user_len"], tb["user_cats"]).numpy() \
                if self.model.direct is not None else None
        # step 2: top-m triggers with an index row
        row = np.where(b.trig_items >= 0, self.index.row_ids(b.trig_items.ravel()).reshape(b.trig_items.shape), -1)
        t_sel = np.where(row >= 0, t, -np.inf)
        m = min(pc.top_m, t_sel.shape[1])
        order = np.argsort(-t_sel, axis=1, kind="stable")[:, :m]
        g, slot = np.nonzero(np.isfinite(np.take_along_axis(t_sel, order, 1)))
        slot = order[g, slot]
        # step 3: the selected triggers' indexed targets, merged by Eq. 14
        r = row[g, slot]
        starts = self.index.indptr[r]
        lens = np.minimum(self.index.indptr[r + 1] - starts, pc.index_k)
        e = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
        pg, ptrig, pt = np.repeat(g, lens), np.repeat(b.trig_items[g, slot], lens), np.repeat(t[g, slot], lens)
        ptarget, ps = self.index.targets[e], self.index.scores[e].astype(np.float64)
        w = _softplus(pt + ps)  # ln(1 + e^t e^s)  (Eq. 10)
        if exclude_seen:
            keep = ~seen_mask_pairs(batch, pg, ptarget)
            pg, ptrig, pt, ptarget, ps, w = pg[keep], ptrig[keep], pt[keep], ptarget[keep], ps[keep], w[keep]
        code = item_codes(self.feat.item_ids, ptarget)
        key = pg * np.int64(len(self.feat.item_ids) + 1) + code
        ukey, inv = np.unique(key, return_inverse=True)
        cg = ukey // np.int64(len(self.feat.item_ids) + 1)
        cc = ukey % np.int64(len(self.feat.item_ids) + 1)
        score = np.bincount(inv, weights=w, minlength=len(ukey)).astype(np.float64)
        if p_u is not None and self.item_q is not None:
            d = np.einsum("ij,ij->i", p_u[cg], self.item_q[cc]).astype(np.float64)
            score += _softplus(d)  # softplus(d_ui)  (Eq. 14)
        items, scores, at = sparse_topk(cg, self.feat.item_ids[cc], score, n, k)
        rec = PDNRecommendations(items, scores, num_candidates=np.bincount(cg, minlength=n))
        if explain:
            rec.why, rec.paths = self._explain(items, at, inv, ptrig, pt, ps, w, pc.why_top)
        return rec

    @staticmethod
    def _explain(items: np.ndarray, at: np.ndarray, inv: np.ndarray, ptrig: np.ndarray, pt: np.ndarray,
                 ps: np.ndarray, w: np.ndarray, top: int
                 ) -> tuple[list[list[Why]], list[list[list[tuple[int, float, float]]]]]:
        order = np.lexsort((ptrig, -w, inv))  # paths grouped by candidate, strongest first
        starts = np.searchsorted(inv[order], np.arange(inv.max(initial=-1) + 2))
        why: list[list[Why]] = []
        paths: list[list[list[tuple[int, float, float]]]] = []
        for r in range(len(items)):
            wr, pr = [], []
            for c in range(items.shape[1]):
                if at[r, c] < 0:
                    break
                sel = order[starts[at[r, c]]:starts[at[r, c] + 1]][:top]
                wr.append([(int(ptrig[x]), float(w[x])) for x in sel])
                pr.append([(int(ptrig[x]), float(pt[x]), float(ps[x])) for x in sel])
            why.append(wr)
            paths.append(pr)
        return why, paths

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str) -> None:
        from pi2i.contracts import write_parquet

        makedirs(out_dir)
        self.feat.save(out_dir)
        save_weights(self.model.state_dict(), join(out_dir, WEIGHTS_FILE))
        write_parquet(self.index.to_table(), join(out_dir, INDEX_FILE))
        write_json({"pdn": self.cfg.methods.pdn.model_dump(), **self.metrics}, join(out_dir, TRAIN_METRICS_FILE))
        samples = self.metrics.get("samples_dir")
        if samples:
            from pi2i.prs.io import copy_file

            for f in SERVING_INPUT_FILES:
                if exists(join(samples, f)):
                    copy_file(join(samples, f), join(out_dir, f))
        save_manifest(out_dir, self.name, self.cfg)

    @classmethod
    def load(cls, model_dir: str, inputs: TrainInputs, cfg: Config) -> PDN:
        """Architecture from the model directory; retrieval knobs (top_m, index_k, why_top) from ``cfg``."""
        from pi2i.config import PDNConfig
        from pi2i.methods.pdn_model import PDNModel

        for f in (WEIGHTS_FILE, INDEX_FILE):
            if not exists(join(model_dir, f)):
                raise MethodError(f"pdn: {model_dir} has no {f} (not a PDN model directory)")
        saved = read_json(join(model_dir, TRAIN_METRICS_FILE))
        arch = PDNConfig.model_validate(saved["pdn"])
        feat = Featurizer.load(model_dir)
        model = PDNModel(arch, feat.vocab_sizes)
        model.load_state_dict(load_weights(join(model_dir, WEIGHTS_FILE)))
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.methods.pdn = arch.model_copy(update={k: getattr(cfg.methods.pdn, k)
                                                      for k in ("top_m", "index_k", "why_top")})
        return cls(model, feat, I2IIndex.load(join(model_dir, INDEX_FILE)), run_cfg, saved)


_EMPTY_INDEX = I2IIndex(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64),
                        np.zeros(0, np.float32), np.zeros(0, np.int32))


