"""Evaluate: every method on the same test users, the live version re-scored on them, the release gate."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def evaluate(train: Input[Dataset], test: Input[Dataset], i2i: Input[Dataset], config: dict, registry_uri: str,
             metrics: Output[Metrics], report: Output[Artifact], candidate: Output[Model],
             model: Input[Model] = None, models: Input[list[Model]] = None) -> bool:
    """``pi2i.evaluation.evaluate.evaluate`` over the trained model dirs (``model``, or the ``models`` a
    ``dsl.Collected`` of parallel train tasks gathers; each ``method.json`` names its method) with the registry's
    live version re-scored on the same users.

    The gate verdict is the single output (what ``dsl.If`` tests; kfp.local resolves only a task's ``Output`` in
    conditions) and every number is logged as a KFP metric; the verdict's reason is on the report artifact and
    in its metrics.json. ``candidate`` is a copy of the gate method's (``eval.gate_method``) model dir: what the
    pipeline publishes (KFP cannot feed a collected list into a task inside ``dsl.If``)."""
    from components._common import flat_metrics
    from pi2i.config import parse_config
    from pi2i.contracts import copy_tree, exists, join
    from pi2i.evaluation.evaluate import evaluate as do_evaluate
    from pi2i.methods import read_manifest

    dirs = ([model.path] if model is not None else []) + [m.path for m in models or []]
    if not dirs:
        raise ValueError("evaluate: no trained model given (inputs `model` / `models` are both empty)")
    cfg = parse_config(config)
    by_method = {read_manifest(d)["method"]: d for d in dirs}
    gate_method = cfg.eval.gate_method
    if gate_method not in by_method:
        raise ValueError(f"eval.gate_method {gate_method!r} is not among the trained models {sorted(by_method)}")
    registry = registry_uri if registry_uri and exists(registry_uri) else None
    result = do_evaluate(train.path, test.path, join(i2i.path, "i2i_table.parquet"), dirs, report.path, cfg,
                         registry=registry)
    copy_tree(by_method[gate_method], candidate.path)
    candidate.metadata.update({"method": gate_method})
    gate = result.get("gate", {})
    for k, v in flat_metrics(gate).items():
        metrics.log_metric(f"gate.{k}", v)
    for k, v in flat_metrics(result.get("methods", {})).items():
        metrics.log_metric(k, v)
    report.metadata.update({"passed": bool(gate.get("passed")), "reason": str(gate.get("reason", "")),
                            "candidate": gate_method})
    print(f"gate: {gate.get('reason', '')}")
    return bool(gate.get("passed"))
