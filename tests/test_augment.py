"""LLM-I2I augmentation: token layout, the Eq. 2 loss against a hand computation, the threshold choice, the
generator's exclusions, the end-to-end step on the tiny preset (real rows untouched, synthetic rows marked and
traced), fine-tuning from its own checkpoint, Swing's include/exclude switch, and the CLI's one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pi2i.augment.discriminator import auc, choose_tau
from pi2i.augment.sequences import N_SPECIAL, ItemVocab, long_tail, user_sequences
from pi2i.config import Config, ConfigError, parse_config
from pi2i.contracts import EVENTS_SCHEMA, SYNTHETIC_BEHAVIOR

#: CPU-seconds config for the end-to-end tests (tiny model, one epoch each).
SMALL = {"augment": {"epochs": 1, "disc_epochs": 1, "n_embd": 16, "n_layer": 1, "n_head": 1, "batch_size": 32,
                     "candidates_per_user": 4, "disc_positions": 2},
         "train": {"num_workers": 0, "torch_threads": 1}}


def _events(rows: list[tuple[int, int, str, int]]) -> pa.Table:
    u, i, b, t = zip(*rows)
    return pa.table({"user_id": pa.array(u, pa.int64()), "item_id": pa.array(i, pa.int64()),
                     "behavior": pa.array(b, pa.string()),
                     "ts": pa.array(t, pa.int64()).cast(pa.timestamp("us", tz="UTC"))}, schema=EVENTS_SCHEMA)


def test_user_sequences_time_order_dedup_and_behaviours():
    ev = _events([(2, 10, "click", 5), (1, 11, "click", 3), (1, 12, "click", 1), (1, 12, "cart", 2),
                  (1, 13, "synthetic", 4), (2, 10, "click", 6), (2, 14, "buy", 7)])
    s = user_sequences(ev, ["click", "cart", "fav", "buy"], dedup_consecutive=True)
    assert s.users.tolist() == [1, 2]
    assert s.row(0).tolist() == [12, 11]  # time order; click+cart of 12 collapsed; synthetic never counted
    assert s.row(1).tolist() == [10, 14]
    assert s.last_ts.tolist() == [3, 7]
    s2 = user_sequences(ev, ["click"], dedup_consecutive=False)
    assert s2.row(1).tolist() == [10, 10]


def test_long_tail_threshold_and_vocab_roundtrip(tmp_path):
    ids = np.array([5, 6, 7, 8, 9], np.int64)
    counts = np.array([10, 1, 1, 3, 7])
    tail, thr = long_tail(ids, counts, 0.2)  # 20% of 5 items -> the 1 least clicked: count 1, ties included
    assert thr == 1 and tail.tolist() == [6, 7]
    tail, thr = long_tail(ids, counts, 0.6)
    assert thr == 3 and tail.tolist() == [6, 7, 8]
    v = ItemVocab(np.array([30, 10, 20]), offset=100)
    assert (v.pad, v.bos, v.sep, v.first_item, v.size) == (100, 101, 102, 103, 106)
    assert v.encode(np.array([10, 20, 30, 99])).tolist() == [104, 105, 103, -1]
    assert v.decode(np.array([103, 105])).tolist() == [30, 20]
    w = v.extended(np.array([5, 20, 40]))
    assert w.item_ids.tolist() == [30, 10, 20, 5, 40] and w.encode(np.array([30])).tolist() == [103]
    w.save(str(tmp_path))
    r = ItemVocab.load(str(tmp_path))
    assert r.item_ids.tolist() == w.item_ids.tolist() and r.offset == 100 and N_SPECIAL == 3


def test_weighted_loss_is_eq2_by_hand():
    import torch

    from pi2i.augment.generator import weighted_lm_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    tokens = torch.tensor([[1, 3, 4, 5], [1, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    alpha, beta, tail = 4.0, 1.0, {4}
    weights = torch.tensor([[alpha if int(t) in tail else beta for t in row[1:]] for row in tokens])
    got = weighted_lm_loss(logits, tokens, weights, mask)
    terms = []
    for b in range(2):
        for t in range(3):
            if mask[b, t + 1]:
                y = int(tokens[b, t + 1])
                ce = -math.log(math.exp(logits[b, t, y]) / sum(math.exp(x) for x in logits[b, t].tolist()))
                terms.append((alpha if y in tail else beta) * ce)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_choose_tau_smallest_threshold_reaching_precision_and_auc_bruteforce():
    p = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    y = np.array([1, 1, 0, 1, 1, 0, 0, 1], float)
    r = choose_tau(p, y, target_precision=0.75)
    # precision at the cut-offs: 1, 1, .67, .75, .8, .67, .57, .625 -> the smallest tau with >= .75 is 0.6
    assert r["tau"] == 0.6 and r["precision"] == pytest.approx(0.8) and r["recall"] == pytest.approx(0.8)
    assert r["target_met"] is True
    fixed = choose_tau(p, y, 0.75, tau=0.85)
    assert fixed["tau"] == 0.85 and fixed["precision"] == 1.0 and fixed["recall"] == pytest.approx(0.4)
    rng = np.random.default_rng(0)
    pp, yy = rng.random(60).round(1), (rng.random(60) < 0.4).astype(float)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pp[yy > 0] for b in pp[yy <= 0]])
    assert auc(pp, yy) == pytest.approx(brute)
    unreachable = choose_tau(np.array([0.9, 0.8]), np.array([0.0, 1.0]), 0.99)
    assert unreachable["target_met"] is False and unreachable["chosen"] == "best F1"


def test_generate_excludes_seen_specials_and_repeats():
    from pi2i.augment.generator import build_generator, generate
    from pi2i.augment.sequences import Sequences

    ac = Config().augment.model_copy(update={"n_embd": 16, "n_layer": 1, "n_head": 1, "candidates_per_user": 6,
                                             "top_k": 0, "top_p": 1.0})
    vocab = ItemVocab(np.arange(100, 110))
    seqs = Sequences(np.array([1, 2]), np.array([0, 3, 10]),
                     np.array([100, 101, 102] + list(range(100, 107)), np.int64), np.array([0, 0]))
    model = build_generator(vocab, ac)
    toks, probs = generate(model, vocab, seqs, np.array([0, 1]), ac)
    items0 = vocab.decode(toks[0])
    assert len(set(items0)) == 6 and not set(items0) & {100, 101, 102}
    assert set(vocab.decode(toks[1][toks[1] >= 0])) == {107, 108, 109}  # only 3 unseen items remain
    assert (toks[1] == -1).sum() == 3 and np.all(probs[0] > 0)
    again, _ = generate(model, vocab, seqs, np.array([0, 1]), ac)
    assert np.array_equal(toks, again)  # seeded


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, tiny_split):
    from pi2i.augment import augment

    out = tmp_path_factory.mktemp("aug")
    cfg = parse_config(SMALL)
    summary = augment(f"{tiny_split['train']}/events.parquet", str(out), cfg)
    return out, summary, cfg


def test_augment_end_to_end_marks_and_traces_synthetic_rows(augmented, tiny_split):
    out, summary, _ = augmented
    real = pq.read_table(f"{tiny_split['train']}/events.parquet").select([f.name for f in EVENTS_SCHEMA])
    ev = pq.read_table(out / "events.parquet")
    assert ev.schema.equals(EVENTS_SCHEMA)
    n = real.num_rows
    assert ev.slice(0, n).cast(EVENTS_SCHEMA).equals(real.cast(EVENTS_SCHEMA))  # real rows unchanged, in order
    synth = ev.slice(n)
    assert synth.num_rows == summary["kept"] > 0
    assert set(synth.column("behavior").to_pylist()) == {SYNTHETIC_BEHAVIOR}
    assert not set(real.column("behavior").to_pylist()) & {SYNTHETIC_BEHAVIOR}
    prov = pq.read_table(out / "provenance.parquet")
    assert prov.column("row").to_pylist() == list(range(n, n + synth.num_rows))
    assert prov.column("item_id").equals(synth.column("item_id"))
    assert min(prov.column("confidence").to_pylist()) >= summary["tau"]
    assert set(prov.column("generator_version").to_pylist()) == {summary["generator"]["version"]}
    # no synthetic pair repeats a real pair of the same user, and none leaves the input period
    real_pairs = set(zip(real.column("user_id").to_pylist(), real.column("item_id").to_pylist()))
    assert not real_pairs & set(zip(synth.column("user_id").to_pylist(), synth.column("item_id").to_pylist()))
    assert max(synth.column("ts").to_pylist()) <= max(real.column("ts").to_pylist())
    s = json.loads((out / "summary.json").read_text())
    for k in ("users", "proposed", "kept", "share_long_tail", "seconds", "tau"):
        assert k in s
    assert s["proposed"] >= s["kept"] and 0 <= s["share_long_tail"] <= 1
    fv = s["filter_validation"]
    assert 0 <= fv["recall"] <= 1 and fv["val_positives"] > 0
    assert (out / "generator" / "config.json").exists() and (out / "discriminator" / "config.json").exists()


def test_swing_includes_or_excludes_synthetic_rows(augmented):
    from pi2i.ibs.swing import prepare_graph

    out, summary, cfg = augmented
    ev = pq.read_table(out / "events.parquet")
    with_syn = prepare_graph(ev, cfg.swing)
    without = prepare_graph(ev, cfg.swing.model_copy(update={"include_synthetic": False}))
    real_only = prepare_graph(ev.slice(0, summary["real_rows"]), cfg.swing)
    assert without.stats["edges_distinct"] == real_only.stats["edges_distinct"]
    assert np.array_equal(without.user_items, real_only.user_items)
    # every kept row is a new distinct (user, item) edge
    assert with_syn.stats["edges_distinct"] == real_only.stats["edges_distinct"] + summary["kept"]


def test_finetune_from_own_checkpoint_and_fixed_tau(augmented, tiny_split, tmp_path):
    from pi2i.augment import augment

    out, first, _ = augmented
    cfg = parse_config({**SMALL, "augment": {**SMALL["augment"], "generator": str(out / "generator"),
                                             "tau": 0.0}})
    s = augment(f"{tiny_split['train']}/events.parquet", str(tmp_path), cfg)
    assert s["generator"]["init"] == str(out / "generator")
    assert s["kept"] == s["proposed"]  # tau = 0 keeps every proposal
    assert s["generator"]["vocab_size"] == first["generator"]["vocab_size"]  # same items, same token layout


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_split):
    from typer.testing import CliRunner

    from pi2i.cli import app, main  # noqa: F401  (main turns errors into exit 2)

    with pytest.raises(ConfigError, match="augment.tau"):
        parse_config({"augment": {"tau": 1.5}})
    empty = tmp_path / "empty.parquet"
    pq.write_table(EVENTS_SCHEMA.empty_table(), empty)
    import subprocess
    import sys

    base = [sys.executable, "-c", "from pi2i.cli import main; main()", "augment"]
    cases = {
        "generator checkpoint not found": ["--events", f"{tiny_split['train']}/events.parquet", "--out",
                                           str(tmp_path / "o1"), "--generator", str(tmp_path / "nope")],
        "is empty": ["--events", str(empty), "--out", str(tmp_path / "o2")],
        "augment.tau": ["--events", f"{tiny_split['train']}/events.parquet", "--out", str(tmp_path / "o3"),
                        "--tau", "-0.1"],
    }
    for needle, argv in cases.items():
        r = subprocess.run(base + argv, check=False, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (needle, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], r.stderr
    assert CliRunner().invoke(app, ["augment", "--help"]).exit_code == 0


def test_plain_pretrained_checkpoint_gets_item_tokens_appended(tmp_path):
    """A causal LM without our item vocabulary (e.g. a text LM): its tokens stay, item tokens follow them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pi2i.augment.generator import GeneratorError, build_generator, generator_vocab, resolve_init

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=16, n_layer=1, n_head=1)).save_pretrained(
        tmp_path / "lm")
    path = resolve_init(str(tmp_path / "lm"))
    vocab = generator_vocab(np.array([7, 3, 5]), path)
    assert vocab.offset == 50 and vocab.first_item == 53 and vocab.size == 56
    model = build_generator(vocab, Config().augment, path)
    assert model.get_input_embeddings().weight.shape[0] == 56
    with pytest.raises(GeneratorError, match="not found"):
        resolve_init(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeneratorError, match="config.json"):
        resolve_init(str(tmp_path / "empty"))


