"""Loaders: real Taobao samples, every malformed-input kind with exact accounting, the CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi2i.config import Config
from pi2i.contracts import EVENTS_SCHEMA, ContractError, read_events
from pi2i.data.loaders import REASONS, load

SHARED = Path(__file__).resolve().parents[2] / "shared"
TAOBAO = SHARED / "data" / "taobao"
PI2I = Path(sys.executable).parent / "pi2i"
MOVIELENS = SHARED / "data" / "movielens-sample" / "ratings.dat"
needs_taobao = pytest.mark.skipif(not (TAOBAO / "userbehavior_head.csv").exists(),
                                  reason=f"real Taobao samples not present under {TAOBAO}")

GOOD = ["1,100,10,pv,1511544070", "1,101,10,cart,1511544080", "2,100,11,buy,1511544090",
        "2,102,11,fav,1511544100"]


def _write(tmp_path: Path, name: str, data: bytes | str) -> str:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


def _quarantine(out: Path) -> list[dict]:
    return pq.read_table(out / "quarantine.parquet").to_pylist()


def _check_accounting(s: dict) -> None:
    assert s["rows_in"] == s["rows_kept"] + s["rows_quarantined"]
    assert sum(s["quarantine_reasons"].values()) == s["rows_quarantined"]


@needs_taobao
def test_taobao_head_truncated_last_line(tmp_path):
    s = load("taobao", str(TAOBAO / "userbehavior_head.csv"), str(tmp_path / "d"))
    assert (s["rows_in"], s["rows_kept"], s["rows_quarantined"]) == (84476, 84475, 1)
    assert s["quarantine_reasons"] == {"truncated_line": 1}
    q = _quarantine(tmp_path / "d")
    assert q == [{"line": 84476, "raw": "100370,1968385,1875258,pv", "reason": "truncated_line"}]
    ev = read_events(str(tmp_path / "d" / "events.parquet"))
    assert ev.schema == EVENTS_SCHEMA and ev.num_rows == 84475
    assert set(ev.column("behavior").unique().to_pylist()) <= {"click", "cart", "fav", "buy"}
    u = ev.column("user_id").to_numpy()
    assert (np.diff(u) >= 0).all() and s["sorted"]
    items = pq.read_table(tmp_path / "d" / "items.parquet")
    assert items.column_names == ["item_id", "category_id"] and items.num_rows == 55368 == s["items"]
    assert s["users"] == 815
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["rows_in"] == 84476 and summary["rows_kept"] == 84475


@needs_taobao
def test_taobao_slice_all_kept_and_streamed_in_small_chunks(tmp_path):
    cfg = Config()
    cfg.data.chunk_rows = 1000  # ~64 kB blocks: many block boundaries inside the file
    s = load("taobao", str(TAOBAO / "userbehavior_slice10k.csv"), str(tmp_path / "d"), cfg=cfg)
    assert (s["rows_in"], s["rows_kept"], s["rows_quarantined"]) == (10000, 10000, 0)
    assert s["users"] == 114 and s["items"] == 7623
    ev = read_events(str(tmp_path / "d" / "events.parquet"))
    assert ev.column("behavior").value_counts().to_pylist() is not None
    counts = dict(zip(*np.unique(ev.column("behavior").to_numpy(zero_copy_only=False), return_counts=True)))
    assert counts == {"click": 9046, "cart": 536, "fav": 212, "buy": 206}


def test_most_frequent_category_per_item(tmp_path):
    lines = ["1,5,7,pv,1511544070", "2,5,8,pv,1511544071", "3,5,8,pv,1511544072", "4,6,9,pv,1511544073",
             "5,6,3,pv,1511544074"]
    load("taobao", _write(tmp_path, "a.csv", "\n".join(lines) + "\n"), str(tmp_path / "d"))
    items = pq.read_table(tmp_path / "d" / "items.parquet").to_pylist()
    assert items == [{"item_id": 5, "category_id": 8}, {"item_id": 6, "category_id": 3}]  # tie -> smaller id


MALFORMED = [
    # (line, expected reason)
    ("1,100,10,pv", "missing_fields"),
    ("1,100,10,pv,1511544070,extra", "extra_fields"),
    ("x1,100,10,pv,1511544070", "non_integer_id"),
    ("1,1.5,10,pv,1511544070", "non_integer_id"),
    ("-3,100,10,pv,1511544070", "negative_id"),
    ("1,100,-10,pv,1511544070", "negative_id"),
    ("1,,10,pv,1511544070", "empty_field"),
    ("NaN,100,10,pv,1511544070", "empty_field"),
    ("1,100,10,,1511544070", "empty_field"),
    ("1,100,10,teleport,1511544070", "unknown_behavior"),
    ("1,100,10,pv,yesterday", "bad_timestamp"),
    ("1,100,10,pv,99", "ts_out_of_range"),
    ("1,100,10,pv,9999999999", "ts_out_of_range"),
    ("", "blank_line"),
    ("   ", "blank_line"),
]


def test_every_malformed_kind_exact_counts(tmp_path):
    body = []
    expected: dict[int, str] = {}
    for k, (line, reason) in enumerate(MALFORMED):
        body.append(GOOD[k % len(GOOD)])
        body.append(line)
        expected[2 * k + 2] = reason
    raw = ("\n".join(body) + "\n").encode()
    raw += b"7,100,10,pv,1511544070\r\n"                   # CRLF is fine
    raw += b"8,100,10,p\xffv,1511544070\n"                  # invalid UTF-8
    expected[len(body) + 2] = "invalid_utf8"
    raw += "9,100,10,pv,1511544070,caf\u00e9\n".encode()      # valid UTF-8, wrong field count
    expected[len(body) + 3] = "extra_fields"
    raw += b"10,100,10,pv,15115"                             # truncated last line, but 5 fields: kept? no: range
    expected[len(body) + 4] = "ts_out_of_range"
    s = load("taobao", _write(tmp_path, "bad.csv", raw), str(tmp_path / "d"))
    _check_accounting(s)
    q = {r["line"]: r["reason"] for r in _quarantine(tmp_path / "d")}
    assert q == expected
    assert s["rows_in"] == len(body) + 4
    assert s["rows_kept"] == len(MALFORMED) + 1
    want: dict[str, int] = {}
    for r in expected.values():
        want[r] = want.get(r, 0) + 1
    assert s["quarantine_reasons"] == want
    assert set(want) <= set(REASONS)
    raws = {r["line"]: r["raw"] for r in _quarantine(tmp_path / "d")}
    assert raws[len(body) + 2] == "8,100,10,p\\xffv,1511544070"
    assert raws[2] == "1,100,10,pv"


def test_truncated_last_line_without_newline(tmp_path):
    s = load("taobao", _write(tmp_path, "t.csv", "\n".join(GOOD) + "\n3,4,5,pv"), str(tmp_path / "d"))
    assert s["quarantine_reasons"] == {"truncated_line": 1} and s["rows_kept"] == 4
    # the same short line in the middle of the file is "missing_fields"
    s = load("taobao", _write(tmp_path, "m.csv", "3,4,5,pv\n" + "\n".join(GOOD)), str(tmp_path / "e"))
    assert s["quarantine_reasons"] == {"missing_fields": 1} and s["rows_kept"] == 4


def test_timestamp_range_from_config(tmp_path):
    cfg = Config()
    cfg.data.min_ts = "2017-11-20T00:00:00Z"
    cfg.data.max_ts = "2017-12-04T00:00:00Z"
    lines = GOOD + ["3,4,5,pv,1500000000", "3,4,5,pv,1600000000"]
    s = load("taobao", _write(tmp_path, "r.csv", "\n".join(lines) + "\n"), str(tmp_path / "d"), cfg=cfg)
    assert s["quarantine_reasons"] == {"ts_out_of_range": 2} and s["rows_kept"] == 4


def test_header_row_where_none_expected(tmp_path):
    text = "user_id,item_id,category_id,behavior_type,timestamp\n" + "\n".join(GOOD) + "\n"
    s = load("taobao", _write(tmp_path, "h.csv", text), str(tmp_path / "d"))
    assert s["quarantine_reasons"] == {"header_row": 1} and s["rows_kept"] == 4
    assert _quarantine(tmp_path / "d")[0]["line"] == 1


def test_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(ContractError, match="empty"):
        load("taobao", _write(tmp_path, "e.csv", b""), str(tmp_path / "d"))
    with pytest.raises(ContractError, match="empty"):
        load("taobao", _write(tmp_path, "e2.csv", b"\n\n"), str(tmp_path / "d2"))


def test_wrong_delimiter_is_a_clear_error(tmp_path):
    text = "\n".join(line.replace(",", "\t") for line in GOOD) + "\n"
    with pytest.raises(ContractError, match=r"looks like delimiter '\\t'"):
        load("taobao", _write(tmp_path, "tab.csv", text), str(tmp_path / "d"))
    text = "\n".join(line.replace(",", ";") for line in GOOD) + "\n"
    with pytest.raises(ContractError, match="looks like delimiter ';'"):
        load("taobao", _write(tmp_path, "semi.csv", text), str(tmp_path / "d"))


def test_no_usable_rows_is_a_clear_error(tmp_path):
    with pytest.raises(ContractError, match=r"no usable rows \(2 of 2 quarantined: unknown_behavior 2\); "
                                            r"e.g. line 1: unknown_behavior '1,2,3,zz,1511544070'"):
        load("taobao", _write(tmp_path, "x.csv", "1,2,3,zz,1511544070\n4,5,6,zz,1511544070\n"),
             str(tmp_path / "d"))
    assert list(tmp_path.iterdir()) == [tmp_path / "x.csv"]  # no out dir, no staging dir, no *.tmp


def test_failed_load_leaves_the_previous_output_intact(tmp_path):
    """A failure (no usable rows, or a crash mid-stream) removes its staging dir and never mixes with out_dir:
    before, a stale events.parquet stayed beside a summary.json with rows_kept 0, and *.parquet.tmp files."""
    out = tmp_path / "d"
    good = load("taobao", _write(tmp_path, "a.csv", "\n".join(GOOD) + "\n"), str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ContractError, match="no usable rows"):
        load("taobao", _write(tmp_path, "x.csv", "1,2,3,zz,1511544070\n"), str(out))

    def crash(done: int, total: int | None) -> None:
        if done:
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        load("taobao", str(tmp_path / "a.csv"), str(out), progress=crash)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / "summary.json").read_text())["rows_kept"] == good["rows_kept"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "d", "x.csv"]  # no .d.staging-*


def test_reload_replaces_every_contract_file(tmp_path):
    """A second successful load into the same dir leaves no file of the first (users.parquet of MovieLens)."""
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.dat").write_text("1::1::5::978300760\n2::2::3::978302109\n")
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    out = tmp_path / "o"
    load("movielens", str(d / "ratings.dat"), str(out))
    assert (out / "users.parquet").exists()
    (out / "notes.txt").write_text("mine")
    s = load("taobao", _write(tmp_path, "a.csv", "\n".join(GOOD) + "\n"), str(out))
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet", "items.parquet", "notes.txt",
                                                     "quarantine.parquet", "summary.json"]
    assert read_events(str(out / "events.parquet")).num_rows == s["rows_kept"] == 4


def test_int64_ids_kept_larger_ones_quarantined(tmp_path):
    """Hashed int64 ids are mostly 19 digits: every id that fits int64 is kept (before: 19 digits were
    non_integer_id); larger decimals get their own reason."""
    lines = ["9223372036854775807,100,10,pv,1511544070",   # int64 max: kept
             "1234567890123456789,4611686018427387904,10,pv,1511544071",  # 19 digits: kept
             "0009223372036854775807,101,10,pv,1511544072",  # leading zeros, fits: kept
             "9223372036854775808,100,10,pv,1511544073",   # int64 max + 1
             "99999999999999999999,100,10,pv,1511544074",  # 20 digits
             "1,100,18446744073709551615,pv,1511544075",   # side id beyond int64 (uint64 max)
             "-9223372036854775809,100,10,pv,1511544076"]  # negative stays negative_id
    s = load("taobao", _write(tmp_path, "ids.csv", "\n".join(lines) + "\n"), str(tmp_path / "d"))
    _check_accounting(s)
    assert s["quarantine_reasons"] == {"id_out_of_range": 3, "negative_id": 1}
    ev = read_events(str(tmp_path / "d" / "events.parquet"))
    assert sorted(ev.column("user_id").to_pylist()) == [1234567890123456789, 9223372036854775807,
                                                        9223372036854775807]
    assert [r["line"] for r in _quarantine(tmp_path / "d") if r["reason"] == "id_out_of_range"] == [4, 5, 6]


def test_future_timestamps_quarantined(tmp_path):
    """A row dated 2093 used to be kept (data.max_ts = 2100) and moved the split's cut: events later than the
    load time + data.max_future_skew_s are quarantined as future_ts."""
    now = 1_511_600_000 * 1_000_000
    lines = GOOD + ["3,4,5,pv,3900000000",            # 2093
                    f"3,4,5,pv,{1_511_600_000 + 3600}",  # 1 h ahead: within the default skew of 1 day
                    f"3,4,5,pv,{1_511_600_000 + 2 * 86_400}"]  # 2 days ahead
    s = load("taobao", _write(tmp_path, "f.csv", "\n".join(lines) + "\n"), str(tmp_path / "d"), now_us=now)
    assert s["quarantine_reasons"] == {"future_ts": 2} and s["rows_kept"] == 5
    cfg = Config()
    cfg.data.max_future_skew_s = 0
    s = load("taobao", _write(tmp_path, "f.csv", "\n".join(lines) + "\n"), str(tmp_path / "e"), cfg=cfg,
             now_us=now)
    assert s["quarantine_reasons"] == {"future_ts": 3}
    # without now_us the load time is the wall clock: 2093 is in the future, 2017 is not
    s = load("taobao", _write(tmp_path, "f.csv", "\n".join(lines) + "\n"), str(tmp_path / "g"))
    assert s["quarantine_reasons"] == {"future_ts": 1}


def test_missing_input(tmp_path):
    with pytest.raises(ContractError, match="not found"):
        load("taobao", str(tmp_path / "nope.csv"), str(tmp_path / "d"))


def test_movielens_udata_and_ratings_dat(tmp_path):
    udata = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n5\t6\tx\t878887116\n"
    s = load("movielens", _write(tmp_path, "u.data", udata), str(tmp_path / "a"))
    assert (s["rows_in"], s["rows_kept"], s["quarantine_reasons"]) == (4, 3, {"bad_rating": 1})
    ev = read_events(str(tmp_path / "a" / "events.parquet"))
    assert set(ev.column("behavior").to_pylist()) == {"click"}
    dat = "1::1193::5::978300760\n1::661::3::978302109\n2::3068::4::978299000\n"
    s = load("movielens", _write(tmp_path, "ratings.dat", dat), str(tmp_path / "b"))
    assert s["rows_kept"] == 3 and s["delimiter"] == "::"
    assert pq.read_table(tmp_path / "b" / "items.parquet").column("item_id").to_pylist() == [661, 1193, 3068]


def test_csv_with_column_map_and_side_info(tmp_path):
    text = ("uid,iid,event,time,cat,price\n"
            "1,10,click,2024-01-01T10:00:00Z,3,9.5\n"
            "1,11,purchase,2024-01-01T11:00:00Z,3,19.0\n"
            "2,10,view,2024-01-02T10:00:00,3,9.5\n"
            "2,12,click,not-a-time,4,1.0\n"
            "3,-1,click,2024-01-02T10:00:00Z,4,1.0\n")
    cmap = {"user_id": "uid", "item_id": "iid", "behavior": "event", "ts": "time", "category_id": "cat",
            "price": "price"}
    s = load("csv", _write(tmp_path, "x.csv", text), str(tmp_path / "d"), column_map=cmap)
    assert (s["rows_in"], s["rows_kept"]) == (5, 3)
    assert s["quarantine_reasons"] == {"bad_timestamp": 1, "negative_id": 1}
    assert {r["line"] for r in _quarantine(tmp_path / "d")} == {5, 6}
    ev = read_events(str(tmp_path / "d" / "events.parquet")).to_pylist()
    assert [e["behavior"] for e in ev] == ["click", "buy", "click"]
    items = pq.read_table(tmp_path / "d" / "items.parquet").to_pylist()
    assert items == [{"item_id": 10, "category_id": 3, "price": 9.5}, {"item_id": 11, "category_id": 3,
                                                                        "price": 19.0}]


def test_csv_epoch_ms_and_positional_map_without_header(tmp_path):
    text = "1;10;1704103200000\n2;11;1704103300000\n"
    cfg = Config()
    cfg.data.delimiter = ";"
    s = load("csv", _write(tmp_path, "p.csv", text), str(tmp_path / "d"),
             column_map={"user_id": "0", "item_id": "1", "ts": "2"}, cfg=cfg)
    assert s["rows_kept"] == 2 and s["ts_unit"] == "ms"
    ts = read_events(str(tmp_path / "d" / "events.parquet")).column("ts").to_pylist()
    assert ts[0].isoformat() == "2024-01-01T10:00:00+00:00"


def test_csv_expecting_header_but_none_present(tmp_path):
    with pytest.raises(ContractError, match="no header row"):
        load("csv", _write(tmp_path, "n.csv", "1,10,1704103200\n"), str(tmp_path / "d"),
             column_map={"user_id": "uid", "item_id": "iid", "ts": "time"})
    with pytest.raises(ContractError, match=r"missing column\(s\) \['iid'\]"):
        load("csv", _write(tmp_path, "m.csv", "uid,item,time\n1,10,1704103200\n"), str(tmp_path / "e"),
             column_map={"user_id": "uid", "item_id": "iid", "ts": "time"})


def test_parquet_with_column_map(tmp_path):
    t = pa.table({"u": pa.array([1, 2, None, 4], pa.int64()), "i": pa.array([5.0, 6.5, 7.0, 8.0]),
                  "t": pa.array([1704103200, 1704103300, 1704103400, 1704103500], pa.int64()),
                  "b": ["pv", "buy", "pv", "???"]})
    pq.write_table(t, tmp_path / "in.parquet")
    s = load("parquet", str(tmp_path / "in.parquet"), str(tmp_path / "d"),
             column_map={"user_id": "u", "item_id": "i", "ts": "t", "behavior": "b"})
    _check_accounting(s)
    assert s["rows_kept"] == 1
    assert s["quarantine_reasons"] == {"non_integer_id": 1, "empty_field": 1, "unknown_behavior": 1}
    with pytest.raises(ContractError, match="missing column"):
        load("parquet", str(tmp_path / "in.parquet"), str(tmp_path / "e"), column_map={"user_id": "zz"})


def test_cli_load_contract_and_one_line_errors(tmp_path):
    f = _write(tmp_path, "a.csv", "\n".join(GOOD) + "\n3,4,5,pv")
    r = subprocess.run([str(PI2I), "data", "load", "--format", "taobao", "--input", f, "--out",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert (s["rows_in"], s["rows_kept"], s["rows_quarantined"]) == (5, 4, 1)
    for name in ("events.parquet", "items.parquet", "quarantine.parquet", "summary.json"):
        assert (tmp_path / "d" / name).exists()
    r = subprocess.run([str(PI2I), "data", "load", "--format", "taobao", "--input", _write(tmp_path, "e.csv", ""),
                        "--out", str(tmp_path / "e")], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "empty" in r.stderr
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.staging-*"))


def test_movielens_side_files_give_genres_and_profiles(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.dat").write_text("1::1::5::978300760\n2::2::3::978302109\n")
    (d / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's\n2::Caf\xe9 (1990)::Drama\n"
                                   .encode("latin-1"))
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    s = load("movielens", str(d / "ratings.dat"), str(tmp_path / "o"))
    assert s["rows_kept"] == 2 and s["profiles"] == 2
    assert pq.read_table(tmp_path / "o" / "items.parquet").to_pylist() == [
        {"item_id": 1, "category_id": 3}, {"item_id": 2, "category_id": 8}]
    users = pq.read_table(tmp_path / "o" / "users.parquet").to_pylist()
    assert users[1] == {"user_id": 2, "gender": "M", "age": 56, "occupation": "16", "zip": "70072"}


@pytest.mark.skipif(not MOVIELENS.exists(), reason=f"MovieLens-1M sample not present at {MOVIELENS}")
def test_cli_loads_real_movielens_1m_ratings_dat(tmp_path):
    """``pi2i data load --format movielens`` reads the ``::`` format of MovieLens-1M (100k-rating sample)."""
    r = subprocess.run([str(PI2I), "data", "load", "--format", "movielens", "--input", str(MOVIELENS), "--out",
                        str(tmp_path / "d"), "--no-progress"], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert (s["rows_in"], s["rows_kept"], s["delimiter"], s["ts_unit"]) == (100_000, 100_000, "::", "s")
    ev = read_events(str(tmp_path / "d" / "events.parquet"))
    assert ev.num_rows == 100_000 and set(ev.column("behavior").to_pylist()) == {"click"}
    assert s["ts_min"].startswith("2000-") and s["users"] == 5958


_FIELDS = st.sampled_from(["1", "42", "9223372036854775807", "9223372036854775808", "-3", "x", "", " 7 ", "1.5",
                           "pv", "buy", "teleport", "1511544070", "4102444800", "99", "caf\u00e9", '"5"'])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_FIELDS, min_size=0, max_size=7).map(",".join), min_size=1, max_size=30),
       final_newline=st.booleans(), chunk_rows=st.sampled_from([1_000, 500_000]))
def test_every_line_is_kept_or_quarantined(tmp_path, rows, final_newline, chunk_rows):
    """Any text: the load either fails as a whole with a one-line ContractError, or accounts for every line
    (rows_in = kept + quarantined, one quarantine row per reason count) and leaves no staging dir."""
    cfg = Config()
    cfg.data.chunk_rows = chunk_rows
    src = tmp_path / "in.csv"
    src.write_text("\n".join(rows) + ("\n" if final_newline else ""), encoding="utf-8")
    out = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
    try:
        s = load("taobao", str(src), str(out), cfg=cfg, now_us=1_600_000_000_000_000)
    except ContractError as e:
        assert "\n" not in str(e) and not out.exists()
    else:
        _check_accounting(s)
        assert len(_quarantine(out)) == s["rows_quarantined"]
        assert read_events(str(out / "events.parquet")).num_rows == s["rows_kept"] > 0
    assert not list(tmp_path.glob(".*staging*"))
