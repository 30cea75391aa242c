"""Swing exactness (vs a brute-force reference written from the definition), caps, Ray sharding, CLI contract."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi2i.config import SwingConfig
from pi2i.contracts import EVENTS_SCHEMA, I2I_SCHEMA
from pi2i.ibs.swing import build_swing

BASE_US = 1_700_000_000_000_000


def make_events(rows: list[tuple[int, int, int]], behavior: str | list[str] = "click") -> pa.Table:
    """(user, item, t_seconds) -> events table of the contract."""
    u = [r[0] for r in rows]
    i = [r[1] for r in rows]
    ts = [BASE_US + r[2] * 1_000_000 for r in rows]
    beh = behavior if isinstance(behavior, list) else [behavior] * len(rows)
    return pa.table({"user_id": pa.array(u, pa.int64()), "item_id": pa.array(i, pa.int64()),
                     "behavior": pa.array(beh, pa.string()),
                     "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC"))}, schema=EVENTS_SCHEMA)


def brute_swing(rows: list[tuple[int, int, int]], alpha: float) -> dict[int, dict[int, float]]:
    """s(i, j) = Σ_{u<v ∈ U_i ∩ U_j} w_u w_v / (alpha + |I_u ∩ I_v|), w_u = |I_u|^-1/2, straight from the text."""
    I: dict[int, set[int]] = defaultdict(set)
    for u, i, _ in rows:
        I[u].add(i)
    U: dict[int, set[int]] = defaultdict(set)
    for u, items in I.items():
        for i in items:
            U[i].add(u)
    w = {u: 1.0 / math.sqrt(len(items)) for u, items in I.items()}
    out: dict[int, dict[int, float]] = defaultdict(dict)
    for i, users_i in U.items():
        for j, users_j in U.items():
            if i == j:
                continue
            common = sorted(users_i & users_j)
            s = 0.0
            for a in range(len(common)):
                for b in range(a + 1, len(common)):
                    u, v = common[a], common[b]
                    s += w[u] * w[v] / (alpha + len(I[u] & I[v]))
            if len(common) >= 2:
                out[i][j] = s
    return out


def rows_of(table: pa.Table) -> dict[int, list[tuple[int, float, int]]]:
    d = table.to_pydict()
    out: dict[int, list] = defaultdict(list)
    for t, j, s, r in zip(d["trigger"], d["target"], d["score"], d["rank"]):
        out[t].append((j, s, r))
    return out


def assert_matches_brute(table: pa.Table, rows, alpha: float, top_t: int) -> None:
    ref = brute_swing(rows, alpha)
    got = rows_of(table)
    assert table.schema == I2I_SCHEMA
    assert set(got) == {i for i, r in ref.items() if r}
    for i, row in got.items():
        full = ref[i]
        assert len(row) == min(top_t, len(full)), (i, row, full)
        assert [r for _, _, r in row] == list(range(1, len(row) + 1))
        targets = [j for j, _, _ in row]
        assert len(set(targets)) == len(targets) and i not in targets
        for j, s, _ in row:
            assert j in full
            assert s == pytest.approx(full[j], rel=1e-5, abs=1e-7)
        # order: non-increasing score, equal scores by ascending target id
        for (j1, s1, _), (j2, s2, _) in itertools.pairwise(row):
            assert s1 > s2 or (s1 == s2 and j1 < j2)
        # the cut keeps the best: nothing left out scores more than the last kept (up to float tolerance)
        last = row[-1][1]
        for j, s in full.items():
            if j not in targets:
                assert s <= last * (1 + 1e-5) + 1e-7


# small random graphs: few users/items so co-occurrence, ties and duplicates are common
graphs = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 9), st.integers(0, 50)), min_size=1, max_size=70)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=graphs, alpha=st.sampled_from([0.0, 0.5, 1.0, 3.0]), top_t=st.sampled_from([1, 2, 3, 5, 100]))
def test_exact_vs_bruteforce(rows, alpha, top_t):
    cfg = SwingConfig(top_t=top_t, alpha=alpha)
    table, stats = build_swing(make_events(rows), cfg)
    assert_matches_brute(table, rows, alpha, top_t)
    assert stats["triggers_with_row"] == len(set(table.column("trigger").to_pylist()))


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40), st.integers(0, 1000)),
                     min_size=50, max_size=600))
def test_exact_vs_bruteforce_larger(rows):
    table, _ = build_swing(make_events(rows), SwingConfig(top_t=7, alpha=1.0))
    assert_matches_brute(table, rows, 1.0, 7)


def test_known_tiny_graph():
    # u0: {1,2}, u1: {1,2,3}, u2: {1,3}; u3 has a single item; duplicates of (u0, 1)
    rows = [(0, 1, 0), (0, 1, 5), (0, 2, 1), (1, 1, 2), (1, 2, 3), (1, 3, 4), (2, 1, 5), (2, 3, 6), (3, 1, 7)]
    table, _ = build_swing(make_events(rows), SwingConfig(top_t=10, alpha=1.0))
    got = rows_of(table)
    w0, w1, w2 = 2 ** -0.5, 3 ** -0.5, 2 ** -0.5
    # s(1,2): users {0,1}: |I0 ∩ I1| = 2
    assert got[1][0][0] == 2 and got[1][0][1] == pytest.approx(w0 * w1 / 3)
    assert got[1][1][0] == 3 and got[1][1][1] == pytest.approx(w1 * w2 / 3)
    assert got[2] == [(1, pytest.approx(w0 * w1 / 3), 1)]
    # ties: s(1,2) == s(1,3) mathematically here -> smaller id first (checked exactly on float32 scores)
    assert got[1][0][1] == got[1][1][1]


def test_behaviors_filter():
    rows = [(0, 1, 0), (0, 2, 1), (1, 1, 2), (1, 2, 3)]
    ev = make_events(rows, ["click", "click", "buy", "buy"])
    t_click, _ = build_swing(ev, SwingConfig(behaviors=["click"]))
    assert t_click.num_rows == 0
    t_all, _ = build_swing(ev, SwingConfig())
    assert t_all.num_rows == 2


def test_max_items_per_user_keeps_most_recent():
    # u0 clicks 1,2,3,4 (4 most recent, 1 oldest); u1 clicks 1,2,3,4 in reverse time order
    rows = [(0, 1, 0), (0, 2, 1), (0, 3, 2), (0, 4, 3), (1, 4, 0), (1, 3, 1), (1, 2, 2), (1, 1, 3),
            (0, 1, -5)]  # a duplicate older click of (0,1) does not make it recent
    table, _ = build_swing(make_events(rows), SwingConfig(max_items_per_user=2, top_t=10))
    # u0 keeps {3,4}, u1 keeps {1,2}: no common pair -> empty
    assert table.num_rows == 0
    rows2 = rows + [(1, 4, 10)]  # u1 re-clicks 4 last: keeps {4, 1} (2 was at t=2, 1 at t=3)
    table2, _ = build_swing(make_events(rows2), SwingConfig(max_items_per_user=2, top_t=10))
    assert table2.num_rows == 0
    rows3 = rows + [(1, 3, 10), (1, 4, 11)]  # u1 keeps {3,4} like u0
    table3, _ = build_swing(make_events(rows3), SwingConfig(max_items_per_user=2, top_t=10))
    got = rows_of(table3)
    # equals brute force on the capped graph
    ref = brute_swing([(0, 3, 0), (0, 4, 0), (1, 3, 0), (1, 4, 0)], 1.0)
    assert got[3][0][0] == 4 and got[3][0][1] == pytest.approx(ref[3][4])


def test_max_users_per_item_deterministic_sample():
    rng = np.random.default_rng(3)
    rows = [(int(u), int(i), int(t)) for u, i, t in zip(rng.integers(0, 200, 3000), rng.integers(0, 15, 3000),
                                                         rng.integers(0, 10_000, 3000))]
    ev = make_events(rows)
    a, sa = build_swing(ev, SwingConfig(max_users_per_item=20, seed=1, top_t=50))
    b, _ = build_swing(ev.take(np.random.default_rng(0).permutation(ev.num_rows)),
                       SwingConfig(max_users_per_item=20, seed=1, top_t=50))
    c, _ = build_swing(ev, SwingConfig(max_users_per_item=20, seed=2, top_t=50))
    full, sf = build_swing(ev, SwingConfig(top_t=50))
    assert a.equals(b)  # same seed, any input order -> same output
    assert not a.equals(c)  # another seed -> another sample
    assert sa["edges_sampled"] == 15 * 20 < sf["edges_sampled"]
    assert sa["user_pairs_visited"] == 15 * 20 * 19 // 2
    # a cap above every item's degree is the exact result
    big, _ = build_swing(ev, SwingConfig(max_users_per_item=10_000, top_t=50))
    assert big.equals(full)


def test_user_sample_semantics_vs_bruteforce():
    """With the user cap, pairs come from the sampled U_i ∩ U_j, while |I_u ∩ I_v| and w_u use the full I_u."""
    from pi2i.ibs.swing import prepare_graph

    rng = np.random.default_rng(5)
    rows = [(int(u), int(i), int(t)) for u, i, t in zip(rng.integers(0, 40, 400), rng.integers(0, 12, 400),
                                                         rng.integers(0, 100, 400))]
    cfg = SwingConfig(max_users_per_item=6, seed=4, top_t=100, alpha=0.5)
    ev = make_events(rows)
    g = prepare_graph(ev, cfg)
    sampled: dict[int, set[int]] = {}
    users = np.unique([r[0] for r in rows])
    for i in range(g.n_items):
        sampled[int(g.item_ids[i])] = {int(users[u]) for u in g.item_users[g.item_indptr[i]:g.item_indptr[i + 1]]}
    I: dict[int, set[int]] = defaultdict(set)
    for u, i, _ in rows:
        I[u].add(i)
    ref: dict[int, dict[int, float]] = defaultdict(dict)
    for i, users_i in sampled.items():
        for j, users_j in sampled.items():
            if i != j:
                c = sorted(users_i & users_j)
                if len(c) >= 2:
                    ref[i][j] = sum(len(I[u]) ** -0.5 * len(I[v]) ** -0.5 / (0.5 + len(I[u] & I[v]))
                                    for x, u in enumerate(c) for v in c[x + 1:])
    got = rows_of(build_swing(ev, cfg)[0])
    assert set(got) == {i for i in ref if ref[i]}
    for i, row in got.items():
        assert {j for j, _, _ in row} == set(ref[i])
        for j, s, _ in row:
            assert s == pytest.approx(ref[i][j], rel=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        build_swing(make_events([]), SwingConfig())
    with pytest.raises(ValueError, match="behaviour"):
        build_swing(make_events([(0, 1, 0)], "buy"), SwingConfig(behaviors=["click"]))
    cfg = SwingConfig()
    with pytest.raises(ValueError):
        cfg.top_t = 0  # validate_assignment
    with pytest.raises(ValueError, match="top_t"):
        build_swing(make_events([(0, 1, 0)]), SwingConfig.model_construct(top_t=0, alpha=1.0,
                                                                          behaviors=["click"],
                                                                          max_items_per_user=0,
                                                                          max_users_per_item=0, seed=0))


def _random_events(seed: int, users: int, items: int, n: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    it = np.minimum(rng.zipf(1.3, n) - 1, items - 1)
    us = rng.integers(0, users, n)
    ts = rng.integers(0, 100_000, n)
    return make_events(list(zip(us.tolist(), it.tolist(), ts.tolist())))


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()  # an earlier test (Ray Train) may have left a local cluster up
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_workers_identical(ray_local):
    ev = _random_events(7, 400, 300, 8000)
    cfg = SwingConfig(top_t=20)
    one, s1 = build_swing(ev, cfg, workers=1)
    two, s2 = build_swing(ev, cfg, workers=2)
    assert one.num_rows > 0
    assert one.equals(two)
    assert s1["pair_item_updates"] == s2["pair_item_updates"]


def test_chunking_identical():
    """Output does not depend on how triggers are batched/chunked across threads."""
    from pi2i.ibs.swing import _rows, prepare_graph

    ev = _random_events(11, 300, 200, 6000)
    cfg = SwingConfig(top_t=15)
    g = prepare_graph(ev, cfg)
    trig = np.flatnonzero(np.diff(g.item_indptr) >= 2)
    a = _rows(g, trig, cfg)
    b = _rows(g, trig, cfg, chunks_per_thread=1, batch_rows=7)
    for x, y in zip(a[1:4], b[1:4]):
        np.testing.assert_array_equal(x, y)


def test_cli_contract(tmp_path: Path):
    ev = _random_events(3, 200, 100, 3000)
    events = tmp_path / "events.parquet"
    pq.write_table(ev, events)
    out = tmp_path / "i2i.parquet"
    cmd = [sys.executable, "-c", "from pi2i.cli import main; main()", "swing", "--events", str(events),
           "--out", str(out), "--top-t", "5", "--alpha", "0.5", "--max-items-per-user", "0",
           "--max-users-per-item", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out)
    assert t.schema.names == ["trigger", "target", "score", "rank"]
    assert t.schema.field("trigger").type == pa.int64() and t.schema.field("rank").type == pa.int32()
    ref, _ = build_swing(ev, SwingConfig(top_t=5, alpha=0.5))
    assert t.equals(ref)
    stats = json.loads((tmp_path / "i2i.parquet.stats.json").read_text())
    assert stats["triggers_with_row"] > 0 and "wall_s" in stats and "user_pairs_visited" in stats
    # config file + flag override
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text("swing:\n  top_t: 3\n  alpha: 0.5\n")
    r = subprocess.run(cmd[:3] + ["swing", "--events", str(events), "--out", str(out), "--config", str(cfgf)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).column("rank").to_numpy().max() == 3
    r = subprocess.run(cmd[:3] + ["swing", "--events", str(events), "--out", str(out), "--config", str(cfgf),
                                  "--top-t", "4"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and pq.read_table(out).column("rank").to_numpy().max() == 4
    # errors: one line, exit 2
    r = subprocess.run(cmd[:3] + ["swing", "--events", str(events), "--out", str(out), "--top-t", "0"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "top" in r.stderr.lower() and "Traceback" not in r.stderr
    empty = tmp_path / "empty.parquet"
    pq.write_table(make_events([]), empty)
    r = subprocess.run(cmd[:3] + ["swing", "--events", str(empty), "--out", str(out)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 2 and "empty" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------- truncation study
def brute_sweep(train_rows, test_rows, table: pa.Table, ladder, L):
    rows = rows_of(table)
    hist: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for u, i, t in train_rows:
        hist[u].append((t, i))
    after: dict[int, set[int]] = defaultdict(set)
    for u, i, _ in test_rows:
        after[u].add(i)
    out = []
    users = [u for u in after if u in hist]
    for T in ladder:
        hrs, sizes = [], []
        for u in users:
            latest: dict[int, int] = {}
            for t, i in hist[u]:
                latest[i] = max(latest.get(i, t), t)
            trig = sorted(latest, key=lambda i: -latest[i])[:L]
            pool = {j for i in trig for j, _, r in rows.get(i, []) if r <= T}
            hrs.append(len(pool & after[u]) / len(after[u]))
            sizes.append(len(pool))
        out.append((T, sum(hrs) / len(hrs), sum(sizes) / len(sizes)))
    return out


def test_sweep_matches_bruteforce():
    from pi2i.ibs.sweep import sweep

    rng = np.random.default_rng(2)
    n = 3000
    us, it, ts = rng.integers(0, 150, n), np.minimum(rng.zipf(1.5, n) - 1, 119), rng.permutation(n)
    rows = list(zip(us.tolist(), it.tolist(), ts.tolist()))
    train = [r for r in rows if r[2] < 2500]
    test = [r for r in rows if r[2] >= 2500]
    i2i, _ = build_swing(make_events(train), SwingConfig(top_t=40))
    max_len = max(len(r) for r in rows_of(i2i).values())
    from pi2i.ibs.sweep import sweep_summary

    table = sweep(make_events(train), make_events(test), i2i, t_ladder=[1, 3, 10, 1000], num_triggers=4)
    summary = sweep_summary(table)
    d = table.to_pydict()
    assert d["T"] == [1, 3, 10, max_len]  # the ladder is capped by the longest row
    ref = brute_sweep(train, test, i2i, d["T"], 4)
    for (T, hr, size), h, s in zip(ref, d["hr"], d["mean_pool_size"]):
        assert h == pytest.approx(hr) and s == pytest.approx(size)
    assert all(a <= b for a, b in zip(d["hr"], d["hr"][1:]))
    assert summary["users"] == d["users"][0] > 0
    # excluding re-clicks of history items
    t2 = sweep(make_events(train), make_events(test), i2i, t_ladder=[1, 3, 10, 1000], num_triggers=4,
               exclude_history=True)
    seen = {(u, i) for u, i, _ in train}
    ref2 = brute_sweep(train, [r for r in test if (r[0], r[1]) not in seen], i2i, d["T"], 4)
    for (T, hr, size), h, s in zip(ref2, t2.column("hr").to_pylist(), t2.column("mean_pool_size").to_pylist()):
        assert h == pytest.approx(hr) and s == pytest.approx(size)


def test_sweep_cli(tmp_path: Path):
    from pi2i.contracts import write_parquet

    rng = np.random.default_rng(4)
    n = 4000
    us, it, ts = rng.integers(0, 200, n), np.minimum(rng.zipf(1.4, n) - 1, 149), rng.permutation(n)
    rows = list(zip(us.tolist(), it.tolist(), ts.tolist()))
    write_parquet(make_events([r for r in rows if r[2] < 3300]), str(tmp_path / "s" / "train" / "events.parquet"))
    write_parquet(make_events([r for r in rows if r[2] >= 3300]), str(tmp_path / "s" / "test" / "events.parquet"))
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-c", "from pi2i.cli import main; main()", "swing", "sweep", "--train",
                        str(tmp_path / "s" / "train"), "--test", str(tmp_path / "s" / "test"), "--out", str(out),
                        "--ladder", "5,10,50,100", "--exclude-history"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    for f in ("sweep.parquet", "sweep.csv", "sweep.png", "sweep.json"):
        assert (out / f).stat().st_size > 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["users"] > 0 and len(summary["rows"]) >= 2
    t = pq.read_table(out / "sweep.parquet")
    assert t.column_names == ["T", "hr", "mean_pool_size", "median_pool_size", "users"]
