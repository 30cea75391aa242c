"""MTMH as a retrieval method (mtmh.txt §3.5): per-head ANN, per-head preranking, quota merge.

Training: :mod:`pi2i.methods.mtmh_model` (item tower with an engagement and a relevance head, Eq. 1–3) under
Ray Train, from the co-engaged pairs of the samples directory's click sequences. There is no content encoder
here: the relevance targets come from item side info (same category / brand, ``methods.mtmh.content_weights``)
or from a user-supplied ``methods.mtmh.item_embeddings`` parquet (item_id, embedding list<float>).

Serving, for one user (per-trigger retrieval, the paper's I2I setting — not a mean-pooled user query):

1. **multi-ANN**: each of the user's last ``num_triggers`` distinct items queries each head's index for its
   ``k_ann`` nearest items (inner product of normalised embeddings). Catalogs of ``exact_below`` items or more
   use a faiss IVF index (k-means into ``nlist`` clusters, ``nprobe`` probed = C of §3.5); smaller ones exact
   search;
2. **preranker**: per head, a candidate's score is Σ over the triggers that retrieved it of
   ``recency_decay^r · similarity`` (r = 0 for the newest trigger); seen items removed;
3. **quota merge** (:func:`quota_merge`): the share ``alpha`` of the list from the engagement head, the rest from
   the relevance head, duplicates skipped — interleaved so that *every prefix* of the list honours the quota
   (HR@K at each K of the ladder sees an α-merge, not a cut of a longer one). ``alpha`` is read at serving
   time: changing it needs no retraining.

Scores of the merged list are its rank scores ``(k − position) / k``; ``why`` = the triggers that retrieved the
item in the head it came from, with their contributions.

The retrievable catalog is the items clicked in the train period (``popularity.parquet``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import numba as nb
import numpy as np
import pyarrow as pa

from pi2i.config import Config
from pi2i.contracts import exists, join, makedirs, read_json, read_parquet, write_json, write_parquet
from pi2i.layout import ITEMS_FILE, POPULARITY_FILE, SERVING_INPUT_FILES
from pi2i.methods.base import PAD, Histories, MethodError, Recommendations, Retriever, TrainInputs, Why
from pi2i.methods.item_features import ItemCodes
from pi2i.methods.learned import load_weights, open_samples, ray_fit, save_weights, staging_dir, user_split
from pi2i.methods.manifest import save_manifest
from pi2i.methods.ranking import distinct_recent, item_codes, seen_mask_pairs, sparse_topk

if TYPE_CHECKING:
    from pi2i.methods.mtmh_model import ItemTower

HEADS: tuple[str, ...] = ("engagement", "relevance")
WEIGHTS_FILE, CODES_FILE, META_FILE = "mtmh.safetensors", "mtmh_items.parquet", "mtmh.json"
CATALOG_FILE = "mtmh_catalog.parquet"


# --------------------------------------------------------------------------------------------- quota merge
@nb.njit(cache=True)
def _merge_row(eng, rel, k, alpha, out, src):  # pragma: no cover - numba
    n = 0
    ie = 0
    ir = 0
    ne = 0
    while n < k:
        want_e = ne < np.floor(alpha * (n + 1) + 0.5)
        while ie < len(eng) and (eng[ie] < 0 or _has(out, n, eng[ie])):
            ie += 1
        while ir < len(rel) and (rel[ir] < 0 or _has(out, n, rel[ir])):
            ir += 1
        has_e, has_r = ie < len(eng), ir < len(rel)
        if not has_e and not has_r:
            break
        if (want_e and has_e) or not has_r:
            out[n] = eng[ie]
            src[n] = 0
            ie += 1
            ne += 1
        else:
            out[n] = rel[ir]
            src[n] = 1
            ir += 1
        n += 1
    return n


@nb.njit(cache=True, inline="always")
def _has(out, n, x):  # pragma: no cover - numba
    for q in range(n):
        if out[q] == x:
            return True
    return False


@nb.njit(cache=True, parallel=True)
def _merge_rows(eng, rel, k, alpha, out, src):  # pragma: no cover - numba
    for r in nb.prange(eng.shape[0]):
        _merge_row(eng[r], rel[r], k, alpha, out[r], src[r])


def quota_merge(eng: np.ndarray, rel: np.ndarray, k: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-row ranked lists (PAD = -1) of the two heads into ``k`` distinct items (§3.5).

    Position ``n`` (0-based) comes from the engagement head while it has given fewer than
    ``round(alpha·(n+1))`` items, else from the relevance head; an item already taken is skipped; when one head
    runs dry the other fills. Returns ``(items (n, k), source (n, k): 0 engagement, 1 relevance, -1 PAD)``."""
    eng = np.ascontiguousarray(np.atleast_2d(eng), np.int64)
    rel = np.ascontiguousarray(np.atleast_2d(rel), np.int64)
    out = np.full((len(eng), k), PAD, np.int64)
    src = np.full((len(eng), k), -1, np.int64)
    if k > 0 and len(eng):
        _merge_rows(eng, rel, k, float(alpha), out, src)
    return out, src


