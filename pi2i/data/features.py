"""Feature ingestion into Feast and the online user history that serving reads and writes.

``ingest`` turns a data dir of the contract (events, items, optional users) into the offline parquet tables of
``feature_repo/definitions.py``, applies the repository and materializes the online store:

* ``item_profile``      item side info present in items.parquet (static; timestamp = start of the data);
* ``item_popularity``   per-item behaviour counts and distinct users (timestamp = end of the data);
* ``user_profile``      users.parquet columns, when that file exists (static; timestamp = start of the data);
* ``user_recent_items`` per user the last L interactions, oldest first: ``recent_items`` (int64 ids) and
                        ``recent_ts`` (int64 microseconds), timestamp = the user's last event.

Every table is computed with pyarrow/numpy column operations (no per-row Python) and its timestamps are written
as ``timestamp[us, UTC]``. The offline store is duckdb (Feast's ``file``/dask store drops rows in point-in-time
joins). ``FeastHistoryStore`` is the serving-side HistoryStore: reads the window from the online store and
pushes the updated window through the ``user_clicks`` push source.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pi2i.contracts import (
    BEHAVIORS,
    EVENTS_FILE,
    ITEM_SIDE_INFO,
    ITEMS_FILE,
    TS_TYPE,
    USERS_FILE,
    ContractError,
    exists,
    join,
    read_events,
    read_parquet,
    write_parquet,
)
from pi2i.data.events import clicks, drop_consecutive_repeats, recent_histories

if TYPE_CHECKING:  # feast is heavy to import (~seconds); load it only when a store is opened
    import pandas as pd
    from feast import FeatureStore

TS_COL = "event_timestamp"
PUSH_SOURCE = "user_clicks"
RECENT_VIEW = "user_recent_items"
#: Files of the repository template copied into a working dir (never the template's data/).
REPO_FILES = ("feature_store.yaml", "feature_store.redis.yaml", "definitions.py", "README.md")
#: Arrow type -> name used in schema.json (the names definitions.py maps onto Feast types).
_TYPE_NAMES = {pa.int64(): "int64", pa.int32(): "int64", pa.int16(): "int64", pa.int8(): "int64",
               pa.uint8(): "int64", pa.uint16(): "int64", pa.uint32(): "int64",
               pa.float64(): "double", pa.float32(): "double", pa.string(): "string",
               pa.large_string(): "string", pa.bool_(): "bool"}
_CAST = {"int64": pa.int64(), "double": pa.float64(), "string": pa.string(), "bool": pa.bool_()}

Progress = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- tables

def _ts_us(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int64), pa.int64()).cast(TS_TYPE)


def _constant_ts(ts_us: int, n: int) -> pa.Array:
    return _ts_us(np.full(n, ts_us, dtype=np.int64))


def recent_items_table(events: pa.Table, history_len: int, dedup_consecutive: bool = False) -> pa.Table:
    """Per user the last ``history_len`` events, oldest first (ties in ts keep file order), as list columns.

    The window is :func:`pi2i.data.events.recent_histories` (the PRS ``histories.parquet`` when given the
    same behaviours and ``dedup_consecutive``). The row timestamp is the newest kept event: the window is
    valid from then on.
    """
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    users, indptr, items, ts = recent_histories(events, history_len, None, dedup_consecutive)
    offsets = pa.array(indptr.astype(np.int32), pa.int32())
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        TS_COL: _ts_us(ts[indptr[1:] - 1]),
        "recent_items": pa.ListArray.from_arrays(offsets, pa.array(items, pa.int64())),
        "recent_ts": pa.ListArray.from_arrays(offsets, pa.array(ts, pa.int64())),
    })


def popularity_table(events: pa.Table, item_ids: pa.Array, ts_us: int) -> pa.Table:
    """Behaviour counts and distinct users per item, for the union of ``item_ids`` and the event items."""
    b = events.column("behavior")
    cols = {"item_id": events.column("item_id"), "user_id": events.column("user_id")}
    for name in BEHAVIORS:
        cols[f"is_{name}"] = pc.cast(pc.equal(b, name), pa.int64())
    grouped = pa.table(cols).group_by("item_id").aggregate(
        [("user_id", "count"), ("user_id", "count_distinct")] + [(f"is_{x}", "sum") for x in BEHAVIORS])
    all_items = np.unique(np.concatenate([item_ids.to_numpy(zero_copy_only=False),
                                          grouped.column("item_id").to_numpy()]).astype(np.int64))
    pos = np.searchsorted(all_items, grouped.column("item_id").to_numpy())

    def spread(col: str) -> pa.Array:
        out = np.zeros(len(all_items), np.int64)
        out[pos] = grouped.column(col).to_numpy()
        return pa.array(out, pa.int64())

    return pa.table({
        "item_id": pa.array(all_items, pa.int64()),
        TS_COL: _constant_ts(ts_us, len(all_items)),
        "num_events": spread("user_id_count"),
        "num_clicks": spread("is_click_sum"),
        "num_carts": spread("is_cart_sum"),
        "num_favs": spread("is_fav_sum"),
        "num_buys": spread("is_buy_sum"),
        "num_users": spread("user_id_count_distinct"),
    })


def _first_per_key(table: pa.Table, key: str) -> pa.Table:
    """Rows with the first occurrence of each key (a profile table must have one row per entity)."""
    ids = table.column(key).to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    return table.take(pa.array(np.sort(first)))


def _profile(table: pa.Table, key: str, wanted: dict[str, pa.DataType] | None, ts_us: int,
             skipped: list[str]) -> tuple[pa.Table, dict[str, str]]:
    """Profile table (key, event_timestamp, supported feature columns) and its schema.json entry."""
    if key not in table.column_names:
        raise ContractError(f"{key} column missing from the {key.split('_')[0]}s table; have {table.column_names}")
    if table.column(key).null_count:
        raise ContractError(f"{key} has null values")
    table = _first_per_key(table.set_column(table.column_names.index(key), key,
                                            table.column(key).cast(pa.int64())), key)
    cols: dict[str, Any] = {key: table.column(key), TS_COL: _constant_ts(ts_us, table.num_rows)}
    schema: dict[str, str] = {}
    for name in table.column_names:
        if name in (key, TS_COL):
            continue
        if wanted is not None and name not in wanted:
            continue
        t = _TYPE_NAMES.get(table.schema.field(name).type)
        if t is None:
            skipped.append(f"{name} ({table.schema.field(name).type})")
            continue
        cols[name] = table.column(name).cast(_CAST[t])
        schema[name] = t
    return pa.table(cols), schema


def build_tables(data_dir: str, history_len: int = 50,
                 behaviors: Sequence[str] | None = None, dedup_consecutive: bool = False
                 ) -> tuple[dict[str, pa.Table], dict]:
    """The offline tables of every feature view, and the schema manifest definitions.py reads.

    ``behaviors`` restricts the recent-items window (None: every behaviour) and ``dedup_consecutive``
    collapses back-to-back repeats — pass ``sampling.behaviors`` / ``sampling.dedup_consecutive`` so the
    window equals the PRS ``histories.parquet``. Popularity always counts every behaviour, one column each.
    """
    events = read_events(join(data_dir, EVENTS_FILE))
    if events.num_rows == 0:
        raise ContractError(f"no events in {join(data_dir, EVENTS_FILE)}: nothing to ingest")
    ts = events.column("ts").cast(pa.int64())
    t0, t1 = int(pc.min(ts).as_py()), int(pc.max(ts).as_py())
    tables: dict[str, pa.Table] = {}
    schema: dict[str, Any] = {"history_len": history_len, "dedup_consecutive": dedup_consecutive,
                              "item_profile": None, "user_profile": None, "skipped_columns": []}

    item_ids = pa.array([], pa.int64())
    if exists(join(data_dir, ITEMS_FILE)):
        prof, cols = _profile(read_parquet(join(data_dir, ITEMS_FILE)), "item_id", ITEM_SIDE_INFO, t0,
                              schema["skipped_columns"])
        item_ids = prof.column("item_id").combine_chunks()
        if cols:
            tables["item_profile"], schema["item_profile"] = prof, cols
    tables["item_popularity"] = popularity_table(events, item_ids, t1)
    if exists(join(data_dir, USERS_FILE)):
        prof, cols = _profile(read_parquet(join(data_dir, USERS_FILE)), "user_id", None, t0,
                              schema["skipped_columns"])
        if cols:
            tables["user_profile"], schema["user_profile"] = prof, cols

    if behaviors is not None:
        unknown = sorted(set(behaviors) - set(BEHAVIORS))
        if unknown:
            raise ValueError(f"unknown behavior(s) {unknown}; allowed: {list(BEHAVIORS)}")
        events = clicks(events, behaviors)
    tables[RECENT_VIEW] = recent_items_table(events, history_len, dedup_consecutive)
    schema["time_range_us"] = [t0, t1]
    return tables, schema


# ----------------------------------------------------------------------------------------------- repo / store

def offline_dir(repo_path: str | Path) -> Path:
    """Where definitions.py reads the offline parquet: ``$PI2I_FEAST_DATA/offline`` or ``<repo>/data/offline``."""
    base = os.environ.get("PI2I_FEAST_DATA") or str(Path(repo_path) / "data")
    return Path(base).resolve() / "offline"


def prepare_repo(template: str | Path, work_dir: str | Path, store_yaml: str | Path | None = None) -> Path:
    """Copy the repository template (config + definitions, not its data) into ``work_dir``."""
    template, work = Path(template).resolve(), Path(work_dir).resolve()
    if not (template / "definitions.py").exists():
        raise FileNotFoundError(f"not a pi2i feature repo (no definitions.py): {template}")
    work.mkdir(parents=True, exist_ok=True)
    if work != template:
        for name in REPO_FILES:
            if (template / name).exists():
                shutil.copy2(template / name, work / name)
    if store_yaml is not None:
        shutil.copy2(store_yaml, work / "feature_store.yaml")
    return work


def load_definitions(repo_path: str | Path) -> Any:
    """Import ``<repo>/definitions.py`` as a fresh module (it reads schema.json at import time)."""
    path = Path(repo_path).resolve() / "definitions.py"
    name = f"_pi2i_feast_defs_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(name, None)
    return mod


def open_store(repo_path: str | Path) -> FeatureStore:
    from feast import FeatureStore

    repo = Path(repo_path).resolve()
    if not (repo / "feature_store.yaml").exists():
        raise FileNotFoundError(f"no feature_store.yaml in {repo}")
    return FeatureStore(repo_path=str(repo))


def ingest(data_dir: str, repo_path: str | Path = "feature_repo", work_dir: str | Path | None = None,
           history_len: int = 50, behaviors: Sequence[str] | None = None, dedup_consecutive: bool = False,
           store_yaml: str | Path | None = None, progress: Progress | None = None) -> dict:
    """Build the offline tables from ``data_dir``, apply the Feast repo and materialize the online store.

    ``repo_path`` is the template (``feature_repo/``); with ``work_dir`` the template is copied there and all
    state (parquet, registry, online store) lands under ``work_dir/data`` — the template is never written.
    Without it the repo is used in place (its ``data/`` is gitignored). Returns the rows written per view,
    the entities materialized, the time range and the working repo path.
    """
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    say("building offline tables")
    tables, schema = build_tables(data_dir, history_len, behaviors, dedup_consecutive)
    timings["build_s"] = time.perf_counter() - t

    repo = prepare_repo(repo_path, work_dir, store_yaml) if work_dir is not None else Path(repo_path).resolve()
    out = offline_dir(repo)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    say(f"writing offline parquet to {out}")
    for stale in ("item_profile", "user_profile"):
        if stale not in tables and (out / f"{stale}.parquet").exists():
            (out / f"{stale}.parquet").unlink()
    for name, table in tables.items():
        write_parquet(table, str(out / f"{name}.parquet"))
    (out / "schema.json").write_text(json.dumps(schema, indent=2))
    timings["write_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say("feast apply")
    defs = load_definitions(repo)
    store = open_store(repo)
    wanted = {o.name for o in defs.OBJECTS}
    stale_views: list[Any] = [fv for fv in store.list_feature_views() if fv.name not in wanted]
    store.apply(defs.OBJECTS, objects_to_delete=stale_views, partial=False)
    timings["apply_s"] = time.perf_counter() - t

    t = time.perf_counter()
    t0, t1 = schema["time_range_us"]
    start = datetime.fromtimestamp(t0 / 1e6, tz=UTC) - timedelta(seconds=1)
    end = datetime.fromtimestamp(t1 / 1e6, tz=UTC) + timedelta(seconds=1)
    say(f"materializing {len(tables)} views into the online store")
    with warnings.catch_warnings():  # ibis 12 on duckdb 2 warns about its own fetch_arrow_table call
        warnings.simplefilter("ignore", DeprecationWarning)
        store.materialize(start_date=start, end_date=end, feature_views=sorted(tables))
    timings["materialize_s"] = time.perf_counter() - t

    rows = {name: tab.num_rows for name, tab in tables.items()}
    return {
        "repo": str(repo),
        "offline_dir": str(out),
        "rows": rows,
        "entities_materialized": {
            "user": max(rows[RECENT_VIEW], rows.get("user_profile", 0)),
            "item": max(rows["item_popularity"], rows.get("item_profile", 0)),
        },
        "views": sorted(tables),
        "history_len": history_len,
        "dedup_consecutive": dedup_consecutive,
        "time_range": [datetime.fromtimestamp(x / 1e6, tz=UTC).isoformat() for x in (t0, t1)],
        "skipped_columns": schema["skipped_columns"],
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def feature_refs(repo_path: str | Path) -> dict[str, list[str]]:
    """``{view: ["view:feature", ...]}`` for every view registered in the repo."""
    store = open_store(repo_path)
    return {fv.name: [f"{fv.name}:{f.name}" for f in fv.features] for fv in store.list_feature_views()}


def historical_features(repo_path: str | Path, entity_df: pd.DataFrame, features: Sequence[str],
                        full_feature_names: bool = False) -> pd.DataFrame:
    """Point-in-time join: for each entity row, the latest feature values with timestamp <= its
    ``event_timestamp``. Returns the rows in the order given and checks that none was dropped."""
    if TS_COL not in entity_df.columns:
        raise ValueError(f"entity_df needs an {TS_COL!r} column (tz-aware UTC)")
    df = entity_df.copy()
    df["__row"] = np.arange(len(df), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = open_store(repo_path).get_historical_features(
            entity_df=df, features=list(features), full_feature_names=full_feature_names).to_df()
    if len(out) != len(df):
        raise RuntimeError(f"point-in-time join returned {len(out)} rows for {len(df)} entity rows")
    return out.sort_values("__row").drop(columns="__row").reset_index(drop=True)


def online_features(repo_path: str | Path, features: Sequence[str], entity_rows: dict[str, Sequence[int]]
                    ) -> dict[str, list]:
    """Latest online values, column-wise: ``{"user_id": [...], "recent_items": [...], ...}``."""
    rows = {k: [int(x) for x in v] for k, v in entity_rows.items()}
    return open_store(repo_path).get_online_features(features=list(features), entity_rows=rows).to_dict()


# ----------------------------------------------------------------------------------------------- history store

class FeastHistoryStore:
    """HistoryStore over Feast: ``get`` reads ``user_recent_items`` from the online store, ``append`` merges one
    click into the window and pushes the whole window to the ``user_clicks`` push source (online store).

    Appends for one user are read-modify-write: serialised by a lock within this process; several serving
    processes writing the same user can lose a click (last write wins) — route a user to one writer.
    """

    _FEATURES = (f"{RECENT_VIEW}:recent_items", f"{RECENT_VIEW}:recent_ts")

    def __init__(self, repo_path: str | Path, history_len: int | None = None,
                 dedup_consecutive: bool | None = None):
        self.repo_path = Path(repo_path).resolve()
        self.store = open_store(self.repo_path)
        manifest = offline_dir(self.repo_path) / "schema.json"
        meta = json.loads(manifest.read_text()) if manifest.exists() else {}
        self.history_len = int(history_len if history_len is not None else meta.get("history_len", 50))
        self.dedup_consecutive = bool(dedup_consecutive if dedup_consecutive is not None
                                      else meta.get("dedup_consecutive", False))
        self._lock = threading.Lock()

    def _read(self, user_ids: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """(items, ts, row event timestamp in µs; 0 when absent) per user, from one online read."""
        resp = self.store.get_online_features(
            features=list(self._FEATURES), entity_rows={"user_id": [int(u) for u in user_ids]})
        cols = resp.to_dict()
        names = list(resp.proto.metadata.feature_names.val)
        stamps = resp.proto.results[names.index("recent_items")].event_timestamps
        return [(np.asarray(items or [], np.int64), np.asarray(ts or [], np.int64),
                 int(st.seconds) * 1_000_000 + int(st.nanos) // 1000 if items is not None else 0)
                for items, ts, st in zip(cols["recent_items"], cols["recent_ts"], stamps)]

    def get_many(self, user_ids: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Windows of several users in one online read (unknown users: empty arrays)."""
        return [(items, ts) for items, ts, _ in self._read(user_ids)]

    def get(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's last L items and their timestamps (int64 microseconds), oldest first."""
        return self.get_many([user_id])[0]

    def append(self, user_id: int, item_id: int, ts_us: int) -> None:
        """Record one click; the window stays sorted by time (a late click lands in place) and holds L.

        The pushed row's event timestamp is the newest click, but at least 1 µs after the stored row's: online
        stores that keep only newer rows (Redis) would otherwise drop a late click or one in the same µs.
        """
        import pandas as pd
        from feast.data_source import PushMode

        with self._lock:
            old_items, old_ts, stamp = self._read([user_id])[0]
            items = np.append(old_items, np.int64(item_id))
            ts = np.append(old_ts, np.int64(ts_us))
            order = np.argsort(ts, kind="stable")  # a late click lands after equal timestamps
            items, ts = items[order], ts[order]
            if self.dedup_consecutive:
                keep = drop_consecutive_repeats(np.array([0, len(items)]), items)
                items, ts = items[keep], ts[keep]
            items, ts = items[-self.history_len:], ts[-self.history_len:]
            if np.array_equal(items, old_items) and np.array_equal(ts, old_ts):
                return  # a collapsed repeat: nothing changes
            row_ts = max(int(ts[-1]), stamp + 1)
            df = pd.DataFrame({
                "user_id": [int(user_id)],
                TS_COL: [pd.Timestamp(row_ts, unit="us", tz="UTC")],
                "recent_items": [items.tolist()],
                "recent_ts": [ts.tolist()],
            })
            self.store.push(PUSH_SOURCE, df, to=PushMode.ONLINE)
