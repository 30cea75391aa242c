"""Evaluation: the vectorised baselines equal per-user Python, and the whole pipeline evaluates end to end."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pi2i.methods import baselines as bl
from pi2i.config import Config
from pi2i.contracts import EVENTS_SCHEMA
from pi2i.ibs.i2i import I2IIndex
from pi2i.evaluation.metrics import PAD

SHARED = Path(__file__).resolve().parents[2] / "shared"


def random_i2i(rng, n_items=60, max_row=25) -> I2IIndex:
    trig, tgt, sc, rk = [], [], [], []
    for i in range(n_items):
        if rng.random() < 0.15:  # some items have no row
            continue
        n = int(rng.integers(1, max_row))
        targets = rng.choice([x for x in range(n_items) if x != i], n, replace=False)
        scores = np.sort(rng.choice([0.5, 1.0, 1.5, 2.0, 3.0], n))[::-1].astype(np.float32)  # ties on purpose
        trig += [i] * n
        tgt += list(targets)
        sc += list(scores)
        rk += list(range(1, n + 1))
    t = pa.table({"trigger": pa.array(trig, pa.int64()), "target": pa.array(tgt, pa.int64()),
                  "score": pa.array(sc, pa.float32()), "rank": pa.array(rk, pa.int32())})
    return I2IIndex.from_table(t)


def random_csr(rng, n_users, n_items, max_len, distinct=False):
    lists = []
    for _ in range(n_users):
        n = int(rng.integers(0, max_len))
        lists.append(rng.choice(n_items, n, replace=not distinct) if n else np.empty(0, np.int64))
    ptr = np.zeros(n_users + 1, np.int64)
    np.cumsum([len(x) for x in lists], out=ptr[1:])
    return (ptr, np.concatenate(lists).astype(np.int64) if lists else np.empty(0, np.int64)), lists


def test_last_distinct_is_recent_distinct():
    rng = np.random.default_rng(0)
    (ptr, items), lists = random_csr(rng, 50, 30, 40)
    tp, ti = bl.last_distinct(ptr, items, 7)
    for u, h in enumerate(lists):
        want = []
        for x in reversed(h.tolist()):
            if x not in want:
                want.append(x)
        assert ti[tp[u]:tp[u + 1]].tolist() == want[:7]


def test_user_histories_last_clicks_dedup():
    rng = np.random.default_rng(1)
    n = 400
    u = rng.integers(0, 20, n)
    it = rng.integers(0, 6, n)  # small catalog: many back-to-back repeats
    ts = rng.integers(0, 50, n) * 1_000_000  # time ties on purpose
    beh = rng.choice(["click", "buy"], n, p=[0.8, 0.2])
    ev = pa.table({"user_id": u, "item_id": it, "behavior": beh, "ts": pa.array(ts, pa.timestamp("us", "UTC"))})
    users = np.array([0, 3, 5, 19, 25])
    ptr, hi, hts = bl.user_histories(ev, users, 9, ("click",), dedup_consecutive=True)
    for r, uid in enumerate(users):
        rows = sorted([(ts[j], j) for j in range(n) if u[j] == uid and beh[j] == "click"])
        seq = []
        for t, j in rows:
            if not seq or seq[-1][0] != it[j]:
                seq.append((it[j], t))
        seq = seq[-9:]
        assert hi[ptr[r]:ptr[r + 1]].tolist() == [x for x, _ in seq]
        assert hts[ptr[r]:ptr[r + 1]].tolist() == [t for _, t in seq]


@pytest.mark.parametrize("trunc", [None, 3, 10])
def test_i2i_lists_equal_brute_force(trunc):
    rng = np.random.default_rng(2)
    i2i = random_i2i(rng)
    (tp, ti), trig_lists = random_csr(rng, 40, 70, 8, distinct=True)  # ids >= 60 have no row
    (sp, si), seen_lists = random_csr(rng, 40, 60, 10)
    k = 15
    got = bl.i2i_lists(i2i, (tp, ti), k, trunc, (sp, si))
    for u in range(40):
        score = defaultdict(float)
        for t in trig_lists[u]:
            targets, scores, _ = i2i.row(int(t), trunc)
            for x, s in zip(targets.tolist(), scores.tolist()):
                score[x] += s
        cands = [(-s, x) for x, s in score.items() if x not in set(seen_lists[u].tolist())]
        want = [x for _, x in sorted(cands)][:k]
        row = got[u]
        assert row[row != PAD].tolist() == want


def test_popularity_lists_and_pool():
    rng = np.random.default_rng(3)
    popular = rng.permutation(100).astype(np.int64)
    (sp, si), seen_lists = random_csr(rng, 30, 100, 20)
    got = bl.popularity_lists(popular, 30, 10, (sp, si))
    for u in range(30):
        s = set(seen_lists[u].tolist())
        assert got[u].tolist() == [x for x in popular.tolist() if x not in s][:10]
    i2i = random_i2i(rng)
    (tp, ti), trig_lists = random_csr(rng, 30, 60, 6, distinct=True)
    pu, pi = bl.pool_pairs(i2i, (tp, ti), (sp, si))
    for u in range(30):
        want = set()
        for t in trig_lists[u]:
            want |= set(i2i.row(int(t))[0].tolist())
        want -= set(seen_lists[u].tolist())
        assert set(pi[pu == u].tolist()) == want


def _events(rows):
    u, i, b, t = zip(*rows)
    ts = [datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1e6 + x * 3600e6 for x in t]
    return pa.table({"user_id": pa.array(u, pa.int64()), "item_id": pa.array(i, pa.int64()),
                     "behavior": pa.array(b), "ts": pa.array(np.array(ts, np.int64), pa.timestamp("us", "UTC"))},
                    schema=EVENTS_SCHEMA)


def test_prepare_users_seen_policy():
    from pi2i.evaluation.evaluate import prepare_users

    train = _events([(1, 10, "click", 0), (1, 11, "click", 1), (2, 10, "click", 0), (3, 12, "buy", 0)])
    test = _events([(1, 11, "click", 30), (1, 13, "click", 31), (2, 10, "click", 30), (4, 10, "click", 30),
                    (3, 12, "click", 30), (3, 14, "cart", 31)])
    cfg = Config()
    u = prepare_users(train, test, cfg)
    # user 1 keeps 13 (11 was seen), user 2 only repeated 10 -> dropped, user 3 keeps 14 (12 was bought:
    # sampling.behaviors counts every behaviour as a click by default), user 4 has no train history
    assert u.users.tolist() == [1, 3]
    assert u.test[1].tolist() == [13, 14] and u.test[0].tolist() == [0, 1, 2]
    assert u.summary["test_pairs_removed_as_seen"] == 3
    assert u.summary["test_users_dropped_all_seen"] == 1
    assert u.summary["test_users_without_train_clicks"] == 1
    cfg.eval.exclude_seen = False
    u = prepare_users(train, test, cfg)
    assert u.users.tolist() == [1, 2, 3] and u.seen is None and len(u.test[1]) == 5


# ------------------------------------------------------------------------------------------ end to end
def _pipeline(tmp_path: Path, cfg: Config, events_dir: str | None = None, preset: str = "tiny") -> dict:
    """generate/load -> split -> build_swing -> build_samples -> train -> paths."""
    from pi2i.prs.sampling import build_samples
    from pi2i.data.split import split
    from pi2i.ibs.swing import run_swing
    from pi2i.prs.train import train

    if events_dir is None:
        from pi2i.data.synthetic import generate_preset

        events_dir = str(tmp_path / "data")
        generate_preset(preset, events_dir, seed=0)
    s = tmp_path / "split"
    split(events_dir, str(s), test_days=cfg.data.test_days)
    i2i = str(tmp_path / "i2i.parquet")
    run_swing(str(s / "train" / "events.parquet"), i2i, cfg.swing)
    build_samples(str(s / "train" / "events.parquet"), i2i, str(tmp_path / "samples"), cfg,
                  items_uri=str(s / "train" / "items.parquet"))
    train(str(tmp_path / "samples"), str(tmp_path / "model"), cfg)
    return {"train": str(s / "train"), "test": str(s / "test"), "i2i": i2i, "model": str(tmp_path / "model"),
            "samples": str(tmp_path / "samples")}


def _small_cfg() -> Config:
    cfg = Config()
    cfg.swing.top_t = 200
    cfg.train.epochs = 1
    cfg.train.patience = 0
    cfg.train.max_batches_per_epoch = 10
    return cfg


def test_evaluate_end_to_end_tiny(tmp_path):
    from typer.testing import CliRunner

    from pi2i.cli import app
    from pi2i.evaluation.gate import kfp_metrics

    cfg = _small_cfg()
    p = _pipeline(tmp_path, cfg)
    (tmp_path / "cfg.yaml").write_text("swing: {top_t: 200}\ntrain: {epochs: 1, patience: 0, max_batches_per_epoch: 10}\n")
    live = tmp_path / "live.json"
    live.write_text(json.dumps({"methods": {"pi2i": {"hr": {"100": 0.0}}}, "version": "v-old"}))
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["evaluate", "--train", p["train"], "--test", p["test"], "--i2i", p["i2i"],
                                   "--model", p["model"], "--out", str(out), "--config", str(tmp_path / "cfg.yaml"),
                                   "--live-metrics", str(live), "--samples", p["samples"],
                                   "--ablation", f"again={p['model']}"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert {"popularity", "swing", "swing_relaxed", "swing_pool", "pi2i", "again"} <= set(m["methods"])
    ks = [str(k) for k in m["ks"]]
    assert ks and all(int(k) <= m["data"]["train_items_clicked"] for k in ks)
    for name, mm in m["methods"].items():
        assert set(mm["hr"]) == set(ks)
        assert all(0.0 <= v <= 1.0 for v in mm["hr"].values())
        if name != "swing_pool":  # HR@K is non-decreasing in K
            vals = [mm["hr"][k] for k in ks]
            assert vals == sorted(vals)
    # the same model evaluated twice gives the same numbers (identical users, deterministic scorer)
    assert m["methods"]["again"]["hr"] == pytest.approx(m["methods"]["pi2i"]["hr"])
    # PI2I ranks within the pool (no popularity padding in evaluation): the pool ceiling bounds it at every K
    for k in ks:
        assert m["methods"]["pi2i"]["hr"][k] <= m["methods"]["swing_pool"]["hr"][k] + 1e-9
        assert m["methods"]["swing_relaxed"]["hr"][k] <= m["methods"]["swing_pool"]["hr"][k] + 1e-9
    g = m["gate"]
    assert g["k"] in m["ks"] and g["live_hr"] == 0.0 and isinstance(g["passed"], bool) and g["reason"]
    assert m["samples"] and "drop_rate" in m["samples"]
    html = (out / "report.html").read_text()
    assert "Gate:" in html and "data:image/png;base64," in html and "http" not in html.split("<body>")[1][:2000]
    assert (out / "report.md").read_text().startswith("# PI2I evaluation report")
    flat = kfp_metrics(m)
    assert flat["gate_passed"] in (0.0, 1.0) and f"hr_pi2i_at_{ks[0]}" in flat

    # --registry: the live version's recorded metrics become the gate's baseline (same model: no regression)
    from pi2i.publish.registry import publish

    reg = str(tmp_path / "registry")
    version = publish(reg, p["i2i"], p["model"], metrics_uri=str(out / "metrics.json"), promote=True)
    first = m["methods"]["pi2i"]["hr"]
    res = CliRunner().invoke(app, ["evaluate", "--train", p["train"], "--test", p["test"], "--i2i", p["i2i"],
                                   "--model", p["model"], "--out", str(tmp_path / "r2"), "--registry", reg,
                                   "--config", str(tmp_path / "cfg.yaml")])
    assert res.exit_code == 0, res.output
    g2 = json.loads((tmp_path / "r2" / "metrics.json").read_text())["gate"]
    assert g2["live_version"] == version and g2["live_hr"] == pytest.approx(first[str(g2["k"])])
    assert g2["within_live_tolerance"] is True and g2["passed"] == g2["beats_swing"]

    # --fail-on-gate turns a failed gate into exit 1 (an impossible live record forces the failure)
    live.write_text(json.dumps({"methods": {"pi2i": {"hr": {k: 1.0 for k in ks}}}}))
    res = CliRunner().invoke(app, ["evaluate", "--train", p["train"], "--test", p["test"], "--i2i", p["i2i"],
                                   "--model", p["model"], "--out", str(out), "--config", str(tmp_path / "cfg.yaml"),
                                   "--live-metrics", str(live), "--fail-on-gate", "--max-users", "50"])
    assert res.exit_code == 1, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["gate"]["passed"] is False and "REGRESSION" in m["gate"]["reason"]
    assert m["data"]["test_users"] <= 50


def test_evaluate_bad_ablation_is_user_error(tmp_path):
    from typer.testing import CliRunner

    from pi2i.cli import app

    res = CliRunner().invoke(app, ["evaluate", "--train", "a", "--test", "b", "--i2i", "c", "--out",
                                   str(tmp_path), "--ablation", "noequals"])
    assert res.exit_code != 0


@pytest.mark.slow
def test_evaluate_taobao_head_runs(tmp_path):
    """The real, very sparse Taobao head: the whole evaluation runs and reports without error."""
    csv = SHARED / "data" / "taobao" / "userbehavior_head.csv"
    if not csv.exists():
        pytest.skip(f"Taobao sample not present at {csv}")
    from pi2i.evaluation.evaluate import evaluate
    from pi2i.data.loaders import load

    cfg = _small_cfg()
    cfg.eval.max_users = 300  # a seeded sample keeps the test short; the full head runs in the acceptance check
    load("taobao", str(csv), str(tmp_path / "data"), cfg=cfg)
    p = _pipeline(tmp_path, cfg, events_dir=str(tmp_path / "data"))
    m = evaluate(p["train"], p["test"], p["i2i"], p["model"], str(tmp_path / "report"), cfg)
    assert m["data"]["test_users"] > 0 and "pi2i" in m["methods"]
    assert (tmp_path / "report" / "report.html").exists()
