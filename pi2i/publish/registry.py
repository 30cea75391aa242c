"""Version registry: where training hands a version to serving (DESIGN.md "version" contract).

A version is an immutable directory ``registry/<version>/`` holding ``i2i_table.parquet``, ``model/`` (a copy of
the self-contained model dir), ``metrics.json`` (evaluation + gate verdict) and ``MANIFEST.json`` (sha256 and size
of every other file). ``registry/CURRENT`` names the live version and is replaced atomically (temp file +
rename); every promote and rollback is appended to ``registry/HISTORY.jsonl`` so a rollback knows where to go.

Version ids are ``v<YYYYmmdd>-<HHMMSS>-<8 hex of the manifest hash>``: they sort by publish time (a publish in
the same second as the newest version takes the next second) and name their content.

The registry is a local directory or any URI pyarrow filesystems understand (``file://``, ``s3://``, ``gs://``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pi2i.contracts import I2I_SCHEMA, ContractError, resolve

I2I_FILE = "i2i_table.parquet"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "MANIFEST.json"
CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY.jsonl"

VERSION_RE = re.compile(r"^v\d{8}-\d{6}-[0-9a-f]{8}$")
_CHUNK = 1 << 20


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked (unknown version, checksum mismatch, ...)."""


# ---------------------------------------------------------------------------------------------- filesystem helpers

def _root(registry: str) -> tuple[pafs.FileSystem, str]:
    fs, path = resolve(str(registry))
    return fs, path.rstrip("/") or "/"


def _j(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def _is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to a temp name beside ``path`` then rename over it: readers see old or new, never half."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    try:
        fs.move(tmp, path)  # rename(2) on local filesystems: atomic replace
    except Exception:
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


def list_versions(registry: str) -> list[str]:
    """Complete versions (a MANIFEST.json present), oldest first."""
    fs, root = _root(registry)
    if not _is_dir(fs, root):
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        name = PurePosixPath(info.path).name
        if info.type == pafs.FileType.Directory and VERSION_RE.match(name) \
                and _is_file(fs, _j(info.path, MANIFEST_FILE)):
            out.append(name)
    return sorted(out)


def _new_version_id(existing: list[str], digest: str) -> str:
    now = int(time.time())
    if existing:  # keep ids sorted by publish order even within one second
        last = datetime.strptime(existing[-1][1:16], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
        now = max(now, int(last.timestamp()) + 1)
    stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%d-%H%M%S")
    return f"v{stamp}-{digest[:8]}"


def publish(registry: str, i2i_uri: str, model_dir: str, metrics_uri: str | None = None,
            promote: bool = False) -> str:
    """Copy an i2i table, a model dir and (optionally) a metrics file into a new immutable version.

    The version is made live when ``promote`` is set or when it is the registry's first version.
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
    version = _new_version_id(list_versions(registry), digest)
    local = isinstance(fs, pafs.LocalFileSystem)
    # Local: build in a hidden staging dir and rename it into place. Object stores cannot rename a
    # directory: write in place; the MANIFEST.json written last marks the version complete.
    target = _j(root, f".staging-{uuid.uuid4().hex[:12]}") if local else _j(root, version)
    try:
        for rel, (sfs, spath) in sources.items():
            sha, size = _copy_hashed(sfs, spath, fs, _j(target, rel))
            if sha != files[rel]["sha256"]:
                raise RegistryError(f"{rel} changed while it was being published; try again")
        with fs.open_output_stream(_j(target, METRICS_FILE)) as f:
            f.write(mbytes)
        gate = metrics.get("gate") if isinstance(metrics, dict) else None
        manifest = {
            "version": version, "created_at": datetime.now(UTC).isoformat(), "content_sha256": digest,
            "source": {"i2i": str(i2i_uri), "model_dir": str(model_dir), "metrics": metrics_uri},
            "gate": gate, "files": files,
        }
        with fs.open_output_stream(_j(target, MANIFEST_FILE)) as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
        if local:
            fs.move(target, _j(root, version))
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_dir(target)
        raise
    if promote or current(registry) is None:
        _promote(registry, version, action="publish+promote" if promote else "first-publish")
    return version


def _manifest(registry: str, version: str) -> dict[str, Any]:
    fs, root = _root(registry)
    path = _j(root, version, MANIFEST_FILE)
    if not _is_file(fs, path):
        raise RegistryError(f"unknown version {version} in registry {registry}")
    try:
        return json.loads(_read_bytes(fs, path).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"version {version}: MANIFEST.json is unreadable: {e}") from None


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


def current(registry: str) -> str | None:
    """The live version named by CURRENT, or None when nothing was promoted yet."""
    fs, root = _root(registry)
    path = _j(root, CURRENT_FILE)
    if not _is_file(fs, path):
        return None
    v = _read_bytes(fs, path).decode().strip()
    return v or None


def history(registry: str) -> list[dict[str, Any]]:
    """Promote / rollback log, oldest first."""
    fs, root = _root(registry)
    path = _j(root, HISTORY_FILE)
    if not _is_file(fs, path):
        return []
    return [json.loads(line) for line in _read_bytes(fs, path).decode().splitlines() if line.strip()]


def _log(registry: str, entry: dict[str, Any]) -> None:
    # Object stores have no append: rewrite the (small) log atomically.
    fs, root = _root(registry)
    path = _j(root, HISTORY_FILE)
    old = _read_bytes(fs, path) if _is_file(fs, path) else b""
    _write_atomic(fs, path, old + (json.dumps(entry, sort_keys=True) + "\n").encode())


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


def _promote(registry: str, version: str, action: str) -> None:
    fs, root = _root(registry)
    prev = current(registry)
    _write_atomic(fs, _j(root, CURRENT_FILE), (version + "\n").encode())
    _log(registry, {"ts": datetime.now(UTC).isoformat(), "action": action, "version": version,
                    "previous": prev})


def promote(registry: str, version: str, check: bool = True) -> None:
    """Make ``version`` live (after re-verifying its checksums unless ``check`` is False)."""
    _check_id(version)
    if version not in list_versions(registry):
        raise RegistryError(f"unknown version {version} in registry {registry}")
    if check:
        verify(registry, version)
    _promote(registry, version, action="promote")


def rollback(registry: str) -> str:
    """Make the previously promoted version live again; returns it."""
    st = _stack(registry)
    live = current(registry)
    if live is not None and (not st or st[-1] != live):
        st.append(live)  # CURRENT written outside this module: treat it as the top
    if len(st) < 2:
        raise RegistryError(f"nothing to roll back to in registry {registry} (live: {live})")
    target = st[-2]
    verify(registry, target)
    fs, root = _root(registry)
    _write_atomic(fs, _j(root, CURRENT_FILE), (target + "\n").encode())
    _log(registry, {"ts": datetime.now(UTC).isoformat(), "action": "rollback", "version": target,
                    "previous": live})
    return target


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
            "files": manifest.get("files", {}), "metrics": metrics, "source": manifest.get("source")}
