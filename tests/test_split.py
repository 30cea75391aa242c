"""Temporal split: invariants on synthetic data, the cut rules, errors, the CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pi2i.contracts import EVENTS_SCHEMA, ContractError, read_events, write_parquet
from pi2i.data.split import split
from pi2i.data.synthetic import generate_preset

PI2I = Path(sys.executable).parent / "pi2i"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate_preset("tiny", str(out), seed=1)
    return out


def _ev(d: Path) -> pd.DataFrame:
    return read_events(str(d / "events.parquet")).to_pandas()


def test_split_invariants(tiny, tmp_path):
    s = split(str(tiny), str(tmp_path), test_days=2)
    full, train, test = _ev(tiny), _ev(tmp_path / "train"), _ev(tmp_path / "test")
    cut = pd.Timestamp(s["cut"])
    assert cut == full.ts.max() - pd.Timedelta(days=2)
    assert (train.ts < cut).all() and (test.ts >= cut).all()
    assert len(train) == (full.ts < cut).sum()                      # train = every event before the cut
    assert set(test.user_id) <= set(train.user_id)                   # test users have a history
    assert not test.duplicated(["user_id", "item_id"]).any()         # distinct items per user
    assert (test.behavior == "click").all()
    after = full[(full.ts >= cut) & (full.behavior == "click") & full.user_id.isin(train.user_id)]
    assert set(map(tuple, test[["user_id", "item_id"]].values)) == set(map(tuple, after[["user_id", "item_id"]]
                                                                           .values))
    first = after.groupby(["user_id", "item_id"]).ts.min()
    assert (test.set_index(["user_id", "item_id"]).ts.sort_index() == first.sort_index()).all()
    t = s["test"]
    assert t["events_after_cut"] == (full.ts >= cut).sum()
    assert t["pairs"] == len(test) and s["train"]["events"] == len(train)
    assert t["cold_users_dropped"] == len(set(full[full.ts >= cut].query("behavior == 'click'").user_id)
                                          - set(train.user_id))
    for side in ("train", "test"):
        d = tmp_path / side
        for f in ("events.parquet", "items.parquet", "users.parquet", "quarantine.parquet", "summary.json"):
            assert (d / f).exists(), f
        assert read_events(str(d / "events.parquet")).schema == EVENTS_SCHEMA
        df = _ev(d)
        assert df.user_id.is_monotonic_increasing
        assert json.loads((d / "summary.json").read_text())["side"] == side
    assert (tmp_path / "train" / "items.parquet").read_bytes() == (tmp_path / "test" / "items.parquet").read_bytes()


def test_cold_users_left_out(tmp_path):
    day = 86_400 * 1_000_000
    t = pa.table({"user_id": [1, 1, 1, 1, 1, 2, 2], "item_id": [10, 11, 12, 14, 14, 10, 13],
                  "behavior": ["click", "click", "buy", "click", "click", "click", "click"],
                  "ts": pa.array(np.array([1, 2, 5, 6, 7, 6, 7]) * day).cast(pa.timestamp("us", tz="UTC"))},
                 schema=EVENTS_SCHEMA)
    write_parquet(t, str(tmp_path / "d" / "events.parquet"))
    s = split(str(tmp_path / "d"), str(tmp_path / "s"), cut="1970-01-04")
    assert s["train"]["events"] == 2
    test = _ev(tmp_path / "s" / "test")
    assert test[["user_id", "item_id"]].values.tolist() == [[1, 14]]
    assert test.ts.iloc[0] == pd.Timestamp(6 * day, unit="us", tz="UTC")  # first click after the cut
    assert s["test"]["cold_users_dropped"] == 1 and s["test"]["cold_clicks_dropped"] == 2
    assert s["test"]["non_click_events_after_cut"] == 1 and s["test"]["repeat_clicks_merged"] == 1
    assert not (tmp_path / "s" / "train" / "items.parquet").exists()  # nothing to copy


def test_cut_rules_and_errors(tiny, tmp_path):
    full = _ev(tiny)
    s = split(str(tiny), str(tmp_path / "f"), fraction=0.2)
    after = (full.ts >= pd.Timestamp(s["cut"])).mean()
    assert 0.18 < after < 0.22
    s = split(str(tiny), str(tmp_path / "c"), cut="2024-03-12T00:00:00Z")
    assert s["cut"] == "2024-03-12T00:00:00Z"
    s = split(str(tiny), str(tmp_path / "d"))  # default: data.test_days = 1
    assert pd.Timestamp(s["cut"]) == full.ts.max() - pd.Timedelta(days=1)
    with pytest.raises(ValueError, match="only one"):
        split(str(tiny), str(tmp_path / "x"), test_days=1, fraction=0.1)
    with pytest.raises(ContractError, match="no training events"):
        split(str(tiny), str(tmp_path / "x"), cut="2000-01-01")
    with pytest.raises(ContractError, match="no test clicks"):
        split(str(tiny), str(tmp_path / "x"), cut="2030-01-01")
    with pytest.raises(ValueError, match="cannot parse"):
        split(str(tiny), str(tmp_path / "x"), cut="next tuesday")


def test_cli_split_contract(tiny, tmp_path):
    r = subprocess.run([str(PI2I), "data", "split", "--data", str(tiny), "--out", str(tmp_path / "s"),
                        "--test-days", "2"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s" / "train" / "events.parquet").exists()
    assert (tmp_path / "s" / "test" / "events.parquet").exists()
    assert json.loads(r.stdout)["rule"] == {"test_days": 2.0}


def test_per_user_split_matches_a_brute_force_reference(tiny, tmp_path):
    s = split(str(tiny), str(tmp_path), per_user_fraction=0.1)
    full, train, test = _ev(tiny), _ev(tmp_path / "train"), _ev(tmp_path / "test")
    full = full.reset_index().sort_values(["user_id", "ts", "index"], kind="stable")
    want_train, want_test = [], set()
    for _, g in full.groupby("user_id", sort=True):
        n = len(g)
        k = max(1, int(np.floor(0.1 * n))) if n >= 3 else 0
        want_train.append(g.iloc[:n - k])
        tail = g.iloc[n - k:]
        want_test |= set(map(tuple, tail[tail.behavior == "click"][["user_id", "item_id"]].values.tolist()))
    want_train = pd.concat(want_train)
    assert len(train) == len(want_train) and len(train) + s["test"]["events_in_test_part"] == len(full)
    assert set(map(tuple, test[["user_id", "item_id"]].values.tolist())) == want_test
    assert len(test) == len(want_test) and (test.behavior == "click").all()
    # every test click comes after the same user's last training event
    last_train = train.groupby("user_id").ts.max()
    assert (test.ts.values >= last_train.reindex(test.user_id).values).all()
    assert s["rule"] == {"per_user_fraction": 0.1, "min_events": 3} and s["cut"] is None
    with pytest.raises(ValueError, match="either a per-user fraction"):
        split(str(tiny), str(tmp_path / "x"), per_user_fraction=0.1, test_days=1)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        split(str(tiny), str(tmp_path / "x"), per_user_fraction=1.5)


def test_implausibly_small_test_side_is_refused_with_its_cause(tiny, tmp_path):
    ev = read_events(str(tiny / "events.parquet"))
    future = pa.table({"user_id": [ev.column("user_id")[0].as_py()], "item_id": [ev.column("item_id")[0].as_py()],
                       "behavior": ["click"],
                       "ts": pa.array([pd.Timestamp("2093-01-01", tz="UTC")]).cast(pa.timestamp("us", tz="UTC"))},
                      schema=EVENTS_SCHEMA)
    write_parquet(pa.concat_tables([ev, future]), str(tmp_path / "d" / "events.parquet"))
    with pytest.raises(ContractError, match=r"only 1 test clicks.*2093-01-01.*future timestamp"):
        split(str(tmp_path / "d"), str(tmp_path / "s"), test_days=1)
    s = split(str(tmp_path / "d"), str(tmp_path / "s"), test_days=1, allow_small_test=True)
    assert s["test"]["pairs"] == 1


def test_cli_per_user_split_contract(tmp_path):
    day = 86_400 * 1_000_000
    users = [1] * 20 + [2] * 3 + [3] * 2
    t = pa.table({"user_id": users, "item_id": list(range(100, 125)), "behavior": ["click"] * 25,
                  "ts": pa.array(np.arange(25) * day).cast(pa.timestamp("us", tz="UTC"))}, schema=EVENTS_SCHEMA)
    write_parquet(t, str(tmp_path / "d" / "events.parquet"))
    r = subprocess.run([str(PI2I), "data", "split", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s"),
                        "--per-user-fraction", "0.1"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    test = _ev(tmp_path / "s" / "test")
    assert test[["user_id", "item_id"]].values.tolist() == [[1, 118], [1, 119], [2, 122]]  # 10% of 20; >= 1; < 3
