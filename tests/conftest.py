"""Shared test fixtures: the tiny data -> split -> Swing -> samples -> model chain (built once per session, by
the real core functions, each stage only when a test asks for it), a free TCP port, a fake clock.

Fixtures (read-only: copy a directory before changing it)::

    tiny_data     generated ``tiny`` preset (seed 0): events/items/users.parquet ...
    tiny_split    {"train": D, "test": D}: the temporal split of tiny_data (data.test_days)
    tiny_i2i      Swing i2i table of the train split (layout.I2I_FILE)
    tiny_samples  PRS samples dir over the train split and tiny_i2i
    tiny_model    a model dir trained 1 short epoch on tiny_samples
    tiny_chain    all of the above as one dict of paths, plus "cfg" (a Config), "cfg_yaml" (the same, YAML)
    free_port     a TCP port free on 127.0.0.1
    free_ports    ``free_ports()``: a new free port per call (session-scoped: for module fixtures, several ports)
    fake_clock    FakeClock(): a monotonic clock advanced only by its ``sleep``
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: The chain's config overrides: small enough for seconds on 2 cores.
TINY_CONFIG: dict[str, dict[str, Any]] = {
    "swing": {"top_t": 200},
    "train": {"epochs": 1, "patience": 0, "batch_size": 128, "max_batches_per_epoch": 4, "num_workers": 0},
}


_HANDED_OUT: set[int] = set()


def free_tcp_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (bind to 0, read, release) and not handed out before in
    this session: the kernel may return a just-released port again, and two servers of one test would collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class FakeClock:
    """A fake monotonic clock: ``clock()`` reads it, ``clock.sleep(s)`` advances it (no real waiting)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.fixture
def free_port() -> int:
    return free_tcp_port()


@pytest.fixture(scope="session")
def free_ports() -> Callable[[], int]:
    return free_tcp_port


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


# ------------------------------------------------------------------------------------------------ tiny chain
@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-chain")


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, dict[str, Any]]:
    """The tiny chain's config as a dict (a copy), for tests that derive their own config from it."""
    import copy

    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_cfg(tiny_root: Path) -> Any:
    import yaml

    from pi2i.config import load_config

    data = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "storage_path": str(tiny_root / "ray")}}
    path = tiny_root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.fixture(scope="session")
def tiny_data(tiny_root: Path) -> str:
    from pi2i.data.synthetic import generate_preset

    out = str(tiny_root / "data")
    generate_preset("tiny", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_split(tiny_root: Path, tiny_data: str, tiny_cfg: Any) -> dict[str, str]:
    from pi2i.data.split import split

    out = tiny_root / "split"
    split(tiny_data, str(out), test_days=tiny_cfg.data.test_days)
    return {"train": str(out / "train"), "test": str(out / "test")}


@pytest.fixture(scope="session")
def tiny_i2i(tiny_root: Path, tiny_split: dict[str, str], tiny_cfg: Any) -> str:
    from pi2i.contracts import EVENTS_FILE, join
    from pi2i.ibs.swing import run_swing
    from pi2i.layout import I2I_FILE

    out = str(tiny_root / I2I_FILE)
    run_swing(join(tiny_split["train"], EVENTS_FILE), out, tiny_cfg.swing)
    return out


@pytest.fixture(scope="session")
def tiny_samples(tiny_root: Path, tiny_split: dict[str, str], tiny_i2i: str, tiny_cfg: Any) -> str:
    from pi2i.contracts import EVENTS_FILE, ITEMS_FILE, join
    from pi2i.prs.sampling import build_samples

    out = str(tiny_root / "samples")
    build_samples(join(tiny_split["train"], EVENTS_FILE), tiny_i2i, out, tiny_cfg,
                  items_uri=join(tiny_split["train"], ITEMS_FILE))
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_root: Path, tiny_samples: str, tiny_cfg: Any) -> str:
    from pi2i.prs.train import train

    out = str(tiny_root / "model")
    train(tiny_samples, out, tiny_cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_chain(tiny_root: Path, tiny_data: str, tiny_split: dict[str, str], tiny_i2i: str, tiny_samples: str,
               tiny_model: str, tiny_cfg: Any) -> dict[str, Any]:
    return {"root": str(tiny_root), "data": tiny_data, **tiny_split, "i2i": tiny_i2i, "samples": tiny_samples,
            "model": tiny_model, "cfg": tiny_cfg, "cfg_yaml": str(tiny_root / "config.yaml")}
