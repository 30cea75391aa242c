"""The ``pi2i`` command line: a thin typer shell over the core package.

Each area registers its commands from its own module: ``pi2i/cli/<area>.py`` exposes ``register(app)``,
which builds the area's sub-app (``typer.Typer(help=HELP)``, commands added with ``@x_app.command("name")``)
and adds it with ``app.add_typer``, or adds top-level commands with ``@app.command("name")``; ``_AREAS`` lists
the areas. Failures that are the user's to fix (bad input, bad config) exit non-zero with one line on stderr,
no traceback; ``PI2I_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(
    name="pi2i",
    help="Personalized item-to-item retrieval: Swing index + target-attention scorer, trained daily, "
         "served live.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_AREAS = ("config", "data", "features", "swing", "prs", "evaluate", "versions", "serve", "pipeline", "augment")


class UserError(Exception):
    """An error whose message is the whole story (exit 2, one line)."""


def _register_all() -> None:
    for area in _AREAS:
        try:
            mod = importlib.import_module(f"pi2i.cli.{area}")
        except ModuleNotFoundError as e:  # an area not built yet must not break the others
            if e.name == f"pi2i.cli.{area}":
                continue
            raise
        mod.register(app)


@app.callback()
def _root() -> None:
    """pi2i: build the Swing index, train the personalized scorer, evaluate, publish and serve."""


_register_all()


def main() -> None:
    """Console-script entry point: run the app, turning expected errors into one-line messages."""
    from pi2i.config import ConfigError
    from pi2i.contracts import ContractError

    try:
        app(standalone_mode=True)
    # OSError: a missing or unreadable file, a full disk, an unreachable object store
    except (UserError, ContractError, ConfigError, OSError, ValueError) as e:
        if os.environ.get("PI2I_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
