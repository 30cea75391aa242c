"""EASE: a hand-computed oracle, the catalog-size refusal, save/load, and the shared top-k helper."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pi2i.config import Config
from pi2i.methods.base import Histories, MethodError, TrainInputs
from pi2i.methods.ease import EASE, ease_weights
from pi2i.methods.ranking import dense_topk

# X (users × items 10, 20, 30) = [[1,1,0],[0,1,1],[1,1,1]] → G = XᵀX = [[2,2,1],[2,3,2],[1,2,2]]
# λ = 1: G + I = [[3,2,1],[2,4,2],[1,2,3]], det 16, P = (G + I)⁻¹ = [[.5,-.25,0],[-.25,.5,-.25],[0,-.25,.5]]
# B = −P / diag(P), diag 0:  [[0,.5,0],[.5,0,.5],[0,.5,0]]
B_ORACLE = np.array([[0, .5, 0], [.5, 0, .5], [0, .5, 0]], np.float32)


def _events() -> pa.Table:
    users = [1, 1, 2, 2, 3, 3, 3, 3]
    items = [10, 20, 20, 30, 10, 20, 30, 30]  # user 3 clicks 30 twice: X is binary
    ts = pa.array(np.arange(len(users)) * 1_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                     "behavior": pa.array(["click"] * len(users)), "ts": ts})


def _cfg(**ease) -> Config:
    cfg = Config()
    cfg.methods.ease = cfg.methods.ease.model_copy(update={"lambda_": 1.0, **ease})
    return cfg


def test_weights_match_hand_computed_oracle():
    b = ease_weights(np.array([0, 0, 1, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 1, 2]), 3, 3, 1.0)
    np.testing.assert_allclose(b, B_ORACLE, atol=1e-6)


def test_recommend_scores_why_and_seen_exclusion():
    m = EASE.fit(TrainInputs(events=_events()), _cfg())
    np.testing.assert_allclose(m.b, B_ORACLE, atol=1e-6)
    batch = Histories.from_lists([(np.array([10]), np.array([0])), (np.array([10, 30]), np.array([0, 1])),
                                  (np.array([99]), np.array([0]))])
    rec = m.recommend(batch, 3, explain=True)
    # user {10}: scores row 0 of B = [0, .5, 0]; 10 is seen -> 20 (.5), 30 (0)
    assert rec.items[0].tolist() == [20, 30, -1]
    np.testing.assert_allclose(rec.scores[0, :2], [0.5, 0.0], atol=1e-6)
    # user {10, 30}: 20 scores .5 + .5 = 1, explained by both history items
    assert rec.items[1].tolist() == [20, -1, -1]
    assert rec.scores[1, 0] == pytest.approx(1.0, abs=1e-6)
    assert sorted(rec.why[1][0]) == [(10, pytest.approx(0.5)), (30, pytest.approx(0.5))]
    # unknown history item: nothing (callers fall back to popularity)
    assert (rec.items[2] == -1).all()
    # without exclusion the seen item may come back
    assert 10 in m.recommend(batch, 3, exclude_seen=False).items[0]


def test_refuses_catalog_above_max_items():
    with pytest.raises(MethodError, match="max_items=2"):
        EASE.fit(TrainInputs(events=_events()), _cfg(max_items=2))


def test_save_load_roundtrip(tmp_path):
    m = EASE.fit(TrainInputs(events=_events()), _cfg())
    m.save(str(tmp_path / "ease"))
    from pi2i.methods import load_method

    m2 = load_method(str(tmp_path / "ease"), TrainInputs(), _cfg(), expect="ease")
    np.testing.assert_array_equal(m2.b, m.b)
    np.testing.assert_array_equal(m2.items, m.items)


def test_dense_topk_equals_full_sort_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, (50, 40)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    ids = np.arange(40) * 3 + 7
    items, top = dense_topk(scores, 12, ids)
    for r in range(len(scores)):
        ok = np.isfinite(scores[r])
        order = np.lexsort((ids[ok], -scores[r][ok]))[:12]
        expect = ids[ok][order]
        assert items[r, :len(expect)].tolist() == expect.tolist()
        assert (items[r, len(expect):] == -1).all()
        np.testing.assert_array_equal(top[r, :len(expect)], scores[r][ok][order])
