"""Data contracts of DESIGN.md, in one place: schemas, behaviour vocabulary, and parquet I/O over any
filesystem pyarrow understands (local paths or URIs such as ``s3://`` / ``gs://``).

Every stage reads and writes through these helpers so the column names, types and sort orders below are the
only definition of the on-disk formats.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

#: Canonical behaviour names. Sources map onto these (Taobao ``pv`` is a click).
BEHAVIORS: tuple[str, ...] = ("click", "cart", "fav", "buy")
#: Behaviour of rows added by LLM-I2I augmentation (never a source behaviour; only Swing may count them).
SYNTHETIC_BEHAVIOR = "synthetic"
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
    """Input that violates a data contract as a whole (bad schema, unreadable file, unreachable store)."""


# ---------------------------------------------------------------------------------------------- filesystem layer
# Every artifact (events, i2i, samples, model dirs, registry, reports) is addressed by a URI: a local path,
# ``file://``, ``s3://`` (any S3-compatible store) or ``gs://``, all through pyarrow filesystems. ``s3://`` is
# configured from the environment only (never from config files, never logged):
#   AWS_ENDPOINT_URL (S3-compatible endpoint, e.g. http://minio:9000), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#   AWS_SESSION_TOKEN (optional), AWS_REGION (default us-east-1); or AWS_WEB_IDENTITY_TOKEN_FILE (IRSA).
# Failures of the store (unreachable endpoint, missing credentials, missing bucket) become one-line
# ContractErrors naming the URI; writes land whole or not at all (local: temp + rename; object stores: one PUT
# on success only).

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION")


def is_uri(uri: str) -> bool:
    """True for ``scheme://...`` (object stores and ``file://``), False for plain local paths."""
    return "://" in str(uri)


def is_local(uri: str) -> bool:
    return isinstance(resolve(uri)[0], pafs.LocalFileSystem)


