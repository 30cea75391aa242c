"""What the learned methods (PDN, MTMH) share: the Ray Train round trip through
:func:`pi2i.prs.launch.run_ray_train`, weight files on any URI, the user-disjoint validation split, and the
epoch bookkeeping (best state, early stopping) inside a training loop."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from pi2i.config import Config
from pi2i.contracts import join, makedirs

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE, HISTORY_FILE = "weights.safetensors", "history.json"


def save_weights(state: dict[str, torch.Tensor], uri: str) -> None:
    """safetensors bytes of a state dict, written to a local path or URI."""
    from safetensors.torch import save

    from pi2i.prs.io import write_bytes

    write_bytes(save({k: v.detach().cpu().contiguous() for k, v in state.items()}), uri)


def load_weights(uri: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    from pi2i.prs.io import read_bytes

    return load(read_bytes(uri))


def size_threads(n: int | None = None) -> int:
    """Size this thread's torch pool and numba's pool to ``n`` (default: the CPU quota) without touching the
    environment: numba refuses to compile once its pool is up and ``NUMBA_NUM_THREADS`` changes, and torch's
    (OpenMP) setting is per thread, so Ray's local-mode loop thread must set it itself."""
    import numba
    import torch

    from pi2i.prs.launch import cpu_quota

    n = max(1, int(n or cpu_quota()))
    pool = int(getattr(numba.config, "NUMBA_NUM_THREADS"))  # noqa: B009 - set at runtime, unknown to mypy
    launched = str(pool)
    if os.environ.get("NUMBA_NUM_THREADS", launched) != launched:
        os.environ["NUMBA_NUM_THREADS"] = launched  # undo a change numba would refuse at its next compile
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, pool))
    return n


def open_samples(samples_dir: str, method: str) -> tuple[Any, dict]:
    """The :class:`~pi2i.prs.sampling.SampleSet` of a samples directory and the sampling config that drew it;
    a one-line MethodError when it is not one or holds no samples."""
    from pi2i.contracts import exists
    from pi2i.methods.base import MethodError
    from pi2i.prs.sampling import META_FILE, SampleSet

    if not exists(join(samples_dir, META_FILE)):
        raise MethodError(f"{method}: {samples_dir} is not a samples directory (run `pi2i samples` first)")
    ss = SampleSet(samples_dir)
    if len(ss) == 0:
        raise MethodError(f"{method}: no training samples in {samples_dir}")
    return ss, dict(ss.meta.get("config", {}).get("sampling", {}))


def user_split(user_ids: np.ndarray, sample_user: np.ndarray, val_fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """User-disjoint train/validation split of sample indices (a seeded hash of the user id); tiny data where
    one side would be empty falls back to a seeded per-sample split."""
    from pi2i.data.events import splitmix64

    h = splitmix64(np.asarray(user_ids, np.int64).astype(np.uint64) ^ np.uint64(seed))
    is_val_user = (h % np.uint64(1_000_000)).astype(np.float64) / 1e6 < val_fraction
    is_val = is_val_user[np.asarray(sample_user)]
    if is_val.all() or (~is_val).all():
        is_val = np.random.default_rng(seed).random(len(is_val)) < val_fraction
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def staging_dir(cfg: Config, name: str) -> str:
    """A fresh URI for inputs the training workers read (under ``train.storage_path`` when set)."""
    if cfg.train.storage_path:
        d = join(cfg.train.storage_path, f"{name}-inputs-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        makedirs(d)
        return d
    return tempfile.mkdtemp(prefix=f"pi2i-{name}-inputs-")


class EpochTracker:
    """Best-so-far state and early stopping on the validation loss; reports every epoch to Ray Train with a
    checkpoint holding the best weights so far (so the last checkpoint is always the best)."""

    def __init__(self, model: torch.nn.Module, patience: int):
        self.model, self.patience = model, patience
        self.best, self.bad = float("inf"), 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []

    def end_epoch(self, metrics: dict[str, Any]) -> bool:
        """Record, checkpoint, report; True when training should stop."""
        from pi2i.prs.launch import report_epoch

        if metrics["val_loss"] < self.best - 1e-6 or self.best_state is None:
            self.best, self.bad = metrics["val_loss"], 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad += 1
        metrics["best_val_loss"] = self.best
        self.history.append(metrics)
        state, history = self.best_state, list(self.history)

        def write(d: str) -> None:
            save_weights(state, os.path.join(d, WEIGHTS_FILE))
            with open(os.path.join(d, HISTORY_FILE), "w") as f:
                json.dump(history, f)

        report_epoch(metrics, write)
        return bool(self.patience and self.bad >= self.patience)


def ray_fit(loop_fn: Callable[[dict], None], loop_config: dict[str, Any], cfg: Config, name: str
            ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Run ``loop_fn`` under Ray Train and return (best weights, per-epoch history) from its last checkpoint."""
    from pi2i.prs.launch import cleanup_local_checkpoints, run_ray_train

    result = run_ray_train(loop_fn, loop_config, cfg, name)
    if result.checkpoint is None:
        raise RuntimeError(f"{name}: training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_weights(os.path.join(d, WEIGHTS_FILE))
        with open(os.path.join(d, HISTORY_FILE)) as f:
            history = json.load(f)
    cleanup_local_checkpoints()
    return state, history
