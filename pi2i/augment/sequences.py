"""Users' item sequences as token ids: the shared input of the LLM-I2I generator and discriminator.

Items are tokens. A vocabulary block of ``N_SPECIAL`` special tokens (pad, bos, sep) followed by one token per
item starts at ``offset``: 0 for a model built from scratch, the text vocabulary's size when a pretrained
language model is fine-tuned (its text tokens stay, item tokens are appended). Long-tail items (paper §"LLM-based
Data Generator": the least-purchased 20 % of the catalog) are those clicked at most ``threshold`` times, the
count at the ``tail_fraction`` quantile of the item popularity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pi2i.contracts import join, read_json, read_parquet, write_json, write_parquet
from pi2i.data.events import recent_histories
from pi2i.ids import IdPositions

N_SPECIAL = 3  # pad, bos, sep (relative to the block's offset)
VOCAB_FILE = "item_vocab.parquet"
VOCAB_META = "item_vocab.json"


@dataclass
class Sequences:
    """Per-user item sequences in time order (CSR over users sorted by id)."""

    users: np.ndarray    # int64 user ids, sorted
    indptr: np.ndarray   # int64 (n_users + 1,)
    items: np.ndarray    # int64 item ids, oldest first within a user
    last_ts: np.ndarray  # int64 µs of each user's last counted event

    def __len__(self) -> int:
        return len(self.users)

    def row(self, u: int) -> np.ndarray:
        return self.items[self.indptr[u]:self.indptr[u + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


def user_sequences(events: pa.Table, behaviors: list[str], dedup_consecutive: bool = True) -> Sequences:
    """Events of ``behaviors`` -> each user's items in time order (back-to-back repeats collapsed when asked)."""
    users, indptr, items, ts = recent_histories(events, None, behaviors, dedup_consecutive)
    last_ts = ts[indptr[1:] - 1] if len(users) else np.zeros(0, np.int64)
    return Sequences(users.astype(np.int64), indptr.astype(np.int64), items.astype(np.int64),
                     last_ts.astype(np.int64))


def long_tail(item_ids: np.ndarray, counts: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """(sorted long-tail item ids, threshold count): items clicked at most the count found at the ``fraction``
    quantile of the popularity, least clicked first (Eq. 2's "long-tail item")."""
    if len(item_ids) == 0:
        return np.zeros(0, np.int64), 0
    asc = np.sort(counts)
    threshold = int(asc[max(0, int(np.ceil(fraction * len(asc))) - 1)])
    return np.sort(item_ids[counts <= threshold]), threshold


@dataclass
class ItemVocab:
    """item id <-> token id. ``item_ids[j]`` is token ``offset + N_SPECIAL + j`` (token order is stable across
    fine-tuning: new items are appended)."""

    item_ids: np.ndarray  # int64, token order
    offset: int = 0

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids, np.int64)
        order = np.argsort(self.item_ids, kind="stable")
        self._positions = IdPositions(self.item_ids[order])
        self._tokens = order.astype(np.int64) + self.first_item  # token of each sorted id

    @property
    def pad(self) -> int:
        return self.offset

    @property
    def bos(self) -> int:
        return self.offset + 1

    @property
    def sep(self) -> int:
        return self.offset + 2

    @property
    def first_item(self) -> int:
        return self.offset + N_SPECIAL

    @property
    def size(self) -> int:
        return self.first_item + len(self.item_ids)

    def encode(self, items: np.ndarray) -> np.ndarray:
        """Item ids -> token ids; -1 for items outside the vocabulary."""
        return self._positions.take(self._tokens, items, -1)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids -> item ids (callers pass item tokens only)."""
        return self.item_ids[np.asarray(tokens, np.int64) - self.first_item]

    def extended(self, item_ids: np.ndarray) -> ItemVocab:
        """This vocabulary plus the items of ``item_ids`` it lacks, appended in id order."""
        new = np.setdiff1d(np.asarray(item_ids, np.int64), self.item_ids)
        return ItemVocab(np.concatenate([self.item_ids, new]), self.offset)

    def save(self, dir_uri: str) -> None:
        write_parquet(pa.table({"item_id": pa.array(self.item_ids, pa.int64())}), join(dir_uri, VOCAB_FILE))
        write_json({"offset": int(self.offset), "n_special": N_SPECIAL, "items": len(self.item_ids)},
                   join(dir_uri, VOCAB_META))

    @classmethod
    def load(cls, dir_uri: str) -> ItemVocab:
        meta = read_json(join(dir_uri, VOCAB_META))
        ids = read_parquet(join(dir_uri, VOCAB_FILE)).column("item_id").to_numpy().astype(np.int64)
        return cls(ids, int(meta["offset"]))


def popularity(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """(item ids ascending, click counts) over the sequences."""
    ids, counts = np.unique(seqs.items, return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)
