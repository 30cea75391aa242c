"""Evaluate: every method on the same test users, the live version re-scored on them, the release gate."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def evaluate(train: Input[Dataset], test: Input[Dataset], i2i: Input[Dataset], model: Input[Model], config: dict,
             registry_uri: str, metrics: Output[Metrics], report: Output[Artifact]) -> bool:
    """``pi2i.evaluation.evaluate.evaluate`` with the registry's live version re-scored on the same users; the gate
    verdict is the single output (what ``dsl.If`` tests; kfp.local resolves only a task's ``Output`` in
    conditions) and every number is logged as a KFP metric; the verdict's reason is on the report artifact and
    in its metrics.json."""
    from components._common import flat_metrics
    from pi2i.config import parse_config
    from pi2i.contracts import exists, join
    from pi2i.evaluation.evaluate import evaluate as do_evaluate

    registry = registry_uri if registry_uri and exists(registry_uri) else None
    result = do_evaluate(train.path, test.path, join(i2i.path, "i2i_table.parquet"), [model.path], report.path,
                         parse_config(config), registry=registry)
    gate = result.get("gate", {})
    for k, v in flat_metrics(gate).items():
        metrics.log_metric(f"gate.{k}", v)
    for k, v in flat_metrics(result.get("methods", {})).items():
        metrics.log_metric(k, v)
    report.metadata.update({"passed": bool(gate.get("passed")), "reason": str(gate.get("reason", ""))})
    print(f"gate: {gate.get('reason', '')}")
    return bool(gate.get("passed"))
