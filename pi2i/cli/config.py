"""``pi2i config``: print the effective configuration (defaults merged with a YAML file), validated."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("config")
    def config_cmd(
        config: str | None = typer.Option(None, "--config",
                                          help="YAML file to validate and merge over the defaults"),
    ) -> None:
        """Print the effective configuration (defaults merged with --config), validated."""
        import yaml

        from pi2i.config import load_config

        typer.echo(yaml.safe_dump(load_config(config).model_dump(), sort_keys=False), nl=False)
