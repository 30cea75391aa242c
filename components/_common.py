"""Artifact glue shared by the component bodies (imported inside them, so it ships in the image).

Nothing algorithmic lives here: moving directories into KFP output paths, choosing between in-process Ray
and a KubeRay ``RayJob`` for a step, and flattening metric dicts for ``Output[Metrics].log_metric``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

#: data-dir files a pipeline run snapshots (the others are optional)
DATA_FILES = ("events.parquet", "items.parquet", "users.parquet", "summary.json")


def copy_tree(src_uri: str, dst_dir: str, names: Sequence[str] | None = None) -> list[str]:
    """Copy a data dir (local path or URI) into the local directory ``dst_dir``; return the names copied."""
    import pyarrow.fs as pafs

    from pi2i.contracts import resolve

    fs, root = resolve(src_uri)
    os.makedirs(dst_dir, exist_ok=True)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {src_uri}")
    copied = []
    for fi in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        name = os.path.basename(fi.path)
        if names is not None and name not in names:
            continue
        dst = os.path.join(dst_dir, name)
        if fi.type == pafs.FileType.Directory:
            pafs.copy_files(fi.path, dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        else:
            pafs.copy_files(fi.path, dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        copied.append(name)
    return sorted(copied)


def move_into(src_dir: str, dst_dir: str) -> None:
    """Move the contents of ``src_dir`` into ``dst_dir`` (a KFP output path, created if missing)."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in os.listdir(src_dir):
        shutil.move(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def scratch_dir(near: str) -> str:
    """A fresh temporary directory on the same filesystem as ``near`` (so moves are renames)."""
    parent = os.path.dirname(os.path.abspath(near))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".tmp-", dir=parent)


def flat_metrics(d: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as ``a.b.c -> float`` (bools become 0/1) for ``log_metric``."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flat_metrics(v, f"{prefix}{k}."))
    elif isinstance(d, (bool, int, float)):  # bools become 0/1
        out[prefix[:-1]] = float(d)
    return out


def remote_uri(uri: str) -> str:
    """An artifact URI in a form pyarrow (and so a RayJob pod) can open: KFP's ``minio://`` is S3."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


def stage_config(config: dict, remote_dir: str) -> str:
    """Write the run's config overrides as YAML next to a RayJob's output, so its CLI entrypoint can read it."""
    import yaml

    from pi2i.contracts import join, makedirs, resolve

    makedirs(remote_dir)
    uri = join(remote_dir, "config.yaml")
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as f:
        f.write(yaml.safe_dump(config, sort_keys=True).encode())
    return uri


def run_ray_step(step: str, compute: str, local: Callable[[], Any], entrypoint: Sequence[str],
                 out_uri: str, out_dir: str, namespace: str, run_id: str, config: dict | None = None,
                 runner: Callable[[dict], Any] | None = None, **shape: Any) -> Any:
    """The one switch between in-process Ray (``compute='local'``: call ``local()``) and a KubeRay RayJob
    (``compute='rayjob'``: run ``entrypoint`` — the same core function behind the CLI — writing to
    ``out_uri`` in the object store, then copy the result into the KFP output dir ``out_dir``). An
    entrypoint argument ``{config}`` becomes the URI of ``config`` staged as YAML beside the output; ``shape``
    overrides the step's cluster shape (``pi2i.cluster.rayjob.STEP_RESOURCES``); ``runner`` replaces
    :func:`pi2i.cluster.rayjob.run_rayjob` (tests)."""
    if compute == "local":
        return local()
    if compute != "rayjob":
        raise ValueError(f"compute must be 'local' or 'rayjob', got {compute!r}")
    from pi2i.cluster import rayjob

    name = rayjob.job_name(step, run_id)
    entrypoint = [a if a != "{config}" else stage_config(config or {}, out_uri) for a in entrypoint]
    manifest = rayjob.step_manifest(step, name, list(entrypoint), namespace=namespace,
                                    image=os.environ.get("PI2I_IMAGE", rayjob.DEFAULT_IMAGE), **shape)
    status = (runner or rayjob.run_rayjob)(manifest)
    copy_tree(out_uri, out_dir)
    return status
