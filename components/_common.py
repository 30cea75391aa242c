"""Artifact glue shared by the component bodies (imported inside them, so it ships in the image).

Nothing algorithmic lives here: moving directories into KFP output paths, choosing between in-process Ray
and a KubeRay ``RayJob`` for a step, and flattening metric dicts for ``Output[Metrics].log_metric``.

Artifacts go through :mod:`pi2i.contracts` (any URI). The one exception is by KFP's contract: a component's
``Output[...].path`` is a local path in the task's container (KFP uploads it afterwards), so ``move_into`` /
``scratch_dir`` work on local directories; what a RayJob reads or writes is always an object-store URI.
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
    """Copy a data dir (local path or URI) into ``dst_dir`` (a KFP output path); return the names copied."""
    from pi2i.contracts import copy_tree as copy

    return copy(src_uri, dst_dir, names)


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

    from pi2i.contracts import join, write_text

    uri = join(remote_dir, "config.yaml")
    write_text(yaml.safe_dump(config, sort_keys=True), uri)
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
    def is_local(arg: str) -> bool:
        return arg.startswith(("/", "file://"))

    local_paths = [a for a in [out_uri, *entrypoint] if is_local(a)] + ([out_uri] if "://" not in out_uri and
                                                                        not is_local(out_uri) else [])
    if local_paths:  # a RayJob's pods cannot see this task's disk
        raise ValueError(f"{step}: compute='rayjob' needs object-store URIs (s3://, gs://) for its inputs and "
                         f"staging_uri; got local path(s) {local_paths}")
    from components.image import PINNED_IMAGE
    from pi2i.cluster import rayjob

    name = rayjob.job_name(step, run_id)
    entrypoint = [a if a != "{config}" else stage_config(config or {}, out_uri) for a in entrypoint]
    manifest = rayjob.step_manifest(step, name, list(entrypoint), os.environ.get("PI2I_IMAGE", PINNED_IMAGE),
                                    namespace=namespace, **shape)
    status = (runner or rayjob.run_rayjob)(manifest)
    copy_tree(out_uri, out_dir)
    return status
