"""PRS: trigger–target sampling, the scorer model, Ray Train training and candidate scoring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pi2i.config import Config
from pi2i.contracts import read_parquet
from pi2i.data.synthetic import generate, generate_preset
from pi2i.ibs.i2i import I2IIndex
from pi2i.ibs.swing import run_swing
from pi2i.prs.candidates import RowLookup, candidate_union, featurize, serving_groups
from pi2i.prs.model import PAD, PRSModel, Vocab, positive_rank, softmax_loss, to_tensors
from pi2i.prs.sampling import SampleSet, build_samples
from pi2i.prs.scoring import Recommendation, Scorer


def _cfg(**train) -> Config:
    cfg = Config()
    cfg.sampling.num_triggers = 10
    cfg.sampling.seq_len = 20
    cfg.sampling.hard_negatives = 10
    cfg.sampling.easy_negatives = 30
    cfg.model.embed_dim = 16
    cfg.model.hidden = [32]
    cfg.model.max_trigger_hits = 4
    cfg.train.batch_size = 128
    cfg.train.lr = 3e-3
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _make(root, name: str, cfg: Config, **gen) -> tuple[str, str, str]:
    data = str(root / name)
    if gen:
        generate(data, seed=0, **gen)
    else:
        generate_preset(name, data, seed=0)
    i2i = os.path.join(data, "i2i.parquet")
    cfg.swing.top_t = 200
    run_swing(os.path.join(data, "events.parquet"), i2i, cfg.swing)
    samples = str(root / f"{name}_samples")
    build_samples(os.path.join(data, "events.parquet"), i2i, samples, cfg)
    return data, i2i, samples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = _cfg()
    data, i2i, samples = _make(tmp_path_factory.mktemp("prs"), "tiny", cfg)
    return cfg, data, i2i, samples


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A model trained (Ray Train, in-process) on the tiny synthetic world with planted user taste."""
    cfg, data, i2i, samples = tiny
    cfg = cfg.model_copy(deep=True)
    cfg.train.epochs, cfg.train.patience, cfg.train.val_fraction = 3, 0, 0.2
    model_dir = str(tmp_path_factory.mktemp("prs_model") / "model")
    from pi2i.prs.train import train

    metrics = train(samples, model_dir, cfg, progress=False)
    return cfg, data, i2i, samples, model_dir, metrics


# --------------------------------------------------------------------------------------------- sampling
def test_samples_follow_the_trigger_target_rules(tiny):
    cfg, _data, i2i, samples = tiny
    stats = json.loads(Path(samples, "stats.json").read_text())
    assert stats["samples"] + stats["dropped"] == stats["positions"] and 0 <= stats["drop_rate"] < 0.5
    for f in ("popularity.parquet", "histories.parquet", "items.parquet"):
        assert os.path.exists(os.path.join(samples, f))
    ss = SampleSet(samples)
    lk = RowLookup.build(I2IIndex.load(i2i))
    idx = np.arange(0, len(ss), 7)
    feat = ss.features(idx, cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits)
    featq = ss.features(idx, cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits,
                        with_logq=True)
    assert np.array_equal(featq.cross, feat.cross)  # the training-only outputs change no feature
    clicks = ss.clicks
    for j, i in enumerate(idx[:60]):
        target = clicks.items[ss.pos[i]]
        c = np.asarray(ss.cands[i])
        assert c[0] == target
        neg = c[1:][c[1:] >= 0]
        assert target not in neg and len(np.unique(neg)) == len(neg)
        end = clicks.user_ptr[ss.user[i] + 1]
        future = clicks.items[ss.pos[i] + 1:min(end, ss.pos[i] + 1 + cfg.sampling.future_exclusion)]
        assert not np.isin(neg, future).any()  # the user's next clicks are never negatives
        trig = feat.triggers[j][feat.triggers[j] >= 0]
        rows = {t: set(lk.index.row(t)[0].tolist()) for t in trig}
        pos_trig = [t for t in trig if target in rows[t]]
        assert pos_trig, "kept samples have at least one positive trigger"
        union = set().union(*rows.values())
        assert set(neg.tolist()) <= union  # negatives come from the serving pool
        hard = c[1:1 + cfg.sampling.hard_negatives]
        hard = hard[hard >= 0]
        pos_rows = set().union(*(rows[t] for t in pos_trig))
        n_hard = int(np.isin(hard, list(pos_rows)).sum())
        drawable = pos_rows - {int(target)} - set(future.tolist())
        assert n_hard == len(hard) or len(drawable) <= n_hard  # hard negatives: rows of positive triggers
        # the most recent trigger is the last distinct click before the target
        assert trig[0] == clicks.items[ss.pos[i] - 1]
        # logQ: log of each candidate's draw chance, min(1, rate_P·hits_P + rate_E·hits_E) (brute force here)
        other = [t for t in trig if t not in pos_trig]
        rate_p, rate_e = (float(r) for r in ss.rates[i])
        for slot in np.flatnonzero(c >= 0):
            x = c[slot]
            hp, he = sum(x in rows[t] for t in pos_trig), sum(x in rows[t] for t in other)
            assert hp >= (1 if slot == 0 else 0) and hp + he >= 1
            assert np.exp(featq.logq[j, slot]) == pytest.approx(min(1.0, rate_p * hp + rate_e * he), rel=1e-4)
        assert (featq.logq[j][c < 0] == 0).all()


