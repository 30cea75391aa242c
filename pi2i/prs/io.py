"""Small URI-aware byte I/O for the PRS artifacts that are not parquet/json (``.npy`` arrays, safetensors
weights), on top of :func:`pi2i.contracts.resolve`: a local path and an ``s3://`` URI read the same way.
Local ``.npy`` files are memory-mapped; remote ones are read into memory."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.fs as pafs

from pi2i import contracts
from pi2i.contracts import resolve


def uri(path_or_uri: str) -> str:
    """A URI workers can open: URIs unchanged, local paths made absolute."""
    return path_or_uri if "://" in path_or_uri else os.path.abspath(path_or_uri)


def is_local(path_or_uri: str) -> bool:
    return isinstance(resolve(path_or_uri)[0], pafs.LocalFileSystem)


def read_bytes(path_or_uri: str) -> bytes:
    return contracts.read_bytes(path_or_uri)


def write_bytes(data: bytes, path_or_uri: str) -> None:
    contracts.write_bytes(data, path_or_uri)  # whole or not at all, on any filesystem


def copy_file(src: str, dst: str) -> None:
    contracts.copy_file(src, dst)


def load_npy(path_or_uri: str, mmap: bool = True) -> np.ndarray:
    fs, path = resolve(path_or_uri)
    if mmap and isinstance(fs, pafs.LocalFileSystem):
        return np.load(path, mmap_mode="r")
    return np.load(io.BytesIO(read_bytes(path_or_uri)))


def save_npy(arr: np.ndarray, path_or_uri: str) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    write_bytes(buf.getvalue(), path_or_uri)
