"""LLM-I2I data augmentation for the long tail (llm-i2i.txt): a generator proposes user-item interactions,
a discriminator keeps the confident ones, Swing runs on real + kept synthetic rows.

``augment(events_uri, out_dir, cfg) -> summary`` is the step (:mod:`pi2i.augment.pipeline`); the models live in
:mod:`pi2i.augment.generator` and :mod:`pi2i.augment.discriminator`, the token layout in
:mod:`pi2i.augment.sequences`, the with/without comparison in :mod:`pi2i.augment.compare`.
"""

from __future__ import annotations

from typing import Any


def augment(events_uri: str, out_dir: str, cfg: Any, progress: bool = False) -> dict:
    """See :func:`pi2i.augment.pipeline.augment` (imported lazily: torch and transformers load on use)."""
    from pi2i.augment.pipeline import augment as run

    return run(events_uri, out_dir, cfg, progress)


__all__ = ["augment"]