# --------------------------------------------------------------------------------------------- ANN
class HeadIndex:
    """Nearest neighbours by inner product over one head's normalised item embeddings: a faiss IVF index
    (k-means clusters) from ``exact_below`` items on, exact search below."""

    def __init__(self, emb: np.ndarray, exact_below: int, nlist: int, nprobe: int, seed: int,
                 serialized: bytes | None = None):
        import faiss

        from pi2i.prs.launch import cpu_quota

        faiss.omp_set_num_threads(cpu_quota())
        self.emb = np.ascontiguousarray(emb, np.float32)
        n, d = self.emb.shape
        self.exact = n < max(exact_below, 1) or n < 2
        if serialized is not None:
            self.index = faiss.deserialize_index(np.frombuffer(serialized, np.uint8))
            self.exact = not hasattr(self.index, "nprobe")
        elif self.exact:
            self.index = faiss.IndexFlatIP(d)
            self.index.add(self.emb)
        else:
            nl = nlist or max(1, round(float(np.sqrt(n))))
            nl = min(nl, max(1, n // 8))
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed  # k-means initialisation
            self.index.train(self.emb)
            self.index.add(self.emb)
        if not self.exact:
            self.index.nprobe = nprobe  # type: ignore[attr-defined]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, catalog rows) (q, k); row -1 where fewer than k were found."""
        k = max(1, min(k, len(self.emb)))
        sim, rows = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return sim, rows

    def serialize(self) -> bytes:
        import faiss

        return faiss.serialize_index(self.index).tobytes()


# --------------------------------------------------------------------------------------------- the method
class MTMH(Retriever):
    name: ClassVar[str] = "mtmh"
    trained: ClassVar[bool] = True
    description: ClassVar[str] = "MTMH: engagement + relevance heads, per-trigger ANN, quota merge α"

    def __init__(self, tower: ItemTower, codes: ItemCodes, catalog: np.ndarray, cfg: Config,
                 metrics: dict | None = None, serialized: dict[str, bytes] | None = None):
        from pi2i.methods.mtmh_model import item_embeddings

        self.tower = tower.eval()
        self.codes = codes
        self.cfg = cfg
        self.metrics = metrics or {}
        self.catalog = np.asarray(catalog, np.int64)  # sorted retrievable ids
        rows = item_codes(codes.item_ids, self.catalog)
        self.emb = item_embeddings(tower, codes.x[rows])  # per head, aligned with catalog
        mc = cfg.methods.mtmh
        self.indexes = {h: HeadIndex(self.emb[h], mc.exact_below, mc.nlist, mc.nprobe, cfg.train.seed,
                                     (serialized or {}).get(h)) for h in HEADS}

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, inputs: TrainInputs, cfg: Config) -> MTMH:
        if not inputs.samples_dir:
            raise MethodError("mtmh: needs a samples directory (`pi2i samples`)")
        from pi2i.methods.mtmh_model import ItemTower, load_content_embeddings, mtmh_loop
        from pi2i.prs.io import uri

        t0 = time.perf_counter()
        samples_dir = inputs.samples_dir
        ss, _ = open_samples(samples_dir, "mtmh")
        tc, mc = cfg.train, cfg.methods.mtmh
        ptr = np.asarray(ss.clicks.user_ptr)
        click_user = np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr))
        tr, _ = user_split(np.asarray(ss.clicks.user_ids), click_user, tc.val_fraction, tc.seed)
        popularity = read_parquet(join(samples_dir, POPULARITY_FILE))
        codes = ItemCodes.build(read_parquet(join(samples_dir, ITEMS_FILE)), popularity,
                                np.asarray(ss.clicks.items)[tr], cfg.methods.pdn.vocab_min_count)
        content_uri = mc.item_embeddings
        if content_uri:
            if not exists(content_uri):
                raise MethodError(f"mtmh: methods.mtmh.item_embeddings: no such file: {content_uri}")
            try:
                load_content_embeddings(content_uri, codes.item_ids[:1])
            except ValueError as e:
                raise MethodError(f"mtmh: {e}") from None
        stage = staging_dir(cfg, "mtmh")
        codes.save(join(stage, CODES_FILE))
        loop_cfg = {"cfg": cfg.model_dump(), "samples_uri": uri(samples_dir), "codes_uri": uri(join(stage, CODES_FILE)),
                    "sizes": codes.sizes, "content_uri": uri(content_uri) if content_uri else None,
                    "progress": bool(inputs.extra.get("progress", True))}
        state, history = ray_fit(mtmh_loop, loop_cfg, cfg, "mtmh")
        tower = ItemTower(mc, codes.sizes)
        tower.load_state_dict(state)
        catalog = np.unique(popularity.column("item_id").to_numpy().astype(np.int64))
        best = min(history, key=lambda m: m["val_loss"])
        metrics = {"epochs_run": len(history), "best_epoch": best["epoch"], "best": best, "history": history,
                   "catalog": len(catalog), "sizes": codes.sizes, "num_workers": tc.num_workers,
                   "samples_dir": uri(samples_dir)}
        t1 = time.perf_counter()
        out = cls(tower, codes, catalog, cfg, metrics)
        out.metrics.update(index_seconds=round(time.perf_counter() - t1, 3),
                           seconds=round(time.perf_counter() - t0, 3))
        return out

    # ------------------------------------------------------------------ retrieval
    def _head_lists(self, head: str, q_rows: np.ndarray, q_user: np.ndarray, q_rank: np.ndarray,
                    batch: Histories, k_list: int, exclude_seen: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Preranked per-user list of one head: (items (n, k_list), index into the candidate triples,
        and the triples (user, item, trigger, contribution))."""
        mc = self.cfg.methods.mtmh
        n = len(batch)
        sim, nb_rows = self.indexes[head].search(self.emb[head][q_rows], mc.k_ann + 1)
        kk = nb_rows.shape[1]
        u = np.repeat(q_user, kk)
        trig = np.repeat(self.catalog[q_rows], kk)
        w = (mc.recency_decay ** np.repeat(q_rank, kk)) * sim.ravel().astype(np.float64)
        rows = nb_rows.ravel()
        ok = rows >= 0
        u, trig, w, items = u[ok], trig[ok], w[ok], self.catalog[rows[ok]]
        ok = items != trig
        if exclude_seen:
            ok &= ~seen_mask_pairs(batch, u, items)
        u, trig, w, items = u[ok], trig[ok], w[ok], items[ok]
        key = u * np.int64(len(self.catalog) + 1) + item_codes(self.catalog, items)
        ukey, inv = np.unique(key, return_inverse=True)
        score = np.bincount(inv, weights=w, minlength=len(ukey)).astype(np.float64)  # preranker: Σ decay^r·sim
        cu = ukey // np.int64(len(self.catalog) + 1)
        ci = self.catalog[ukey % np.int64(len(self.catalog) + 1)]
        lists, _, at = sparse_topk(cu, ci, score, n, k_list)
        return lists, at, inv, trig, w, score

    def recommend(self, batch: Histories, k: int, *, exclude_seen: bool = True,
                  explain: bool = False) -> Recommendations:
        mc = self.cfg.methods.mtmh
        n = len(batch)
        t_ptr, t_items, _ = distinct_recent(batch, mc.num_triggers)
        q_user = np.repeat(np.arange(n, dtype=np.int64), np.diff(t_ptr))
        q_rank = np.arange(len(t_items)) - t_ptr[q_user]
        q_rows = item_codes(self.catalog, t_items)
        ok = q_rows >= 0
        q_rows, q_user, q_rank = q_rows[ok], q_user[ok], q_rank[ok]
        heads = {h: self._head_lists(h, q_rows, q_user, q_rank, batch, k, exclude_seen) for h in HEADS}
        items, src = quota_merge(heads["engagement"][0], heads["relevance"][0], k, mc.alpha)
        scores = np.where(items >= 0, (k - np.arange(k, dtype=np.float32)) / max(k, 1), -np.inf).astype(np.float32)
        pool = np.zeros(n, np.int64)
        for h in HEADS:
            pool = np.maximum(pool, (heads[h][0] >= 0).sum(1))
        why = self._explain(items, src, heads) if explain else None
        return Recommendations(items, scores, why, pool)

    @staticmethod
    def _explain(items: np.ndarray, src: np.ndarray, heads: dict[str, tuple]) -> list[list[Why]]:
        out: list[list[Why]] = []
        per_head = []
        for h in HEADS:
            lists, at, inv, trig, w, _ = heads[h]
            order = np.lexsort((trig, -w, inv))
            starts = np.searchsorted(inv[order], np.arange(inv.max(initial=-1) + 2))
            pos = {(r, int(x)): at[r, c] for r in range(len(lists)) for c, x in enumerate(lists[r]) if x >= 0}
            per_head.append((pos, order, starts, trig, w))
        for r in range(len(items)):
            row: list[Why] = []
            for c in range(items.shape[1]):
                if items[r, c] < 0:
                    break
                pos, order, starts, trig, w = per_head[src[r, c]]
                a = pos[(r, int(items[r, c]))]
                sel = order[starts[a]:starts[a + 1]]
                row.append([(int(trig[x]), float(w[x])) for x in sel])
            out.append(row)
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str) -> None:
        from pi2i.prs.io import copy_file, write_bytes

        makedirs(out_dir)
        save_weights(self.tower.state_dict(), join(out_dir, WEIGHTS_FILE))
        self.codes.save(join(out_dir, CODES_FILE))
        write_parquet(pa.table({"item_id": pa.array(self.catalog, pa.int64())}), join(out_dir, CATALOG_FILE))
        for h in HEADS:
            write_bytes(self.indexes[h].serialize(), join(out_dir, f"mtmh_ann_{h}.faiss"))
        write_json({"mtmh": self.cfg.methods.mtmh.model_dump(), "sizes": self.codes.sizes, **self.metrics},
                   join(out_dir, META_FILE))
        samples = self.metrics.get("samples_dir")
        if samples:
            for f in SERVING_INPUT_FILES:
                if exists(join(samples, f)):
                    copy_file(join(samples, f), join(out_dir, f))
        save_manifest(out_dir, self.name, self.cfg)

    @classmethod
    def load(cls, model_dir: str, inputs: TrainInputs, cfg: Config) -> MTMH:
        """Tower and ANN indexes from the model directory; serving knobs (alpha, num_triggers, k_ann, nprobe,
        recency_decay) from ``cfg``."""
        from pi2i.config import MTMHConfig
        from pi2i.methods.mtmh_model import ItemTower
        from pi2i.prs.io import read_bytes

        for f in (WEIGHTS_FILE, META_FILE, CATALOG_FILE):
            if not exists(join(model_dir, f)):
                raise MethodError(f"mtmh: {model_dir} has no {f} (not an MTMH model directory)")
        meta: dict[str, Any] = read_json(join(model_dir, META_FILE))
        serve_keys = ("alpha", "num_triggers", "k_ann", "nprobe", "recency_decay")
        arch = MTMHConfig.model_validate(meta["mtmh"])
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.methods.mtmh = arch.model_copy(update={k: getattr(cfg.methods.mtmh, k) for k in serve_keys})
        codes = ItemCodes.load(join(model_dir, CODES_FILE), meta["sizes"])
        tower = ItemTower(arch, codes.sizes)
        tower.load_state_dict(load_weights(join(model_dir, WEIGHTS_FILE)))
        catalog = read_parquet(join(model_dir, CATALOG_FILE)).column("item_id").to_numpy().astype(np.int64)
        files = {h: join(model_dir, f"mtmh_ann_{h}.faiss") for h in HEADS}
        serialized = {h: read_bytes(f) for h, f in files.items() if exists(f)}
        return cls(tower, codes, catalog, run_cfg, meta, serialized)
