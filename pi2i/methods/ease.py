"""EASE (Steck, WWW'19): the closed-form linear item-item model, the strongest simple item-item baseline.

With ``X`` the binary user × item matrix of the train clicks and ``G = XᵀX``::

    P = (G + λI)⁻¹                       (Steck 2019, Eq. 8)
    B = −P / diag(P)  (column-wise),  diag(B) = 0
    score(u, ·) = x_u · B

``B`` is a dense ``n × n`` float32 matrix, so the method refuses catalogs above ``methods.ease.max_items``
(20k items = 1.6 GB per copy) with a one-line :class:`MethodError` instead of running out of memory. A user's
row ``x_u`` is the set of distinct items of the history it is given; why = the history items contributing most
(``B[j, i]``) to each recommended item.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa

from pi2i.config import Config
from pi2i.contracts import join, read_parquet, write_parquet
from pi2i.data.events import clicks, event_arrays
from pi2i.methods.base import Histories, MethodError, Recommendations, Retriever, TrainInputs, Why
from pi2i.methods.manifest import save_manifest
from pi2i.methods.ranking import dense_topk, item_codes

WEIGHTS_FILE, ITEMS_VOCAB_FILE = "ease_B.npy", "ease_items.parquet"


def ease_weights(user_codes: np.ndarray, item_codes_: np.ndarray, n_users: int, n_items: int,
                 lam: float) -> np.ndarray:
    """``B`` (float32 ``n_items × n_items``) from the distinct (user, item) pairs given as codes."""
    import warnings

    import torch

    idx = torch.from_numpy(np.stack([user_codes, item_codes_]).astype(np.int64))
    with warnings.catch_warnings():  # torch flags its sparse kernels as beta; these inputs are coalesced
        warnings.simplefilter("ignore", UserWarning)
        x = torch.sparse_coo_tensor(idx, torch.ones(len(user_codes)), (n_users, n_items),
                                    check_invariants=True).coalesce()
        g = torch.sparse.mm(x.t().coalesce(), x).to_dense()  # G = XᵀX (float32: n ≤ max_items must fit)
    g.diagonal().add_(lam)
    p = torch.cholesky_inverse(torch.linalg.cholesky(g))  # P = (G + λI)⁻¹, G + λI is SPD
    b = -p / p.diagonal()[None, :]  # B_ij = −P_ij / P_jj
    b.diagonal().zero_()
    return b.numpy()


class EASE(Retriever):
    name: ClassVar[str] = "ease"
    trained: ClassVar[bool] = False

    def __init__(self, items: np.ndarray, b: np.ndarray, cfg: Config):
        self.items = np.asarray(items, np.int64)  # sorted ids; row/column order of B
        self.b = np.asarray(b, np.float32)
        self.cfg = cfg

    @classmethod
    def fit(cls, inputs: TrainInputs, cfg: Config) -> EASE:
        if inputs.events is None:
            raise MethodError("ease: needs the train events")
        ec = cfg.methods.ease
        u, it, _ = event_arrays(clicks(inputs.events, cfg.sampling.behaviors))
        if not len(u):
            raise MethodError("ease: no clicks in the train events")
        items, icode = np.unique(it, return_inverse=True)
        if len(items) > ec.max_items:
            raise MethodError(f"ease: {len(items)} items exceed methods.ease.max_items={ec.max_items} "
                              f"(B is a dense n×n float32 matrix, {len(items) ** 2 * 4 / 2**30:.1f} GiB)")
        users, ucode = np.unique(u, return_inverse=True)
        pairs = np.unique(ucode.astype(np.int64) * len(items) + icode)
        b = ease_weights(pairs // len(items), pairs % len(items), len(users), len(items), ec.lambda_)
        return cls(items, b, cfg)

    def _rows(self, batch: Histories) -> tuple[np.ndarray, np.ndarray]:
        """(batch row, item code) of the distinct known history items."""
        rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(batch.indptr))
        code = item_codes(self.items, batch.items)
        ok = code >= 0
        key = np.unique(rows[ok] * len(self.items) + code[ok])
        return key // len(self.items), key % len(self.items)

    def recommend(self, batch: Histories, k: int, *, exclude_seen: bool = True,
                  explain: bool = False) -> Recommendations:
        n, v = len(batch), len(self.items)
        rows, codes = self._rows(batch)
        x = np.zeros((n, v), np.float32)
        x[rows, codes] = 1.0
        scores = x @ self.b  # score(u, ·) = x_u · B
        if exclude_seen:
            scores[rows, codes] = -np.inf
        users_without_items = x.sum(1) == 0
        scores[users_without_items] = -np.inf  # no history, no opinion (callers fall back to popularity)
        items, sc = dense_topk(scores, k, self.items)
        why = self._why(rows, codes, items) if explain else None
        return Recommendations(items, sc, why, np.full(n, v, np.int64) - np.bincount(rows, minlength=n))

    def _why(self, rows: np.ndarray, codes: np.ndarray, items: np.ndarray) -> list[list[Why]]:
        top = self.cfg.methods.ease.why_top
        ptr = np.searchsorted(rows, np.arange(len(items) + 1))
        out: list[list[Why]] = []
        for r in range(len(items)):
            hist = codes[ptr[r]:ptr[r + 1]]
            rec = item_codes(self.items, items[r][items[r] >= 0])
            contrib = self.b[np.ix_(hist, rec)]  # (history, recommended)
            row: list[Why] = []
            for c in range(len(rec)):
                o = np.argsort(-contrib[:, c], kind="stable")[:top]
                row.append([(int(self.items[hist[j]]), float(contrib[j, c])) for j in o])
            out.append(row)
        return out

    def save(self, out_dir: str) -> None:
        from pi2i.prs.io import save_npy

        save_npy(self.b, join(out_dir, WEIGHTS_FILE))
        write_parquet(pa.table({"item_id": pa.array(self.items, pa.int64())}), join(out_dir, ITEMS_VOCAB_FILE))
        save_manifest(out_dir, self.name, self.cfg)

    @classmethod
    def load(cls, model_dir: str, inputs: TrainInputs, cfg: Config) -> EASE:
        from pi2i.prs.io import load_npy

        items = read_parquet(join(model_dir, ITEMS_VOCAB_FILE)).column("item_id").to_numpy()
        return cls(items, np.asarray(load_npy(join(model_dir, WEIGHTS_FILE), mmap=False)), cfg)
