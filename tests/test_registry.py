"""Version registry: publish / list / show / verify / promote / rollback, local dirs and file:// URIs, CLI."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pi2i.contracts import I2I_SCHEMA
from pi2i.publish import registry as reg


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


# ------------------------------------------------------------------------------------- concurrency (issue 15)

def _assert_history_consistent(r: str, n_expected: int) -> None:
    """Every promote kept, each entry's ``previous`` is the entry before it, CURRENT is the top."""
    h = reg.history(r)
    assert len(h) == n_expected, [(e["action"], e["version"]) for e in h]
    assert [e["seq"] for e in h] == list(range(1, n_expected + 1))
    for before, after in itertools.pairwise(h):
        assert after["previous"] == before["version"], (before, after)
    assert reg.current(r) == h[-1]["version"] == reg._stack(r)[-1]


def test_concurrent_promotes_in_threads_keep_every_entry(tmp_path: Path, art) -> None:
    r = str(tmp_path / "registry")
    a, b = reg.publish(r, *art), reg.publish(r, *art)
    start = threading.Barrier(25)
    errors: list[BaseException] = []

    def promote(i: int) -> None:
        start.wait()
        try:
            reg.promote(r, a if i % 2 else b, check=False)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _assert_history_consistent(r, 1 + 25)  # first-publish + 25 promotes
    assert not [p.name for p in Path(r).iterdir() if p.name.startswith(".lock") or ".tmp-" in p.name]


def test_concurrent_promotes_in_processes_keep_every_entry(tmp_path: Path, art) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    r = str(tmp_path / "registry")
    a, b = reg.publish(r, *art), reg.publish(r, *art)
    with ProcessPoolExecutor(max_workers=6, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(reg.list_versions, [r] * 6))  # start (import) every worker first: then they race
        list(pool.map(reg.promote, [r] * 25, [a if i % 2 else b for i in range(25)], [False] * 25))
    _assert_history_consistent(r, 1 + 25)


def test_concurrent_publishes_of_the_same_content(tmp_path: Path, art) -> None:
    r = str(tmp_path / "registry")
    start = threading.Barrier(8)
    out: list[str] = []
    errors: list[BaseException] = []

    def publish() -> None:
        start.wait()
        try:
            out.append(reg.publish(r, *art))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(out) == reg.list_versions(r) and len(set(out)) == 8
    assert all(reg.verify(r, v)["files"] == 5 for v in out)
    assert reg.current(r) in out and len(reg.history(r)) == 1  # exactly one first-publish
    assert not [p.name for p in Path(r).iterdir() if p.name.startswith(".")]


def test_filesystem_errors_are_one_line_registry_errors(tmp_path: Path, art) -> None:
    not_a_dir = tmp_path / "registry"
    not_a_dir.write_text("I am a file")
    for call in (lambda: reg.publish(str(not_a_dir), *art), lambda: reg.history(str(not_a_dir)),
                 lambda: reg.current(str(not_a_dir))):
        with pytest.raises(reg.RegistryError) as ei:
            call()
        msg = str(ei.value)
        assert str(not_a_dir) in msg and "\n" not in msg, msg


# ------------------------------------------------------------------------------- crashed publishes (issue 15)

_HANG_IN_COPY = """
import sys, time
from pi2i.publish import registry as reg
orig = reg._copy_hashed
def hang(*a, **k):
    out = orig(*a, **k)
    print("copying", flush=True)
    time.sleep(600)
    return out
reg._copy_hashed = hang
reg.publish(*sys.argv[1:4])
"""


def _publisher_stuck_in_copy(r: str, art) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HANG_IN_COPY, r, *art[:2]], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "copying"
    return p


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t))


