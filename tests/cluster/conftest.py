"""Real engines for the cluster-path tests (``pytest -m cluster``): an S3-compatible object store on loopback
and a two-node Ray cluster started with ``ray start``, for the tests in ``tests/cluster/``.

* ``s3_store``: moto's S3 server (``moto[server]``, a maintained AWS mock that speaks the S3 REST API; MinIO has
  no PyPI package to install here) on 127.0.0.1:<free port>, one bucket, and the ``AWS_*`` environment the
  filesystem layer (:mod:`pi2i.contracts`) reads — credentials only ever travel through the environment.
* ``ray_cluster`` (session): ``ray start --head`` plus a second ``ray start --address`` node, each with its own
  temp dir, one CPU and a custom resource naming the node, token auth with a token of its own;
  ``ray_env`` (per test) sets ``RAY_ADDRESS`` and the token so drivers join it. Started after ``s3_store``
  so every Ray worker inherits the object-store environment (as KubeRay pods get it from the
  ``pi2i-object-store`` secret). Teardown always runs and stops exactly the processes of these two nodes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------ object store

@dataclass(frozen=True)
class S3Store:
    endpoint: str
    bucket: str
    env: dict[str, str]

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])

    def create_bucket(self, name: str) -> None:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", region="us-east-1",
                          access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                          allow_bucket_creation=True).create_dir(name)


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} after {timeout:.0f}s")


_KILL_WITH_PARENT = """
import os, signal, sys, time
parent, child = int(sys.argv[1]), int(sys.argv[2])
while os.path.exists(f"/proc/{parent}") and os.path.exists(f"/proc/{child}"):
    time.sleep(1)
if os.path.exists(f"/proc/{child}"):
    os.kill(child, signal.SIGKILL)
"""


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory, free_ports) -> Iterator[S3Store]:
    exe = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server not installed: pip install -e '.[dev]' (moto[server] is in the dev extra)")
    port = free_ports()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    # the server never outlives the session, even one killed without its teardown
    subprocess.Popen([sys.executable, "-c", _KILL_WITH_PARENT, str(os.getpid()), str(proc.pid)],
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(endpoint + "/", proc)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "pi2i-test", "AWS_SECRET_ACCESS_KEY":
               "pi2i-test-secret", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        store = S3Store(endpoint, "pi2i-test", env)
        store.create_bucket(store.bucket)
        with _environ(env):
            yield store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------ Ray cluster

@dataclass(frozen=True)
class RayCluster:
    address: str
    temp_dirs: tuple[str, str]
    env: dict[str, str]  # what a driver needs: RAY_ADDRESS and the cluster's auth token


def _pids_under(root: str) -> list[int]:
    """Processes whose command line names ``root`` (every process of a Ray node carries its session dir)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if root.encode() in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except OSError:
            continue
    return out


def _stop_nodes(roots: list[str]) -> None:
    """Stop the processes of our nodes by pid (``ray stop --force`` would stop every Ray node of this user on
    the machine, other test sessions' included). SIGTERM, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = [pid for r in roots for pid in _pids_under(r)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for r in roots for pid in _pids_under(r)]
            time.sleep(0.2)
        if not pids:
            return


#: Runs beside the test session and stops the nodes if the session dies without its teardown (SIGKILL, a
#: thread-method timeout): the cluster never outlives the tests.
_REAPER = """
import os, sys, time
parent, roots = int(sys.argv[1]), sys.argv[2:]
while os.path.exists(f"/proc/{parent}") and all(os.path.isdir(r) for r in roots):
    time.sleep(1)
"""


def _spawn_reaper(roots: list[str]) -> subprocess.Popen:
    code = _REAPER + "\n" + "\n".join([
        "import contextlib, signal", "from pathlib import Path",
        _source(_pids_under), _source(_stop_nodes), "_stop_nodes(roots)",
        "import shutil", "for r in roots: shutil.rmtree(r, ignore_errors=True)"])
    return subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), *roots], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _source(fn) -> str:
    import inspect

    return inspect.getsource(fn)


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    out = subprocess.run([str(BIN / "ray"), "start", *args], capture_output=True, text=True, env=env, timeout=180,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n"
                           f"{out.stderr[-2000:]}")


def _node_ports(free_port: Callable[[], int]) -> list[str]:
    """Every fixed-default port of a node made free, so two nodes (and other Ray users) share one machine."""
    nm, om, agent, agent_grpc, metrics, runtime_env = (str(free_port()) for _ in range(6))
    return ["--node-manager-port", nm, "--object-manager-port", om,
            "--dashboard-agent-listen-port", agent, "--dashboard-agent-grpc-port", agent_grpc,
            "--metrics-export-port", metrics, "--runtime-env-agent-port", runtime_env,
            "--min-worker-port", "0", "--max-worker-port", "0"]


@pytest.fixture(scope="session")
def ray_cluster(s3_store, free_ports) -> Iterator[RayCluster]:
    """Head (1 CPU, resource ``head``) + worker node (1 CPU, resource ``node2``), separate temp dirs."""
    # short roots: Ray's unix sockets live under the temp dir and socket paths are limited to ~107 bytes
    roots = [tempfile.mkdtemp(prefix="pi2i-ray-h-", dir="/tmp"), tempfile.mkdtemp(prefix="pi2i-ray-w-", dir="/tmp")]
    port = free_ports()
    address = f"127.0.0.1:{port}"
    # Ray 2.60 turns token auth on for new clusters; give this cluster its own token (never ~/.ray's)
    client_env = {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=client_env["RAY_AUTH_TOKEN"])
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(150 << 20),
              "--disable-usage-stats"]
    reaper = _spawn_reaper(roots)
    try:
        _ray_start(["--head", "--port", str(port), "--temp-dir", roots[0], "--include-dashboard", "false",
                    "--resources", '{"head": 1}', *common,
                    *_node_ports(free_ports)], env)
        _ray_start(["--address", address, "--temp-dir", roots[1], "--resources", '{"node2": 1}', *common,
                    *_node_ports(free_ports)], env)
        _wait_nodes(address, 2, env)
        yield RayCluster(address, (roots[0], roots[1]), client_env)
    finally:
        _stop_nodes(roots)
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)
        reaper.wait(timeout=30)  # stopped with the nodes (its command line names their roots)


@pytest.fixture
def ray_env(ray_cluster, monkeypatch) -> Iterator[RayCluster]:
    """``RAY_ADDRESS`` (and the token) set for one test, so ``ray.init()`` / ``pi2i`` subprocesses join the
    cluster; tests outside this fixture keep their in-process Ray. Disconnects this process afterwards."""
    for k, v in ray_cluster.env.items():
        monkeypatch.setenv(k, v)
    yield ray_cluster
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _wait_nodes(address: str, n: int, env: dict[str, str], timeout: float = 120.0) -> None:
    code = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env,
                             timeout=120, check=False)
        last = out.stdout.strip().splitlines()[-1:] or out.stderr[-500:]
        if out.returncode == 0 and out.stdout.strip().endswith(str(n)):
            return
        time.sleep(1)
    raise RuntimeError(f"Ray cluster at {address} did not reach {n} nodes: {last}")
