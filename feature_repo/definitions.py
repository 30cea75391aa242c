"""pi2i Feast definitions: entities ``user`` / ``item`` and the feature views the PI2I stages read.

Views (all offline sources are parquet tables under the data dir, read by the duckdb offline store):

* ``item_profile``   item side info (category_id, brand_id, seller_id, price — whichever the data has),
                     timestamped at the start of the data: static attributes, valid for any training time.
* ``item_popularity`` per-item behaviour counts (events, clicks, carts, favs, buys, distinct users) as of the
                     end of the data (their timestamp), so a point-in-time join never leaks them into the past.
* ``user_profile``   profile columns of users.parquet (only when the data has one), timestamped at data start.
* ``user_recent_items`` the user's last L interactions, oldest first: ``recent_items`` (item ids) and
                     ``recent_ts`` (int64 microseconds since epoch), timestamped at the user's last event.
                     Its source is the push source ``user_clicks``: serving pushes the updated arrays on every
                     live click (online store), ingest materializes the batch table behind it.

Which columns exist is data-dependent, so ``pi2i features ingest`` writes ``<data>/offline/schema.json``
(column name -> arrow type) before applying; without it (a bare ``feast apply``) the full item side info and no
user profile are assumed. The data dir is ``$PI2I_FEAST_DATA`` or ``data/`` next to this file, so a copy of
the repo at another path is self-contained.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String

REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("PI2I_FEAST_DATA") or REPO_DIR / "data").resolve()
OFFLINE_DIR = DATA_DIR / "offline"
TS = "event_timestamp"  # timestamp[us, UTC] in every offline table

_DEFAULT_SCHEMA = {
    "item_profile": {"category_id": "int64", "brand_id": "int64", "seller_id": "int64", "price": "double"},
    "user_profile": None,
}
_FEAST_TYPES = {"int64": Int64, "int32": Int32, "double": Float64, "float": Float32, "string": String, "bool": Bool}


def _schema() -> dict:
    path = OFFLINE_DIR / "schema.json"
    return json.loads(path.read_text()) if path.exists() else _DEFAULT_SCHEMA


def _fields(columns: dict[str, str]) -> list[Field]:
    return [Field(name=name, dtype=_FEAST_TYPES[t]) for name, t in columns.items()]


def _source(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=str(OFFLINE_DIR / f"{name}.parquet"),
        file_format=ParquetFormat(),
        timestamp_field=TS,
    )


NO_TTL = timedelta(0)  # snapshots stay valid until replaced; point-in-time joins take the latest row <= t

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="a shopper")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="a catalogue item")

item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    ttl=NO_TTL,
    schema=[
        Field(name="num_events", dtype=Int64, description="all behaviours"),
        Field(name="num_clicks", dtype=Int64),
        Field(name="num_carts", dtype=Int64),
        Field(name="num_favs", dtype=Int64),
        Field(name="num_buys", dtype=Int64),
        Field(name="num_users", dtype=Int64, description="distinct users who interacted"),
    ],
    source=_source("item_popularity"),
    online=True,
    description="behaviour counts per item as of the end of the ingested data",
)

user_recent_source = _source("user_recent_items")

#: Live clicks: serving pushes a user's updated (recent_items, recent_ts) arrays here (PushMode.ONLINE).
user_clicks = PushSource(name="user_clicks", batch_source=user_recent_source,
                         description="live click stream from serving; rows: user_id, event_timestamp, "
                                     "recent_items, recent_ts (the whole updated window)")

user_recent_items = FeatureView(
    name="user_recent_items",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="recent_items", dtype=Array(Int64), description="last L item ids, oldest first"),
        Field(name="recent_ts", dtype=Array(Int64), description="their timestamps, microseconds since epoch"),
    ],
    source=user_clicks,
    online=True,
    description="the user's last L interactions (batch: as of the user's last event; live: pushed clicks)",
)

_s = _schema()
item_profile = (
    FeatureView(
        name="item_profile",
        entities=[item],
        ttl=NO_TTL,
        schema=_fields(_s["item_profile"]),
        source=_source("item_profile"),
        online=True,
        description="item side info (static, valid from the start of the data)",
    )
    if _s.get("item_profile") else None
)
user_profile = (
    FeatureView(
        name="user_profile",
        entities=[user],
        ttl=NO_TTL,
        schema=_fields(_s["user_profile"]),
        source=_source("user_profile"),
        online=True,
        description="user profile columns of users.parquet (static, valid from the start of the data)",
    )
    if _s.get("user_profile") else None
)

#: Everything to apply, in dependency order (entities, sources, views). Built for ``FeatureStore.apply``.
OBJECTS = [o for o in (user, item, user_clicks, item_popularity, user_recent_items, item_profile, user_profile)
           if o is not None]
