"""Data contracts of DESIGN.md, in one place: schemas, behaviour vocabulary, and parquet I/O over any
filesystem pyarrow understands (local paths or URIs such as ``s3://`` / ``gs://``).

Every stage reads and writes through these helpers so the column names, types and sort orders below are the
only definition of the on-disk formats.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

#: Canonical behaviour names. Sources map onto these (Taobao ``pv`` is a click).
BEHAVIORS: tuple[str, ...] = ("click", "cart", "fav", "buy")
BEHAVIOR_ALIASES: dict[str, str] = {
    "pv": "click", "click": "click", "view": "click", "clk": "click",
    "cart": "cart", "addtocart": "cart", "add_to_cart": "cart",
    "fav": "fav", "favorite": "fav", "like": "fav",
    "buy": "buy", "purchase": "buy", "order": "buy", "rating": "click",
}

TS_TYPE = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("behavior", pa.string(), nullable=False),
    pa.field("ts", TS_TYPE, nullable=False),
])

#: Required item column; side-info columns are optional (category_id, brand_id, seller_id: int64, price: float64).
ITEM_SIDE_INFO: dict[str, pa.DataType] = {
    "category_id": pa.int64(), "brand_id": pa.int64(), "seller_id": pa.int64(), "price": pa.float64(),
}

I2I_SCHEMA = pa.schema([
    pa.field("trigger", pa.int64(), nullable=False),
    pa.field("target", pa.int64(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
])

#: File names of a data directory (output of ``pi2i data load`` / ``generate`` / ``split``).
EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
QUARANTINE_FILE = "quarantine.parquet"
SUMMARY_FILE = "summary.json"


class ContractError(ValueError):
    """Input that violates a data contract as a whole (bad schema, unreadable file)."""


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or any URI pyarrow understands."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        import os

        return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """Join path segments for local paths and URIs alike."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{PurePosixPath(rest, *parts)}"
    import os

    return os.path.join(base, *parts)


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_parquet(table: pa.Table, uri: str) -> None:
    """Write a table atomically where the filesystem allows it (local: temp file + rename)."""
    fs, path = resolve(uri)
    parent = str(PurePosixPath(path).parent)
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = path + ".tmp"
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except FileNotFoundError as e:
        raise ContractError(f"no such file: {uri}") from e


def write_json(obj: Any, uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(str(PurePosixPath(path).parent), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def check_schema(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Cast ``table`` to ``schema`` (column order included) or raise a ContractError naming what is wrong."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ContractError(f"{what}: missing column(s) {missing}; have {table.column_names}")
    try:
        return table.select([f.name for f in schema]).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ContractError(f"{what}: cannot cast to {schema}: {e}") from e


def read_events(uri: str) -> pa.Table:
    """Events of the contract: user_id, item_id, behavior, ts (timestamp[us, UTC])."""
    return check_schema(read_parquet(uri), EVENTS_SCHEMA, f"events {uri}")


def read_i2i(uri: str) -> pa.Table:
    """i2i table of the contract, sorted by (trigger, rank)."""
    return check_schema(read_parquet(uri), I2I_SCHEMA, f"i2i table {uri}")