def test_gc_removes_staging_of_killed_publishers_only(tmp_path: Path, art) -> None:
    from pi2i.cli import app

    r = str(tmp_path / "registry")
    reg.publish(r, *art)
    dead, live = _publisher_stuck_in_copy(r, art), _publisher_stuck_in_copy(r, art)
    try:
        staging = lambda: sorted(p.name for p in Path(r).iterdir() if p.is_dir() and p.name.startswith(".staging-"))
        both = staging()
        assert len(both) == 2
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        assert staging() == both  # kill -9 leaves it behind
        assert reg.gc(r) == []  # younger than the TTL: left alone
        res = CliRunner().invoke(app, ["versions", "gc", "--registry", r, "--older-than", "0", "--dry-run"])
        assert res.exit_code == 0 and len(res.output.split()) == 1  # only the dead writer's dir qualifies
        assert len(staging()) == 2
        res = CliRunner().invoke(app, ["versions", "gc", "--registry", r, "--older-than", "0"])
        assert res.exit_code == 0, res.output
        left = staging()
        assert len(left) == 1 and Path(res.output.strip()).name in set(both) - set(left)
        # a live writer's staging dir survives even when old; a later publish clears it once the writer dies
        _age(Path(r) / left[0], 7200)
        assert reg.gc(r, ttl_s=0) == []
        live.send_signal(signal.SIGKILL)
        live.wait(10)
        reg.publish(r, *art)
        assert staging() == [] and not [p for p in Path(r).iterdir() if p.name.endswith(".lock")]
    finally:
        for p in (dead, live):
            if p.poll() is None:
                p.kill()
                p.wait(10)


# --------------------------------------------------------------------------------------- the gate (issue 15)

def _failed_metrics(root: Path) -> str:
    p = root / "failed-metrics.json"
    p.write_text(json.dumps({"gate": {"passed": False, "reason": "HR@100 below classic swing"}}))
    return str(p)


def test_publish_promote_refuses_a_failed_gate_unless_forced(tmp_path: Path, art) -> None:
    from pi2i.cli import app

    r = str(tmp_path / "registry")
    i2i, model, metrics = art
    good = reg.publish(r, i2i, model, metrics)
    bad = _failed_metrics(tmp_path)
    run = CliRunner().invoke
    res = run(app, ["versions", "publish", "-r", r, "--i2i", i2i, "--model", model, "--metrics", bad, "--promote"])
    assert res.exit_code != 0 and "gate failed" in str(res.exception)
    assert reg.current(r) == good and reg.list_versions(r) == [good]  # refused before anything was written
    with pytest.raises(reg.GateError):
        reg.publish(r, i2i, model, bad, promote=True)
    # published without --promote it is kept, but promote refuses it too
    kept = reg.publish(r, i2i, model, bad)
    res = run(app, ["versions", "promote", "-r", r, kept])
    assert res.exit_code != 0 and reg.current(r) == good
    res = run(app, ["versions", "publish", "-r", r, "--i2i", i2i, "--model", model, "--metrics", bad, "--promote",
                    "--force", "--reason", "hotfix for incident 42"])
    assert res.exit_code == 0, res.output
    forced = res.output.strip().splitlines()[-1]
    assert reg.current(r) == forced
    top = reg.history(r)[-1]
    assert top["version"] == forced and top["forced"] is True and top["reason"] == "hotfix for incident 42"
    assert top["by"] and top["gate"] == {"passed": False, "reason": "HR@100 below classic swing"}
    reg.promote(r, kept, force=True)
    assert reg.history(r)[-1]["forced"] is True and reg.history(r)[-1]["reason"]


def test_first_publish_with_a_failed_gate_does_not_go_live(tmp_path: Path, art) -> None:
    from pi2i.cli import app

    r = str(tmp_path / "registry")
    i2i, model, _ = art
    res = CliRunner().invoke(app, ["versions", "publish", "-r", r, "--i2i", i2i, "--model", model,
                                   "--metrics", _failed_metrics(tmp_path)])
    assert res.exit_code == 0 and "not live" in res.output
    assert reg.current(r) is None and len(reg.list_versions(r)) == 1


# ---------------------------------------------------------------------------- start-up fallback (issue 15)

