"""Swing: the IBS index (i2i table) from the training clicks; Ray in-process, or a KubeRay RayJob."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def swing(train: Input[Dataset], config: dict, compute: str, namespace: str, staging_uri: str, run_id: str,
          i2i: Output[Dataset]):
    """``pi2i.ibs.swing.run_swing`` over ``train/events.parquet`` into ``i2i/i2i_table.parquet`` (+ stats json)."""
    from components._common import remote_uri, run_ray_step
    from pi2i.config import parse_config
    from pi2i.contracts import EVENTS_FILE, exists, join, makedirs, read_json
    from pi2i.layout import I2I_FILE, STATS_SUFFIX

    cfg = parse_config(config)
    makedirs(i2i.path)
    out = join(i2i.path, I2I_FILE)
    remote_out = join(staging_uri or "", run_id, "swing")

    def local():
        from pi2i.ibs.swing import run_swing

        return run_swing(join(train.path, EVENTS_FILE), out, cfg.swing, cfg.swing.workers)

    run_ray_step(
        "swing", compute, local,
        ["pi2i", "swing", "--events", join(remote_uri(train.uri), EVENTS_FILE),
         "--out", join(remote_out, I2I_FILE), "--config", "{config}", "--no-progress"],
        remote_out, i2i.path, namespace, run_id, config=config)
    stats_path = out + STATS_SUFFIX
    if exists(stats_path):
        stats = read_json(stats_path)
        i2i.metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float, str))})
