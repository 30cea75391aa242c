"""Evaluate: HR@K ladder for popularity / classic Swing / relaxed Swing / PI2I, and the release gate."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def evaluate(train: Input[Dataset], test: Input[Dataset], i2i: Input[Dataset], model: Input[Model], config: dict,
             registry_uri: str, metrics: Output[Metrics], report: Output[Artifact]) -> bool:
    """``pi2i.evaluation.evaluate.evaluate`` against the live version's metrics (if any); the gate verdict is the single
    output (what ``dsl.If`` tests; kfp.local resolves only a task's ``Output`` in conditions) and every number
    is logged as a KFP metric; the verdict's reason is on the report artifact and in its metrics.json."""
    from components._common import flat_metrics
    from pi2i.config import parse_config
    from pi2i.contracts import exists, join, read_json
    from pi2i.evaluation.evaluate import evaluate as do_evaluate

    cfg = parse_config(config)
    live, cur = None, None
    if registry_uri:
        from pi2i.publish import registry

        if exists(registry_uri):
            cur = registry.current(registry_uri)
            if cur:
                path = join(registry.version_path(registry_uri, cur), "metrics.json")
                live = read_json(path) if exists(path) else None
    result = do_evaluate(train.path, test.path, join(i2i.path, "i2i_table.parquet"), model.path, report.path, cfg,
                         live_metrics=live, live_version=cur)
    gate = result.get("gate", {})
    for k, v in flat_metrics(gate).items():
        metrics.log_metric(f"gate.{k}", v)
    for k, v in flat_metrics(result.get("methods", {})).items():
        metrics.log_metric(k, v)
    report.metadata.update({"passed": bool(gate.get("passed")), "reason": str(gate.get("reason", ""))})
    print(f"gate: {gate.get('reason', '')}")
    return bool(gate.get("passed"))
