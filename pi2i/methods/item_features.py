"""One-hot item codes shared by the learned methods (PDN's item field, MTMH's item tower).

Per item: id (vocabulary of items clicked at least ``min_count`` times by the training users, 0 = out of
vocabulary), category / brand / seller (0 = unknown), price quantile bucket (0 = unknown) and popularity bucket
(log2 of the train click count). Built from the samples directory's ``items.parquet`` and
``popularity.parquet`` so every method codes an item the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pi2i.contracts import read_parquet, write_parquet
from pi2i.methods.ranking import item_codes

ITEM_FIELDS: tuple[str, ...] = ("id", "category_id", "brand_id", "seller_id", "price_bucket", "pop_bucket")
SIDE_FIELDS: tuple[str, ...] = ("category_id", "brand_id", "seller_id")
PRICE_BUCKETS, POP_BUCKETS = 16, 24


@dataclass
class ItemCodes:
    item_ids: np.ndarray  # (n,) sorted raw ids
    x: np.ndarray  # (n, len(ITEM_FIELDS)) codes, 0 = unknown
    sizes: dict[str, int]  # embedding table size of each field

    @classmethod
    def build(cls, items: pa.Table, popularity: pa.Table, clicked: np.ndarray, min_count: int,
              extra_ids: list[np.ndarray] | None = None) -> ItemCodes:
        """Codes of every item of ``items``, ``popularity`` and ``extra_ids``; the id vocabulary from
        ``clicked`` (the training users' clicks)."""
        ids_all = np.unique(np.concatenate([items.column("item_id").to_numpy().astype(np.int64),
                                            popularity.column("item_id").to_numpy().astype(np.int64),
                                            *[np.asarray(e, np.int64) for e in (extra_ids or [])]]))
        x = np.zeros((len(ids_all), len(ITEM_FIELDS)), np.int64)
        sizes: dict[str, int] = {}
        ids, counts = np.unique(np.asarray(clicked, np.int64), return_counts=True)
        vocab = ids[counts >= min_count]
        x[:, 0] = item_codes(vocab, ids_all) + 1  # 0 = out of vocabulary
        sizes["id"] = len(vocab) + 1
        at = _positions(items.column("item_id").to_numpy().astype(np.int64), ids_all)
        for f_i, f in enumerate(SIDE_FIELDS, start=1):
            sizes[f] = 1
            if f in items.column_names:
                raw = items.column(f).cast(pa.int64()).fill_null(-1).to_numpy().astype(np.int64)
                vals = np.unique(raw[raw >= 0])
                v = np.where(at >= 0, raw[np.maximum(at, 0)], -1)
                x[:, f_i] = np.where(v >= 0, item_codes(vals, v) + 1, 0)
                sizes[f] = len(vals) + 1
        if "price" in items.column_names:
            price = items.column("price").cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            p = np.where(at >= 0, price[np.maximum(at, 0)], np.nan)
            known = np.isfinite(p)
            edges: np.ndarray = (np.quantile(p[known], np.linspace(0, 1, PRICE_BUCKETS)[1:-1]) if known.any()
                                 else np.zeros(0))
            x[:, 4] = np.where(known, np.searchsorted(edges, np.nan_to_num(p), side="right") + 1, 0)
        sizes["price_bucket"] = PRICE_BUCKETS + 1
        pop_at = _positions(popularity.column("item_id").to_numpy().astype(np.int64), ids_all)
        pop = popularity.column("count").to_numpy().astype(np.float64)
        cnt = np.where(pop_at >= 0, pop[np.maximum(pop_at, 0)], 0.0)
        x[:, 5] = np.minimum(np.floor(np.log2(1.0 + cnt)), POP_BUCKETS - 1).astype(np.int64)
        sizes["pop_bucket"] = POP_BUCKETS
        return cls(ids_all, x, sizes)

    def lookup(self, items: np.ndarray) -> np.ndarray:
        """(..., 6) codes of raw ids (pads and unknown items: zeros)."""
        at = item_codes(self.item_ids, np.asarray(items).ravel())
        out = np.where((at >= 0)[:, None], self.x[np.maximum(at, 0)], 0)
        return out.reshape(np.shape(items) + (len(ITEM_FIELDS),))

    def to_table(self) -> pa.Table:
        cols = {"item_id": pa.array(self.item_ids, pa.int64())}
        cols.update({f: pa.array(self.x[:, k], pa.int64()) for k, f in enumerate(ITEM_FIELDS)})
        return pa.table(cols)

    def save(self, uri: str) -> None:
        write_parquet(self.to_table(), uri)

    @classmethod
    def load(cls, uri: str, sizes: dict[str, int]) -> ItemCodes:
        t = read_parquet(uri)
        ids = t.column("item_id").to_numpy().astype(np.int64)
        x = np.stack([t.column(f).to_numpy().astype(np.int64) for f in ITEM_FIELDS], -1).reshape(len(ids), -1)
        return cls(ids, x, dict(sizes))


def _positions(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each ``query`` id in the (unsorted) column ``keys``, -1 where absent."""
    order = np.argsort(keys, kind="stable")
    at = item_codes(keys[order], query)
    return np.where(at >= 0, order[np.maximum(at, 0)], -1)
