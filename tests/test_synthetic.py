"""Synthetic generator: contract, determinism, and the statistical shape its story promises."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pi2i.contracts import EVENTS_SCHEMA, read_events
from pi2i.data.synthetic import PRESETS, generate, generate_preset, preset_params

PI2I = Path(sys.executable).parent / "pi2i"
FILES = ("events.parquet", "items.parquet", "users.parquet")


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """~150k events: big enough for stable statistics, well under a second to generate."""
    out = tmp_path_factory.mktemp("medium")
    generate(str(out), users=3000, items=3000, events=150_000, seed=7)
    return out


def test_tiny_preset_contract_and_speed(tmp_path):
    t = time.perf_counter()
    s = generate_preset("tiny", str(tmp_path))
    assert time.perf_counter() - t < 5.0  # well under 1 s when the machine is not shared
    ev = read_events(str(tmp_path / "events.parquet"))
    assert ev.schema == EVENTS_SCHEMA
    assert ev.num_rows == s["events"] == s["rows_kept"] == s["rows_in"] and 3000 <= ev.num_rows <= 5000
    assert s["rows_quarantined"] == 0 and pq.read_table(tmp_path / "quarantine.parquet").num_rows == 0
    df = ev.to_pandas()
    assert df.user_id.nunique() == PRESETS["tiny"]["users"]
    assert (df.groupby("user_id").ts.apply(lambda t: t.is_monotonic_increasing)).all()
    assert df.user_id.is_monotonic_increasing
    items = pq.read_table(tmp_path / "items.parquet").to_pandas()
    assert list(items.columns) == ["item_id", "category_id", "brand_id", "seller_id", "price"]
    assert items.item_id.is_unique and set(df.item_id) <= set(items.item_id) and (items.price > 0).all()
    assert json.loads((tmp_path / "summary.json").read_text())["preset"] == "tiny"


def test_same_seed_identical_files_other_seed_differs(tmp_path):
    for d in ("a", "b"):
        generate(str(tmp_path / d), users=300, items=400, events=6000, seed=3, chunk_events=1000)
    generate(str(tmp_path / "c"), users=300, items=400, events=6000, seed=4, chunk_events=1000)
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "events.parquet").read_bytes() != (tmp_path / "c" / "events.parquet").read_bytes()


def test_exact_event_count_and_chunking(tmp_path):
    s = generate(str(tmp_path), users=500, items=200, events=12_345, seed=1, chunk_events=1000)
    ev = pq.read_table(tmp_path / "events.parquet")
    assert ev.num_rows == 12_345 and pq.ParquetFile(tmp_path / "events.parquet").num_row_groups > 5
    counts = ev.to_pandas().user_id.value_counts()
    assert len(counts) == 500 and counts.min() >= 3  # lognormal activity, floor min_events
    assert s["distinct_user_items"] == len(ev.to_pandas()[["user_id", "item_id"]].drop_duplicates())


def test_bad_arguments():
    with pytest.raises(ValueError, match="events"):
        generate("/nonexistent-never-written", users=10, items=10, events=5)
    with pytest.raises(ValueError, match="unknown preset"):
        generate_preset("huge", "/nonexistent-never-written")
    with pytest.raises(ValueError, match="unknown generator option"):
        generate("/nonexistent-never-written", users=10, items=10, events=50, colour=1)


def _slope(counts: np.ndarray) -> float:
    c = np.sort(counts)[::-1]
    r = np.arange(1, c.size + 1)
    sel = (r >= 10) & (r <= c.size // 2)
    return float(np.polyfit(np.log(r[sel]), np.log(c[sel]), 1)[0])


def test_popularity_follows_the_zipf_option(tmp_path):
    slopes = {}
    for z in (0.6, 1.0):
        generate(str(tmp_path / str(z)), users=3000, items=3000, events=120_000, seed=0, zipf=z)
        ev = pq.read_table(tmp_path / str(z) / "events.parquet", columns=["item_id"]).to_pandas()
        slopes[z] = _slope(ev.item_id.value_counts().to_numpy())
    assert -0.75 < slopes[0.6] < -0.45, slopes
    assert -1.2 < slopes[1.0] < -0.8, slopes


def test_behaviours_mostly_clicks_and_actions_follow_clicks(medium):
    df = read_events(str(medium / "events.parquet")).to_pandas()
    share = df.behavior.value_counts(normalize=True)
    assert share["click"] > 0.85 and {"cart", "fav", "buy"} <= set(share.index)
    prev_item = df.groupby("user_id").item_id.shift()
    act = df.behavior != "click"
    assert (df.item_id[act] == prev_item[act]).mean() > 0.9  # cart/fav/buy re-touch the item just viewed


def _clicks_with_items(d: Path) -> pd.DataFrame:
    ev = read_events(str(d / "events.parquet")).to_pandas()
    items = pq.read_table(d / "items.parquet").to_pandas()
    return ev[ev.behavior == "click"].merge(items, on="item_id").sort_values(["user_id", "ts"])


def test_sessions_make_co_clicks_related(medium):
    """Consecutive clicks of a session share a category far above chance: the signal Swing feeds on."""
    df = _clicks_with_items(medium)
    same_user = df.user_id.values[1:] == df.user_id.values[:-1]
    gap = np.diff(df.ts.values.astype("datetime64[s]").astype(np.int64))
    near = same_user & (gap < 600)
    cat = df.category_id.values
    same_cat = (cat[1:] == cat[:-1])[near].mean()
    rng = np.random.default_rng(0)
    chance = (cat[rng.permutation(cat.size)] == cat).mean()
    assert same_cat > 0.8 and chance < 0.2, (same_cat, chance)


def _mode(df: pd.DataFrame, keys: list[str], col: str) -> pd.DataFrame:
    """Most frequent ``col`` per ``keys`` (ties: smallest value)."""
    n = df.groupby(keys + [col]).size().rename("n").reset_index()
    n = n.sort_values(keys + ["n", col], ascending=[True] * len(keys) + [False, True])
    return n.drop_duplicates(keys)[keys + [col]]


def test_planted_personal_signal_is_present(medium):
    """After a temporal cut, a test click's brand matches the user's own favourite brand in that category
    more often than the category's most popular brand (what non-personal popularity would guess), and its price
    tier matches the user's usual tier above the base rate."""
    df = _clicks_with_items(medium)
    df["tier"] = df.groupby("category_id").price.rank(pct=True).mul(3).clip(upper=2.999).astype(int)
    cut = df.ts.max() - pd.Timedelta(days=2)
    tr, te = df[df.ts < cut], df[df.ts >= cut]
    ub = _mode(tr, ["user_id", "category_id"], "brand_id").rename(columns={"brand_id": "ub"})
    cb = _mode(tr, ["category_id"], "brand_id").rename(columns={"brand_id": "cb"})
    x = te.merge(ub, on=["user_id", "category_id"]).merge(cb, on="category_id")
    personal, popular = (x.brand_id == x.ub).mean(), (x.brand_id == x.cb).mean()
    assert personal > popular + 0.04, (personal, popular)
    ut = _mode(tr, ["user_id"], "tier").rename(columns={"tier": "ut"})
    y = te.merge(ut, on="user_id")
    match, base = (y.tier == y.ut).mean(), y.tier.value_counts(normalize=True).max()
    assert match > base + 0.08, (match, base)


