"""Augment: LLM-I2I generator + discriminator over the train split; real + kept synthetic rows for Swing."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def augment(train: Input[Dataset], config: dict, gpus: int, compute: str, namespace: str, staging_uri: str,
            run_id: str, augmented: Output[Dataset]):
    """``pi2i.augment.augment`` on ``train/events.parquet`` into ``augmented`` (a train dir: events.parquet with
    ``behavior='synthetic'`` rows appended, provenance.parquet, summary.json, the models, the train side files).

    ``gpus`` mirrors the task's accelerator request: the generator/discriminator train on GPU workers then."""
    import os
    import shutil

    from components._common import remote_uri, run_ray_step
    from pi2i.config import parse_config
    from pi2i.contracts import join, read_json

    if gpus > 0:
        config = {**config, "train": {**config.get("train", {}), "use_gpu": True}}
    cfg = parse_config(config)
    remote_out = join(staging_uri or "", run_id, "augment")

    def local():
        from pi2i.augment import augment as do_augment

        return do_augment(os.path.join(train.path, "events.parquet"), augmented.path, cfg)

    run_ray_step(
        "augment", compute, local,
        ["pi2i", "augment", "--events", remote_uri(train.uri) + "/events.parquet", "--out", remote_out,
         "--config", "{config}", "--no-progress"],
        remote_out, augmented.path, namespace, run_id, config=config, gpus_per_worker=gpus)
    for name in ("items.parquet", "users.parquet"):  # the rest of the train dir, so Swing reads it like `train`
        if os.path.exists(os.path.join(train.path, name)):
            shutil.copyfile(os.path.join(train.path, name), os.path.join(augmented.path, name))
    summary = read_json(os.path.join(augmented.path, "summary.json"))
    augmented.metadata.update({k: summary[k] for k in ("users", "proposed", "kept", "share_long_tail", "tau",
                                                       "seconds") if isinstance(summary.get(k), (int, float))})
