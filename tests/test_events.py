"""pi2i.data.events: each shared helper against a plain-Python reference (hypothesis where natural)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi2i.contracts import EVENTS_SCHEMA
from pi2i.data import events as ev

BEH = ("click", "cart", "fav", "buy")


def _table(rows: list[tuple[int, int, str, int]]) -> pa.Table:
    u, i, b, t = zip(*rows) if rows else ([], [], [], [])
    return pa.table({"user_id": pa.array(u, pa.int64()), "item_id": pa.array(i, pa.int64()),
                     "behavior": pa.array(b, pa.string()),
                     "ts": pa.array(t, pa.int64()).cast(pa.timestamp("us", tz="UTC"))}, schema=EVENTS_SCHEMA)


event_rows = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 8), st.sampled_from(BEH),
                                st.integers(0, 20)), max_size=60)


def _ref_sequences(rows, behaviors, dedup):
    """Per user, (item, ts) clicks in time order (file order on ties), repeats collapsed if ``dedup``."""
    out: dict[int, list[tuple[int, int]]] = {}
    for pos, (u, i, b, t) in sorted(enumerate(rows), key=lambda p: (p[1][0], p[1][3], p[0])):
        if behaviors is not None and b not in behaviors:
            continue
        seq = out.setdefault(u, [])
        if dedup and seq and seq[-1][0] == i:
            continue
        seq.append((i, t))
    return out


def test_clicks_filters_and_keeps_table_when_all_match():
    t = _table([(1, 1, "click", 0), (1, 2, "buy", 1), (2, 3, "click", 2)])
    assert ev.clicks(t, ["click"]).column("item_id").to_pylist() == [1, 3]
    assert ev.clicks(t, None) is t
    assert ev.clicks(t, BEH) is t
    assert ev.clicks(t, []).num_rows == 0


@pytest.mark.parametrize("value,expected", [
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T00:00:01", 1_000_000),  # no offset = UTC
    ("2017-12-02T08:00:00+08:00", 1_512_172_800_000_000),
    ("1995-01-01T00:00:00Z", 788_918_400_000_000),  # config data.min_ts
    ("2017-11-25T00:00:00.000001Z", 1_511_568_000_000_001),  # exact to the µs
    (dt.datetime(2017, 12, 2, tzinfo=dt.UTC), 1_512_172_800_000_000),
    (dt.datetime(2017, 12, 2), 1_512_172_800_000_000),
    (123, 123), (np.int64(-5), -5),
])
def test_to_us(value, expected):
    assert ev.to_us(value) == expected


@pytest.mark.parametrize("bad", ["yesterday", "", True, 1.5, None])
def test_to_us_rejects_non_times(bad):
    with pytest.raises((ValueError, TypeError)):
        ev.to_us(bad)


@given(st.integers(-2**50, 2**55))
def test_to_iso_round_trip(us):
    assert ev.to_us(ev.to_iso(us)) == us


@settings(max_examples=60, deadline=None)
@given(event_rows, st.sampled_from([None, ("click",), ("click", "buy")]))
def test_item_popularity_matches_counter(rows, behaviors):
    items, counts = ev.item_popularity(_table(rows), behaviors)
    ref: dict[int, int] = {}
    for _, i, b, _ in rows:
        if behaviors is None or b in behaviors:
            ref[i] = ref.get(i, 0) + 1
    assert list(zip(items.tolist(), counts.tolist())) == sorted(ref.items(), key=lambda p: (-p[1], p[0]))


@settings(max_examples=80, deadline=None)
@given(event_rows, st.one_of(st.none(), st.integers(1, 5)), st.booleans(),
       st.sampled_from([None, ("click",), ("click", "cart")]))
def test_recent_histories_matches_reference(rows, n, dedup, behaviors):
    users, indptr, items, ts = ev.recent_histories(_table(rows), n, behaviors, dedup)
    ref = _ref_sequences(rows, behaviors, dedup)
    assert users.tolist() == sorted(ref)
    for r, u in enumerate(users.tolist()):
        want = ref[u][-n:] if n else ref[u]
        got = list(zip(items[indptr[r]:indptr[r + 1]].tolist(), ts[indptr[r]:indptr[r + 1]].tolist()))
        assert got == want


def test_recent_histories_fixed_users_rows_align():
    t = _table([(1, 10, "click", 5), (3, 30, "click", 1), (3, 31, "click", 2), (9, 90, "click", 0)])
    users, indptr, items, _ = ev.recent_histories(t, 1, ("click",), True, users=np.array([2, 3, 9]))
    assert users.tolist() == [2, 3, 9]
    assert indptr.tolist() == [0, 0, 1, 2]
    assert items.tolist() == [31, 90]
    with pytest.raises(ValueError):
        ev.recent_histories(t, 0)


@given(st.lists(st.lists(st.integers(0, 4), max_size=8), max_size=6))
def test_drop_consecutive_repeats(seqs):
    indptr = np.r_[0, np.cumsum([len(s) for s in seqs])].astype(np.int64)
    flat = np.array([x for s in seqs for x in s], np.int64)
    keep = ev.drop_consecutive_repeats(indptr, flat)
    want = [x for s in seqs for j, x in enumerate(s) if j == 0 or s[j - 1] != x]
    assert flat[keep].tolist() == want


@given(st.lists(st.lists(st.integers(0, 6), max_size=10), max_size=6), st.integers(1, 5))
def test_last_distinct(seqs, L):
    indptr = np.r_[0, np.cumsum([len(s) for s in seqs])].astype(np.int64)
    flat = np.array([x for s in seqs for x in s], np.int64)
    out_ptr, out_items = ev.last_distinct(indptr, flat, L)
    for r, s in enumerate(seqs):
        want: list[int] = []
        for x in reversed(s):
            if x not in want and len(want) < L:
                want.append(x)
        assert out_items[out_ptr[r]:out_ptr[r + 1]].tolist() == want


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 9), max_size=5), st.permutations(list(range(10))),
       st.lists(st.integers(0, 12), max_size=4), st.integers(0, 12))
def test_fill_with_popular(head, popular, exclude, k):
    got = ev.fill_with_popular(np.array(head, np.int64), np.array(popular, np.int64), k,
                               np.array(exclude, np.int64))
    want = head[:k]
    for x in popular:
        if len(want) >= k:
            break
        if x not in want and x not in exclude:
            want.append(x)
    assert got.tolist() == want


def test_fill_rows_with_popular_pads_and_excludes():
    rows = np.array([[5, -1, -1], [-1, -1, -1], [1, 2, 3]], np.int64)
    exclude = (np.array([0, 1, 1, 1]), np.array([1]))
    out = ev.fill_rows_with_popular(rows, np.array([1, 5, 7], np.int64), 3, exclude)
    assert out.tolist() == [[5, 7, -1], [1, 5, 7], [1, 2, 3]]


def test_splitmix64_reference_values():
    # splitmix64 stream seeded with 0: the reference generator's first outputs (Vigna, splitmix64.c)
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        first = ev.splitmix64(np.array([golden, golden * np.uint64(2)], np.uint64))
    assert [hex(int(x)) for x in first] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4"]
    state, bits = ev.splitmix64_next(np.uint64(0))
    assert int(bits) == 0xE220A8397B1DCDAF and int(state) == int(golden)


def test_recent_histories_is_the_prs_histories_file(tiny_split, tiny_samples, tiny_cfg):
    """One definition of a user's recent window: the PRS samples' histories.parquet (what serving starts from)
    and Feast's user_recent_items (pi2i.data.features) both equal recent_histories on the same events."""
    from pi2i.contracts import EVENTS_FILE, join, read_events, read_parquet
    from pi2i.data.features import recent_items_table
    from pi2i.layout import HISTORIES_FILE

    n, beh = tiny_cfg.serving.history_len, tiny_cfg.sampling.behaviors
    dedup = tiny_cfg.sampling.dedup_consecutive
    events = read_events(join(tiny_split["train"], EVENTS_FILE))
    users, indptr, items, _ = ev.recent_histories(events, n, beh, dedup)
    want = {int(u): items[indptr[r]:indptr[r + 1]].tolist() for r, u in enumerate(users)}
    prs = read_parquet(join(tiny_samples, HISTORIES_FILE)).to_pydict()
    assert dict(zip(prs["user_id"], prs["items"])) == want
    feast = recent_items_table(ev.clicks(events, beh), n, dedup).to_pydict()
    assert dict(zip(feast["user_id"], feast["recent_items"])) == want
    assert len(want) > 100 and max(len(v) for v in want.values()) == n