def test_compare_cli_side_by_side_on_the_same_users(augmented, tiny_split, tmp_path):
    from typer.testing import CliRunner

    from pi2i.cli import app

    out, summary, _ = augmented
    res = CliRunner().invoke(app, ["augment", "compare", "--train", tiny_split["train"], "--test",
                                   tiny_split["test"], "--out", str(tmp_path), "--methods", "swing",
                                   "--augmented", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "compare.json").read_text())
    o, a = r["methods"]["swing"]["original"], r["methods"]["swing"]["augmented"]
    assert set(o["hr"]) == set(a["hr"]) == set(r["ks"]) and set(o["tail_hr"]) == set(o["hr"])
    assert all(0 <= v <= 1 for v in list(o["hr"].values()) + list(a["tail_hr"].values()))
    e_o = json.loads((tmp_path / "original" / "eval" / "metrics.json").read_text())
    e_a = json.loads((tmp_path / "augmented" / "eval" / "metrics.json").read_text())
    assert e_o["data"]["test_users"] == e_a["data"]["test_users"]  # the same test users, real test clicks
    i2i_o = pq.read_table(tmp_path / "original" / "i2i_table.parquet")
    i2i_a = pq.read_table(tmp_path / "augmented" / "i2i_table.parquet")
    assert not i2i_o.equals(i2i_a)  # the synthetic rows changed the index
    assert r["augment"]["kept"] == summary["kept"] and "tail hr@K" in (tmp_path / "compare.md").read_text()
    bad = CliRunner().invoke(app, ["augment", "compare", "--train", tiny_split["train"], "--test",
                                   tiny_split["test"], "--out", str(tmp_path), "--methods", "popularity"])
    assert bad.exit_code != 0
