"""Version registry: where training hands a version to serving (DESIGN.md "version" contract).

A version is an immutable directory ``registry/<version>/`` holding ``i2i_table.parquet``, ``model/`` (a copy of
the self-contained model dir), ``metrics.json`` (evaluation + gate verdict) and ``MANIFEST.json`` (sha256 and size
of every other file, the method and its config from the model's ``method.json``, the code that wrote it).
``registry/CURRENT`` names the live version and is replaced atomically (temp file + rename); every promote and
rollback is appended to ``registry/HISTORY.jsonl`` (who, when, why) so a rollback knows where to go.

Version ids are ``v<YYYYmmdd>-<HHMMSS>-<8 hex of the manifest hash>``: they sort by publish time (a publish in
the same second as the newest version takes the next second) and name their content.

**Concurrency.** Everything that reads-then-writes the registry's mutable state (CURRENT + HISTORY, version-id
allocation) runs under one lease, ``registry/.lock``: a small JSON object (owner, host, pid, expiry) created with
create-if-absent semantics. On a local/POSIX filesystem that is ``link(2)`` of a fully written temp file, which
fails atomically when the lock exists, so threads, processes and hosts sharing the filesystem are mutually
exclusive. A lease whose owner died (same host, pid gone) or whose expiry passed is broken by renaming it away
(only one breaker wins the rename). Object stores reached through pyarrow have no conditional put: there the
lease is best effort (check, put, read back after a settle delay) and two writers racing within that window can
both proceed. Run one writer at a time against an object-store registry (the daily pipeline's deploy step is the
only promoter) or use S3's ``If-None-Match: *`` conditional PUT when pyarrow exposes it.

**Crash safety.** A local publish copies into ``.staging-<id>/`` while holding an ``flock`` on
``.staging-<id>.lock``; the kernel drops that lock when the writer dies (even ``kill -9``), so :func:`gc` (run
at every publish, and by ``pi2i versions gc``) removes staging dirs that are both older than a TTL and not
locked by a live writer. On object stores a version is written in place and its MANIFEST.json, written last,
marks it complete; gc removes incomplete version dirs older than the TTL.

Every filesystem failure surfaces as a one-line :class:`RegistryError` naming the registry and the path.

The registry is a local directory or any URI pyarrow filesystems understand (``file://``, ``s3://``, ``gs://``).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, TypeVar

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pi2i.contracts import I2I_SCHEMA, ContractError, resolve
from pi2i.layout import (
    CURRENT_FILE,
    HISTORY_LOG_FILE,
    I2I_FILE,
    MANIFEST_FILE,
    METHOD_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    MODEL_SUBDIR,
)

try:  # POSIX advisory locks mark a live publisher's staging dir; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]

# file names of a version dir and the registry root: pi2i.layout (re-exported here under the registry's names)
MODEL_DIR = MODEL_SUBDIR
HISTORY_FILE = HISTORY_LOG_FILE
LEGACY_MODEL_FILE = MODEL_CONFIG_FILE  # a PI2I model dir from before method.json (pi2i.methods.manifest)
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"

VERSION_RE = re.compile(r"^v\d{8}-\d{6}-[0-9a-f]{8}$")
_CHUNK = 1 << 20
LEASE_TTL_S = 30.0  # a lease older than this is abandoned (ops under it take milliseconds)
LEASE_WAIT_S = 60.0  # how long to wait for a busy registry before giving up
STAGING_TTL_S = 3600.0  # gc leaves younger staging dirs alone even when no writer holds them
_SETTLE_S = 0.2  # object stores: re-read a lease this long after writing it

F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked (unknown version, checksum mismatch, I/O failure...)."""


class GateError(RegistryError):
    """Promoting a version whose evaluation gate failed, without ``force``."""


# ---------------------------------------------------------------------------------------------- filesystem helpers

def _root(registry: str) -> tuple[pafs.FileSystem, str]:
    fs, path = resolve(str(registry))
    return fs, path.rstrip("/") or "/"