def test_interests_drift_over_time(medium):
    """Users' category mix in the first and last thirds of the window differ more than with no drift."""
    df = _clicks_with_items(medium)
    t = (df.ts - df.ts.min()) / (df.ts.max() - df.ts.min())

    def tv_distance(frame: pd.DataFrame) -> float:
        a = frame[t[frame.index] < 1 / 3].groupby(["user_id", "category_id"]).size()
        b = frame[t[frame.index] > 2 / 3].groupby(["user_id", "category_id"]).size()
        a = a / a.groupby(level=0).transform("sum")
        b = b / b.groupby(level=0).transform("sum")
        both = a.index.get_level_values(0).unique().intersection(b.index.get_level_values(0).unique())
        d = (a.reindex(b.index.union(a.index), fill_value=0) - b.reindex(b.index.union(a.index), fill_value=0))
        d = d.abs().groupby(level=0).sum()
        return float(d.loc[both].mean() / 2)

    drift = tv_distance(df)
    assert drift > 0.3, drift


def test_presets_shapes():
    sb = preset_params("swing-bench")
    assert (sb.users, sb.items, sb.zipf) == (50_000, 20_000, 0.6)
    assert preset_params("swing-bench", zipf=1.0).zipf == 1.0
    demo = preset_params("demo")
    assert 2000 <= demo.users <= 3000 and 2000 <= demo.items <= 3000 and 100_000 <= demo.events <= 150_000
    assert demo.days >= 14


def test_cli_generate_contract(tmp_path):
    args = ["--users", "200", "--items", "300", "--events", "4000", "--seed", "5"]
    for d in ("a", "b"):
        r = subprocess.run([str(PI2I), "data", "generate", "--out", str(tmp_path / d), *args],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
    for f in ("events.parquet", "items.parquet"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    r = subprocess.run([str(PI2I), "data", "generate", "--preset", "tiny", "--out", str(tmp_path / "t"),
                        "--zipf", "1.1"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["params"]["zipf"] == 1.1
    r = subprocess.run([str(PI2I), "data", "generate", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "--preset" in r.stderr and "Traceback" not in r.stderr


def test_guide_table_lookup_equals_searchsorted():
    from pi2i.data.synthetic import _Cdf

    rng = np.random.default_rng(0)
    for w in (np.arange(1, 5001) ** -1.3, rng.random(777) + 1e-9, np.ones(3)):
        cdf = _Cdf(w)
        x = rng.random(50_000) * cdf.total
        assert (cdf.lookup(x) == np.searchsorted(cdf.cum, x, side="right")).all()


def test_failed_generate_leaves_no_partial_dir(tmp_path):
    """Like a load, a generation that fails part-way leaves nothing behind (no events.parquet.tmp)."""
    def crash(done: int, total: int) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        generate(str(tmp_path / "d"), users=50, items=40, events=600, seed=0, progress=crash)
    assert list(tmp_path.iterdir()) == []
