"""``pi2i versions ...``: the version registry; ``pi2i serve``: the BentoML service over a registry."""

from __future__ import annotations

import json
import os
import shutil
import sys

import typer

HELP = ("Version registry (registry/<version>/ with i2i_table.parquet, model/, metrics.json, MANIFEST.json; "
        "CURRENT names the live one): publish, list, show, promote, rollback, verify.")

_REG = typer.Option(..., "--registry", "-r", help="registry directory or URI (file://, s3://, gs://)")


def _echo(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def register(app: typer.Typer) -> None:
    versions = typer.Typer(help=HELP, no_args_is_help=True)
    app.add_typer(versions, name="versions")

    @versions.command("publish")
    def publish(
        registry: str = _REG,
        i2i: str = typer.Option(..., "--i2i", help="i2i table parquet (trigger, target, score, rank)"),
        model: str = typer.Option(..., "--model", help="model dir written by `pi2i prs train`"),
        metrics: str | None = typer.Option(None, "--metrics", help="metrics.json of the evaluation/gate"),
        promote: bool = typer.Option(False, "--promote", help="make it live (the first version always is)"),
    ) -> None:
        """Publish a new immutable version; prints its id."""
        from pi2i.publish import registry as reg

        typer.echo(reg.publish(registry, i2i, model, metrics_uri=metrics, promote=promote))

    @versions.command("list")
    def list_(registry: str = _REG,
              as_json: bool = typer.Option(False, "--json", help="print a JSON list")) -> None:
        """List versions, oldest first; the live one is marked with *."""
        from pi2i.publish import registry as reg

        vs, live = reg.list_versions(registry), reg.current(registry)
        if as_json:
            _echo([{"version": v, "live": v == live} for v in vs])
            return
        for v in vs:
            typer.echo(f"{'*' if v == live else ' '} {v}")

    @versions.command("show")
    def show(registry: str = _REG,
             version: str | None = typer.Argument(None, help="version id (default: the live one)")) -> None:
        """Manifest, metrics and gate verdict of a version."""
        from pi2i.publish import registry as reg

        _echo(reg.show(registry, version))

    @versions.command("promote")
    def promote(registry: str = _REG, version: str = typer.Argument(..., help="version id")) -> None:
        """Verify a version and make it live (CURRENT replaced atomically)."""
        from pi2i.publish import registry as reg

        reg.promote(registry, version)
        typer.echo(version)

    @versions.command("rollback")
    def rollback(registry: str = _REG) -> None:
        """Make the previously promoted version live again; prints it."""
        from pi2i.publish import registry as reg

        typer.echo(reg.rollback(registry))

    @versions.command("verify")
    def verify(registry: str = _REG,
               version: str | None = typer.Argument(None, help="version id (default: the live one)")) -> None:
        """Re-hash every file against MANIFEST.json; exit 2 naming each mismatch."""
        from pi2i.publish import registry as reg
        from pi2i.cli import UserError

        version = version or reg.current(registry)
        if version is None:
            raise UserError(f"registry {registry} has no live version")
        _echo(reg.verify(registry, version))

    @app.command("serve")
    def serve(
        registry: str = typer.Option(..., "--registry", "-r", help="registry directory or URI"),
        port: int | None = typer.Option(None, "--port", "-p", help="TCP port (default serving.port, 3000)"),
        host: str | None = typer.Option(None, "--host", help="bind address (default 127.0.0.1)"),
        redis_url: str | None = typer.Option(None, "--redis-url", help="cache in Redis, e.g. redis://h:6379/0"),
        feature_repo: str | None = typer.Option(None, "--feature-repo",
                                                   help="Feast repo: online histories from its online store"),
        config: str | None = typer.Option(None, "--config", help="YAML config (the serving section)"),
    ) -> None:
        """Serve the registry's live version (BentoML) on host:port until stopped."""
        from pi2i.publish import registry as reg
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import exists

        overrides = {k: v for k, v in {"port": port, "host": host, "redis_url": redis_url}.items() if v is not None}
        cfg = load_config(config, {"serving": overrides} if overrides else None).serving
        if "://" not in registry:
            registry = os.path.abspath(registry)
        if not exists(registry):
            raise UserError(f"registry not found: {registry}")
        if reg.current(registry) is None:
            typer.echo(f"warning: registry {registry} has no live version yet; /readyz stays 503 until one is "
                       "promoted", err=True)
        if feature_repo and not os.path.isdir(feature_repo):
            raise UserError(f"feature repo not found: {feature_repo}")
        env = dict(os.environ, PI2I_REGISTRY=registry)
        if config:
            env["PI2I_CONFIG"] = os.path.abspath(config) if "://" not in config else config
        if cfg.redis_url:
            env["PI2I_REDIS_URL"] = cfg.redis_url
        if feature_repo:
            env["PI2I_FEATURE_REPO"] = os.path.abspath(feature_repo)
        bentoml = shutil.which("bentoml", path=os.path.dirname(sys.executable)) or shutil.which("bentoml")
        argv = [sys.executable, "-m", "bentoml"] if bentoml is None else [bentoml]
        argv += ["serve", "serving.service:PI2IService", "--host", cfg.host, "--port", str(cfg.port)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(argv[0], argv, env)  # signals (Ctrl-C, SIGTERM) go straight to the BentoML server
