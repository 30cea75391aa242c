"""Split: temporal train/test split of the ingested data."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def split(data: Input[Dataset], config: dict, train: Output[Dataset], test: Output[Dataset]):
    """``pi2i.data.split.split`` on ``data`` with ``data.test_days`` from the config; train/test become artifacts."""
    from components._common import move_into, scratch_dir
    from pi2i.config import parse_config
    from pi2i.contracts import join
    from pi2i.data.split import split as do_split

    cfg = parse_config(config)
    tmp = scratch_dir(train.path)
    summary = do_split(data.path, tmp, test_days=cfg.data.test_days)
    move_into(join(tmp, "train"), train.path)
    move_into(join(tmp, "test"), test.path)
    for art in (train, test):
        art.metadata.update({k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str))})
