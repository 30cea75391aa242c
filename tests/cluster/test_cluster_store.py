"""The daily pipeline with every artifact in an S3-compatible object store (moto's server on loopback): data in,
registry out, both ``s3://``; then ``pi2i serve`` from the ``s3://`` registry and a hot swap to a version
published there. The registry never gains a half-written version when the store fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pi2i import contracts

pytestmark = pytest.mark.cluster
PI2I = str(Path(sys.executable).with_name("pi2i"))
ADMIN_TOKEN = "pi2i-test-admin-token"


def pi2i(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([PI2I, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})}, check=False)
    assert out.returncode == 0, f"pi2i {' '.join(args)} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"pi2i serve exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not ready after {timeout}s")


@pytest.fixture(scope="module")
def s3_pipeline(s3_store, tmp_path_factory) -> dict:
    """`pi2i pipeline run --local --data s3://… --registry s3://…` on the tiny preset."""
    from pi2i.data.synthetic import generate_preset

    local = tmp_path_factory.mktemp("tiny")
    generate_preset("tiny", str(local), seed=0)
    data, registry = s3_store.uri("pipe", "data"), s3_store.uri("pipe", "registry")
    contracts.copy_tree(str(local), data)
    work = tmp_path_factory.mktemp("work")
    # the gate at K=200 on tiny data: PI2I reaches the pool's ceiling there, so the first version goes live
    # whatever training noise does (at the tiny preset's K=50 the two methods are within noise of each other)
    config = work / "gate.yaml"
    config.write_text("eval:\n  gate_k: 200\n")
    out = pi2i("pipeline", "run", "--local", "--data", data, "--registry", registry, "--preset", "tiny",
               "--config", str(config), "--run-date", "2026-12-01", "--work-dir", str(work), "--no-feast")
    return {"data": data, "registry": registry, "work": work, "stdout": out.stdout}


def test_pipeline_runs_with_s3_data_and_registry(s3_pipeline):
    from pi2i.publish import registry as reg

    registry = s3_pipeline["registry"]
    live = reg.current(registry)
    assert live is not None, s3_pipeline["stdout"][-3000:]
    version = contracts.join(registry, live)
    names = contracts.listdir(version)
    assert {"i2i_table.parquet", "model", "metrics.json", "MANIFEST.json"} <= set(names), names
    reg.verify(registry, live)  # sha256 of every file, read back from the object store
    assert not Path(registry.split("://", 1)[1]).exists()  # nothing landed on local disk under the URI's path


def test_serve_from_s3_registry_and_hot_swap(s3_pipeline, s3_store, tmp_path):
    from pi2i.publish import registry as reg

    registry = s3_pipeline["registry"]
    first = reg.current(registry)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PI2I_ADMIN_TOKEN": ADMIN_TOKEN}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([PI2I, "serve", "--registry", registry, "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(url, proc)
        status, body = _post(url + "/recommend", {"user_id": 1, "k": 10})
        assert status == 200 and body["version"] == first and body["items"], body

        # a new version lands in the s3:// registry and is promoted; /admin/reload swaps it in
        version = contracts.join(registry, first)
        second = pi2i("versions", "publish", "--registry", registry, "--i2i",
                      contracts.join(version, "i2i_table.parquet"), "--model", contracts.join(version, "model"),
                      "--promote").stdout.strip().splitlines()[-1]
        assert second != first and reg.current(registry) == second
        assert _post(url + "/admin/reload", {})[0] == 401  # the admin token is required
        status, body = _post(url + "/admin/reload", {}, token=ADMIN_TOKEN)
        assert status == 200, body
        status, body = _post(url + "/recommend", {"user_id": 1, "k": 10})
        assert status == 200 and body["version"] == second, body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert s3_store.env["AWS_SECRET_ACCESS_KEY"] not in (tmp_path / "serve.log").read_text(errors="replace")


def test_registry_failures_leave_nothing_half_written(s3_pipeline, s3_store):
    """Publishing into a missing bucket or through an unreachable endpoint: exit 2, one line naming the URI,
    and the registry's versions and CURRENT unchanged."""
    from pi2i.publish import registry as reg

    registry = s3_pipeline["registry"]
    live, versions = reg.current(registry), reg.list_versions(registry)
    version = contracts.join(registry, live)
    src = ["--i2i", contracts.join(version, "i2i_table.parquet"), "--model", contracts.join(version, "model")]
    for target, env in (("s3://no-such-bucket/registry", {}),
                        (registry, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})):
        out = subprocess.run([PI2I, "versions", "publish", "--registry", target, *src, "--promote"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "s3://" in lines[0], out.stderr[-2000:]
    assert reg.current(registry) == live and reg.list_versions(registry) == versions
    staging = [n for n in contracts.listdir(registry) if n.startswith(".")]
    assert not staging, staging
