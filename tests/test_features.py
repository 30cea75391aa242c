"""Feast round trip on real Feast 0.67 (duckdb offline, sqlite online; Redis when a redis-server exists):
offline tables equal a pandas reference computed from the events, every entity reads back online, a
point-in-time historical join returns every entity row with the right values, a pushed click reads back through
FeastHistoryStore. One ingest is shared by the module (Feast's import + apply cost seconds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pi2i.contracts import TS_TYPE, write_parquet
from pi2i.data.features import (
    FeastHistoryStore,
    build_tables,
    historical_features,
    ingest,
    online_features,
    recent_items_table,
)

REPO_TEMPLATE = Path(__file__).resolve().parents[1] / "feature_repo"
L = 5
T0 = 1_700_000_000_000_000  # µs


def make_data(d: Path, seed: int = 0, users: int = 60, items: int = 90, events: int = 1500,
              with_users: bool = True) -> None:
    """A small data dir of the contract with the awkward cases: equal timestamps within a user, a user with
    fewer than L events, catalogue items without events, null side info, an unsupported profile column."""
    rng = np.random.default_rng(seed)
    u = rng.integers(1, users + 1, events)
    it = rng.integers(1, items + 1, events)
    b = rng.choice(["click", "cart", "fav", "buy"], events, p=[0.8, 0.1, 0.06, 0.04])
    ts = T0 + rng.integers(0, 5 * 86_400 * 10**6, events)
    ts[:6] = T0 + 10**9  # ties (order within a user follows the file)
    u = np.r_[u, 1000, 1000]  # user with 2 events only
    it = np.r_[it, 7, 8]
    b = np.concatenate([b, ["click", "buy"]])
    ts = np.r_[ts, T0 + 5, T0 + 6]
    d.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.table({"user_id": pa.array(u, pa.int64()), "item_id": pa.array(it, pa.int64()),
                            "behavior": pa.array(b), "ts": pa.array(ts, pa.int64()).cast(TS_TYPE)}),
                  str(d / "events.parquet"))
    ids = np.arange(1, items + 11, dtype=np.int64)  # 10 catalogue items never seen in events
    brand = pa.array(np.where(ids % 13 == 0, None, ids % 7), pa.int64())  # some nulls
    write_parquet(pa.table({"item_id": ids, "category_id": ids % 5, "brand_id": brand,
                            "price": ids * 0.5, "title": [f"item {i}" for i in ids]}),
                  str(d / "items.parquet"))
    if with_users:
        uid = np.r_[np.arange(1, users + 1), 1000]
        write_parquet(pa.table({"user_id": uid, "age": (uid % 50 + 18).astype(np.int32),
                                "gender": np.where(uid % 2 == 0, "f", "m"),
                                "tags": pa.array([[1, 2]] * len(uid), pa.list_(pa.int64()))}),
                      str(d / "users.parquet"))


def reference(d: Path, history_len: int = L) -> dict[str, pd.DataFrame]:
    """What the views must hold, computed in pandas from the events (independent of pi2i.data.features)."""
    ev = pd.read_parquet(d / "events.parquet")
    ev["ts_us"] = ev["ts"].astype("int64") if ev["ts"].dt.unit == "us" else ev["ts"].dt.as_unit("us").astype("int64")
    ev["row"] = np.arange(len(ev))
    ev = ev.sort_values(["user_id", "ts_us", "row"])
    last = ev.groupby("user_id").tail(history_len)
    recent = last.groupby("user_id").agg(recent_items=("item_id", list), recent_ts=("ts_us", list),
                                         last_ts=("ts_us", "max")).reset_index()
    counts = pd.crosstab(ev["item_id"], ev["behavior"]).reindex(columns=["click", "cart", "fav", "buy"],
                                                                 fill_value=0)
    pop = pd.DataFrame({"num_events": ev.groupby("item_id").size(),
                        "num_users": ev.groupby("item_id")["user_id"].nunique(),
                        "num_clicks": counts["click"], "num_carts": counts["cart"],
                        "num_favs": counts["fav"], "num_buys": counts["buy"]})
    items = pd.read_parquet(d / "items.parquet")
    pop = pop.reindex(sorted(set(pop.index) | set(items["item_id"])), fill_value=0).rename_axis("item_id")
    return {"recent": recent, "pop": pop.reset_index(), "items": items,
            "t0": int(ev["ts_us"].min()), "t1": int(ev["ts_us"].max())}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast")
    data = root / "data"
    make_data(data)
    template = root / "template"  # a copy: the test never writes near the source tree
    shutil.copytree(REPO_TEMPLATE, template, ignore=shutil.ignore_patterns("data", "__pycache__"))
    before = sorted(p.name for p in template.iterdir())
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PI2I_FEAST_DATA", raising=False)  # all Feast state under the working repo
        summary = ingest(str(data), template, work_dir=root / "work", history_len=L)
        assert sorted(p.name for p in template.iterdir()) == before, "ingest wrote into the template"
        yield {"root": root, "data": data, "repo": Path(summary["repo"]), "summary": summary,
               "ref": reference(data)}


def test_recent_items_table_edges():
    ev = pa.table({"user_id": pa.array([2, 1, 1, 1, 2], pa.int64()), "item_id": pa.array([9, 3, 4, 4, 8], pa.int64()),
                   "behavior": ["click"] * 5, "ts": pa.array([5, 2, 1, 2, 5], pa.int64()).cast(TS_TYPE)})
    t = recent_items_table(ev, 2)
    assert t.column("user_id").to_pylist() == [1, 2]
    assert t.column("recent_items").to_pylist() == [[3, 4], [9, 8]]  # ties keep file order
    assert t.column("recent_ts").to_pylist() == [[2, 2], [5, 5]]
    assert t.column("event_timestamp").cast(pa.int64()).to_pylist() == [2, 5]
    # user 1 in time order is 4@1, 3@2, 4@2: no back-to-back repeat, dedup keeps all three
    assert recent_items_table(ev, 5, dedup_consecutive=True).column("recent_items").to_pylist() == [[4, 3, 4], [9, 8]]
    ev2 = ev.set_column(1, "item_id", pa.array([9, 4, 4, 4, 9], pa.int64()))
    assert recent_items_table(ev2, 5, dedup_consecutive=True).column("recent_items").to_pylist() == [[4], [9]]
    empty = recent_items_table(ev.slice(0, 0), 3)
    assert empty.num_rows == 0 and empty.schema.field("recent_items").type == pa.list_(pa.int64())
    with pytest.raises(ValueError):
        recent_items_table(ev, 0)


def test_offline_tables_match_events(world):
    tables, schema = build_tables(str(world["data"]), history_len=L)
    ref = world["ref"]
    rec = tables["user_recent_items"].to_pandas()
    assert rec["user_id"].tolist() == ref["recent"]["user_id"].tolist()
    assert [list(x) for x in rec["recent_items"]] == ref["recent"]["recent_items"].tolist()
    assert [list(x) for x in rec["recent_ts"]] == ref["recent"]["recent_ts"].tolist()
    assert tables["user_recent_items"].schema.field("event_timestamp").type == TS_TYPE
    assert (tables["user_recent_items"].column("event_timestamp").cast(pa.int64()).to_numpy()
            == ref["recent"]["last_ts"].to_numpy()).all()
    pop = tables["item_popularity"].to_pandas().set_index("item_id")
    exp = ref["pop"].set_index("item_id")
    assert list(pop.index) == list(exp.index)
    for col in exp.columns:
        assert (pop[col].to_numpy() == exp[col].to_numpy()).all(), col
    assert schema["item_profile"] == {"category_id": "int64", "brand_id": "int64", "price": "double"}
    assert schema["user_profile"] == {"age": "int64", "gender": "string"}
    assert [c.split(" ")[0] for c in schema["skipped_columns"]] == ["tags"]  # list type: no Feast mapping
    assert world["summary"]["rows"] == {"item_popularity": len(exp), "item_profile": 100, "user_profile": 61,
                                        "user_recent_items": 61}
    assert world["summary"]["entities_materialized"] == {"user": 61, "item": len(exp)}


def test_online_features_every_entity(world):
    repo, ref = world["repo"], world["ref"]
    users = ref["recent"]["user_id"].tolist()
    got = online_features(repo, ["user_recent_items:recent_items", "user_recent_items:recent_ts",
                                 "user_profile:age", "user_profile:gender"], {"user_id": users})
    assert got["recent_items"] == ref["recent"]["recent_items"].tolist()
    assert got["recent_ts"] == ref["recent"]["recent_ts"].tolist()
    assert got["age"] == [u % 50 + 18 for u in users]
    assert got["gender"] == ["f" if u % 2 == 0 else "m" for u in users]

    items = ref["pop"]["item_id"].tolist()
    got = online_features(repo, ["item_popularity:num_events", "item_popularity:num_users",
                                 "item_popularity:num_buys", "item_profile:category_id",
                                 "item_profile:brand_id", "item_profile:price"], {"item_id": items})
    assert got["num_events"] == ref["pop"]["num_events"].tolist()
    assert got["num_users"] == ref["pop"]["num_users"].tolist()
    assert got["num_buys"] == ref["pop"]["num_buys"].tolist()
    side = ref["items"].set_index("item_id").reindex(items)
    assert got["category_id"] == side["category_id"].tolist()
    assert got["price"] == pytest.approx(side["price"].tolist())
    assert got["brand_id"] == [None if i % 13 == 0 else i % 7 for i in items]  # nulls survive


def test_historical_join_keeps_every_row(world):
    """Entity rows in == rows out, in order, values point-in-time correct (incl. duplicates and misses)."""
    repo, ref = world["repo"], world["ref"]
    rec = ref["recent"]
    last = pd.to_datetime(rec["last_ts"], unit="us", utc=True)
    rng = np.random.default_rng(1)
    later = last + pd.to_timedelta(rng.integers(0, 10**9, len(rec)), unit="us")
    edf = pd.DataFrame({
        "user_id": np.r_[rec["user_id"], rec["user_id"], rec["user_id"][:10], [424242]],
        "event_timestamp": pd.concat([pd.Series(later), pd.Series(last - pd.Timedelta(microseconds=1)),
                                      pd.Series(later[:10]), pd.Series([later.iloc[0]])], ignore_index=True),
    })
    perm = rng.permutation(len(edf))
    edf = edf.iloc[perm].reset_index(drop=True)
    out = historical_features(repo, edf, ["user_recent_items:recent_items", "user_recent_items:recent_ts",
                                          "user_profile:age"])
    assert len(out) == len(edf)
    assert out["user_id"].tolist() == edf["user_id"].tolist()
    assert (out["event_timestamp"] == edf["event_timestamp"]).all()
    orig = np.argsort(perm)  # where each constructed row went
    n = len(rec)
    exp_items = rec["recent_items"].tolist()
    got = out["recent_items"].tolist()
    for k in range(n):  # at or after the user's last event: the window
        assert list(got[orig[k]]) == exp_items[k]
        assert list(out["recent_ts"][orig[k]]) == rec["recent_ts"][k]
    for k in range(10):  # duplicated entity rows each get their row
        assert list(got[orig[2 * n + k]]) == exp_items[k]
    missing = [got[orig[n + k]] for k in range(n)] + [got[orig[-1]]]  # 1 µs too early; an unknown user
    assert all(x is None or (isinstance(x, float) and np.isnan(x)) for x in missing)
    assert pd.isna(out["age"][orig[-1]])
    ages = out["age"].to_numpy()[orig[n:2 * n]]  # the static profile is valid from the start of the data
    assert ages.tolist() == (rec["user_id"] % 50 + 18).tolist()

    items = ref["pop"]["item_id"]
    end = pd.Timestamp(ref["t1"], unit="us", tz="UTC")
    idf = pd.DataFrame({"item_id": np.r_[items, items],
                        "event_timestamp": [end] * len(items) + [end - pd.Timedelta(seconds=1)] * len(items)})
    out = historical_features(repo, idf, ["item_popularity:num_events", "item_profile:category_id"])
    assert len(out) == len(idf)
    m = len(items)
    assert out["num_events"][:m].tolist() == ref["pop"]["num_events"].tolist()
    assert out["num_events"][m:].isna().all()  # popularity is as of the end of the data only
    cats = ref["items"].set_index("item_id")["category_id"].reindex(items).tolist()
    assert out["category_id"][m:].tolist() == cats  # side info is static: valid before the end too


def test_history_store_push_roundtrip(world):
    repo, rec = world["repo"], world["ref"]["recent"]
    hs = FeastHistoryStore(repo)
    assert hs.history_len == L
    u = int(rec["user_id"][3])
    items, ts = hs.get(u)
    assert items.dtype == np.int64 and ts.dtype == np.int64
    assert items.tolist() == rec["recent_items"][3] and ts.tolist() == rec["recent_ts"][3]

    now = int(rec["last_ts"].max()) + 10**6
    hs.append(u, 777, now)
    items, ts = hs.get(u)
    assert items.tolist() == rec["recent_items"][3][1:] + [777] and ts[-1] == now and len(items) == L
    hs.append(u, 778, now - 1)  # late click lands in time order, window stays L
    items, ts = hs.get(u)
    assert items.tolist()[-2:] == [778, 777] and (np.diff(ts) >= 0).all() and len(items) == L

    other = FeastHistoryStore(repo)  # a second reader (another serving replica) sees the push
    assert other.get(u)[0].tolist() == items.tolist()
    assert other.get(99_999_999)[0].size == 0  # unknown user: empty, not an error
    other.append(99_999_999, 5, now)
    assert hs.get(99_999_999)[0].tolist() == [5]
    assert [a.tolist() for a, _ in hs.get_many([99_999_999, u])] == [[5], items.tolist()]
    from pi2i.online.history import HistoryStore
    assert isinstance(hs, HistoryStore)

    dd = FeastHistoryStore(repo, dedup_consecutive=True)  # as ingest with --dedup-consecutive
    dd.append(u, 779, now + 10)
    dd.append(u, 779, now + 20)  # a back-to-back repeat: the window keeps the first
    items, ts = hs.get(u)
    assert items.tolist()[-2:] == [777, 779] and ts[-1] == now + 10


def test_cli_show(world):
    from typer.testing import CliRunner

    from pi2i.cli import app
    r = CliRunner().invoke(app, ["features", "show", "--user", "1000", "--repo", str(world["repo"])])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output.strip().splitlines()[-1])
    assert row["recent_items"] == [7, 8] and row["gender"] == "f"
    r = CliRunner().invoke(app, ["features", "show", "--repo", str(world["repo"])])
    assert r.exit_code != 0


def test_reingest_same_workdir_without_users_via_cli(world, tmp_path):
    """A second ingest into the same working repo (daily refresh) drops the user_profile view."""
    from typer.testing import CliRunner

    from pi2i.cli import app
    data = tmp_path / "d2"
    make_data(data, seed=3, with_users=False)
    r = CliRunner().invoke(app, ["features", "ingest", "--data", str(data), "--repo", str(world["repo"]),
                                 "--history-len", "3", "--no-dedup-consecutive", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["views"] == ["item_popularity", "item_profile", "user_recent_items"]
    assert summary["history_len"] == 3
    from pi2i.data.features import feature_refs
    assert "user_profile" not in feature_refs(world["repo"])
    ref = reference(data, 3)
    hs = FeastHistoryStore(world["repo"])
    assert hs.history_len == 3
    assert [a.tolist() for a, _ in hs.get_many(ref["recent"]["user_id"].tolist())] == \
        ref["recent"]["recent_items"].tolist()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary on this machine")
def test_redis_online_store(world, tmp_path, monkeypatch, free_port):
    """The documented Redis alternative: same definitions, feature_store.redis.yaml, a throwaway redis-server."""
    port = free_port
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        monkeypatch.setenv("PI2I_REDIS_CONNECTION", f"127.0.0.1:{port},db=0")
        summary = ingest(str(world["data"]), REPO_TEMPLATE, work_dir=tmp_path / "work", history_len=L,
                         store_yaml=REPO_TEMPLATE / "feature_store.redis.yaml")
        assert summary["rows"]["user_recent_items"] == 61
        assert client.dbsize() > 0
        rec = world["ref"]["recent"]
        hs = FeastHistoryStore(summary["repo"])
        assert [a.tolist() for a, _ in hs.get_many(rec["user_id"].tolist())] == rec["recent_items"].tolist()
        u, last = int(rec["user_id"][0]), int(rec["last_ts"][0])
        hs.append(u, 901, last)      # same µs as the stored row: Redis keeps it only if the row ts moves on
        hs.append(u, 902, last - 5)  # a late click
        items, _ = hs.get(u)
        assert 901 in items.tolist() and 902 in items.tolist() and len(items) == L
    finally:
        proc.terminate()
        proc.wait(timeout=10)
