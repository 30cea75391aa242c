"""Config validation, contracts I/O and the in-memory i2i index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pi2i.cli import app
from pi2i.config import ConfigError, load_config, parse_config
from pi2i.contracts import I2I_SCHEMA, ContractError, read_events, read_parquet, write_parquet
from pi2i.ibs.i2i import I2IIndex


def test_defaults_validate_and_roundtrip(tmp_path):
    cfg = load_config()
    assert cfg.swing.top_t == 1250 and cfg.swing.alpha == 1.0
    p = tmp_path / "c.yaml"
    p.write_text("swing:\n  top_t: 100\n  alpha: 0.5\n")
    cfg = load_config(p)
    assert (cfg.swing.top_t, cfg.swing.alpha, cfg.sampling.hard_negatives) == (100, 0.5, 20)
    assert load_config(p, overrides={"swing": {"top_t": 7}}).swing.top_t == 7


@pytest.mark.parametrize(
    "data, key",
    [
        ({"swing": {"top_t": 0}}, "swing.top_t"),
        ({"swing": {"behaviors": ["click", "like"]}}, "swing.behaviors"),
        ({"swing": {"bogus": 1}}, "swing.bogus"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"model": {"attention": "cross"}}, "model.attention"),
    ],
)
def test_invalid_value_names_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(data)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_cli_config_prints_and_rejects():
    r = CliRunner().invoke(app, ["config"])
    assert r.exit_code == 0 and "top_t: 1250" in r.output


@settings(max_examples=15, deadline=None)
@given(top_t=st.integers(1, 5000), skew=st.floats(0, 1e7, allow_nan=False), dedup=st.booleans(),
       exclude=st.sampled_from(["all", "window", "none"]))
def test_printed_config_reloads_to_the_same_config(tmp_path_factory, top_t, skew, dedup, exclude):
    """`pi2i config --config F` prints YAML that is itself a complete, valid config of the same values."""
    d = tmp_path_factory.mktemp("cfg")
    src = d / "in.yaml"
    src.write_text(yaml.safe_dump({"swing": {"top_t": top_t}, "data": {"max_future_skew_s": skew},
                                   "sampling": {"dedup_consecutive": dedup}, "eval": {"exclude_seen": exclude}}))
    r = CliRunner().invoke(app, ["config", "--config", str(src)])
    assert r.exit_code == 0, r.output
    printed = d / "printed.yaml"
    printed.write_text(r.output)
    assert load_config(printed) == load_config(src)
    assert load_config(printed).data.max_future_skew_s == skew


def test_future_skew_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"data\.max_future_skew_s"):
        parse_config({"data": {"max_future_skew_s": -1}})


def test_parquet_roundtrip_local_and_uri(tmp_path):
    t = pa.table({"user_id": [1, 2], "item_id": [3, 4], "behavior": ["click", "buy"],
                  "ts": pa.array([1_600_000_000_000_000, 1_600_000_000_000_001], pa.timestamp("us", tz="UTC"))})
    write_parquet(t, str(tmp_path / "a" / "events.parquet"))
    assert read_events(str(tmp_path / "a" / "events.parquet")).to_pydict() == t.to_pydict()
    uri = (tmp_path / "b" / "events.parquet").as_uri()
    write_parquet(t, uri)
    assert read_parquet(uri).equals(t)
    with pytest.raises(ContractError, match="missing column"):
        write_parquet(t.drop(["ts"]), str(tmp_path / "c.parquet"))
        read_events(str(tmp_path / "c.parquet"))


def test_i2i_index_rows_and_truncation():
    t = pa.table({"trigger": [5, 5, 5, 9], "target": [7, 8, 9, 5], "score": [3.0, 2.0, 1.0, 4.0],
                  "rank": [1, 2, 3, 1]}, schema=I2I_SCHEMA)
    idx = I2IIndex.from_table(t)
    assert len(idx) == 2 and idx.num_pairs == 4
    targets, _, ranks = idx.row(5)
    assert targets.tolist() == [7, 8, 9] and ranks.tolist() == [1, 2, 3]
    assert idx.row(6)[0].size == 0
    assert idx.row_ids(np.array([9, 1, 5])).tolist() == [1, -1, 0]
    assert idx.truncated(2).row(5)[0].tolist() == [7, 8]
    assert idx.to_table().equals(t)
    assert I2IIndex.from_table(t.slice(0, 0)).row_ids(np.array([1])).tolist() == [-1]
