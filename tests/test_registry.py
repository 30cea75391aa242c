"""Version registry: publish / list / show / verify / promote / rollback, local dirs and file:// URIs, CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pi2i.publish import registry as reg
from pi2i.contracts import I2I_SCHEMA


def _artifacts(root: Path, seed: int = 0) -> tuple[str, str, str]:
    """A small contract i2i table, a model dir with a nested file, and a metrics file."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    trig = np.repeat(np.arange(20, dtype=np.int64), 5)
    t = pa.table({"trigger": trig, "target": rng.integers(0, 50, len(trig)),
                  "score": rng.random(len(trig)).astype(np.float32),
                  "rank": np.tile(np.arange(1, 6, dtype=np.int32), 20)}, schema=I2I_SCHEMA)
    pq.write_table(t, root / "i2i.parquet")
    model = root / "model"
    (model / "sub").mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"seed": seed}))
    (model / "model.safetensors").write_bytes(rng.bytes(4096))
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    (root / "metrics.json").write_text(json.dumps({"gate": {"passed": True, "reason": "test"}}))
    return str(root / "i2i.parquet"), str(model), str(root / "metrics.json")


@pytest.fixture()
def art(tmp_path: Path) -> tuple[str, str, str]:
    return _artifacts(tmp_path / "art")


def test_publish_layout_manifest_and_first_is_live(tmp_path: Path, art) -> None:
    r = str(tmp_path / "registry")
    v1 = reg.publish(r, *art)
    assert reg.VERSION_RE.match(v1)
    assert reg.current(r) == v1  # the first version goes live without --promote
    vdir = Path(reg.version_path(r, v1))
    files = sorted(str(p.relative_to(vdir)) for p in vdir.rglob("*") if p.is_file())
    assert files == ["MANIFEST.json", "i2i_table.parquet", "metrics.json", "model/config.json",
                     "model/model.safetensors", "model/sub/vocab.txt"]
    man = json.loads((vdir / "MANIFEST.json").read_text())
    assert set(man["files"]) == set(files) - {"MANIFEST.json"}
    assert man["gate"] == {"passed": True, "reason": "test"}
    assert reg.verify(r, v1)["files"] == 5
    v2 = reg.publish(r, *art)
    assert reg.current(r) == v1  # not promoted
    assert v2 > v1 and reg.list_versions(r) == [v1, v2]  # ids sort by publish order
    assert not any(p.name.startswith(".staging") for p in Path(r).iterdir())
    s = reg.show(r, v2)
    assert s["live"] is False and s["metrics"]["gate"]["passed"] is True
    assert reg.show(r)["version"] == v1


def test_promote_rollback_history(tmp_path: Path, art) -> None:
    r = str(tmp_path / "registry")
    a = reg.publish(r, *art)
    b = reg.publish(r, *art, promote=True)
    c = reg.publish(r, *art)
    assert reg.current(r) == b
    reg.promote(r, c)
    assert reg.current(r) == c
    assert reg.rollback(r) == b and reg.current(r) == b
    assert reg.rollback(r) == a and reg.current(r) == a
    with pytest.raises(reg.RegistryError, match="nothing to roll back"):
        reg.rollback(r)
    actions = [(e["action"], e["version"]) for e in reg.history(r)]
    assert actions == [("first-publish", a), ("publish+promote", b), ("promote", c), ("rollback", b),
                       ("rollback", a)]
    with pytest.raises(reg.RegistryError, match="unknown version"):
        reg.promote(r, "v20000101-000000-deadbeef")
    with pytest.raises(reg.RegistryError, match="not a version id"):
        reg.promote(r, "../etc")


