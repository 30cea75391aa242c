"""Publish: a new (not yet live) version in the registry: i2i table, model dir, metrics, MANIFEST."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def publish(i2i: Input[Dataset], model: Input[Model], report: Input[Artifact], registry_uri: str) -> str:
    """``pi2i.publish.registry.publish`` (promotion is the deploy step's job); returns the version id."""
    import os

    from pi2i.layout import I2I_FILE, METRICS_FILE
    from pi2i.publish import registry

    metrics = os.path.join(report.path, METRICS_FILE)
    return registry.publish(registry_uri, os.path.join(i2i.path, I2I_FILE), model.path,
                            metrics_uri=metrics if os.path.exists(metrics) else None, promote=False)