def test_empty_negative_slots_are_filled_and_popularity_is_a_feature(tiny, tmp_path):
    cfg, data, i2i, samples = tiny
    stats = json.loads(Path(samples, "stats.json").read_text())
    cfg2 = cfg.model_copy(deep=True)
    cfg2.sampling.fill_negatives = False
    off = build_samples(os.path.join(data, "events.parquet"), i2i, str(tmp_path / "nofill"), cfg2)
    assert off["mean_fill_negatives"] == 0.0 and stats["mean_fill_negatives"] > 0.0
    assert stats["mean_candidates"] > off["mean_candidates"]
    assert stats["mean_candidates"] == pytest.approx(1 + stats["mean_hard_negatives"] + stats["mean_easy_negatives"]
                                                     + stats["mean_fill_negatives"])
    # the cross feature log_popularity is log(1 + training clicks) of the candidate
    ss = SampleSet(samples)
    pop = read_parquet(os.path.join(samples, "popularity.parquet")).to_pandas().set_index("item_id")["count"]
    feat = ss.features(np.arange(20), cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits)
    from pi2i.prs.candidates import CROSS_FEATURES

    j = CROSS_FEATURES.index("log_popularity")
    c = feat.cands
    want = np.where(c >= 0, np.log1p(pop.reindex(c.ravel()).fillna(0).to_numpy().reshape(c.shape)), 0.0)
    assert np.allclose(feat.cross[..., j], want, atol=1e-5)


def test_sampling_is_seeded(tiny, tmp_path):
    cfg, data, i2i, samples = tiny
    build_samples(os.path.join(data, "events.parquet"), i2i, str(tmp_path / "again"), cfg)
    a, b = np.load(os.path.join(samples, "samples", "cands.npy")), np.load(tmp_path / "again" / "samples" / "cands.npy")
    assert np.array_equal(a, b)
    cfg2 = cfg.model_copy(deep=True)
    cfg2.sampling.seed = 1
    build_samples(os.path.join(data, "events.parquet"), i2i, str(tmp_path / "other"), cfg2)
    assert not np.array_equal(a, np.load(tmp_path / "other" / "samples" / "cands.npy"))


def test_training_and_serving_features_are_identical(tiny):
    """Same (history, candidate) → bit-identical inputs, whether it came from the sampler or the serving pool."""
    cfg, _data, _i2i, samples = tiny
    ss = SampleSet(samples)
    L, S, H = cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits
    idx = np.arange(0, len(ss), 13)[:60]
    tr = ss.features(idx, L, S, H)
    ptr = np.asarray(ss.clicks.user_ptr)
    hist = [(np.asarray(ss.clicks.items[ptr[ss.user[i]]:ss.pos[i]]), np.asarray(ss.clicks.ts[ptr[ss.user[i]]:ss.pos[i]]))
            for i in idx]
    g = serving_groups(hist, L, S, cfg.sampling.dedup_consecutive)
    assert np.array_equal(g.triggers, tr.triggers) and np.array_equal(g.seq, tr.seq)
    pool = candidate_union(ss.lookup, g.triggers)
    sv = featurize(g, pool, ss.lookup, ss.info, H)
    checked = 0
    for j in range(len(idx)):
        c = np.flatnonzero(tr.cands[j] >= 0)
        n = int((sv.cands[j] >= 0).sum())
        k = np.searchsorted(sv.cands[j, :n], tr.cands[j, c])  # the pool is sorted by item id
        assert np.array_equal(sv.cands[j, k], tr.cands[j, c]), "every training candidate is in the serving pool"
        assert np.array_equal(tr.cross[j, c], sv.cross[j, k])
        assert np.array_equal(tr.hit_slot[j, c], sv.hit_slot[j, k])
        assert np.array_equal(tr.hit_dense[j, c], sv.hit_dense[j, k])
        checked += len(c)
    assert np.array_equal(tr.profile, sv.profile)
    assert checked > 1000


