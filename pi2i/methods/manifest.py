"""``method.json``: what wrote a model directory (method, model format, code version, config).

Lives apart from :mod:`pi2i.methods` so that every method module can import it without importing the
registry (which imports every method module).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

from pi2i.config import Config
from pi2i.contracts import exists, join, read_json, write_json
from pi2i.layout import MODEL_CONFIG_FILE
from pi2i.methods.base import FORMAT_VERSION, METHOD_FILE, MethodError

#: A PI2I model directory written before method.json existed holds this file (its model config).
LEGACY_PI2I_FILE = MODEL_CONFIG_FILE


@functools.cache
def code_version() -> str:
    """``pi2i.__version__``, plus ``+g<sha>`` of the source checkout when git can tell (never fails)."""
    import pi2i

    version = pi2i.__version__
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(pi2i.__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


def save_manifest(out_dir: str, method: str, cfg: Config | dict | None) -> dict[str, Any]:
    """Write ``out_dir/method.json``: method, format_version, code_version, config. Returns it."""
    if not method or not isinstance(method, str):
        raise MethodError(f"method must be a registered method name, got {method!r}")
    config = cfg.model_dump() if isinstance(cfg, Config) else cfg
    manifest = {"method": method, "format_version": FORMAT_VERSION, "code_version": code_version(),
                "config": config}
    write_json(manifest, join(out_dir, METHOD_FILE))
    return manifest


def read_manifest(model_dir: str, expect: str | None = None) -> dict[str, Any]:
    """``method.json`` of a model directory, checked: same format version as this code, and the method
    ``expect`` when given. A directory without it but with a PI2I ``config.json`` is a PI2I model of the
    first format (``legacy: true``)."""
    uri = join(model_dir, METHOD_FILE)
    if exists(uri):
        m = read_json(uri)
        if not isinstance(m, dict) or "method" not in m or "format_version" not in m:
            raise MethodError(f"{uri} is not a method manifest (needs 'method' and 'format_version')")
    elif exists(join(model_dir, LEGACY_PI2I_FILE)):
        m = {"method": "pi2i", "format_version": FORMAT_VERSION, "code_version": "unknown (no method.json)",
             "config": None, "legacy": True}
    else:
        raise MethodError(f"{model_dir} is not a model directory: no {METHOD_FILE}")
    if m["format_version"] != FORMAT_VERSION:
        raise MethodError(
            f"{model_dir} holds a {m['method']} model of format {m['format_version']} written by pi2i "
            f"{m.get('code_version', '?')}; this code ({code_version()}) reads format {FORMAT_VERSION}: "
            "retrain it with this version")
    if expect is not None and m["method"] != expect:
        raise MethodError(f"{model_dir} holds a {m['method']} model, not {expect} "
                          f"(its {METHOD_FILE} says method={m['method']!r})")
    return m