def _s3_env() -> tuple[str, ...]:
    return tuple(os.environ.get(k, "") for k in S3_ENV)


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str, key: str, secret: str, token: str, region: str) -> pafs.S3FileSystem:
    kw: dict[str, Any] = {"region": region or "us-east-1", "connect_timeout": 5, "request_timeout": 60,
                          "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
    if endpoint:
        kw["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kw["scheme"] = "http"
    if key:
        kw.update(access_key=key, secret_key=secret, session_token=token or None)
    return pafs.S3FileSystem(**kw)


def _s3_filesystem(uri: str) -> pafs.S3FileSystem:
    endpoint, key, secret, token, region = _s3_env()
    if not (key and secret) and not os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        raise ContractError(f"{uri}: missing object-store credentials (set AWS_ACCESS_KEY_ID and "
                            f"AWS_SECRET_ACCESS_KEY in the environment)")
    return _s3(endpoint, key, secret, token, region)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or any URI pyarrow understands (``s3://`` from the environment)."""
    uri = str(uri)
    if uri.startswith(("s3://", "s3a://")):
        path = uri.split("://", 1)[1].rstrip("/")
        if not path:
            raise ContractError(f"{uri}: no bucket in the URI")
        return _s3_filesystem(uri), path
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError, OSError) as e:
            raise ContractError(f"{uri}: {_reason(e)}") from e
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _reason(e: BaseException) -> str:
    """One line saying why a filesystem call failed (AWS SDK messages are long and multi-line)."""
    msg = " ".join(str(e).split())
    for code, say in (("NO_SUCH_BUCKET", "the bucket does not exist"),
                      ("NETWORK_CONNECTION", "object-store endpoint unreachable"),
                      ("curlCode: 7", "object-store endpoint unreachable"),
                      ("ACCESS_DENIED", "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"),
                      ("INVALID_ACCESS_KEY_ID", "invalid AWS_ACCESS_KEY_ID"),
                      ("SIGNATURE_DOES_NOT_MATCH", "invalid AWS_SECRET_ACCESS_KEY")):
        if code in msg:
            endpoint = os.environ.get("AWS_ENDPOINT_URL")
            return say + (f" ({endpoint})" if "unreachable" in say and endpoint else "")
    return msg[:300]


@contextlib.contextmanager
def _store_errors(uri: str, action: str) -> Iterator[None]:
    """Turn filesystem failures into one-line ContractErrors naming ``uri``."""
    try:
        yield
    except ContractError:
        raise
    except FileNotFoundError as e:
        raise ContractError(f"no such file: {uri}") from e
    except OSError as e:
        raise ContractError(f"cannot {action} {uri}: {_reason(e)}") from e


def _bucket_check(uri: str, fs: pafs.FileSystem, path: str) -> None:
    """For object stores: a missing bucket is named as such (pyarrow reports it as a missing file)."""
    if isinstance(fs, pafs.S3FileSystem | getattr(pafs, "GcsFileSystem", pafs.S3FileSystem)):
        bucket = path.split("/", 1)[0]
        with _store_errors(uri, "reach"):
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise ContractError(f"{uri}: the bucket {bucket!r} does not exist")


def join(base: str, *parts: str) -> str:
    """Join path segments for local paths and URIs alike."""
    base = str(base)
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{PurePosixPath(rest, *parts)}"
    return os.path.join(base, *parts)


def parent(uri: str) -> str:
    """The directory holding ``uri`` (same form: path or URI)."""
    uri = str(uri).rstrip("/")
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{PurePosixPath(rest).parent}"
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return PurePosixPath(str(uri).rstrip("/").split("://", 1)[-1]).name


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    with _store_errors(uri, "create"):
        _bucket_check(uri, fs, path)
        fs.create_dir(path, recursive=True)


def _type(uri: str) -> pafs.FileType:
    fs, path = resolve(uri)
    with _store_errors(uri, "reach"):
        return fs.get_file_info(path).type


def exists(uri: str) -> bool:
    return _type(uri) != pafs.FileType.NotFound


def isdir(uri: str) -> bool:
    return _type(uri) == pafs.FileType.Directory


def isfile(uri: str) -> bool:
    return _type(uri) == pafs.FileType.File


def listdir(uri: str) -> list[str]:
    """Names directly under the directory ``uri``, sorted; ContractError if it is not a directory."""
    fs, path = resolve(uri)
    with _store_errors(uri, "list"):
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            _bucket_check(uri, fs, path)
            raise ContractError(f"not a directory: {uri}")
        return sorted(PurePosixPath(i.path).name for i in fs.get_file_info(pafs.FileSelector(path)))


def rm_tree(uri: str, missing_ok: bool = True) -> None:
    """Delete a file or a directory and everything below it."""
    fs, path = resolve(uri)
    with _store_errors(uri, "delete"):
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)
        elif not missing_ok:
            raise ContractError(f"no such file or directory: {uri}")


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[Any]:
    """A seekable binary file for reading (``np.load``, ``zipfile``, safetensors ``load``) on any filesystem."""
    fs, path = resolve(uri)
    with _store_errors(uri, "read"):
        try:
            f = fs.open_input_file(path)
        except FileNotFoundError:
            _bucket_check(uri, fs, path)
            raise
        except OSError:
            if fs.get_file_info(path).type == pafs.FileType.Directory:
                raise ContractError(f"is a directory, not a file: {uri}") from None
            raise
    with f:
        yield f


@contextlib.contextmanager
def open_output(uri: str) -> Iterator[Any]:
    """A binary file for writing that lands whole or not at all: local files are written to a temp name and
    renamed on success; object-store files are buffered and PUT once on success (an exception inside the
    ``with`` leaves no object behind)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # mode from the umask, like open()
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as buf:
        yield buf
        buf.seek(0)
        with _store_errors(uri, "write"):
            _bucket_check(uri, fs, path)
            fs.create_dir(str(PurePosixPath(path).parent), recursive=True)
            with fs.open_output_stream(path) as out:
                shutil.copyfileobj(buf, out, _CHUNK)


_CHUNK = 8 << 20


def read_bytes(uri: str) -> bytes:
    with open_input(uri) as f:
        return f.read()


def write_bytes(data: bytes, uri: str) -> None:
    with open_output(uri) as f:
        f.write(data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def write_text(text: str, uri: str) -> None:
    write_bytes(text.encode(), uri)


def copy_file(src: str, dst: str) -> None:
    """Copy one file between any two filesystems (streamed; the destination lands whole)."""
    with open_input(src) as fi, open_output(dst) as fo:
        while chunk := fi.read(_CHUNK):
            fo.write(chunk)


def copy_tree(src: str, dst: str, names: Sequence[str] | None = None) -> list[str]:
    """Copy the directory ``src`` into ``dst`` (created; existing files replaced), between any two filesystems.
    ``names``: copy only these top-level entries. Returns the top-level names copied, sorted."""
    src_fs, src_path = resolve(src)
    with _store_errors(src, "read"):
        if src_fs.get_file_info(src_path).type != pafs.FileType.Directory:
            _bucket_check(src, src_fs, src_path)
            raise ContractError(f"not a directory: {src}")
        infos = src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True))
    base = PurePosixPath(src_path)
    top: set[str] = set()
    makedirs(dst)
    for info in sorted(infos, key=lambda i: i.path):
        rel = PurePosixPath(info.path).relative_to(base)
        if names is not None and rel.parts[0] not in names:
            continue
        top.add(rel.parts[0])
        src_uri, dst_uri = join(src, *rel.parts), join(dst, *rel.parts)
        if info.type == pafs.FileType.Directory:
            makedirs(dst_uri)
        else:
            copy_file(src_uri, dst_uri)
    return sorted(top)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding ``uri``'s content, for libraries that only open local files: the path itself when
    local, else a temporary download (file or whole directory) removed afterwards."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        if not os.path.exists(path):
            raise ContractError(f"no such file or directory: {uri}")
        yield path
        return
    kind = _type(uri)
    with tempfile.TemporaryDirectory(prefix="pi2i-") as tmp:
        dst = os.path.join(tmp, basename(uri) or "data")
        if kind == pafs.FileType.Directory:
            copy_tree(uri, dst)
        elif kind == pafs.FileType.File:
            copy_file(uri, dst)
        else:
            _bucket_check(uri, fs, path)
            raise ContractError(f"no such file or directory: {uri}")
        yield dst


@contextlib.contextmanager
def local_output_dir(uri: str) -> Iterator[str]:
    """A local directory to write into for libraries that only write local files; on success its content
    is copied to ``uri`` (the directory itself when local)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pi2i-out-") as tmp:
        yield tmp
        copy_tree(tmp, uri)


def write_parquet(table: pa.Table, uri: str) -> None:
    """Write a table so readers see the old file or the new one, never half of it."""
    with open_output(uri) as f:
        pq.write_table(table, f)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    with _store_errors(uri, "read"):
        try:
            return pq.read_table(path, filesystem=fs, columns=columns)
        except FileNotFoundError:
            _bucket_check(uri, fs, path)
            raise
        except pa.ArrowInvalid as e:
            raise ContractError(f"not a readable parquet file: {uri}: {_reason(e)}") from e


def write_json(obj: Any, uri: str) -> None:
    write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), uri)


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_bytes(uri).decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ContractError(f"not valid JSON: {uri}: {e}") from e


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