def _j(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    name = getattr(e, "filename", None)
    return f"{msg} ({name})" if name and str(name) not in msg else msg


def _os_errors(fn: F) -> F:
    """Turn any OSError (pyarrow's IOError included) escaping a public function into one RegistryError line."""

    @functools.wraps(fn)
    def inner(registry: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(registry, *args, **kwargs)
        except OSError as e:
            raise RegistryError(f"registry {registry}: {fn.__name__} failed: {_one_line(e)}") from None

    return inner  # type: ignore[return-value]


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to a temp name beside ``path`` then rename over it: readers see old or new, never half."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    try:
        fs.move(tmp, path)  # rename(2) on local filesystems: atomic replace
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def _sha256(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _copy_hashed(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> tuple[str, int]:
    """Stream-copy one file, hashing the bytes written (the manifest describes what landed)."""
    h, n = hashlib.sha256(), 0
    dst_fs.create_dir(str(PurePosixPath(dst).parent), recursive=True)
    with src_fs.open_input_stream(src) as fi, dst_fs.open_output_stream(dst) as fo:
        while chunk := fi.read(_CHUNK):
            h.update(chunk)
            fo.write(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _files_under(fs: pafs.FileSystem, path: str) -> list[str]:
    """Relative posix paths of every file below ``path``, sorted."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    base = PurePosixPath(path)
    return sorted(str(PurePosixPath(i.path).relative_to(base)) for i in infos if i.type == pafs.FileType.File)


def actor() -> str:
    """Who is acting, for HISTORY: ``$PI2I_ACTOR`` (e.g. a pipeline run id) or ``user@host``."""
    if os.environ.get("PI2I_ACTOR"):
        return os.environ["PI2I_ACTOR"]
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # a container uid without a passwd entry
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _writer() -> dict[str, str]:
    """The code and the actor writing a version (MANIFEST ``written_by``)."""
    # pi2i.__version__ + git sha: the same string method.json records (lazy: pulls in every method module)
    from pi2i.methods.manifest import code_version

    return {"code_version": code_version(), "actor": actor()}


# ------------------------------------------------------------------------------------------------------ the lease

@dataclass(frozen=True)
class _LeaseInfo:
    owner: str
    host: str
    pid: int
    op: str
    expires: float


@functools.lru_cache(maxsize=1)
def _host_id() -> str:
    """This host *and* PID namespace: a pid is only meaningful inside its namespace (containers of one pod share
    a hostname, not pids)."""
    try:
        ns = f"/pidns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        ns = ""
    return socket.gethostname() + ns


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lease(fs: pafs.FileSystem, path: str) -> _LeaseInfo | None:
    """The lease at ``path``; a lease that cannot be parsed counts as expired at its mtime + TTL."""
    try:
        raw = _read_bytes(fs, path)
    except FileNotFoundError:
        return None
    except OSError:  # object stores: a read racing a delete can fail outright; treat as held, look again
        return _LeaseInfo("unknown", "?", -1, "?", time.time() + LEASE_TTL_S)
    try:
        d = json.loads(raw.decode())
        return _LeaseInfo(str(d["owner"]), str(d["host"]), int(d["pid"]), str(d.get("op", "?")),
                          float(d["expires"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        mtime = fs.get_file_info(path).mtime
        exp = (mtime.timestamp() if mtime else 0.0) + LEASE_TTL_S
        return _LeaseInfo("unreadable", "?", -1, "?", exp)


def _abandoned(lease: _LeaseInfo) -> bool:
    if time.time() > lease.expires:
        return True
    return lease.host == _host_id() and lease.pid > 0 and not _pid_alive(lease.pid)


def _try_create(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist. Atomic on POSIX (link of a complete temp file);
    best effort on object stores (see the module docstring)."""
    if _is_local(fs):
        tmp = f"{path}.new-{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    with fs.open_output_stream(path) as f:
        f.write(data)
    time.sleep(_SETTLE_S)  # let a racing writer's put land, then see who won (last writer wins on S3)
    try:
        return _read_bytes(fs, path) == data
    except OSError:
        return False


def _break(fs: pafs.FileSystem, path: str, stale: _LeaseInfo) -> None:
    """Remove an abandoned lease. Renaming it away first means only one breaker acts on it."""
    aside = f"{path}.stale-{uuid.uuid4().hex[:12]}"
    try:
        fs.move(path, aside)
    except OSError:
        return  # someone else broke (or released) it first
    moved = _read_lease(fs, aside)
    if moved is not None and moved.owner != stale.owner and not _abandoned(moved):
        # we raced a fresh lease in between: put it back if the slot is still free
        with contextlib.suppress(OSError):
            if _is_local(fs):
                os.link(aside, path)
    with contextlib.suppress(OSError):
        fs.delete_file(aside)


@contextlib.contextmanager
def _lease(registry: str, op: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the registry's exclusive lease for the duration of the block."""
    wait_s = LEASE_WAIT_S if wait_s is None else wait_s
    fs, root = _root(registry)
    fs.create_dir(root, recursive=True)
    path = _j(root, LOCK_FILE)
    owner = f"{_host_id()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + wait_s
    delay = 0.002
    while True:
        body = json.dumps({"owner": owner, "host": _host_id(), "pid": os.getpid(), "op": op,
                           "by": actor(), "expires": time.time() + LEASE_TTL_S}).encode()
        if _try_create(fs, path, body):
            break
        held = _read_lease(fs, path)
        if held is not None and _abandoned(held):
            _break(fs, path, held)
            continue
        if time.monotonic() > deadline:
            who = f"{held.owner} ({held.op})" if held else "?"
            raise RegistryError(f"registry {registry} is busy: {path} held by {who} for over {wait_s:.0f}s; "
                                f"if that writer is gone the lease expires by itself within {LEASE_TTL_S:.0f}s")
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)
    try:
        yield
    finally:
        held = _read_lease(fs, path)
        if held is not None and held.owner == owner:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(path)


# ------------------------------------------------------------------------------------------------------ versions

def version_path(registry: str, version: str) -> str:
    """Location of a version (a local path, or a URI when the registry is one)."""
    _check_id(version)
    reg = str(registry).rstrip("/")
    if "://" in reg:
        return f"{reg}/{version}"
    return _j(_root(reg)[1], version)


def _check_id(version: str) -> None:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise RegistryError(f"not a version id: {version!r} (expected like v20261123-101500-1a2b3c4d)")


def _version_dirs(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    if not _is_dir(fs, root):
        return []
    return [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=False))
            if i.type == pafs.FileType.Directory and VERSION_RE.match(PurePosixPath(i.path).name)]


@_os_errors
def list_versions(registry: str) -> list[str]:
    """Complete versions (a MANIFEST.json present), oldest first."""
    fs, root = _root(registry)
    return sorted(PurePosixPath(i.path).name for i in _version_dirs(fs, root)
                  if _is_file(fs, _j(i.path, MANIFEST_FILE)))


def _new_version_id(existing: list[str], digest: str) -> str:
    now = int(time.time())
    if existing:  # keep ids sorted by publish order even within one second
        last = datetime.strptime(max(existing)[1:16], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
        now = max(now, int(last.timestamp()) + 1)
    stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%d-%H%M%S")
    return f"v{stamp}-{digest[:8]}"


def gate_verdict(gate: dict[str, Any] | None) -> tuple[bool | None, str]:
    """``(passed, reason)`` of a gate record ``{"passed", "reason", ...}``; ``passed`` is None when there is no
    gate at all (a version published without an evaluation), False unless it says ``passed: true``."""
    if not isinstance(gate, dict):
        return None, "no evaluation gate recorded"
    return gate.get("passed") is True, str(gate.get("reason") or "no reason recorded")


def _refuse_failed_gate(version: str, gate: dict[str, Any] | None, force: bool) -> None:
    passed, why = gate_verdict(gate)
    if passed is False and not force:
        raise GateError(f"refusing to promote {version}: its evaluation gate failed ({why}); "
                        "pass --force (with --reason) to override, which is logged in HISTORY")


def _method_info(model_dir: str, mfs: pafs.FileSystem, mpath: str) -> dict[str, Any] | None:
    """What the model dir's ``method.json`` says (method, format_version, config, code_version), checked by
    :func:`pi2i.methods.read_manifest` (a format this code cannot serve is refused here, not at serving time).
    None for a directory that records no method at all."""
    if not any(_is_file(mfs, _j(mpath, f)) for f in (METHOD_FILE, LEGACY_MODEL_FILE)):
        return None
    from pi2i.methods.manifest import read_manifest  # lazy: pulls in every method module

    try:
        info = read_manifest(model_dir)
    except Exception as e:  # noqa: BLE001 - whatever the method layer raises, the publish names the dir
        raise RegistryError(f"model dir {model_dir}: {METHOD_FILE} refused: {_one_line(e)}") from None
    return {"name": info.get("method"), "format_version": info.get("format_version"),
            "config": info.get("config"), "code_version": info.get("code_version"),
            **({"legacy": True} if info.get("legacy") else {})}


@_os_errors
def publish(registry: str, i2i_uri: str, model_dir: str, metrics_uri: str | None = None,
            promote: bool = False, force: bool = False, reason: str | None = None) -> str:
    """Copy an i2i table, a model dir and (optionally) a metrics file into a new immutable version.

    The version is made live when ``promote`` is set, or when it is the registry's first version and its gate
    did not fail. ``promote`` of a version whose ``metrics.json`` says ``gate.passed: false`` raises
    :class:`GateError` before anything is written, unless ``force`` (logged in HISTORY with ``reason``).
    Returns the version id.
    """
    src_fs, i2i_path = resolve(str(i2i_uri))
    if not _is_file(src_fs, i2i_path):
        raise RegistryError(f"i2i table not found: {i2i_uri}")
    schema = pq.read_schema(i2i_path, filesystem=src_fs)
    missing = [f.name for f in I2I_SCHEMA if f.name not in schema.names]
    if missing:
        raise ContractError(f"i2i table {i2i_uri}: missing column(s) {missing}; have {schema.names}")
    mfs, mpath = resolve(str(model_dir))
    if not _is_dir(mfs, mpath):
        raise RegistryError(f"model dir not found: {model_dir}")
    model_files = _files_under(mfs, mpath)
    if not model_files:
        raise RegistryError(f"model dir is empty: {model_dir}")
    metrics: dict[str, Any] = {}
    if metrics_uri is not None:
        metfs, metpath = resolve(str(metrics_uri))
        if not _is_file(metfs, metpath):
            raise RegistryError(f"metrics file not found: {metrics_uri}")
        try:
            metrics = json.loads(_read_bytes(metfs, metpath).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RegistryError(f"metrics file {metrics_uri} is not JSON: {e}") from None
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    if promote:
        _refuse_failed_gate(f"the version of {metrics_uri}", gate, force)
    method = _method_info(model_dir, mfs, mpath)
    writer = _writer()

    # Hash the sources first: the id names the content, and the copy below is checked against these hashes.
    sources: dict[str, tuple[pafs.FileSystem, str]] = {I2I_FILE: (src_fs, i2i_path)}
    sources.update({f"{MODEL_DIR}/{rel}": (mfs, _j(mpath, rel)) for rel in model_files})
    files: dict[str, dict[str, Any]] = {}
    for rel, (sfs, spath) in sources.items():
        sha, size = _sha256(sfs, spath)
        files[rel] = {"sha256": sha, "size": size}
    mbytes = json.dumps(metrics, indent=2, sort_keys=True, default=str).encode()
    files[METRICS_FILE] = {"sha256": hashlib.sha256(mbytes).hexdigest(), "size": len(mbytes)}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()

    fs, root = _root(registry)
    fs.create_dir(root, recursive=True)
    local = _is_local(fs)
    with contextlib.suppress(RegistryError):  # housekeeping must never fail a publish
        gc(registry)

    def manifest(version: str) -> bytes:
        return json.dumps({
            "version": version, "created_at": datetime.now(UTC).isoformat(), "content_sha256": digest,
            "source": {"i2i": str(i2i_uri), "model_dir": str(model_dir), "metrics": metrics_uri},
            "gate": gate, "method": method, "written_by": writer, "files": files,
        }, indent=2, sort_keys=True, default=str).encode()

    def copy_into(target: str) -> None:
        for rel, (sfs, spath) in sources.items():
            sha, _ = _copy_hashed(sfs, spath, fs, _j(target, rel))
            if sha != files[rel]["sha256"]:
                raise RegistryError(f"{rel} changed while it was being published; try again")
        with fs.open_output_stream(_j(target, METRICS_FILE)) as f:
            f.write(mbytes)

    if local:
        # Build in a hidden staging dir (flock-ed while we live) and rename it into place under the lease.
        with _staging(root) as staging:
            copy_into(staging)
            with _lease(registry, "publish"):
                version = _new_version_id(_all_ids(fs, root), digest)
                with fs.open_output_stream(_j(staging, MANIFEST_FILE)) as f:
                    f.write(manifest(version))
                fs.move(staging, _j(root, version))
    else:
        # Object stores cannot rename a directory: reserve the id under the lease, write in place; the
        # MANIFEST.json written last marks the version complete.
        with _lease(registry, "publish"):
            version = _new_version_id(_all_ids(fs, root), digest)
            fs.create_dir(_j(root, version), recursive=True)
        target = _j(root, version)
        try:
            copy_into(target)
            with fs.open_output_stream(_j(target, MANIFEST_FILE)) as f:
                f.write(manifest(version))
        except BaseException:
            with contextlib.suppress(OSError):
                fs.delete_dir(target)
            raise
    with _lease(registry, "promote"):
        if promote:
            _promote_locked(registry, version, "publish+promote", gate, force, reason)
        elif _read_current(fs, root) == (None, None) and gate_verdict(gate)[0] is not False:
            _promote_locked(registry, version, "first-publish", gate, False, None)  # a registry's first version
    return version


def _all_ids(fs: pafs.FileSystem, root: str) -> list[str]:
    """Every version id in use, complete or not (ids are never reused)."""
    return [PurePosixPath(i.path).name for i in _version_dirs(fs, root)]


@contextlib.contextmanager
def _staging(root: str) -> Iterator[str]:
    """A local staging dir ``.staging-<id>`` whose sidecar ``.staging-<id>.lock`` we hold with flock until we
    leave: the kernel releases it if we die, which is how gc tells a dead writer from a live one."""
    name = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging, lockpath = os.path.join(root, name), os.path.join(root, name + ".lock")
    fd = os.open(lockpath, os.O_CREAT | os.O_RDWR, 0o644)  # the lock first: a dir never exists unlocked
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"host": _host_id(), "pid": os.getpid(), "by": actor()}).encode())
        os.mkdir(staging)
        try:
            yield staging
        finally:
            if os.path.isdir(staging):  # still here: the publish failed
                pafs.LocalFileSystem().delete_dir(staging)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lockpath)
        os.close(fd)


def _newest_mtime(fs: pafs.FileSystem, path: str) -> float | None:
    infos = [fs.get_file_info(path)]
    with contextlib.suppress(OSError):
        infos += fs.get_file_info(pafs.FileSelector(path, recursive=True))
    times = [i.mtime.timestamp() for i in infos if i.mtime is not None]
    return max(times) if times else None


def _held_by_live_writer(lockpath: str) -> tuple[bool, int | None]:
    """(held, fd): try to take the staging dir's flock; on success the caller owns ``fd`` and must close it."""
    try:
        fd = os.open(lockpath, os.O_RDWR)
    except FileNotFoundError:
        return False, None
    if fcntl is None:  # pragma: no cover - no way to tell: trust the TTL alone
        return False, fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True, None
    return False, fd


@_os_errors
def gc(registry: str, ttl_s: float = STAGING_TTL_S, dry_run: bool = False) -> list[str]:
    """Remove what crashed writers left behind; returns the paths removed (or that would be, with ``dry_run``).

    * local ``.staging-*`` dirs older than ``ttl_s`` whose flock no live writer holds (and their ``.lock``);
    * on object stores, version dirs without MANIFEST.json (incomplete) older than ``ttl_s``;
    * temp files of atomic writes (``*.tmp-*``, ``*.new-*``, ``*.stale-*``) older than ``ttl_s``.

    Complete versions, CURRENT, HISTORY and the live lease are never touched.
    """
    fs, root = _root(registry)
    if not _is_dir(fs, root):
        return []
    now, removed = time.time(), []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))

    def old(path: str) -> bool:
        mtime = _newest_mtime(fs, path)
        return mtime is not None and now - mtime >= ttl_s

    for info in infos:
        name = PurePosixPath(info.path).name
        if info.type == pafs.FileType.Directory and name.startswith(STAGING_PREFIX) and _is_local(fs):
            lockpath = info.path + ".lock"
            held, fd = _held_by_live_writer(lockpath)
            if held:
                continue
            try:
                if old(info.path):
                    removed.append(info.path)
                    if not dry_run:
                        with contextlib.suppress(FileNotFoundError):
                            fs.delete_dir(info.path)
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(lockpath)
            finally:
                if fd is not None:
                    os.close(fd)
        elif info.type == pafs.FileType.Directory and VERSION_RE.match(name) and not _is_local(fs) \
                and not _is_file(fs, _j(info.path, MANIFEST_FILE)) and old(info.path):
            removed.append(info.path)
            if not dry_run:
                fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File and re.search(r"\.(tmp|new|stale)-[0-9a-f]{12}$", name) \
                and old(info.path):
            removed.append(info.path)
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(info.path)
        elif info.type == pafs.FileType.File and name.startswith(STAGING_PREFIX) and name.endswith(".lock") \
                and _is_local(fs) and not _is_dir(fs, info.path[:-len(".lock")]):
            held, fd = _held_by_live_writer(info.path)  # a lock whose dir is gone: drop it once unheld
            if not held and old(info.path):
                removed.append(info.path)
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(info.path)
            if fd is not None:
                os.close(fd)
    return removed


