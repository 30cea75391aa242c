"""`pi2i pipeline submit --host URL` exactly as the README shows it: the object-store layout of k8s/README.md by
default (each also from the environment), the pipeline compiled and uploaded, the daily schedule created. No KFP
backend exists here: the real ``kfp.Client`` talks to a loopback endpoint that answers the KFP v2beta1 REST calls
it makes and records them. An unreachable host or a local path is a one-line error, exit 2."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import ClassVar

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PI2I = str(Path(sys.executable).with_name("pi2i"))


class KfpApi(http.server.BaseHTTPRequestHandler):
    """The slice of the KFP v2beta1 REST API that `submit` drives (healthz, pipelines + versions upload,
    experiments, recurring runs): records every request, answers like an empty KFP."""

    calls: ClassVar[list[tuple[str, str, dict, bytes]]] = []

    def _answer(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass

    def _record(self) -> tuple[str, dict, bytes]:
        url = urllib.parse.urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        query = dict(urllib.parse.parse_qsl(url.query))
        KfpApi.calls.append((self.command, url.path, query, body))
        return url.path.removeprefix("/apis/v2beta1/"), query, body

    def do_GET(self) -> None:
        path, _, _ = self._record()
        empty = {"pipelines": "pipelines", "experiments": "experiments", "recurringruns": "recurringRuns"}
        self._answer({"multi_user": False} if path == "healthz" else {empty[path]: [], "total_size": 0})

    def do_POST(self) -> None:
        path, query, body = self._record()
        self._answer({
            "pipelines/upload": lambda: {"pipeline_id": "p-1", "display_name": query["name"]},
            "pipelines/upload_version": lambda: {"pipeline_id": query["pipelineid"], "pipeline_version_id": "pv-1",
                                                 "display_name": query["name"]},
            "experiments": lambda: {"experiment_id": "e-1", **json.loads(body)},
            "recurringruns": lambda: {"recurring_run_id": "rr-1", **json.loads(body)},
        }[path]())


@pytest.fixture
def kfp_api():
    KfpApi.calls.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _readme_submit_line() -> list[str]:
    lines = [ln.split("#")[0].split() for ln in README.read_text().splitlines()
             if ln.strip().startswith("pi2i pipeline submit")]
    assert lines, "README shows no `pi2i pipeline submit` line"
    return lines[0][1:]


def test_submit_as_the_readme_shows_it(kfp_api):
    """The README's line, its host pointed at a loopback endpoint speaking the KFP REST API, through the real
    kfp.Client: the compiled pipeline is uploaded with a version, and the daily recurring run is created with
    the object-store layout of k8s/README.md."""
    argv = _readme_submit_line()
    assert argv[:3] == ["pipeline", "submit", "--host"] and len(argv) == 4, argv  # nothing else needed
    env = {k: v for k, v in os.environ.items() if k not in ("PI2I_DATA_URI", "PI2I_REGISTRY", "PI2I_STAGING_URI")}
    out = subprocess.run([PI2I, *argv[:3], kfp_api], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout[out.stdout.index("{"):])["recurring_run_id"] == "rr-1"
    posts = {path.removeprefix("/apis/v2beta1/"): (query, body) for verb, path, query, body in KfpApi.calls
             if verb == "POST"}
    assert set(posts) == {"pipelines/upload", "pipelines/upload_version", "experiments", "recurringruns"}
    assert b"# Name: pi2i-daily" in posts["pipelines/upload_version"][1]
    assert posts["pipelines/upload_version"][0]["name"].startswith("pi2i-daily-")
    rr = json.loads(posts["recurringruns"][1])
    params = rr["runtime_config"]["parameters"]
    assert params["data_uri"] == "s3://pi2i/data/latest" and params["registry_uri"] == "s3://pi2i/registry"
    assert params["staging_uri"] == "s3://pi2i/staging" and params["compute"] == "rayjob"
    assert params["run_date"] == "[[ScheduledTime.2006-01-02]]"
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert rr["service_account"] == "pi2i-pipeline-runner"

    env["PI2I_REGISTRY"] = "gs://other/registry"  # the same knob as the serving ConfigMap's
    KfpApi.calls.clear()
    out = subprocess.run([PI2I, *argv[:3], kfp_api], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    (body,) = [b for verb, path, _, b in KfpApi.calls if verb == "POST" and path.endswith("/recurringruns")]
    assert json.loads(body)["runtime_config"]["parameters"]["registry_uri"] == "gs://other/registry"


@pytest.mark.parametrize("extra, says", [
    (["--data-uri", "runs/data"], "cannot read a local path"),
    (["--registry-uri", "file:///tmp/r"], "cannot read a local path"),
    (["--compute", "k8s"], "--compute"),
])
def test_submit_rejects_what_a_cluster_cannot_use(extra, says):
    out = subprocess.run([PI2I, "pipeline", "submit", "--host", "http://127.0.0.1:9", *extra], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 2 and says in out.stderr, out.stderr


def test_submit_to_an_unreachable_host_is_one_line_exit_2():
    out = subprocess.run([PI2I, "pipeline", "submit", "--host", "http://127.0.0.1:9"], capture_output=True,
                         text=True, timeout=180, check=False)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "http://127.0.0.1:9" in errors[0], out.stderr
    assert "Traceback" not in out.stderr
