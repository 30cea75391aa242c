"""Retrieval methods: one :class:`~pi2i.methods.base.Retriever` per system, one line each in :data:`METHODS`.

A model directory records what wrote it in ``method.json`` (:func:`save_manifest`): the method, the model
format version (:data:`~pi2i.methods.base.FORMAT_VERSION`), the code version (``pi2i.__version__`` plus the git
commit when known) and the config. :func:`read_manifest` refuses, naming both sides, a directory of another
format version or of another method than the one asked for; :func:`load_method` loads any model directory as
the method it records.
"""

from __future__ import annotations

from pi2i.config import Config
from pi2i.methods.base import MethodError, Retriever, TrainInputs
from pi2i.methods.ease import EASE
from pi2i.methods.manifest import code_version, read_manifest, save_manifest
from pi2i.methods.mtmh import MTMH
from pi2i.methods.pdn import PDN
from pi2i.methods.pi2i import PI2I
from pi2i.methods.pool import Pool
from pi2i.methods.popularity import Popularity
from pi2i.methods.swing import Swing

METHODS: dict[str, type[Retriever]] = {
    "popularity": Popularity,
    "swing": Swing,
    "pool": Pool,
    "pi2i": PI2I,
    "ease": EASE,
    "pdn": PDN,
    "mtmh": MTMH,
}


def get_method(name: str) -> type[Retriever]:
    """The Retriever class registered under ``name``; a one-line MethodError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def load_method(model_dir: str, inputs: TrainInputs, cfg: Config, expect: str | None = None) -> Retriever:
    """Load a model directory as the method its manifest records (checked against ``expect`` if given)."""
    manifest = read_manifest(model_dir, expect)
    return get_method(manifest["method"]).load(model_dir, inputs, cfg)


__all__ = ["METHODS", "MethodError", "Retriever", "TrainInputs", "code_version", "get_method", "load_method",
           "read_manifest", "save_manifest"]
