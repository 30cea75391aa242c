"""Components: every step on the pinned project image, bodies exercised through ``.python_func`` on real
artifacts and real core functions, and through ``kfp.local``'s SubprocessRunner (the executor path).
``tiny_data`` / ``tiny_chain`` are the session fixtures of ``tests/conftest.py``."""

import importlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kfp import dsl

from components.image import PINNED_IMAGE

STEPS = ["ingest", "split", "swing", "samples", "train", "evaluate", "publish", "deploy", "record_run"]


def component(step: str):
    return getattr(importlib.import_module(f"components.{step}.component"), step)


def art(cls, path: Path):
    return cls(name=path.name, uri=str(path), metadata={})


@pytest.mark.parametrize("step", STEPS)
def test_component_runs_on_pinned_image_without_pip(step):
    comp = component(step)
    container = comp.component_spec.implementation.container
    assert container.image == PINNED_IMAGE
    assert "pip install" not in " ".join(container.command), "the image already holds kfp and pi2i"
    # thin adapter: the body imports the core, it never holds the algorithm
    assert comp.python_func.__doc__


def test_pinned_image_follows_project_version():
    import pi2i

    assert PINNED_IMAGE == f"ghcr.io/pi2i/pi2i:{pi2i.__version__}"
    assert "FROM python:3.11" in (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()


def test_ingest_snapshots_data(tmp_path, tiny_data):
    data, feats, stats = art(dsl.Dataset, tmp_path / "data"), art(dsl.Artifact, tmp_path / "f"), \
        art(dsl.Metrics, tmp_path / "stats")
    component("ingest").python_func(run_date="2026-11-23", data_uri=tiny_data, feature_repo="",
                                    feature_store_yaml="", data=data, features=feats, stats=stats)
    assert (tmp_path / "data" / "events.parquet").exists()
    n = pq.ParquetFile(os.path.join(tiny_data, "events.parquet")).metadata.num_rows
    assert stats.metadata["events"] == n and data.metadata["run_date"] == "2026-11-23"


def test_ingest_fails_clearly_without_events(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no events.parquet"):
        component("ingest").python_func(run_date="d", data_uri=str(tmp_path / "empty"), feature_repo="",
                                        feature_store_yaml="", data=art(dsl.Dataset, tmp_path / "d"),
                                        features=art(dsl.Artifact, tmp_path / "f"),
                                        stats=art(dsl.Metrics, tmp_path / "s"))


def test_swing_local_writes_the_i2i_contract(tmp_path, tiny_data):
    from pi2i.contracts import I2I_SCHEMA

    i2i = art(dsl.Dataset, tmp_path / "i2i")
    component("swing").python_func(train=art(dsl.Dataset, Path(tiny_data)), config={"swing": {"top_t": 50}},
                                   compute="local", namespace="pi2i", staging_uri="", run_id="r1", i2i=i2i)
    t = pq.read_table(tmp_path / "i2i" / "i2i_table.parquet")
    assert t.schema.equals(I2I_SCHEMA, check_metadata=False) and t.num_rows > 0
    assert i2i.metadata  # swing stats surfaced on the artifact


def test_ray_steps_reject_unknown_compute(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="compute must be"):
        component("swing").python_func(train=art(dsl.Dataset, Path(tiny_data)), config={}, compute="spark",
                                       namespace="pi2i", staging_uri="", run_id="r",
                                       i2i=art(dsl.Dataset, tmp_path / "i2i"))


def test_rayjob_mode_refuses_local_paths(tmp_path):
    """compute='rayjob': the step's pods cannot see this task's disk, so a local staging dir or a local input
    is refused before any RayJob exists. (The RayJob path itself runs for real on a two-node Ray cluster with
    an S3 endpoint: tests/cluster/test_cluster_ray.py::test_swing_step_as_a_rayjob_entrypoint_on_the_cluster.)"""
    from components._common import run_ray_step

    def no_cluster(manifest):
        pytest.fail("no RayJob may be created")

    for staging, events in ((str(tmp_path / "staging"), "s3://b/train/events.parquet"),
                            ("s3://b/staging", str(tmp_path / "events.parquet")),
                            ("file:///tmp/staging", "s3://b/train/events.parquet")):
        with pytest.raises(ValueError, match="needs object-store URIs"):
            run_ray_step("swing", "rayjob", lambda: pytest.fail("must not run locally"),
                         ["pi2i", "swing", "--events", events, "--out", f"{staging}/i2i_table.parquet"],
                         staging, str(tmp_path / "artifact"), "pi2i", "run-1", runner=no_cluster)


def test_flat_metrics_for_log_metric():
    from components._common import flat_metrics

    assert flat_metrics({"passed": True, "hr": {"20": 0.5, "50": 0.7}, "reason": "x", "n": 3}) == {
        "passed": 1.0, "hr.20": 0.5, "hr.50": 0.7, "n": 3.0}


@pytest.fixture
def published_inputs(tmp_path):
    """An i2i artifact, a model artifact and a report artifact holding metrics.json (as the pipeline makes)."""
    import pyarrow as pa

    from pi2i.contracts import I2I_SCHEMA, write_parquet

    (tmp_path / "i2i").mkdir()
    write_parquet(pa.table({"trigger": [1, 2], "target": [2, 1], "score": [0.5, 0.5], "rank": [1, 1]},
                           schema=I2I_SCHEMA), str(tmp_path / "i2i" / "i2i_table.parquet"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text(json.dumps({"gate": {"passed": True}}))
    return (art(dsl.Dataset, tmp_path / "i2i"), art(dsl.Model, tmp_path / "model"),
            art(dsl.Artifact, tmp_path / "report"))


def test_publish_deploy_record(tmp_path, published_inputs):
    from pi2i.publish import registry

    i2i, model, report = published_inputs
    reg = str(tmp_path / "registry")
    v1 = component("publish").python_func(i2i=i2i, model=model, report=report, registry_uri=reg)
    assert component("deploy").python_func(version=v1, registry_uri=reg, target="local", service_url="",
                                           namespace="pi2i", deployment="pi2i-serving") == v1
    v2 = component("publish").python_func(i2i=i2i, model=model, report=report, registry_uri=reg)
    assert registry.current(reg) == v1 and v2 != v1  # published, not yet live
    component("deploy").python_func(version=v2, registry_uri=reg, target="local", service_url="",
                                    namespace="pi2i", deployment="pi2i-serving")
    assert registry.current(reg) == v2
    assert json.loads(Path(registry.version_path(reg, v2), "metrics.json").read_text())["gate"]["passed"]

    status = dsl.PipelineTaskFinalStatus(state="FAILED", pipeline_job_resource_name="job-1",
                                         pipeline_task_name="daily", error_code=1, error_message="boom")
    assert component("record_run").python_func(registry_uri=reg, run_date="2026-11-23", status=status) == "FAILED"
    (rec,) = list((tmp_path / "registry" / "runs").glob("2026-11-23-*.json"))
    assert json.loads(rec.read_text())["error_message"] == "boom"
    assert registry.list_versions(reg) == sorted([v1, v2])  # the run log is not mistaken for a version


def test_train_then_evaluate_several_methods_hands_on_the_gate_method(tmp_path, tiny_chain, tiny_config):
    """The multi-method path of the daily pipeline through the component bodies: `train` with `method=pi2i`
    and `method=pdn` (the ParallelFor's tasks), then `evaluate` over the collected list of both models — every
    method on the same users, and `candidate` is a copy of the gate method's model dir (what publish gets)."""
    from pi2i.methods import read_manifest

    config = {**tiny_config, "train": {**tiny_config["train"], "torch_threads": 1,
                                       "storage_path": str(tmp_path / "ray")},
              "methods": {"pdn": {"max_batches_per_epoch": 4}}, "eval": {"gate_method": "pdn", "ks": [20, 50]}}
    models = []
    for method in ("pi2i", "pdn"):
        m = art(dsl.Model, tmp_path / f"model-{method}")
        component("train").python_func(samples=art(dsl.Dataset, Path(tiny_chain["samples"])), config=config,
                                       gpus=0, accelerator="nvidia.com/gpu", compute="local", namespace="pi2i",
                                       staging_uri="", run_id="r", model=m,
                                       metrics=art(dsl.Metrics, tmp_path / f"m-{method}"), method=method)
        assert read_manifest(m.path)["method"] == method and m.metadata["method"] == method
        models.append(m)

    def run_evaluate(cfg: dict, out: str):
        outputs = {"metrics": art(dsl.Metrics, tmp_path / out / "metrics"),
                   "report": art(dsl.Artifact, tmp_path / out / "report"),
                   "candidate": art(dsl.Model, tmp_path / out / "candidate")}
        passed = component("evaluate").python_func(
            train=art(dsl.Dataset, Path(tiny_chain["train"])), test=art(dsl.Dataset, Path(tiny_chain["test"])),
            i2i=art(dsl.Dataset, Path(tiny_chain["i2i"]).parent), config=cfg, registry_uri="", models=models,
            **outputs)
        return passed, outputs

    passed, out = run_evaluate(config, "ev")
    report = json.loads((tmp_path / "ev" / "report" / "metrics.json").read_text())
    assert {"popularity", "swing", "pool", "pi2i", "pdn"} <= set(report["methods"])
    assert report["gate"]["candidate"] == "pdn" and passed is bool(report["gate"]["passed"])
    assert out["report"].metadata["candidate"] == "pdn" and out["candidate"].metadata["method"] == "pdn"
    assert read_manifest(out["candidate"].path)["method"] == "pdn"
    copied = sorted(p.relative_to(tmp_path / "ev" / "candidate") for p in (tmp_path / "ev" / "candidate").rglob("*"))
    assert copied == sorted(p.relative_to(tmp_path / "model-pdn") for p in (tmp_path / "model-pdn").rglob("*"))
    assert out["metrics"].metadata  # every number logged as a KFP metric

    with pytest.raises(ValueError, match="eval.gate_method 'mtmh' is not among the trained models"):
        run_evaluate({**config, "eval": {"gate_method": "mtmh"}}, "bad")


def test_deploy_rejects_unknown_target(tmp_path):
    with pytest.raises(ValueError, match="deploy target"):
        component("deploy").python_func(version="v", registry_uri=str(tmp_path), target="moon", service_url="",
                                        namespace="pi2i", deployment="d")


def test_components_through_kfp_local(tmp_path, tiny_data):
    """The real executor path: each component as a subprocess of this Python (SubprocessRunner)."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               workspace_root=str(tmp_path / "ws"))
    ing = component("ingest")(run_date="2026-11-23", data_uri=tiny_data, feature_repo="", feature_store_yaml="")
    assert os.path.exists(os.path.join(ing.outputs["data"].path, "events.parquet"))

    # artifact inputs only flow inside a pipeline under kfp.local
    @dsl.pipeline
    def ingest_then_swing(data_uri: str) -> dsl.Dataset:
        i = component("ingest")(run_date="2026-11-23", data_uri=data_uri, feature_repo="", feature_store_yaml="")
        return component("swing")(train=i.outputs["data"], config={"swing": {"top_t": 30}}, compute="local",
                                  namespace="pi2i", staging_uri="", run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
                                  ).outputs["i2i"]

    i2i = ingest_then_swing(data_uri=tiny_data).output
    t = pq.read_table(os.path.join(i2i.path, "i2i_table.parquet"))
    assert t.num_rows > 0 and t.column("rank").to_numpy().max() <= 30