def test_resolve_serving_version_falls_back_to_newest_verified(tmp_path: Path, art) -> None:
    r = str(tmp_path / "registry")
    assert reg.resolve_serving_version(r).version is None  # empty registry: nothing, no fallback
    a = reg.publish(r, *art)
    b = reg.publish(r, *art, promote=True)
    c = reg.publish(r, *art, promote=True)
    ok = reg.resolve_serving_version(r)
    assert (ok.version, ok.fallback, ok.reason) == (c, False, "CURRENT")
    # CURRENT's version is damaged: the newest other promoted version that verifies
    Path(reg.version_path(r, c), "i2i_table.parquet").write_bytes(b"garbage")
    fb = reg.resolve_serving_version(r)
    assert fb.version == b and fb.fallback and fb.current == c
    assert "checksum mismatch" in fb.reason and "newest verified version in HISTORY" in fb.reason
    assert r not in fb.reason  # meant for /version: no registry location
    # CURRENT itself is corrupt
    (Path(r) / "CURRENT").write_bytes(b"\x00\xffv2026")
    fb = reg.resolve_serving_version(r)
    assert fb.version == b and fb.fallback and fb.current is None and "CURRENT is corrupt" in fb.reason
    with pytest.raises(reg.RegistryError, match="CURRENT is corrupt"):
        reg.current(r)
    # nothing verifies
    for v in (a, b):
        Path(reg.version_path(r, v), "metrics.json").write_text("{}")
    none = reg.resolve_serving_version(r)
    assert none.version is None and "no version in HISTORY verifies" in none.reason
    # promoting repairs a corrupt CURRENT
    (Path(r) / "CURRENT").write_text("junk")
    reg.promote(r, c, check=False)
    assert reg.current(r) == c


# ------------------------------------------------------------------------------ manifest provenance (issue 15)

def test_manifest_records_method_config_and_code_version(tmp_path: Path, art) -> None:
    from pi2i.methods.base import FORMAT_VERSION
    from pi2i.methods.manifest import code_version

    r = str(tmp_path / "registry")
    i2i, model, metrics = art
    legacy = reg.publish(r, i2i, model, metrics)  # config.json only: a PI2I model from before method.json
    assert reg.show(r, legacy)["method"]["name"] == "pi2i" and reg.show(r, legacy)["method"]["legacy"] is True
    cfg = {"top_t": 500, "hidden": [64, 32]}
    Path(model, "method.json").write_text(json.dumps({"method": "ease", "format_version": FORMAT_VERSION,
                                                      "config": cfg, "code_version": "0.1.0+gabc"}))
    v = reg.publish(r, i2i, model, metrics)
    s = reg.show(r, v)
    assert s["method"] == {"name": "ease", "format_version": FORMAT_VERSION, "config": cfg,
                           "code_version": "0.1.0+gabc"}
    assert s["written_by"]["code_version"] == code_version() and s["written_by"]["actor"]
    Path(model, "method.json").write_text(json.dumps({"method": "ease", "format_version": FORMAT_VERSION - 1}))
    with pytest.raises(reg.RegistryError, match="method.json refused.*format"):
        reg.publish(r, i2i, model, metrics)  # a model this code cannot serve never becomes a version
    Path(model, "method.json").unlink()
    Path(model, "config.json").unlink()
    assert reg.show(r, reg.publish(r, i2i, model, metrics))["method"] is None


def test_abandoned_leases_are_broken_and_live_ones_waited_for(tmp_path: Path, art, monkeypatch) -> None:
    r = str(tmp_path / "registry")
    a = reg.publish(r, *art)
    lock = Path(r) / reg.LOCK_FILE
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lease = lambda host, pid, ttl: lock.write_text(json.dumps(
        {"owner": f"{host}:{pid}:x", "host": host, "pid": pid, "op": "promote", "expires": time.time() + ttl}))
    lease(reg._host_id(), int(dead.stdout), 3600)  # its writer was kill -9'ed: broken at once
    t0 = time.monotonic()
    reg.promote(r, a, check=False)
    assert time.monotonic() - t0 < 5 and not lock.exists()
    lease("another-host", 1, 1.0)  # a writer elsewhere: honoured until its lease expires
    t0 = time.monotonic()
    reg.promote(r, a, check=False)
    assert time.monotonic() - t0 >= 0.9 and not lock.exists()
    lock.write_text("{torn")  # unreadable: expires at its mtime + TTL
    os.utime(lock, (time.time() - reg.LEASE_TTL_S - 1,) * 2)
    reg.promote(r, a, check=False)
    lease(reg._host_id(), os.getpid(), 3600)  # alive and busy: a one-line error after the wait
    monkeypatch.setattr(reg, "LEASE_WAIT_S", 0.3)
    with pytest.raises(reg.RegistryError, match=r"is busy: .*\.lock held by"):
        reg.promote(r, a, check=False)
    assert len(reg.history(r)) == 4