def test_verify_detects_changed_missing_and_extra_files(tmp_path: Path, art) -> None:
    r = str(tmp_path / "registry")
    v = reg.publish(r, *art)
    vdir = Path(reg.version_path(r, v))
    w = vdir / "model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    with pytest.raises(reg.RegistryError, match="checksum mismatch model/model.safetensors"):
        reg.verify(r, v)
    w.unlink()
    (vdir / "model" / "stray.bin").write_bytes(b"x")
    with pytest.raises(reg.RegistryError, match="missing model/model.safetensors.*unexpected model/stray.bin"):
        reg.verify(r, v)
    # a corrupt version cannot be promoted, and a rollback never lands on one
    v2 = reg.publish(r, *art, promote=True)
    with pytest.raises(reg.RegistryError):
        reg.promote(r, v)
    with pytest.raises(reg.RegistryError, match="failed verification"):
        reg.rollback(r)
    assert reg.current(r) == v2


def test_publish_rejects_bad_inputs(tmp_path: Path, art) -> None:
    r = str(tmp_path / "registry")
    i2i, model, _ = art
    with pytest.raises(reg.RegistryError, match="i2i table not found"):
        reg.publish(r, str(tmp_path / "nope.parquet"), model)
    with pytest.raises(reg.RegistryError, match="model dir not found"):
        reg.publish(r, i2i, str(tmp_path / "nope"))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"a": [1]}), bad)
    with pytest.raises(ValueError, match="missing column"):
        reg.publish(r, str(bad), model)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(reg.RegistryError, match="not JSON"):
        reg.publish(r, i2i, model, str(tmp_path / "m.json"))
    assert reg.list_versions(r) == [] and reg.current(r) is None


def test_file_uri_registry(tmp_path: Path, art) -> None:
    r = "file://" + str(tmp_path / "uri-registry")
    i2i, model, metrics = art
    v1 = reg.publish(r, "file://" + i2i, "file://" + model, "file://" + metrics)
    v2 = reg.publish(r, i2i, model, promote=True)
    assert reg.current(r) == v2 and reg.list_versions(r) == [v1, v2]
    assert reg.version_path(r, v1) == f"{r}/{v1}"
    assert reg.verify(r, v1)["files"] == 5
    assert reg.rollback(r) == v1
    assert (tmp_path / "uri-registry" / "CURRENT").read_text().strip() == v1


def test_current_is_replaced_atomically(tmp_path: Path, art) -> None:
    """Readers racing 60 promotes only ever see a complete version id."""
    r = str(tmp_path / "registry")
    a = reg.publish(r, *art)
    b = reg.publish(r, *art)
    seen: set[str | None] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(reg.current(r))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(30):
        reg.promote(r, b if i % 2 == 0 else a, check=False)
    stop.set()
    for t in threads:
        t.join()
    assert seen <= {a, b} and seen
    assert not [p for p in Path(r).iterdir() if ".tmp-" in p.name]


def test_cli_versions(tmp_path: Path, art) -> None:
    from pi2i.cli import app

    r = str(tmp_path / "registry")
    i2i, model, metrics = art
    run = CliRunner().invoke
    res = run(app, ["versions", "publish", "--registry", r, "--i2i", i2i, "--model", model, "--metrics", metrics])
    assert res.exit_code == 0, res.output
    v1 = res.output.strip()
    assert reg.VERSION_RE.match(v1) and reg.current(r) == v1
    res = run(app, ["versions", "publish", "--registry", r, "--i2i", i2i, "--model", model])
    v2 = res.output.strip()
    assert reg.current(r) == v1
    res = run(app, ["versions", "publish", "--registry", r, "--i2i", i2i, "--model", model, "--promote"])
    v3 = res.output.strip()
    assert reg.current(r) == v3
    res = run(app, ["versions", "list", "--registry", r])
    assert res.output.split() == [v1, v2, "*", v3]
    res = run(app, ["versions", "show", "--registry", r, v1])
    assert json.loads(res.output)["gate"]["passed"] is True
    assert run(app, ["versions", "promote", "--registry", r, v2]).output.strip() == v2
    assert run(app, ["versions", "rollback", "--registry", r]).output.strip() == v3
    assert json.loads(run(app, ["versions", "verify", "--registry", r]).output)["version"] == v3
    Path(reg.version_path(r, v3), "metrics.json").write_text("{\"tampered\": 1}")
    res = run(app, ["versions", "verify", "--registry", r, v3])
    assert res.exit_code != 0 and "checksum mismatch metrics.json" in str(res.exception)
