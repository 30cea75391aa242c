"""Samples: trigger-target training samples (positives, hard and easy negatives) for the PRS scorer."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def samples(train: Input[Dataset], i2i: Input[Dataset], config: dict, samples: Output[Dataset]):
    """``pi2i.prs.sampling.build_samples`` from the training clicks and the i2i table."""
    from pi2i.config import parse_config
    from pi2i.contracts import EVENTS_FILE, ITEMS_FILE, exists, join
    from pi2i.layout import I2I_FILE
    from pi2i.prs.sampling import build_samples

    cfg = parse_config(config)
    items = join(train.path, ITEMS_FILE)
    stats = build_samples(join(train.path, EVENTS_FILE), join(i2i.path, I2I_FILE),
                          samples.path, cfg, items_uri=items if exists(items) else None)
    samples.metadata.update({k: v for k, v in (stats or {}).items() if isinstance(v, (int, float, str))})
