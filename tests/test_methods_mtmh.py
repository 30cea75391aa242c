"""MTMH: quota-merge properties (hypothesis), ANN recall against exact search, the losses, and the method end to
end on the tiny chain (fit through Ray Train, recommend, why, alpha at serving time, save/load, content file)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pi2i.config import Config
from pi2i.contracts import write_parquet
from pi2i.methods.base import Histories, MethodError, TrainInputs
from pi2i.methods.mtmh import HEADS, MTMH, HeadIndex, quota_merge
from pi2i.methods.mtmh_model import Content, co_engaged_pairs, multitask_losses

ids = st.lists(st.integers(0, 30), max_size=25).map(lambda xs: list(dict.fromkeys(xs)))  # distinct, ranked


@settings(max_examples=300, deadline=None)
@given(eng=ids, rel=ids, k=st.integers(0, 40), alpha=st.floats(0, 1))
def test_quota_merge_properties(eng, rel, k, alpha):
    pad = max(len(eng), len(rel), 1)
    E = np.array([eng + [-1] * (pad - len(eng))])
    R = np.array([rel + [-1] * (pad - len(rel))])
    out, src = quota_merge(E, R, k, alpha)
    got = [x for x in out[0].tolist() if x >= 0]
    assert len(got) == len(set(got)) == min(k, len(set(eng) | set(rel)))  # distinct, as long as possible
    assert (out[0][len(got):] == -1).all() and (src[0][len(got):] == -1).all()
    from_e = [x for x, s in zip(out[0], src[0], strict=True) if s == 0]
    from_r = [x for x, s in zip(out[0], src[0], strict=True) if s == 1]
    assert set(from_e) <= set(eng) and set(from_r) <= set(rel)
    # each head contributes in its own ranking order
    assert from_e == sorted(from_e, key=eng.index) and from_r == sorted(from_r, key=rel.index)
    # while both heads have fresh items, every prefix honours the quota
    if not set(eng) & set(rel) and len(eng) >= k and len(rel) >= k:
        for n in range(1, len(got) + 1):
            assert sum(s == 0 for s in src[0][:n]) == np.floor(alpha * n + 0.5)
    if alpha == 1.0 and len(eng) >= k:
        assert got == eng[:k]
    if alpha == 0.0 and len(rel) >= k:
        assert got == rel[:k]


def test_ann_recall_at_default_probe():
    """IVF (k-means clusters) against exact search on clustered embeddings, default nlist/nprobe/k_ann."""
    rng = np.random.default_rng(0)
    mc = Config().methods.mtmh
    centers = rng.normal(size=(60, mc.out_dim))
    x = centers[rng.integers(0, 60, 6000)] + 0.35 * rng.normal(size=(6000, mc.out_dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = HeadIndex(x, exact_below=10**9, nlist=0, nprobe=mc.nprobe, seed=0)
    ivf = HeadIndex(x, exact_below=mc.exact_below, nlist=mc.nlist, nprobe=mc.nprobe, seed=0)
    assert exact.exact and not ivf.exact
    q = x[::30]
    _, a = exact.search(q, mc.k_ann)
    _, b = ivf.search(q, mc.k_ann)
    recall = np.mean([len(set(r) & set(s)) / len(r) for r, s in zip(a, b, strict=True)])
    assert recall >= 0.95, recall
    # a round trip through bytes keeps the index
    again = HeadIndex(x, mc.exact_below, mc.nlist, mc.nprobe, 0, ivf.serialize())
    np.testing.assert_array_equal(again.search(q, 10)[1], ivf.search(q, 10)[1])


def test_content_similarity_and_losses():
    codes = torch.tensor([[1, 3, 5, 0, 0, 0], [2, 3, 6, 0, 0, 0], [3, 4, 5, 0, 0, 0], [4, 0, 0, 0, 0, 0]])
    c = Content({"category_id": 1.0, "brand_id": 0.5})
    sim = c.similarity(torch.arange(4), codes, torch.arange(4), codes)
    # same category (+1), same brand (+.5); unknown (0) never matches
    assert sim[0].tolist() == [1.5, 1.0, 0.5, 0.0] and sim[3, 3] == 0.0
    from pi2i.methods.mtmh_model import ItemTower

    sizes = {"id": 5, "category_id": 5, "brand_id": 7, "seller_id": 1, "price_bucket": 17, "pop_bucket": 24}
    tower = ItemTower(Config().methods.mtmh, sizes)
    out = tower(codes)
    assert set(out) == set(HEADS) and all(v.shape == (4, Config().methods.mtmh.out_dim) for v in out.values())
    losses = multitask_losses(tower, codes, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([3, 2]), c,
                              Config().methods.mtmh)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["lr"] >= 0
    # w_r = 0: the relevance head is trained on L_e alone
    mc0 = Config().methods.mtmh.model_copy(update={"w_r": 0.0})
    l0 = multitask_losses(tower, codes, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([3, 2]), c, mc0)
    assert l0["loss"].item() == pytest.approx((l0["le_engagement"] + l0["le_relevance"]).item())


def test_co_engaged_pairs():
    u, t, p = co_engaged_pairs(np.array([0, 3, 5]), np.array([1, 2, 2, 7, 8]), 2)
    assert sorted(zip(u.tolist(), t.tolist(), p.tolist())) == [(0, 1, 2), (0, 1, 2), (1, 7, 8)]


@pytest.fixture(scope="module")
def mtmh_cfg(tiny_cfg: Config) -> Config:
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.torch_threads = 1
    cfg.methods.mtmh.epochs = 2
    cfg.methods.mtmh.max_batches_per_epoch = 5
    cfg.methods.mtmh.batch_size = 128
    return cfg


@pytest.fixture(scope="module")
def mtmh(tiny_samples: str, mtmh_cfg: Config) -> MTMH:
    return MTMH.fit(TrainInputs(samples_dir=tiny_samples, extra={"progress": False}), mtmh_cfg)


@pytest.fixture(scope="module")
def histories(tiny_samples: str) -> Histories:
    from pi2i.methods.learned import open_samples

    ss, _ = open_samples(tiny_samples, "mtmh")
    ptr, items, ts = np.asarray(ss.clicks.user_ptr), np.asarray(ss.clicks.items), np.asarray(ss.clicks.ts)
    rows = [(items[ptr[u]:ptr[u + 1]][-30:], ts[ptr[u]:ptr[u + 1]][-30:]) for u in range(0, len(ptr) - 1, 5)]
    return Histories.from_lists(rows)


def test_recommend_why_and_alpha(mtmh: MTMH, histories: Histories):
    k = 40
    rec = mtmh.recommend(histories, k, explain=True)
    for r in range(len(histories)):
        hist = set(histories.row(r)[0].tolist())
        got = rec.items[r][rec.items[r] >= 0].tolist()
        assert len(got) == len(set(got)) and not set(got) & hist
        assert np.all(np.diff(rec.scores[r][:len(got)]) < 0)
        for c in range(len(got)):
            assert rec.why[r][c] and {t for t, _ in rec.why[r][c]} <= hist
    # alpha is a serving knob: alpha = 1 returns the engagement head's preranked list
    cfg = mtmh.cfg.model_copy(deep=True)
    cfg.methods.mtmh.alpha = 1.0
    eng_only = MTMH(mtmh.tower, mtmh.codes, mtmh.catalog, cfg).recommend(histories, k)
    lists = mtmh._head_lists("engagement", *_queries(mtmh, histories), histories, k, True)[0]
    np.testing.assert_array_equal(eng_only.items, lists)


def _queries(m: MTMH, batch: Histories):
    from pi2i.methods.ranking import distinct_recent, item_codes

    t_ptr, t_items, _ = distinct_recent(batch, m.cfg.methods.mtmh.num_triggers)
    q_user = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(t_ptr))
    q_rank = np.arange(len(t_items)) - t_ptr[q_user]
    q_rows = item_codes(m.catalog, t_items)
    ok = q_rows >= 0
    return q_rows[ok], q_user[ok], q_rank[ok]


def test_save_load_roundtrip(mtmh: MTMH, histories: Histories, tmp_path, mtmh_cfg: Config):
    from pi2i.methods import load_method

    d = str(tmp_path / "mtmh")
    mtmh.save(d)
    again = load_method(d, TrainInputs(), mtmh_cfg, expect="mtmh")
    np.testing.assert_array_equal(again.recommend(histories, 30).items, mtmh.recommend(histories, 30).items)


def test_user_supplied_content_embeddings(tiny_samples: str, mtmh_cfg: Config, tmp_path):
    from pi2i.contracts import read_parquet

    items = read_parquet(f"{tiny_samples}/items.parquet").column("item_id").to_numpy()
    rng = np.random.default_rng(0)
    emb = pa.array(rng.normal(size=(len(items), 8)).astype(np.float32).tolist(), pa.list_(pa.float32()))
    good = str(tmp_path / "emb.parquet")
    write_parquet(pa.table({"item_id": pa.array(items, pa.int64()), "embedding": emb}), good)
    cfg = mtmh_cfg.model_copy(deep=True)
    cfg.methods.mtmh.item_embeddings = good
    cfg.methods.mtmh.epochs = 1
    cfg.methods.mtmh.max_batches_per_epoch = 2
    m = MTMH.fit(TrainInputs(samples_dir=tiny_samples, extra={"progress": False}), cfg)
    assert m.metrics["best"]["val_lr"] >= 0
    bad = str(tmp_path / "bad.parquet")
    write_parquet(pa.table({"item_id": pa.array(items, pa.int64())}), bad)
    cfg.methods.mtmh.item_embeddings = bad
    with pytest.raises(MethodError, match="item_id and embedding"):
        MTMH.fit(TrainInputs(samples_dir=tiny_samples), cfg)
    nan = str(tmp_path / "nan.parquet")
    vals = rng.normal(size=(len(items), 8)).astype(np.float32)
    vals[0, 0] = np.nan
    write_parquet(pa.table({"item_id": pa.array(items, pa.int64()),
                            "embedding": pa.array(vals.tolist(), pa.list_(pa.float32()))}), nan)
    cfg.methods.mtmh.item_embeddings = nan
    with pytest.raises(MethodError, match="NaN"):
        MTMH.fit(TrainInputs(samples_dir=tiny_samples), cfg)


def test_empty_and_unknown_histories(mtmh: MTMH):
    b = Histories.from_lists([(np.array([], np.int64), np.array([], np.int64)), (np.array([10**9]), np.array([5]))])
    rec = mtmh.recommend(b, 5, explain=True)
    assert (rec.items == -1).all() and rec.why == [[], []]