def test_hit_features_equal_a_per_candidate_reference(tiny):
    """The merged features kernel against the definition, candidate by candidate: a trigger "hits" a candidate when
    its Swing row holds it; hits are kept in trigger order (first H stored) and summarized in the cross features.
    Candidates are shuffled, duplicated and holed so the kernel's sorted merge meets every order."""
    cfg, _data, _i2i, samples = tiny
    ss = SampleSet(samples)
    L, S, H = cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits
    rng = np.random.default_rng(5)
    idx = np.sort(rng.choice(len(ss), 40, replace=False))
    base = ss.features(idx, L, S, H)
    cands = rng.permuted(np.asarray(ss.cands[idx]), axis=1)
    cands[:, 3] = cands[:, 4]
    cands[rng.random(cands.shape) < 0.2] = -1
    groups = serving_groups([(np.asarray(ss.clicks.items[p:q]), np.asarray(ss.clicks.ts[p:q])) for p, q in zip(
        np.asarray(ss.clicks.user_ptr)[np.asarray(ss.user[idx])], np.asarray(ss.pos[idx]))], L, S,
        cfg.sampling.dedup_consecutive)
    assert np.array_equal(groups.triggers, base.triggers)
    f = featurize(groups, cands, ss.lookup, ss.info, H)
    index, top = ss.lookup.index, ss.lookup.row_top
    hits_seen = 0
    for g in range(len(idx)):
        trig = [int(t) for t in groups.triggers[g] if t >= 0]
        rows = [dict(zip(*index.row(t)[:1], zip(*index.row(t)[1:]))) for t in trig]
        rid = ss.lookup.rows(np.array(trig, np.int64)) if trig else np.empty(0, np.int64)
        for c, x in enumerate(cands[g]):
            if x < 0:
                assert (f.hit_slot[g, c] == -1).all() and (f.cross[g, c] == 0).all()
                continue
            hits = [q for q in range(len(trig)) if int(x) in rows[q]]
            hits_seen += len(hits)
            want_slot = np.full(H, -1)
            want_dense = np.zeros((H, 5))
            for k, q in enumerate(hits[:H]):
                s, rank = rows[q][int(x)]
                age = float(groups.trigger_age_h[g, q])
                want_slot[k] = q
                want_dense[k] = [s, s / top[rid[q]], np.log(rank), q / L, np.log1p(max(age, 0.0))]
            assert np.array_equal(f.hit_slot[g, c], want_slot)
            np.testing.assert_allclose(f.hit_dense[g, c], want_dense, rtol=1e-6, atol=1e-7)
            ss_ = [rows[q][int(x)][0] for q in hits]
            rk = [rows[q][int(x)][1] for q in hits]
            rel = [s / top[rid[q]] for q, s in zip(hits, ss_)]
            cr = f.cross[g, c]
            assert cr[0] == pytest.approx(np.log1p(len(hits)))
            assert cr[3] == pytest.approx(max(ss_, default=0.0)) and cr[4] == pytest.approx(sum(ss_), rel=1e-5)
            assert cr[5] == pytest.approx(max(rel, default=0.0)) and cr[6] == pytest.approx(sum(rel), rel=1e-5)
            assert cr[7] == pytest.approx(hits[0] / L if hits else 1.0)
            assert cr[9] == (1.0 if hits and hits[0] == 0 else 0.0) and cr[14] == float(int(x) in trig)
            if hits:
                assert cr[1] == pytest.approx(np.log(min(rk))) and cr[2] == pytest.approx(1.0 / min(rk))
    assert hits_seen > 500


# --------------------------------------------------------------------------------------------- model
def _batch(tiny, n=32):
    cfg, _data, _i2i, samples = tiny
    ss = SampleSet(samples)
    vocab = Vocab.build(np.asarray(ss.clicks.items), ss.info, 1)
    feat = ss.features(np.arange(n), cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits)
    return cfg, vocab, feat


def test_shapes_and_masks(tiny):
    cfg, vocab, feat = _batch(tiny)
    torch.manual_seed(0)
    m = PRSModel(cfg.model, vocab.sizes, cfg.sampling.seq_len).eval()
    b = to_tensors(feat, vocab)
    G, C = feat.cands.shape
    with torch.no_grad():
        out = m(b)
        assert out.shape == (G, C)
        assert torch.isinf(out[~b["cand_mask"]]).all() and torch.isfinite(out[b["cand_mask"]]).all()
        # garbage in padded hit slots changes nothing
        b2 = dict(b)
        b2["hit_dense"] = b["hit_dense"].masked_fill((b["hit_slot"] < 0).unsqueeze(-1), 123.0)
        assert torch.allclose(m(b2), out, atol=1e-5, equal_nan=False)
        # an empty history does not produce NaN
        b3 = dict(b)
        b3["seq"] = torch.zeros_like(b["seq"])
        assert torch.isfinite(m(b3)[b["cand_mask"]]).all()
        # candidates are scored independently: dropping some leaves the others' logits unchanged
        b4 = {k: (v[:, :10] if k in ("cand", "cand_mask", "hit_slot", "hit_dense", "cross") else v) for k, v in b.items()}
        assert torch.allclose(m(b4), out[:, :10], atol=1e-5)
    assert positive_rank(out).shape == (G,)


