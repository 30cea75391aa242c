"""IdPositions: the direct table and the binary search answer exactly as a brute-force search does."""

from __future__ import annotations

import numpy as np
import pytest

from pi2i import ids as ids_mod
from pi2i.ids import IdPositions


def _brute(ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    where = {int(v): i for i, v in enumerate(ids)}
    return np.array([where.get(int(v), -1) for v in x.ravel()], np.int64).reshape(x.shape)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("case", ["compact", "sparse", "zero", "one", "empty"])
def test_positions_equal_a_brute_force_search(case, dense, monkeypatch):
    rng = np.random.default_rng(7)
    ids = {"compact": np.sort(rng.choice(5000, 800, replace=False)),
           "sparse": np.sort(rng.choice(1 << 40, 800, replace=False)),
           "zero": np.array([0, 3, 4]), "one": np.array([9]), "empty": np.array([], np.int64)}[case].astype(np.int64)
    if not dense:  # force the binary search even for compact ids
        monkeypatch.setattr(ids_mod, "DENSE_MIN", 0)
        monkeypatch.setattr(ids_mod, "DENSE_SLACK", 0)
    pos = IdPositions(ids)
    uses_table = pos._table is not None
    assert uses_table == (dense and case in ("compact", "zero", "one"))
    probe = np.concatenate([ids, ids + 1, ids - 1, [-1, -5, 0, 1, np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1],
                            rng.integers(-10, 6000, 500)]).astype(np.int64)
    assert np.array_equal(pos(probe), _brute(ids, probe))
    grid = probe[:len(probe) // 2 * 2].reshape(-1, 2)  # any shape in, the same shape out
    assert np.array_equal(pos(grid), _brute(ids, grid))


def test_take_reads_aligned_values_and_fills_the_absent():
    pos = IdPositions(np.array([2, 5, 9], np.int64))
    got = pos.take(np.array([20, 50, 90], np.int32), np.array([[9, 3], [-1, 2]]), -7)
    assert got.dtype == np.int32 and got.tolist() == [[90, -7], [-7, 20]]
    assert IdPositions(np.empty(0, np.int64)).take(np.empty(0, np.int8), np.array([1, 2]), -1).tolist() == [-1, -1]