def _manifest(registry: str, version: str) -> dict[str, Any]:
    fs, root = _root(registry)
    path = _j(root, version, MANIFEST_FILE)
    if not _is_file(fs, path):
        raise RegistryError(f"unknown version {version} in registry {registry}")
    try:
        return json.loads(_read_bytes(fs, path).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"version {version}: MANIFEST.json is unreadable: {e}") from None


@_os_errors
def verify(registry: str, version: str) -> dict[str, Any]:
    """Re-hash every file of a version against its manifest; raise RegistryError naming each mismatch.

    Missing files, extra files and changed bytes all fail. Returns ``{"version", "files", "bytes"}``.
    """
    _check_id(version)
    manifest = _manifest(registry, version)
    fs, root = _root(registry)
    vdir = _j(root, version)
    expected: dict[str, dict[str, Any]] = manifest.get("files", {})
    present = set(_files_under(fs, vdir)) - {MANIFEST_FILE}
    problems = [f"missing {p}" for p in sorted(set(expected) - present)]
    problems += [f"unexpected {p}" for p in sorted(present - set(expected))]
    total = 0
    for rel in sorted(set(expected) & present):
        sha, size = _sha256(fs, _j(vdir, rel))
        total += size
        if sha != expected[rel]["sha256"] or size != expected[rel]["size"]:
            problems.append(f"checksum mismatch {rel}")
    if problems:
        raise RegistryError(f"version {version} failed verification: " + "; ".join(problems))
    return {"version": version, "files": len(expected), "bytes": total}