def _literal_logits(m: PRSModel, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 8-11 written out literally, one candidate and one hit at a time in spirit: every feature embedded per
    candidate, concatenated, the MLPs and ``nn.MultiheadAttention`` applied as layers: the reference the fused
    :meth:`PRSModel.forward` must equal."""
    F = torch.nn.functional
    G, C, _ = b["hit_slot"].shape
    # E_trigger: mean over the hitting triggers h of E_item(h) + W_hit·standardize(x_h)
    used = m.hit_mask(b)
    trig_e = m.item_emb(b["trig"])  # [G, L, D]
    per_hit = torch.stack([trig_e[g][b["hit_slot"][g].clamp_min(0)] for g in range(G)])  # [G, C, H, D]
    per_hit = per_hit + m.hit_proj(m.hit_norm(b["hit_dense"]))
    w = used.unsqueeze(-1).float()
    e_trig = (per_hit * w).sum(2) / w.sum(2).clamp_min(1.0)
    e_tgt = m.item_emb(b["items"])[b["cand"]]
    e_cross = m.cross_proj(m.cross_norm(b["cross"]))
    first = lambda head, parts: head.rest(F.linear(torch.cat(parts, -1), head.first.lin.weight, head.first.lin.bias))
    q = first(m.query, [e_trig, e_tgt, e_cross])  # Eq. 8
    seq = m.item_emb(b["seq"]) + m.pos.weight[:b["seq"].shape[1]]
    pad = b["seq"][..., 0] == PAD
    pad[pad.all(1), 0] = False
    att, _ = m.mha(q, seq, seq, key_padding_mask=pad, need_weights=False)  # Eq. 9-10
    keep = (~pad).unsqueeze(-1).float()
    seq_mean = ((seq * keep).sum(1) / keep.sum(1)).unsqueeze(1).expand(G, C, -1)
    prof = m.profile_proj(b["profile"]).unsqueeze(1).expand(G, C, -1)
    logit = first(m.head, [att, seq_mean, prof, e_trig, e_tgt, e_cross]).squeeze(-1)  # Eq. 11
    return logit.masked_fill(~b["cand_mask"], float("-inf"))


@pytest.mark.parametrize("trigger_feature", ["multi", "none"])
def test_fused_forward_equals_the_literal_equations(tiny, trigger_feature):
    """The forward pass merges linear maps and reorders work for speed; its logits and every parameter's gradient
    must equal Eq. 8-11 computed literally (float64, so only the algebra is compared)."""
    cfg, vocab, feat = _batch(tiny)
    c = cfg.model.model_copy(update={"trigger_feature": trigger_feature, "hidden": [24, 16], "embed_dim": 16,
                                     "num_heads": 2})
    torch.manual_seed(3)
    m = PRSModel(c, vocab.sizes, cfg.sampling.seq_len).double()
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in to_tensors(feat, vocab).items()}
    m.fit_normalizers(b)
    for p in m.parameters():  # non-trivial biases and padding rows, so a dropped term cannot hide
        torch.nn.init.normal_(p, std=0.3) if p.dim() == 1 else None
    grads = []
    for f in (m.forward, lambda x: _literal_logits(m, x)):
        m.zero_grad()
        out = f(b)
        softmax_loss(out).backward()
        grads.append((out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in m.parameters()]))
    (fused, g_fused), (lit, g_lit) = grads
    assert torch.equal(torch.isinf(fused), torch.isinf(lit))
    fin = torch.isfinite(lit)
    assert torch.allclose(fused[fin], lit[fin], rtol=1e-9, atol=1e-9)
    for (name, _), a, r in zip(m.named_parameters(), g_fused, g_lit):
        assert torch.allclose(a, r, rtol=1e-8, atol=1e-10), name


def test_seq_padding_is_masked(tiny):
    cfg, vocab, feat = _batch(tiny)
    m = PRSModel(cfg.model, vocab.sizes, cfg.sampling.seq_len).eval()
    b = to_tensors(feat, vocab)
    # a group whose sequence is short: replacing its padded slots' *positions* must not matter
    short = (b["seq"][..., 0] == PAD).any(1)
    assert short.any()
    with torch.no_grad():
        base = m(b)
        m.pos.weight.data[-1] += 5.0  # the last position is padding for short sequences
        moved = m(b)
    assert torch.allclose(base[short & (b["seq"][:, -1, 0] == PAD)], moved[short & (b["seq"][:, -1, 0] == PAD)],
                          atol=1e-5)


def test_ablation_switches_do_what_they_claim(tiny):
    cfg, vocab, feat = _batch(tiny)
    b = to_tensors(feat, vocab)
    multi_hits = (b["hit_slot"] >= 0).sum(-1) > 1
    assert multi_hits.any()

    def model(**kw):
        c = cfg.model.model_copy(update=kw)
        torch.manual_seed(0)
        return PRSModel(c, vocab.sizes, cfg.sampling.seq_len).eval()

    with torch.no_grad():
        # none: the trigger identities and per-hit inputs are ignored
        m = model(trigger_feature="none")
        b2 = dict(b, trig=b["trig"].flip(0), hit_dense=torch.randn_like(b["hit_dense"]))
        assert torch.allclose(m(b), m(b2))
        # multi: they matter
        m = model()
        assert not torch.allclose(m(b), m(b2))
        # random: exactly one hit per candidate is used (random draws differ where several hit)
        m = model(trigger_feature="random")
        mask = m.hit_mask(b)
        assert (mask.sum(-1) == (b["hit_slot"] >= 0).any(-1).long()).all()
        torch.manual_seed(1)
        o1 = m(b)
        torch.manual_seed(2)
        o2 = m(b)
        assert not torch.allclose(o1[multi_hits], o2[multi_hits])
        # self-attention: the sequence summary no longer depends on the candidate (query) — target attention does:
        # its attention queries are the candidates [G, heads, C, d], self-attention's the sequence [G, S, D]
        seen = {}
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def spy(q, *args, **kw):
            seen["target"] = q.shape
            return sdpa(q, *args, **kw)

        torch.nn.functional.scaled_dot_product_attention = spy
        try:
            model(attention="target")(b)
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
        m = model(attention="self")
        h = m.mha.register_forward_hook(lambda mod, inp, out: seen.__setitem__("self", inp[0].shape))
        m(b)
        h.remove()
        assert seen["target"][2] == b["cand"].shape[1] and seen["self"][1] == b["seq"].shape[1]


def test_loss_falls(tiny):
    cfg, vocab, feat = _batch(tiny, n=64)
    torch.manual_seed(0)
    m = PRSModel(cfg.model, vocab.sizes, cfg.sampling.seq_len)
    b = to_tensors(feat, vocab)
    m.fit_normalizers(b)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = softmax_loss(m(b))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_sliced_steps_equal_whole_batch_steps_and_reproduce(tiny):
    """A batch cut into slices on worker threads takes the same optimizer step as the whole batch at once (up to
    float rounding), and the numbers depend on the slice count only: one thread or one per slice, bit-identical."""
    from pi2i.prs.train import StepRunner, Tuner

    cfg, _data, _i2i, samples = tiny
    ss = SampleSet(samples)
    vocab = Vocab.build(np.asarray(ss.clicks.items), ss.info, 1)
    rng = np.random.default_rng(0)
    idx = [np.sort(rng.choice(len(ss), 96, replace=False)) for _ in range(4)]
    ss.features(idx[0], cfg.sampling.num_triggers, cfg.sampling.seq_len, 4)  # numba's threading layer starts

    def run(shards: int, threads: int | None = None) -> tuple[list[float], dict]:
        c = cfg.model_copy(deep=True)
        c.train.shards = shards
        torch.manual_seed(0)
        m = PRSModel(c.model, vocab.sizes, c.sampling.seq_len)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)  # not Adam: it blows rounding up where a gradient is ~0
        runner = StepRunner(m, opt, ss, vocab, c, torch.device("cpu"), quota=2, world=1)
        if threads:
            runner.tuner = Tuner([threads])
        try:
            assert runner.sliced == (shards > 1)
            losses = [loss for _, loss in runner.steps(idx)]
        finally:
            runner.close()
        return losses, {k: v.detach().clone() for k, v in m.state_dict().items()}

    whole_loss, whole = run(1)
    three_loss, three = run(3)
    one_thread_loss, one_thread = run(3, threads=1)
    three_threads_loss, three_threads = run(3, threads=3)
    for other_loss, other in ((one_thread_loss, one_thread), (three_threads_loss, three_threads)):
        assert other_loss == three_loss and all(torch.equal(three[k], other[k]) for k in three)
    np.testing.assert_allclose(three_loss, whole_loss, rtol=1e-5)
    for k in whole:
        assert torch.allclose(three[k], whole[k], rtol=1e-4, atol=1e-5), k
    assert whole_loss[-1] < whole_loss[0]


# --------------------------------------------------------------------------------------------- train + score
def test_train_writes_a_self_contained_model_dir(trained):
    _cfg, _data, _i2i, _samples, model_dir, metrics = trained
    for f in ("config.json", "model.safetensors", "vocab.parquet", "items.parquet", "popularity.parquet",
              "histories.parquet", "train_metrics.json"):
        assert os.path.exists(os.path.join(model_dir, f)), f
    h = metrics["history"]
    assert len(h) == 3 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert metrics["best"]["val_loss"] == min(m["val_loss"] for m in h)
    # full-pool calibration on held-out validation users: chosen weights stored with the model, never below
    # the model alone or the popularity / Swing orderings of the pool on those users
    cal = json.loads(Path(model_dir, "train_stats.json").read_text())["calibration"]
    k = cal["k"]
    assert cal[f"val_hr{k}"] >= max(cal[f"val_hr{k}_model"], cal[f"val_hr{k}_popularity_in_pool"],
                                   cal[f"val_hr{k}_swing_in_pool"])
    stored = json.loads(Path(model_dir, "config.json").read_text())["calibration"]
    assert stored == {"popularity": cal["popularity"], "swing": cal["swing"], "k": k, "merge": cal["merge"]}
    # the popularity channel's slot hit rates: non-increasing per channel, one per slot bin
    for channel in ("pool", "popular"):
        rates = np.asarray(cal["merge"][channel])
        assert len(rates) == len(cal["merge"]["edges"]) - 1 and np.all(np.diff(rates) <= 1e-12) and rates[0] > 0
    assert 0 < cal[f"merge_pool_share{k}"] <= 1


def test_model_learns_the_personal_signal(trained):
    """On held-out users the scorer ranks the next click above the plain Swing ranking (summed scores) of the
    very same candidates: the taste the generator plants (brand, price tier per user) is invisible to Swing."""
    cfg, _data, _i2i, samples, model_dir, _metrics = trained
    from pi2i.prs.train import load_model, split_samples

    ss = SampleSet(samples)
    model, _, _meta = load_model(model_dir)
    vocab = Vocab.from_table(read_parquet(os.path.join(model_dir, "vocab.parquet")), ss.info)
    _, val = split_samples(ss, cfg.train.val_fraction, cfg.train.seed)
    feat = ss.features(val, cfg.sampling.num_triggers, cfg.sampling.seq_len, cfg.model.max_trigger_hits)
    b = to_tensors(feat, vocab)
    with torch.no_grad():
        hr_model = (positive_rank(model(b)) < 10).float().mean().item()
        perm = np.random.default_rng(0).permutation(len(val))
        b_other = dict(b, seq=b["seq"][perm], profile=b["profile"][perm])
        hr_other = (positive_rank(model(b_other)) < 10).float().mean().item()
    swing = torch.from_numpy(feat.cross[..., 4]).masked_fill(~b["cand_mask"], -1.0)  # summed Swing score
    swing = swing + 1e-9 * torch.rand_like(swing)
    hr_swing = (positive_rank(swing) < 10).float().mean().item()
    assert hr_model > hr_swing + 0.05, (hr_model, hr_swing)
    print(f"val HR@10 among candidates: model {hr_model:.3f}, swing {hr_swing:.3f}, "
          f"model with another user's sequence {hr_other:.3f}")


def test_scorer_recommends_with_explanations(trained):
    _cfg, _data, i2i, _samples, model_dir, _metrics = trained
    index = I2IIndex.load(i2i)
    sc = Scorer.load(model_dir, index)
    h = read_parquet(os.path.join(model_dir, "histories.parquet"))
    items = h.column("items").to_pylist()
    ts = [np.asarray(x, np.int64) for x in h.column("ts").cast(pa.list_(pa.int64())).to_pylist()]
    hist = [(np.asarray(i, np.int64), t) for i, t in zip(items, ts)]
    r = sc.recommend(*hist[0], k=20, exclude=hist[0][0])
    assert isinstance(r, Recommendation) and 0 < len(r.items) <= 20 and r.items.dtype == np.int64
    assert np.all(np.diff(r.scores) <= 0) and not np.isin(r.items, hist[0][0]).any()
    trig_set = set(hist[0][0].tolist())
    for it, trg in zip(r.items, r.triggers):
        assert len(trg) >= 1 and set(trg.tolist()) <= trig_set
        assert all(it in index.row(t)[0] for t in trg)  # each explanation trigger's row holds the item
    many = sc.recommend_many(hist[:50], k=20)
    assert np.array_equal(many[0].items, r.items) and np.allclose(many[0].scores, r.scores, atol=1e-5)
    assert many[0].num_candidates == r.num_candidates
    for plain, full in zip(sc.recommend_many(hist[:5], k=20, explain=False), many[:5]):  # same list, no "why"
        assert np.array_equal(plain.items, full.items) and plain.triggers == [] and len(full.triggers) > 0
    # many small chunks, scored at once on worker threads: the same answers as one user at a time
    small = Scorer.load(model_dir, index)
    small.cells = 64
    for (hi, ht), rec in zip(hist[:12], small.recommend_many(hist[:12], k=20)):
        one = sc.recommend(hi, ht, k=20, exclude=hi)
        assert np.array_equal(rec.items, one.items) and np.allclose(rec.scores, one.scores, atol=1e-5)
        assert [t.tolist() for t in rec.triggers] == [t.tolist() for t in one.triggers]
    cold = sc.recommend(np.empty(0, np.int64), np.empty(0, np.int64), k=10)
    assert len(cold.items) == 0 and cold.num_candidates == 0 and len(sc.popularity) > 0
    # the popularity channel merged by slot hit rates: each channel keeps its own order, popular items come
    # from outside the pool, and the pool's items are the pool ranking's top ones
    big = len(sc.popularity)
    rank = {it: r for r, it in enumerate(sc.popularity.tolist())}
    assert sc.merge is not None
    merge, sc.merge = sc.merge, None
    try:
        pool_only = sc.recommend_many(hist[:3], k=big)
        # fill_popular: a list shorter than k continues with the most popular unseen items, below every pool item
        full = sc.recommend_many(hist[:3], k=big, fill_popular=True)
    finally:
        sc.merge = merge
    merged = sc.recommend_many(hist[:3], k=big)
    for rec, short, mixed, (seen, _) in zip(full, pool_only, merged, hist[:3]):
        n = len(short.items)
        assert np.array_equal(rec.items[:n], short.items) and len(rec.items) > n
        assert not np.isin(rec.items, seen).any() and len(np.unique(rec.items)) == len(rec.items)
        tail = rec.items[n:]
        assert [rank[i] for i in tail] == sorted(rank[i] for i in tail)
        assert np.all(np.diff(rec.scores) <= 0) and rec.num_candidates == short.num_candidates
        in_pool = np.isin(mixed.items, short.items)
        assert len(mixed.items) == len(rec.items) and set(mixed.items.tolist()) == set(rec.items.tolist())
        assert np.array_equal(mixed.items[in_pool], short.items)  # all of the pool, in the pool's order
        assert [rank[i] for i in mixed.items[~in_pool]] == sorted(rank[i] for i in mixed.items[~in_pool])
        assert np.all(np.diff(mixed.scores) <= 0) and mixed.num_candidates == short.num_candidates
        assert all(len(t) == 0 for t, p in zip(mixed.triggers, in_pool) if not p)
        # each item scored by its channel's validation hit rate: the pool's by slot, a popular one by global rank
        assert np.allclose(mixed.scores[in_pool], merge.pool_rates(n))
        assert np.allclose(mixed.scores[~in_pool], merge.popular_rates(sc.popularity_rank(mixed.items[~in_pool])))
    # stability: the history's category mix enters the score as stability · log((n_c + 1) / (n + 1))
    before = sc.stability
    sc.stability = 0.0
    base = sc.recommend_many(hist[:5], k=30)
    sc.stability = 2.0
    try:
        moved = sc.recommend_many(hist[:5], k=30)
    finally:
        sc.stability = before
    assert any(not np.array_equal(a.items, b.items) for a, b in zip(base, moved))


@pytest.mark.slow
def test_ray_train_with_one_real_worker(tiny, tmp_path):
    """The same loop on a real Ray Train worker (costs ~20 s of Ray start-up)."""
    cfg, _data, _i2i, samples = tiny
    cfg = cfg.model_copy(deep=True)
    cfg.train.epochs, cfg.train.num_workers, cfg.train.max_batches_per_epoch = 1, 1, 3
    cfg.train.storage_path = str(tmp_path / "ray")
    from pi2i.prs.train import train

    m = train(samples, str(tmp_path / "m"), cfg, progress=False)
    assert m["epochs_run"] == 1 and os.path.exists(tmp_path / "m" / "model.safetensors")
    assert any((tmp_path / "ray").rglob("model.safetensors"))


# --------------------------------------------------------------------------------------------- launcher
def test_cpu_quota_reads_cgroups_and_never_exceeds_the_affinity_mask(tmp_path, monkeypatch):
    from pi2i.prs import launch

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert launch._cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert launch._cgroup_cpus(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert launch._cgroup_cpus(v1) == 0.5
    monkeypatch.delenv("PI2I_CPUS", raising=False)
    n = launch.cpu_quota()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(launch, "_cgroup_cpus", lambda root=None: 0.5)
    assert launch.cpu_quota() == 1
    monkeypatch.setenv("PI2I_CPUS", "3")
    assert launch.cpu_quota() == 3
    before = torch.get_num_threads()
    try:
        assert launch.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_importing_pi2i_makes_openmp_threads_sleep_unless_told_otherwise():
    """Spinning OpenMP threads steal the CPU share of the real work under contention: importing pi2i (before torch
    or numba load libgomp) sets OMP_WAIT_POLICY=PASSIVE, and an explicit setting wins."""
    import subprocess
    import sys

    code = "import pi2i, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                                   check=True).stdout.strip()
    assert out(env) == "PASSIVE"
    assert out({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_ray_train_refuses_driver_local_paths_for_a_remote_cluster(tmp_path, monkeypatch):
    from pi2i.prs.launch import run_ray_train

    cfg = Config()
    cfg.train.num_workers = 1
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    with pytest.raises(ValueError, match="driver-local paths"):
        run_ray_train(lambda c: None, {"samples_uri": str(tmp_path)}, cfg, "x")


def test_bad_training_input_is_a_one_line_value_error(tiny, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from pi2i.prs.train import load_model, train

    cfg, _data, _i2i, samples = tiny
    bad = tmp_path / "nan"
    shutil.copytree(samples, bad)
    from pi2i.prs.sampling import I2I_FILE

    t = pq.read_table(bad / I2I_FILE)
    score = t.column("score").to_numpy().copy()
    score[3] = np.nan
    pq.write_table(t.set_column(t.column_names.index("score"), "score", pa.array(score, t.schema.field("score").type)),
                   bad / I2I_FILE)
    with pytest.raises(ValueError, match="non-finite i2i scores"):
        train(str(bad), str(tmp_path / "m1"), cfg, progress=False)
    other = tmp_path / "pdn_model"
    other.mkdir()
    (other / "method.json").write_text('{"method": "pdn", "format_version": 2}')
    with pytest.raises(ValueError, match="holds a pdn model"):
        train(samples, str(other), cfg, progress=False)
    with pytest.raises(ValueError, match="holds a pdn model"):
        load_model(str(other))
    empty = tmp_path / "empty"
    shutil.copytree(samples, empty)
    for f, shape in (("user", (0,)), ("pos", (0,)), ("cands", (0, 5))):
        np.save(empty / "samples" / f"{f}.npy", np.zeros(shape, np.int64))
    with pytest.raises(ValueError, match="no training samples"):
        train(str(empty), str(tmp_path / "m2"), cfg, progress=False)


# --------------------------------------------------------------------------------------------- calibration
def _popularity_world(root) -> tuple[Config, str]:
    """Users clicking items independently from one skewed (Zipf) distribution: popularity predicts the next click,
    co-clicks carry nothing beyond it, a model with random weights nothing at all."""
    rng = np.random.default_rng(0)
    n_users, n_clicks, n_items = 300, 30, 150
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    p /= p.sum()
    items = np.concatenate([rng.choice(n_items, n_clicks, replace=False, p=p) for _ in range(n_users)])
    users = np.repeat(np.arange(n_users), n_clicks)
    ts = 1_700_000_000_000_000 + np.tile(np.arange(n_clicks), n_users) * 60_000_000 + users
    data = root / "zipf"
    data.mkdir()
    events = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                       "behavior": pa.array(["click"] * len(users)),
                       "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
    import pyarrow.parquet as pq

    pq.write_table(events, data / "events.parquet")
    cfg = _cfg(val_fraction=0.3)
    cfg.swing.top_t = 200
    i2i = str(data / "i2i.parquet")
    run_swing(str(data / "events.parquet"), i2i, cfg.swing)
    samples = str(root / "zipf_samples")
    build_samples(str(data / "events.parquet"), i2i, samples, cfg)
    return cfg, samples


def test_calibration_picks_the_popularity_order_for_an_uninformative_model(tmp_path):
    """Full-pool calibration on held-out clicks: with a random-weight model and a world where only popularity
    predicts, the chosen score weighs popularity in and matches the popularity order of the pool, well above
    the model alone; the Scorer applies the stored weights."""
    from pi2i.prs.scoring import calibrated_scores
    from pi2i.prs.train import build_model, calibrate, split_samples

    cfg, samples = _popularity_world(tmp_path)
    ss = SampleSet(samples)
    vocab = Vocab.build(np.asarray(ss.clicks.items), ss.info, 1)
    torch.manual_seed(0)
    model = build_model(cfg, vocab.sizes).eval()
    meta = {"num_triggers": cfg.sampling.num_triggers, "seq_len": cfg.sampling.seq_len,
            "max_trigger_hits": cfg.model.max_trigger_hits}
    _, val = split_samples(ss, cfg.train.val_fraction, cfg.train.seed)
    cal = calibrate(model, cfg, meta, vocab, ss, val, k=10)
    hr, hr_model, hr_pop = cal["val_hr10"], cal["val_hr10_model"], cal["val_hr10_popularity_in_pool"]
    print({k: v for k, v in cal.items() if k != "grid"})
    assert cal["val_targets"] > 200 and 0 < cal["val_in_pool"] <= 1
    assert cal["popularity"] >= 1.0, cal
    assert hr >= max(hr_pop, cal["val_hr10_swing_in_pool"]) and hr_pop > hr_model + 0.05, cal
    assert cal["grid"]["0,0"] == pytest.approx(hr_model, abs=1e-5)
    # the scorer applies (a, b): with a large popularity weight its list is the pool by popularity
    scorer = Scorer(model, cfg, dict(meta, calibration={"popularity": 100.0, "swing": 0.0}), vocab, ss.lookup,
                    ss.info, np.empty(0, np.int64))
    hist = np.asarray(ss.clicks.items)[:20]
    rec = scorer.recommend(hist, np.arange(20, dtype=np.int64) * 60_000_000, k=10, exclude=hist)
    pool = candidate_union(ss.lookup, scorer.groups([(hist, np.arange(20))]).triggers, [hist])[0]
    pool = pool[pool >= 0]
    by_pop = pool[np.argsort(-ss.info.popularity(pool), kind="stable")]
    assert set(rec.items[:5].tolist()) <= set(by_pop[:8].tolist()), (rec.items, by_pop[:10])
    logits = np.array([[1.0, 2.0, -np.inf]], np.float32)
    assert calibrated_scores(logits, np.zeros((1, 3, 16), np.float32), 0.0, 0.0) is logits  # (0, 0): the model
