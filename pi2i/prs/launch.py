"""The one Ray Train launcher of pi2i (PI2I, PDN, MTMH and the LLM-I2I models all train through it), and thread
pools sized from the CPU quota the process really has.

A pod on a shared node sees the node's cores in ``os.cpu_count()`` but may only use its cgroup quota; torch,
numba and BLAS pools sized from the node oversubscribe the quota and collapse under contention (measured: 2
torch threads ran a batch 4× slower than 1 at load ~5 on 2 cores). :func:`cpu_quota` reads the quota
(cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``, ``os.sched_getaffinity``) and :func:`set_threads` sizes every
pool from it.

:func:`run_ray_train` runs ``loop_fn(loop_config)`` under ``TorchTrainer``: ``train.num_workers = 0`` runs it
in this process (Ray Train local mode, tests and small runs), ``N >= 1`` starts N Ray workers (``ray.init`` on
``RAY_ADDRESS`` when set) with DDP. ``loop_config`` travels to the workers, so it must hold only URIs (an
absolute local path is one only where driver and workers share a filesystem). The loop reports checkpoints with
``ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))``; Ray persists them to
``train.storage_path`` (local or ``s3://``), keeping the last two.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pi2i.config import Config

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpus(root: Path = _CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def cpu_quota() -> int:
    """Cores this process may use: min(affinity mask, cgroup quota rounded up), at least 1 — never the node's
    core count. ``PI2I_CPUS`` overrides (e.g. a pod spec's CPU request)."""
    env = os.environ.get("PI2I_CPUS")
    if env:
        return max(1, int(float(env)))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    q = _cgroup_cpus()
    if q is not None:
        n = min(n, math.ceil(q))
    return max(1, n)


def set_threads(n: int | None = None) -> int:
    """Size torch's intra-op pool, numba's pool and (via the environment, for child processes) OpenMP/BLAS pools
    to ``n`` threads, default :func:`cpu_quota`. Returns the count used.

    ``NUMBA_NUM_THREADS`` is deliberately left alone: numba re-reads it at every compile and refuses to go on
    once its pool is up with a different size; ``numba.set_num_threads`` sizes the work instead."""
    n = max(1, int(n or cpu_quota()))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:  # numba first: starting its OpenMP pool resets the process's OpenMP thread count, which torch shares
        import numba

        numba.set_num_threads(min(n, int(getattr(numba.config, "NUMBA_NUM_THREADS", n))))
    except (ImportError, ValueError):
        pass
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def single_thread_worker() -> None:
    """Initializer of a worker thread that is itself the parallelism: one torch and one numba thread (both are
    per-thread settings)."""
    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)


def adam(params, lr: float, weight_decay: float = 0.0):
    """``torch.optim.Adam`` with the fused kernel where torch has one for the parameters' device (one pass over
    every parameter: measured 0.26 ms vs 1.1 ms per step for the PRS scorer's 130k parameters on one CPU thread),
    the default implementation elsewhere. Same update rule either way."""
    import torch

    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def numba_threadsafe() -> bool:
    """Whether numba's threading layer accepts parallel kernels launched from several threads at once (omp, tbb;
    not workqueue). False until a parallel kernel has run in this process."""
    import numba

    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:
        return False


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of unmapping it (no-op elsewhere).

    A training step allocates and frees the same ~13 MB activation tensors over and over; above glibc's default
    mmap threshold each one is a fresh mapping whose pages fault in and are zeroed anew on every step (measured:
    5-10% of the step time). Allocating blocks up to 32 MB from the heap, trimming it only above 256 MB free, removes
    that cost."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "sched_getaffinity"):  # not Linux
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)


def run_ray_train(loop_fn: Callable[[dict], None], loop_config: dict[str, Any], cfg: Config, name: str):
    """Run ``loop_fn(loop_config)`` under Ray Train's ``TorchTrainer`` with ``cfg.train`` (num_workers, use_gpu,
    storage_path) and return the ``ray.train.Result`` (its ``checkpoint`` is the last one reported).

    ``loop_config`` must hold only URIs and plain values: it is shipped to workers that may run elsewhere."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    address = os.environ.get("RAY_ADDRESS", "")
    if tc.num_workers > 0 and address and address not in ("local", "auto") and not address.startswith(
            ("127.0.0.1", "localhost")):
        local = [k for k, v in loop_config.items() if isinstance(v, str) and v.startswith("/") and os.path.exists(v)]
        if local:
            raise ValueError(f"Ray cluster {address} cannot read driver-local paths in {local}: pass object-store "
                             f"URIs (s3://...)")
    run_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    storage = tc.storage_path or os.path.join(tempfile.gettempdir(), "pi2i-ray-train")
    if "://" not in storage:
        storage = os.path.abspath(storage)
        os.makedirs(storage, exist_ok=True)
    if tc.num_workers > 0:
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                     log_to_driver=bool(loop_config.get("progress", True)), configure_logging=False)
    trainer = TorchTrainer(
        loop_fn, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()


def report_epoch(metrics: dict[str, Any], write_checkpoint: Callable[[str], None] | None = None) -> None:
    """``ray.train.report`` from inside a loop: rank 0 calls ``write_checkpoint(dir)`` on a fresh worker-local
    temp dir and reports it (Ray persists it to storage and deletes the local copy; in local mode the directory
    itself is the checkpoint, so the previous epoch's is removed instead); other ranks report metrics only."""
    import shutil

    import ray.train

    ctx = ray.train.get_context()
    if ctx.get_world_rank() != 0 or write_checkpoint is None:
        ray.train.report(metrics)
        return
    d = tempfile.mkdtemp(prefix="pi2i-ckpt-")
    write_checkpoint(d)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                     delete_local_checkpoint_after_upload=True)
    prev = _LAST_LOCAL_CKPT.pop(0) if _LAST_LOCAL_CKPT else None
    if prev and prev != d:
        shutil.rmtree(prev, ignore_errors=True)
    if os.path.isdir(d):
        _LAST_LOCAL_CKPT.append(d)


_LAST_LOCAL_CKPT: list[str] = []


def cleanup_local_checkpoints() -> None:
    """Remove the last local-mode checkpoint directory (call after reading ``result.checkpoint``)."""
    import shutil

    while _LAST_LOCAL_CKPT:
        shutil.rmtree(_LAST_LOCAL_CKPT.pop(), ignore_errors=True)
