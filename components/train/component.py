"""Train: a trained retrieval method (``pi2i`` scorer, ``pdn``, ``mtmh``) under Ray Train; in-process, or a KubeRay
RayJob (GPU workers)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def train(samples: Input[Dataset], config: dict, gpus: int, accelerator: str, compute: str, namespace: str,
          staging_uri: str, run_id: str, model: Output[Model], metrics: Output[Metrics], method: str = "pi2i"):
    """``pi2i train --method METHOD`` on ``samples`` into the self-contained model dir ``model`` (its
    ``method.json`` records the method).

    ``gpus``/``accelerator`` mirror the task's accelerator request (set by the pipeline) so the training loop
    asks Ray Train for GPU workers exactly when the pod has them."""
    from components._common import flat_metrics, remote_uri, run_ray_step
    from pi2i.config import parse_config
    from pi2i.contracts import join

    if gpus > 0:
        config = {**config, "train": {**config.get("train", {}), "use_gpu": True}}
    cfg = parse_config(config)
    # per method: the parallel train tasks of one run (pipeline.methods) get their own staging prefix and RayJob
    remote_out, job_id = join(staging_uri or "", run_id, method, "model"), f"{method}-{run_id}"

    def local():
        if method != "pi2i":
            from pi2i.methods import get_method
            from pi2i.methods.base import TrainInputs

            fitted = get_method(method).fit(TrainInputs(samples_dir=samples.path, extra={"progress": True}), cfg)
            fitted.save(model.path)
            return getattr(fitted, "metrics", {})
        from pi2i.prs.train import train as do_train

        return do_train(samples.path, model.path, cfg, progress=True)  # epoch lines reach the terminal

    result = run_ray_step(
        "train", compute, local,
        ["pi2i", "prs", "train", "--method", method, "--samples", remote_uri(samples.uri), "--out", remote_out,
         "--config", "{config}"],
        remote_out, model.path, namespace, job_id, config=config, gpus_per_worker=gpus)
    for k, v in flat_metrics(result if compute == "local" else {}).items():
        metrics.log_metric(k, v)
    model.metadata.update({"framework": "pytorch", "method": method, "use_gpu": cfg.train.use_gpu,
                           "accelerator": accelerator if gpus > 0 else "cpu"})
