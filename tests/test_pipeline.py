"""The daily pipeline: the committed IR YAML is what compiling produces, the IR carries the run-date cache
key, the gate condition, the exit handler and the accelerator request; `submit` talks to KFP the intended way;
and a real kfp.local run over the `tiny` preset gives the registry a new live version."""

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines import daily
from pipelines.submit import DEFAULT_CRON, SCHEDULED_DATE, submit, validate_cron, version_name

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> dict:
    d = yaml.safe_load(path.read_text())
    d.pop("sdkVersion", None)
    return d


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ir") / "pi2i_daily.yaml"
    daily.compile_pipeline(out)
    return _load(out)


def test_compiling_reproduces_the_committed_yaml(compiled):
    committed = daily.COMPILED
    assert committed.exists(), "run `pi2i pipeline compile --out pipelines/pi2i_daily.yaml`"
    assert compiled == _load(committed), ("pipelines/pi2i_daily.yaml is stale: "
                                          "`pi2i pipeline compile --out pipelines/pi2i_daily.yaml`")


def test_cli_compile(tmp_path):
    from typer.testing import CliRunner

    from pi2i.cli import app

    out = tmp_path / "p.yaml"
    res = CliRunner().invoke(app, ["pipeline", "compile", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert _load(out)["pipelineInfo"]["name"] == "pi2i-daily"


def test_cli_compile_with_config_shapes_the_dag(tmp_path):
    """`pi2i pipeline compile --config C`: C's `pipeline` section picks the DAG; a gate method that is not
    trained is refused."""
    from typer.testing import CliRunner

    from pi2i.cli import app

    cfg, out = tmp_path / "c.yaml", tmp_path / "p.yaml"
    cfg.write_text("pipeline: {methods: [pi2i, mtmh], augment: true}\n")
    res = CliRunner().invoke(app, ["pipeline", "compile", "--out", str(out), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    comps = _load(out)["components"]
    assert "comp-augment" in comps and any(name.startswith("comp-for-loop") for name in comps)
    cfg.write_text("pipeline: {methods: [pdn]}\n")
    res = CliRunner().invoke(app, ["pipeline", "compile", "--out", str(out), "--config", str(cfg)])
    # a ValueError: `pi2i.cli.main` prints it as one line and exits 2
    assert isinstance(res.exception, ValueError) and "eval.gate_method 'pi2i'" in str(res.exception)


def test_cli_run_and_demo_fail_clearly_and_document_themselves(tmp_path):
    from typer.testing import CliRunner

    from pi2i.cli import app

    runner = CliRunner()
    for argv in (["demo", "--help"], ["pipeline", "run", "--help"], ["pipeline", "submit", "--help"]):
        assert runner.invoke(app, argv).exit_code == 0
    res = runner.invoke(app, ["pipeline", "run", "--local", "--data", str(tmp_path / "none"), "--registry",
                              str(tmp_path / "reg")])
    assert res.exit_code != 0 and "no events.parquet" in str(res.exception or res.output)
    res = runner.invoke(app, ["pipeline", "run", "--local", "--data", str(tmp_path), "--registry",
                              str(tmp_path / "reg"), "--run-date", "23/11/2026", "--preset", "tiny"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["pipeline", "submit", "--host", "http://kfp", "--cron", "0 3 * * *",
                              "--data-uri", "s3://b/d", "--registry-uri", "s3://b/r"])
    assert res.exit_code != 0 and "6" in str(res.exception or res.output)


def test_ir_structure(compiled):
    root = compiled["root"]
    params = root["inputDefinitions"]["parameters"]
    assert {"run_date", "data_uri", "registry_uri"} <= set(params)
    assert "defaultValue" not in params["run_date"]  # must be given: it is the daily cache key
    # exit handler: record-run runs after the body whatever happened, fed the body's final status
    exit_task = root["dag"]["tasks"]["record-run"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "taskFinalStatus" in json.dumps(exit_task["inputs"])
    body = compiled["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert list(body) and "ingest" in body and "condition-2" in body
    assert body["ingest"]["inputs"]["parameters"]["run_date"]["componentInputParameter"] == "pipelinechannel--run_date"
    cond = body["condition-2"]["triggerPolicy"]["condition"]
    assert cond == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    gated = compiled["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(gated) == {"publish", "deploy"}
    assert gated["deploy"]["dependentTasks"] == ["publish"]
    order = {name: set(t.get("dependentTasks", [])) for name, t in body.items()}
    assert order["split"] == {"ingest"} and order["swing"] == {"split"}
    assert order["samples"] == {"split", "swing"} and order["train"] == {"samples"}
    assert order["evaluate"] == {"split", "swing", "train"}
    # GPU for training through KFP's accelerator settings, driven by pipeline parameters
    acc = compiled["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert "train_gpus" in acc["resourceCount"] and "train_accelerator" in acc["resourceType"]
    images = {e["container"]["image"] for e in compiled["deploymentSpec"]["executors"].values()}
    from components.image import PINNED_IMAGE

    assert images == {PINNED_IMAGE}


def test_cron_and_version_name():
    assert validate_cron(DEFAULT_CRON) == "0 0 3 * * *"
    with pytest.raises(ValueError, match="6, seconds first"):
        validate_cron("0 3 * * *")
    assert version_name(dt.date(2026, 11, 23), "abc1234d") == "pi2i-daily-20261123-abc1234d"


class FakeKfp:
    """Records the kfp.Client calls `submit` makes (no KFP API server exists here)."""

    def __init__(self, existing_pipeline: str | None, existing_schedule: bool):
        self.calls: list[tuple] = []
        self.pid = existing_pipeline
        self.schedules = [SimpleNamespace(display_name="pi2i-daily-schedule", recurring_run_id="rr-old")] \
            if existing_schedule else []

    def get_pipeline_id(self, name):
        return self.pid

    def upload_pipeline(self, path, pipeline_name, description=None):
        self.calls.append(("upload_pipeline", pipeline_name))
        return SimpleNamespace(pipeline_id="p-new")

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id):
        assert Path(path).exists()
        self.calls.append(("upload_pipeline_version", pipeline_version_name, pipeline_id))
        return SimpleNamespace(pipeline_version_id="pv-1")

    def create_experiment(self, name):
        return SimpleNamespace(experiment_id="e-1")

    def list_recurring_runs(self, experiment_id, page_size):
        return SimpleNamespace(recurring_runs=self.schedules)

    def delete_recurring_run(self, rid):
        self.calls.append(("delete_recurring_run", rid))

    def create_recurring_run(self, **kw):
        self.calls.append(("create_recurring_run", kw))
        return SimpleNamespace(recurring_run_id="rr-new")


@pytest.mark.parametrize("existing", [None, "p-old"])
def test_submit_uploads_version_and_replaces_schedule(existing):
    fake = FakeKfp(existing, existing_schedule=existing is not None)
    out = submit(None, {"data_uri": "s3://b/data", "registry_uri": "s3://b/reg"}, client=fake,
                 name="pi2i-daily-20261123-abc")
    pid = existing or "p-new"
    names = [c[0] for c in fake.calls]
    assert names == (["upload_pipeline_version", "delete_recurring_run", "create_recurring_run"] if existing
                     else ["upload_pipeline", "upload_pipeline_version", "create_recurring_run"])
    kw = fake.calls[-1][1]
    assert kw["cron_expression"] == DEFAULT_CRON and kw["pipeline_id"] == pid and kw["version_id"] == "pv-1"
    assert kw["params"]["run_date"] == SCHEDULED_DATE and kw["max_concurrency"] == 1 and kw["no_catchup"]
    assert out["recurring_run_id"] == "rr-new"


# --------------------------------------------------------------------------------------------- end to end
def _have_core() -> str | None:
    import importlib.util

    missing = [m for m in ("pi2i.data.loaders", "pi2i.data.split", "pi2i.prs.sampling", "pi2i.prs.train", "pi2i.prs.scoring",
                           "pi2i.evaluation.evaluate", "pi2i.publish.registry",
                           "pi2i.ibs.swing", "pi2i.data.features", "pi2i.data.synthetic") if importlib.util.find_spec(m) is None]
    return f"core modules not present yet: {missing}" if missing else None


@pytest.mark.slow
@pytest.mark.skipif(_have_core() is not None, reason=str(_have_core()))
def test_local_run_end_to_end(tmp_path):
    """`pi2i pipeline run --local` on the tiny preset: every step runs (kfp.local), the gate passes, the
    registry gains a live version, and the exit handler writes the run record."""
    from pi2i.publish import registry

    data, reg = tmp_path / "data", tmp_path / "registry"
    cmd = [sys.executable, "-c", "from pi2i.cli import main; main()", "pipeline", "run", "--local",
           "--data", str(data), "--registry", str(reg), "--work-dir", str(tmp_path / "work"),
           "--run-date", "2026-11-23", "--preset", "tiny"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    result = json.loads(res.stdout[("\n" + res.stdout).rindex("\n{\n"):])  # the last top-level JSON object
    live = registry.current(str(reg))
    assert live is not None and result["live"] == live and result["new_version"]
    registry.verify(str(reg), live)
    metrics = json.loads(Path(registry.version_path(str(reg), live), "metrics.json").read_text())
    assert metrics["gate"]["passed"] is True
    (record,) = [json.loads(p.read_text()) for p in (reg / "runs").glob("2026-11-23-*.json")]
    assert record["state"] == "SUCCEEDED"


def test_local_run_failure_is_recorded(tmp_path):
    """A failing step fails the run, and the exit handler still records it (state FAILED) in the registry."""
    from pipelines.run_local import run_local

    (tmp_path / "nodata").mkdir()
    reg = tmp_path / "registry"
    with pytest.raises(RuntimeError):
        run_local(str(tmp_path / "nodata"), str(reg), str(tmp_path / "work"), run_date="2026-11-24",
                  feature_repo="")
    (record,) = [json.loads(p.read_text()) for p in (reg / "runs").glob("2026-11-24-*.json")]
    assert record["state"] == "FAILED"


# ------------------------------------------------------------------------------ DAG shape from `pipeline.*`
def _compile_for(tmp_path, config: dict) -> dict:
    out = tmp_path / "p.yaml"
    daily.compile_pipeline(out, config)
    return _load(out)


def test_default_pipeline_has_no_augment_step(compiled):
    assert "comp-augment" not in compiled["components"]
    assert daily.pipeline_for({}) is daily.pi2i_daily


def test_augment_step_feeds_swing_only(tmp_path):
    """`pipeline.augment: true`: split -> augment -> swing; samples and evaluate keep the real train split."""
    ir = _compile_for(tmp_path, {"pipeline": {"augment": True}})
    body = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    order = {name: set(t.get("dependentTasks", [])) for name, t in body.items()}
    assert order["augment"] == {"split"} and order["swing"] == {"augment"}
    assert order["samples"] == {"split", "swing"} and order["evaluate"] == {"split", "swing", "train"}
    swing_in = body["swing"]["inputs"]["artifacts"]["train"]["taskOutputArtifact"]
    assert swing_in == {"outputArtifactKey": "augmented", "producerTask": "augment"}
    for task in ("samples", "evaluate"):
        assert body[task]["inputs"]["artifacts"]["train"]["taskOutputArtifact"]["producerTask"] == "split"
    acc = ir["deploymentSpec"]["executors"]["exec-augment"]["container"]["resources"]["accelerator"]
    assert "train_gpus" in acc["resourceCount"]


def test_one_non_default_method_trains_it_alone(tmp_path):
    """`pipeline.methods: [pdn]`: the single train task gets `method=pdn`, evaluate takes its `model`."""
    ir = _compile_for(tmp_path, {"pipeline": {"methods": ["pdn"]}, "eval": {"gate_method": "pdn"}})
    body = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert body["train"]["inputs"]["parameters"]["method"]["runtimeValue"]["constant"] == "pdn"
    assert body["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model", "producerTask": "train"}
    assert not any("for-loop" in name for name in ir["components"])


def test_several_methods_train_in_parallel_and_are_evaluated_together(tmp_path):
    """`pipeline.methods: [pi2i, pdn]`: a ParallelFor over the method names runs one train task per method,
    their models are collected into evaluate's `models` list, and publish (behind the gate) takes evaluate's
    `candidate` (the gate method's model), never a train output."""
    ir = _compile_for(tmp_path, {"pipeline": {"methods": ["pi2i", "pdn", "pi2i"]}, "eval": {"gate_method": "pdn"}})
    comps = ir["components"]
    body = comps["comp-exit-handler-1"]["dag"]["tasks"]
    (loop,) = [name for name in body if name.startswith("for-loop")]
    assert json.loads(body[loop]["parameterIterator"]["items"]["raw"]) == ["pi2i", "pdn"]  # one train per method
    assert "train" not in body and set(body[loop]["dependentTasks"]) == {"samples"}
    loop_dag = comps[body[loop]["componentRef"]["name"]]
    train = loop_dag["dag"]["tasks"]["train"]
    item = body[loop]["parameterIterator"]["itemInput"]
    assert train["inputs"]["parameters"]["method"] == {"componentInputParameter": item}
    (collected,) = loop_dag["outputDefinitions"]["artifacts"].values()
    assert collected["isArtifactList"] is True
    assert loop_dag["dag"]["outputs"]["artifacts"][next(iter(loop_dag["outputDefinitions"]["artifacts"]))] == {
        "artifactSelectors": [{"outputArtifactKey": "model", "producerSubtask": "train"}]}
    ev = body["evaluate"]
    assert set(ev["dependentTasks"]) == {loop, "split", "swing"}
    assert ev["inputs"]["artifacts"]["models"]["taskOutputArtifact"]["producerTask"] == loop
    assert "model" not in ev["inputs"]["artifacts"]
    (cond,) = [name for name in body if name.startswith("condition")]
    publish = comps[body[cond]["componentRef"]["name"]]["dag"]["tasks"]["publish"]
    fed = publish["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    assert body[cond]["inputs"]["artifacts"][fed]["taskOutputArtifact"] == {
        "outputArtifactKey": "candidate", "producerTask": "evaluate"}
    # the accelerator request survives inside the loop
    acc = ir["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert "train_gpus" in acc["resourceCount"]


def test_methods_config_errors_are_clear(tmp_path):
    with pytest.raises(Exception, match="pipeline.methods"):
        daily.pipeline_for({"pipeline": {"methods": ["nope"]}})
    with pytest.raises(ValueError, match="eval.gate_method 'pi2i' must be one of pipeline.methods"):
        daily.pipeline_for({"pipeline": {"methods": ["pdn", "mtmh"]}})
    with pytest.raises(ValueError, match="unknown trained method"):
        daily.build_pipeline(methods=["swing"])


@pytest.mark.slow
@pytest.mark.skipif(_have_core() is not None, reason=str(_have_core()))
def test_local_run_with_augment(tmp_path):
    """kfp.local run of the `pipeline.augment: true` DAG on the tiny preset: the augment component writes real +
    synthetic rows and Swing indexes them (the synthetic edges are in its graph)."""
    import os
    import warnings

    from kfp import local

    from pi2i.data.synthetic import generate_preset
    from pipelines.run_local import CONFIG_PRESETS

    generate_preset("tiny", str(tmp_path / "data"), seed=0)
    config = {**CONFIG_PRESETS["tiny"], "pipeline": {"augment": True},
              "augment": {"epochs": 1, "disc_epochs": 1, "n_embd": 16, "n_layer": 1, "n_head": 1,
                          "candidates_per_user": 4, "disc_positions": 2}}
    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(tmp_path / "ws"), raise_on_error=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        daily.pipeline_for(config)(run_date="2026-11-25", data_uri=str(tmp_path / "data"),
                                   registry_uri=str(tmp_path / "reg"), config=config, feature_repo="")
    (run,) = list(root.glob("pi2i-daily-*"))
    summary = json.loads((run / "augment" / "augmented" / "summary.json").read_text())
    assert summary["kept"] > 0 and summary["proposed"] >= summary["kept"]
    import pyarrow.parquet as pq

    ev = pq.read_table(run / "augment" / "augmented" / "events.parquet")
    assert ev.num_rows == summary["real_rows"] + summary["kept"]
    stats = json.loads(next((run / "swing" / "i2i").glob("*.stats.json")).read_text())
    assert stats["events_used"] == summary["real_rows"] + summary["kept"]  # Swing counted the synthetic rows
    assert (run / "evaluate" / "report" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(_have_core() is not None, reason=str(_have_core()))
def test_local_run_with_several_methods(tmp_path):
    """kfp.local run of the `pipeline.methods: [pi2i, pdn]` DAG on the tiny preset: both methods train (the
    ParallelFor), evaluate reports both on the same users, and what passes the gate is the gate method's model."""
    import os
    import warnings

    from kfp import local

    from pi2i.data.synthetic import generate_preset
    from pi2i.methods import read_manifest
    from pi2i.publish import registry
    from pipelines.run_local import CONFIG_PRESETS

    generate_preset("tiny", str(tmp_path / "data"), seed=0)
    tiny = CONFIG_PRESETS["tiny"]
    config = {**tiny, "pipeline": {"methods": ["pi2i", "pdn"]}, "eval": {**tiny["eval"], "gate_method": "pdn"},
              "methods": {"pdn": {"max_batches_per_epoch": 20}}}
    root, reg = tmp_path / "root", tmp_path / "reg"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(tmp_path / "ws"), raise_on_error=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        daily.pipeline_for(config)(run_date="2026-11-26", data_uri=str(tmp_path / "data"), registry_uri=str(reg),
                                   config=config, feature_repo="")
    (run,) = list(root.glob("pi2i-daily-*"))
    trained = sorted(read_manifest(str(p.parent))["method"] for p in run.rglob("method.json")
                     if "evaluate" not in p.parts)
    assert trained == ["pdn", "pi2i"]  # one train task per method
    metrics = json.loads((run / "evaluate" / "report" / "metrics.json").read_text())
    assert {"swing", "pi2i", "pdn"} <= set(metrics["methods"]) and metrics["gate"]["candidate"] == "pdn"
    assert read_manifest(str(run / "evaluate" / "candidate"))["method"] == "pdn"
    live = registry.current(str(reg))
    assert (live is not None) == bool(metrics["gate"]["passed"])
    if live is not None:  # published and deployed: the gate method's model
        assert read_manifest(str(Path(registry.version_path(str(reg), live), "model")))["method"] == "pdn"