def _read_current(fs: pafs.FileSystem, root: str) -> tuple[str | None, str | None]:
    """``(version, problem)``: (None, None) when nothing was promoted; (None, why) when CURRENT is corrupt."""
    path = _j(root, CURRENT_FILE)
    try:
        raw = _read_bytes(fs, path)
    except FileNotFoundError:
        return None, None
    try:
        v = raw.decode().strip()
    except UnicodeDecodeError:
        return None, f"CURRENT is corrupt (not text, {len(raw)} bytes)"
    if not v:
        return None, None
    if not VERSION_RE.match(v):
        return None, f"CURRENT is corrupt ({v[:40]!r} is not a version id)"
    return v, None


@_os_errors
def current(registry: str) -> str | None:
    """The live version named by CURRENT, or None when nothing was promoted yet; RegistryError if corrupt."""
    fs, root = _root(registry)
    v, problem = _read_current(fs, root)
    if problem:
        raise RegistryError(f"registry {registry}: {problem}")
    return v


@_os_errors
def history(registry: str) -> list[dict[str, Any]]:
    """Promote / rollback log, oldest first (a torn or corrupt line is skipped, never fatal)."""
    fs, root = _root(registry)
    path = _j(root, HISTORY_FILE)
    try:
        text = _read_bytes(fs, path).decode(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            e = json.loads(line)
            if isinstance(e, dict) and isinstance(e.get("version"), str):
                out.append(e)
    return out


def _stack(registry: str) -> list[str]:
    """Replay the history: promote pushes, rollback pops; the top is the live version."""
    st: list[str] = []
    for e in history(registry):
        if e.get("action") == "rollback":
            if st:
                st.pop()
        else:
            st.append(e["version"])
    return st


def _promote_locked(registry: str, version: str, action: str, gate: dict[str, Any] | None, force: bool,
                    reason: str | None) -> None:
    """Move CURRENT and append HISTORY; the caller holds the lease, so the two stay in step."""
    fs, root = _root(registry)
    prev, _ = _read_current(fs, root)
    past = history(registry)
    entry: dict[str, Any] = {"seq": (past[-1].get("seq", len(past)) if past else 0) + 1,
                             "ts": datetime.now(UTC).isoformat(), "action": action, "version": version,
                             "previous": prev, "by": actor()}
    passed, why = gate_verdict(gate)
    if force and passed is False:
        entry.update(forced=True, reason=reason or "forced without a reason", gate={"passed": False, "reason": why})
    elif reason:
        entry["reason"] = reason
    _write_atomic(fs, _j(root, CURRENT_FILE), (version + "\n").encode())
    path = _j(root, HISTORY_FILE)
    try:
        old = _read_bytes(fs, path)
    except FileNotFoundError:
        old = b""
    if old and not old.endswith(b"\n"):
        old += b"\n"  # a torn last line stays isolated
    # Object stores have no append: rewrite the (small) log atomically; the lease serializes writers.
    _write_atomic(fs, path, old + (json.dumps(entry, sort_keys=True) + "\n").encode())


@_os_errors
def promote(registry: str, version: str, check: bool = True, force: bool = False,
            reason: str | None = None) -> None:
    """Make ``version`` live (after re-verifying its checksums unless ``check`` is False).

    A version whose gate failed is refused (:class:`GateError`) unless ``force``; a forced promote is logged
    in HISTORY with who and ``reason``."""
    _check_id(version)
    if version not in list_versions(registry):
        raise RegistryError(f"unknown version {version} in registry {registry}")
    gate = _manifest(registry, version).get("gate")
    _refuse_failed_gate(version, gate, force)
    if check:
        verify(registry, version)
    with _lease(registry, "promote"):
        _promote_locked(registry, version, "promote", gate, force, reason)


def _rollback_target(registry: str) -> str:
    st = _stack(registry)
    fs, root = _root(registry)
    live, _ = _read_current(fs, root)
    if live is not None and (not st or st[-1] != live):
        st.append(live)  # CURRENT written outside this module: treat it as the top
    if len(st) < 2:
        raise RegistryError(f"nothing to roll back to in registry {registry} (live: {live})")
    return st[-2]


@_os_errors
def rollback(registry: str) -> str:
    """Make the previously promoted version live again; returns it."""
    for _ in range(5):
        target = _rollback_target(registry)
        verify(registry, target)  # hashing may be slow: outside the lease
        with _lease(registry, "rollback"):
            if _rollback_target(registry) == target:  # nobody moved the registry meanwhile
                _promote_locked(registry, target, "rollback", None, False, None)
                return target
    raise RegistryError(f"registry {registry} keeps changing under the rollback; try again")


# ------------------------------------------------------------------------------------------- serving at start-up

@dataclass(frozen=True)
class ServingChoice:
    """Which version a starting server should load, and why (shown on ``/version`` and in metrics)."""

    version: str | None
    fallback: bool  # True when it is not CURRENT's version
    reason: str
    current: str | None  # what CURRENT names (None when missing or corrupt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_serving_version(registry: str, check: bool = True) -> ServingChoice:
    """CURRENT's version when it verifies; otherwise the newest verified version in HISTORY, with the reason.

    Never raises for registry content (a corrupt CURRENT, a broken version, an unreadable HISTORY):
    ``version`` is None only when no promoted version verifies. The reason never names the registry's location
    (it is meant for ``/version`` and metrics)."""
    fs, root = _root(registry)
    try:
        cur, problem = _read_current(fs, root)
    except OSError as e:
        cur, problem = None, f"CURRENT is unreadable: {_one_line(e)}"
    if cur is not None:
        try:
            if check:
                verify(registry, cur)
            return ServingChoice(cur, False, "CURRENT", cur)
        except RegistryError as e:
            problem = f"CURRENT names {cur}, which cannot be served: {e}"
    try:
        past = history(registry)
    except RegistryError as e:
        past, problem = [], f"{problem or 'no CURRENT'}; HISTORY unreadable: {e}"
    if problem is None and not past:
        return ServingChoice(None, False, "no version was promoted yet", None)
    problem = problem or "CURRENT is missing"
    tried: set[str] = {cur} if cur else set()
    for entry in reversed(past):  # newest first
        v = entry["version"]
        if v in tried or not VERSION_RE.match(v):
            continue
        tried.add(v)
        try:
            if check:
                verify(registry, v)
            else:
                _manifest(registry, v)
        except RegistryError:
            continue
        return ServingChoice(v, True, _public(f"{problem}; serving {v}, the newest verified version in HISTORY",
                                               registry), cur)
    return ServingChoice(None, False, _public(f"{problem}; no version in HISTORY verifies", registry), cur)


def _public(reason: str, registry: str) -> str:
    """Reasons end up on /version: name versions, never the registry's location."""
    return reason.replace(str(registry), "<registry>")


@_os_errors
def show(registry: str, version: str | None = None) -> dict[str, Any]:
    """Manifest, metrics and liveness of one version (default: the live one)."""
    version = version or current(registry)
    if version is None:
        raise RegistryError(f"registry {registry} has no live version")
    _check_id(version)
    manifest = _manifest(registry, version)
    fs, root = _root(registry)
    mpath = _j(root, version, METRICS_FILE)
    metrics = json.loads(_read_bytes(fs, mpath).decode()) if _is_file(fs, mpath) else None
    return {"version": version, "path": version_path(registry, version), "live": version == current(registry),
            "created_at": manifest.get("created_at"), "gate": manifest.get("gate"),
            "method": manifest.get("method"), "written_by": manifest.get("written_by"),
            "files": manifest.get("files", {}), "metrics": metrics, "source": manifest.get("source")}
