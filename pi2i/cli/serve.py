"""``pi2i serve``: the BentoML service (``serving/``) over a version registry."""

from __future__ import annotations

import os
import shutil
import sys

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        registry: str = typer.Option(..., "--registry", "-r", help="registry directory or URI"),
        port: int | None = typer.Option(None, "--port", "-p", help="TCP port (default serving.port, 3000)"),
        host: str | None = typer.Option(None, "--host", help="bind address (default 127.0.0.1)"),
        redis_url: str | None = typer.Option(None, "--redis-url",
                                             help="cache in Redis, e.g. redis://h:6379/0 (password: REDIS_PASSWORD)"),
        feature_repo: str | None = typer.Option(None, "--feature-repo",
                                                help="Feast repo: online histories from its online store"),
        config: str | None = typer.Option(None, "--config", help="YAML config (the serving section)"),
    ) -> None:
        """Serve the registry's live version (BentoML) on host:port until stopped.

        Tokens come from the environment (a k8s Secret): PI2I_ADMIN_TOKEN guards /admin/reload, PI2I_WRITE_TOKEN
        (default: the admin token) guards /events, PI2I_READ_TOKEN the reads when serving.read_auth is on."""
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import exists

        overrides = {k: v for k, v in {"port": port, "host": host, "redis_url": redis_url}.items() if v is not None}
        cfg = load_config(config, {"serving": overrides} if overrides else None).serving
        if "://" not in registry:
            registry = os.path.abspath(registry)
        if not exists(registry):
            raise UserError(f"registry not found: {registry}")
        if not os.environ.get("PI2I_ADMIN_TOKEN"):
            typer.echo("warning: PI2I_ADMIN_TOKEN is not set: /admin/reload answers 401 to everyone", err=True)
        if not (os.environ.get("PI2I_WRITE_TOKEN") or os.environ.get("PI2I_ADMIN_TOKEN")):
            typer.echo("warning: neither PI2I_WRITE_TOKEN nor PI2I_ADMIN_TOKEN is set: /events answers 401",
                       err=True)
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
        argv += ["serve", "serving.service:PI2IService", "--host", cfg.host, "--port", str(cfg.port),
                 "--timeout-keep-alive", str(cfg.timeout_keep_alive_s)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(argv[0], argv, env)  # signals (Ctrl-C, SIGTERM) go straight to the BentoML server
