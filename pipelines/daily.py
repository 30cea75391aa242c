"""``pi2i_daily``: ingest -> split -> swing -> samples -> train -> evaluate -> (gate) publish -> deploy.

The same pipeline function runs under ``kfp.local`` (``pipelines/run_local.py``) and, compiled to
``pipelines/pi2i_daily.yaml``, on Kubeflow Pipelines (``pipelines/submit.py``). ``run_date`` is an input of the
first step so KFP's cache never serves yesterday's data; an ``ExitHandler`` records every run's end state in
the registry (a failed run included); training asks for accelerators through KFP's accelerator settings,
driven by the ``train_gpus`` / ``train_accelerator`` parameters (0 GPUs = CPU training).

The config's ``pipeline`` section shapes the DAG at compile time (:func:`build_pipeline`, :func:`pipeline_for`):
``pipeline.augment: true`` adds the LLM-I2I ``augment`` step between split and Swing (Swing then indexes real +
synthetic rows; samples and evaluation keep the real train split); ``pipeline.methods`` lists the trained
methods — with several, one ``train`` task per method in parallel (``dsl.ParallelFor`` over the names), all
evaluated together (``dsl.Collected``), and the gate method's model (``eval.gate_method``, evaluate's
``candidate`` output) published. ``pipeline_for(config)`` is the function ``kfp.local`` runs for a config;
``pi2i_daily`` (and the committed YAML) is the default: no augmentation, ``pi2i`` only.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from components.augment.component import augment
from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.ingest.component import ingest
from components.publish.component import publish
from components.record_run.component import record_run
from components.samples.component import samples
from components.split.component import split
from components.swing.component import swing
from components.train.component import train

PIPELINE_NAME = "pi2i-daily"
COMPILED = Path(__file__).with_name("pi2i_daily.yaml")


DEFAULT_METHODS = ("pi2i",)
TRAINED_METHODS = ("pi2i", "pdn", "mtmh")  # what the train component trains (`pi2i train --method`)


def build_pipeline(with_augment: bool = False, methods: Sequence[str] = DEFAULT_METHODS):
    """The daily pipeline function for one DAG shape (see the module doc)."""
    methods = tuple(dict.fromkeys(methods))  # a method listed twice is trained once
    if not methods:
        raise ValueError("pipeline.methods: at least one trained method")
    unknown = [m for m in methods if m not in TRAINED_METHODS]
    if unknown:
        raise ValueError(f"pipeline.methods: unknown trained method(s) {unknown}; known: {list(TRAINED_METHODS)}")
    multi = methods != DEFAULT_METHODS  # the default DAG keeps train's default method and evaluate's `model`

    @dsl.pipeline(name=PIPELINE_NAME, description="Daily PI2I retrain: Swing index + scorer, gated release.")
    def pi2i_daily(
        run_date: str,
        data_uri: str,
        registry_uri: str,
        config: dict = {},  # noqa: B006  (KFP parameter default, never mutated)
        feature_repo: str = "feature_repo",
        feature_store_yaml: str = "",
        compute: str = "local",
        namespace: str = "pi2i",
        staging_uri: str = "",
        train_gpus: int = 0,
        train_accelerator: str = "nvidia.com/gpu",
        deploy_target: str = "local",
        service_url: str = "",
        deployment: str = "pi2i-serving",
    ):
        """One day's retrain and gated rollout.

        Args:
            run_date: the day this run trains for (YYYY-MM-DD); part of every cache key.
            data_uri: data dir of the contract (events/items/users parquet), local path or object-store URI.
            registry_uri: version registry (local dir or URI); gains a live version when the gate passes.
            config: nested overrides of ``pi2i.config.Config``.
            feature_repo: Feast repository template inside the image ('' skips Feast).
            feature_store_yaml: alternative feature_store.yaml (e.g. feature_repo/feature_store.redis.yaml).
            compute: 'local' (Ray in-process in the component) or 'rayjob' (KubeRay RayJob per Ray step).
            staging_uri: object-store prefix RayJobs write to before results are copied into artifacts.
            train_gpus: accelerators requested by the train step (0 = CPU).
            train_accelerator: accelerator resource name for the train step.
            deploy_target: 'local' (registry + local service hot swap) or 'kubernetes' (Deployment rollout).
            service_url: local service to hot-swap and health-check ('' = registry only).
            deployment: serving Deployment name (kubernetes target).
        """
        finished = record_run(registry_uri=registry_uri, run_date=run_date)
        finished.set_caching_options(False).set_display_name("record-run")
        with dsl.ExitHandler(finished, name="daily"):
            ing = ingest(run_date=run_date, data_uri=data_uri, feature_repo=feature_repo,
                         feature_store_yaml=feature_store_yaml)
            ing.set_caching_options(False)  # the data dir under data_uri may be rewritten for the same date
            spl = split(data=ing.outputs["data"], config=config)
            index_input = spl.outputs["train"]
            if with_augment:  # LLM-I2I: Swing indexes real + kept synthetic rows
                aug = augment(train=spl.outputs["train"], config=config, gpus=train_gpus, compute=compute,
                              namespace=namespace, staging_uri=staging_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
                aug.set_memory_limit("16G").set_cpu_limit("4")
                aug.set_accelerator_type(train_accelerator).set_accelerator_limit(train_gpus)
                index_input = aug.outputs["augmented"]
            sw = swing(train=index_input, config=config, compute=compute, namespace=namespace,
                       staging_uri=staging_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            sw.set_memory_limit("16G").set_cpu_limit("4")
            smp = samples(train=spl.outputs["train"], i2i=sw.outputs["i2i"], config=config)

            def train_task(method: Any = None):
                tr = train(samples=smp.outputs["samples"], config=config, gpus=train_gpus,
                           accelerator=train_accelerator, compute=compute, namespace=namespace,
                           staging_uri=staging_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                           **({"method": method} if method is not None else {}))
                tr.set_memory_limit("16G").set_cpu_limit("4")
                # the channels are also inputs of the task: KFP only forwards a parameter into the exit-handler
                # DAG when some task consumes it as an input (a resource placeholder alone is not enough)
                tr.set_accelerator_type(train_accelerator).set_accelerator_limit(train_gpus)
                return tr

            if len(methods) == 1:
                tr = train_task(methods[0] if multi else None)
                model_args: dict[str, Any] = {"model": tr.outputs["model"]}
            else:  # one train task per method, in parallel; evaluated together from the collected list
                with dsl.ParallelFor(items=list(methods), name="methods") as method:
                    tr = train_task(method)  # the component keys its RayJob and staging prefix by method
                model_args = {"models": dsl.Collected(tr.outputs["model"])}
            ev = evaluate(train=spl.outputs["train"], test=spl.outputs["test"], i2i=sw.outputs["i2i"],
                          config=config, registry_uri=registry_uri, **model_args)
            ev.set_caching_options(False)  # compares against whatever is live now
            released = model_args["model"] if len(methods) == 1 else ev.outputs["candidate"]
            with dsl.If(ev.outputs["Output"] == True, name="gate-passed"):  # the gate verdict (a KFP condition)
                pub = publish(i2i=sw.outputs["i2i"], model=released, report=ev.outputs["report"],
                              registry_uri=registry_uri)
                pub.set_caching_options(False)
                dep = deploy(version=pub.output, registry_uri=registry_uri, target=deploy_target,
                             service_url=service_url, namespace=namespace, deployment=deployment)
                dep.set_caching_options(False)

    return pi2i_daily


pi2i_daily = build_pipeline()


def pipeline_for(config: Any = None):
    """The pipeline function for a config (dict or ``Config``): its ``pipeline`` section picks the DAG shape."""
    from pi2i.config import Config, parse_config

    cfg = config if isinstance(config, Config) else parse_config(config or {})
    p = cfg.pipeline
    if cfg.eval.gate_method not in p.methods:
        raise ValueError(f"eval.gate_method {cfg.eval.gate_method!r} must be one of pipeline.methods {p.methods}: "
                         "the gate's candidate is the trained model the pipeline publishes")
    if not p.augment and tuple(p.methods) == DEFAULT_METHODS:
        return pi2i_daily
    return build_pipeline(p.augment, p.methods)


def compile_pipeline(out: str | Path = COMPILED, config: Any = None) -> Path:
    """Compile the pipeline for ``config`` (default: ``pi2i_daily``) to KFP IR YAML at ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_for(config), str(out))
    return out


if __name__ == "__main__":
    print(compile_pipeline())
