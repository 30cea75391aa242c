"""PDN: block shapes, the SimNet index against brute-force pair scoring, greedy 2-hop retrieval against
exhaustive scoring, save/load, ablation switches and the CLI's bad-input exits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pi2i.config import Config
from pi2i.contracts import join
from pi2i.ibs.i2i import I2IIndex
from pi2i.layout import I2I_FILE
from pi2i.methods.base import Histories, TrainInputs
from pi2i.methods.pdn import PDN
from pi2i.methods.pdn_features import RowIndex, sample_batch
from pi2i.methods.pdn_model import PDNModel, pdn_loss, to_tensors


@pytest.fixture(scope="module")
def pdn_cfg(tiny_cfg: Config) -> Config:
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.torch_threads = 1
    cfg.methods.pdn.max_batches_per_epoch = 4
    cfg.methods.pdn.index_k = 10_000  # keep whole rows: the index is then every Swing pair, rescored
    cfg.methods.pdn.top_m = cfg.sampling.num_triggers
    return cfg


@pytest.fixture(scope="module")
def pdn(tiny_samples: str, pdn_cfg: Config) -> PDN:
    return PDN.fit(TrainInputs(samples_dir=tiny_samples, extra={"progress": False}), pdn_cfg)


@pytest.fixture(scope="module")
def histories(tiny_samples: str) -> Histories:
    from pi2i.methods.learned import open_samples

    ss, _ = open_samples(tiny_samples, "pdn")
    ptr, items, ts = np.asarray(ss.clicks.user_ptr), np.asarray(ss.clicks.items), np.asarray(ss.clicks.ts)
    rows = [(items[ptr[u]:ptr[u + 1]][-30:], ts[ptr[u]:ptr[u + 1]][-30:]) for u in range(0, len(ptr) - 1, 7)]
    return Histories.from_lists(rows, np.asarray(ss.clicks.user_ids)[::7][:len(rows)])


def test_block_shapes(pdn: PDN, tiny_samples: str):
    from pi2i.methods.learned import open_samples

    ss, _ = open_samples(tiny_samples, "pdn")
    b = sample_batch(ss, pdn.feat, RowIndex.build(I2IIndex.load(join(tiny_samples, I2I_FILE))), np.arange(8))
    tb = to_tensors(b)
    G, L = b.trig_items.shape
    C = b.cand_items.shape[1]
    out = pdn.model(tb)
    assert out["t"].shape == (G, L) and out["s"].shape == (len(b.path_g),) and out["y"].shape == (G, C)
    assert (out["y"] >= out["serve"]).all()  # the bias net only adds (softplus > 0), at training time
    assert (b.path_c >= 0).all() and (b.cand_items[b.path_g, b.path_c] >= 0).all()
    # every training candidate is reachable: it has at least one 2-hop path
    reach = np.zeros((G, C), bool)
    reach[b.path_g, b.path_c] = True
    assert reach[b.cand_items >= 0].all()
    for kind in ("bce", "softmax"):
        assert torch.isfinite(pdn_loss(out["y"], tb["cand_items"] >= 0, kind))


@pytest.mark.parametrize("switch", ["direct_net", "bias_net"])
def test_ablation_switches(pdn: PDN, switch: str):
    arch = pdn.cfg.methods.pdn.model_copy(update={switch: False})
    m = PDNModel(arch, pdn.feat.vocab_sizes)
    assert getattr(m, "direct" if switch == "direct_net" else "bias") is None


def test_index_equals_brute_force_simnet(pdn: PDN, tiny_samples: str):
    swing = I2IIndex.load(join(tiny_samples, I2I_FILE))
    top = RowIndex.build(swing).row_top
    model, feat = pdn.model, pdn.feat
    for r in range(0, len(swing), max(1, len(swing) // 6)):  # a spread of triggers, every pair of each row
        j = int(swing.triggers[r])
        a, b = swing.indptr[r], swing.indptr[r + 1]
        brute = []
        with torch.inference_mode():
            for e in range(a, b):  # one pair at a time through the plain Eq. 9 MLP
                xj = model.item_field(torch.from_numpy(feat.item_x_of(np.array([j]))))
                xi = model.item_field(torch.from_numpy(feat.item_x_of(swing.targets[e:e + 1])))
                c = torch.from_numpy(feat.cji(swing.scores[e:e + 1].astype(np.float64), swing.ranks[e:e + 1], top[r:r + 1]))
                brute.append((float(model.simnet(xj, c, xi)[0]), int(swing.targets[e])))
        brute.sort(key=lambda x: (-x[0], x[1]))
        targets, scores, ranks = pdn.index.row(j)
        assert targets.tolist() == [t for _, t in brute]
        np.testing.assert_allclose(scores, [s for s, _ in brute], rtol=1e-4, atol=1e-5)
        assert ranks.tolist() == list(range(1, len(brute) + 1))


def test_greedy_retrieval_equals_exhaustive_two_hop(pdn: PDN, histories: Histories, tiny_samples: str):
    """With top_m >= L and whole rows indexed, Eq. 14 over the greedy candidates equals scoring every catalog
    item through the training forward pass (no bias) and keeping those with a 2-hop path."""
    k = 50
    rec = pdn.recommend(histories, k, explain=True)
    swing = RowIndex.build(I2IIndex.load(join(tiny_samples, I2I_FILE)))
    catalog = pdn.feat.item_ids
    cands = np.tile(catalog, (len(histories), 1))
    full = pdn.feat.groups(histories.items, histories.ts, histories.indptr[:-1], histories.indptr[1:],
                           histories.users, cands, swing)
    with torch.inference_mode():
        serve = pdn.model(to_tensors(full), with_bias=False)["serve"].numpy()
    reach = np.zeros(cands.shape, bool)
    reach[full.path_g, full.path_c] = True
    for r in range(len(histories)):
        seen = set(histories.row(r)[0].tolist())
        ok = reach[r] & ~np.isin(catalog, list(seen))
        order = np.lexsort((catalog[ok], -serve[r][ok].astype(np.float64)))[:k]
        expect = catalog[ok][order]
        got = rec.items[r][rec.items[r] >= 0]
        np.testing.assert_allclose(rec.scores[r][:len(got)], serve[r][ok][order], rtol=1e-4, atol=1e-5)
        assert len(got) == len(expect)
        # the same items, up to the order of float near-ties: each returned item's exhaustive score is the
        # score retrieval gave it
        exhaustive = dict(zip(catalog[ok].tolist(), serve[r][ok].tolist(), strict=True))
        np.testing.assert_allclose([exhaustive[i] for i in got.tolist()], rec.scores[r][:len(got)],
                                   rtol=1e-4, atol=1e-5)
        assert (got == expect).mean() > 0.9
        # why: paths strongest first, each (trigger, t_uj, s_ji) with softplus(t + s) = the path weight
        for c in range(min(3, len(got))):
            for (trig, w), (trig2, t, s) in zip(rec.why[r][c], rec.paths[r][c], strict=True):
                assert trig == trig2 and w == pytest.approx(np.logaddexp(0.0, t + s), rel=1e-6)
                assert trig in seen


def test_top_m_limits_triggers(pdn: PDN, histories: Histories):
    cfg = pdn.cfg.model_copy(deep=True)
    cfg.methods.pdn.top_m = 1
    one = PDN(pdn.model, pdn.feat, pdn.index, cfg)
    rec = one.recommend(histories, 20, explain=True)
    for r in range(len(histories)):
        trigs = {t for why in rec.why[r] for t, _ in why}
        assert len(trigs) <= 1


def test_save_load_roundtrip(pdn: PDN, histories: Histories, tmp_path, pdn_cfg: Config):
    from pi2i.methods import load_method, read_manifest

    d = str(tmp_path / "pdn")
    pdn.save(d)
    assert read_manifest(d)["method"] == "pdn"
    again = load_method(d, TrainInputs(), pdn_cfg, expect="pdn")
    a, b = pdn.recommend(histories, 30), again.recommend(histories, 30)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_cli_bad_inputs_exit_2(tmp_path, tiny_samples: str, tiny_model: str):
    import subprocess
    import sys
    from pathlib import Path

    empty = tmp_path / "empty"
    (empty / "samples").mkdir(parents=True)

    def run(*args: str) -> subprocess.CompletedProcess:
        exe = str(Path(sys.executable).parent / "pi2i")
        return subprocess.run([exe, "train", *args], check=False, capture_output=True, text=True, timeout=120)

    for args, msg in (
        (["--method", "pdn", "--samples", str(empty), "--out", str(tmp_path / "o")], "not a samples directory"),
        (["--method", "mtmh", "--samples", tiny_samples, "--out", tiny_model], "holds a pi2i model"),
        (["--method", "ease", "--samples", tiny_samples, "--out", str(tmp_path / "o")], "not a trained method"),
    ):
        p = run(*args)
        assert p.returncode == 2, p.stderr
        assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_nan_swing_scores_refused(tiny_samples: str, pdn_cfg: Config, tmp_path):
    import shutil

    from pi2i.contracts import read_parquet, write_parquet
    from pi2i.methods.base import MethodError

    d = tmp_path / "samples"
    shutil.copytree(tiny_samples, d)
    t = read_parquet(str(d / I2I_FILE))
    scores = t.column("score").to_numpy().copy()
    scores[3] = np.nan
    write_parquet(t.set_column(t.schema.get_field_index("score"), "score", pa.array(scores, pa.float32())),
                  str(d / I2I_FILE))
    with pytest.raises(MethodError, match="non-finite Swing scores"):
        PDN.fit(TrainInputs(samples_dir=str(d)), pdn_cfg)


def test_empty_and_unknown_histories(pdn: PDN):
    b = Histories.from_lists([(np.array([], np.int64), np.array([], np.int64)), (np.array([10**9]), np.array([5]))])
    rec = pdn.recommend(b, 5, explain=True)
    assert (rec.items == -1).all() and rec.why == [[], []]
