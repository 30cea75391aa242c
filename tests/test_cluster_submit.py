"""`pi2i pipeline submit --host URL` exactly as the README shows it: the object-store layout of k8s/README.md by
default (each also from the environment), the pipeline compiled and uploaded, the daily schedule created. No KFP
API server exists here, so ``kfp.Client`` is a recorder; an unreachable host is a one-line error, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from typer.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"
PI2I = str(Path(sys.executable).with_name("pi2i"))


class RecordingKfp:
    instances: ClassVar[list[RecordingKfp]] = []

    def __init__(self, host=None, **_):
        self.host, self.uploaded, self.recurring = host, [], []
        RecordingKfp.instances.append(self)

    def get_pipeline_id(self, name):
        return None

    def upload_pipeline(self, path, pipeline_name, description=None):
        self.uploaded.append(Path(path).read_text())
        return SimpleNamespace(pipeline_id="p-1")

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id):
        return SimpleNamespace(pipeline_version_id="pv-1")

    def create_experiment(self, name):
        return SimpleNamespace(experiment_id="e-1")

    def list_recurring_runs(self, experiment_id, page_size):
        return SimpleNamespace(recurring_runs=[])

    def create_recurring_run(self, **kw):
        self.recurring.append(kw)
        return SimpleNamespace(recurring_run_id="rr-1")


def _readme_submit_line() -> list[str]:
    lines = [ln.split("#")[0].split() for ln in README.read_text().splitlines()
             if ln.strip().startswith("pi2i pipeline submit")]
    assert lines, "README shows no `pi2i pipeline submit` line"
    return lines[0][1:]


def test_submit_as_the_readme_shows_it(monkeypatch):
    import kfp

    from pi2i.cli import app

    monkeypatch.setattr(kfp, "Client", RecordingKfp)
    for var in ("PI2I_DATA_URI", "PI2I_REGISTRY", "PI2I_STAGING_URI"):
        monkeypatch.delenv(var, raising=False)
    argv = _readme_submit_line()
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    (client,) = RecordingKfp.instances[-1:]
    assert client.host == argv[argv.index("--host") + 1]
    (rr,) = client.recurring
    params = rr["params"]
    assert params["data_uri"] == "s3://pi2i/data/latest" and params["registry_uri"] == "s3://pi2i/registry"
    assert params["staging_uri"] == "s3://pi2i/staging" and params["compute"] == "rayjob"
    assert rr["cron_expression"] == "0 0 3 * * *" and client.uploaded and "pi2i-daily" in client.uploaded[0]

    monkeypatch.setenv("PI2I_REGISTRY", "gs://other/registry")
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0 and RecordingKfp.instances[-1].recurring[0]["params"]["registry_uri"] == \
        "gs://other/registry"


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
