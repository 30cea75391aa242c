"""``pi2i versions ...``: the version registry (``pi2i serve`` lives in :mod:`pi2i.cli.serve`)."""

from __future__ import annotations

import json

import typer

HELP = ("Version registry (registry/<version>/ with i2i_table.parquet, model/, metrics.json, MANIFEST.json; "
        "CURRENT names the live one): publish, list, show, promote, rollback, verify, resolve, gc.")

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
        promote: bool = typer.Option(False, "--promote",
                                     help="make it live (the first version is, unless its gate failed)"),
        force: bool = typer.Option(False, "--force", help="promote even if metrics.json says gate.passed: false"),
        reason: str | None = typer.Option(None, "--reason", help="why (logged in HISTORY with --force)"),
    ) -> None:
        """Publish a new immutable version; prints its id. ``--promote`` refuses a failed gate unless ``--force``."""
        from pi2i.publish import registry as reg

        version = reg.publish(registry, i2i, model, metrics_uri=metrics, promote=promote, force=force,
                              reason=reason)
        if not promote and reg.resolve_serving_version(registry, check=False).version is None:
            typer.echo(f"warning: {version} is not live: its evaluation gate failed", err=True)
        typer.echo(version)

    @versions.command("list")
    def list_(registry: str = _REG,
              as_json: bool = typer.Option(False, "--json", help="print a JSON list")) -> None:
        """List versions, oldest first; the live one is marked with *."""
        from pi2i.publish import registry as reg

        vs = reg.list_versions(registry)
        try:
            live = reg.current(registry)
        except reg.RegistryError as e:  # still list what is there: the operator needs it to repair
            live = None
            typer.echo(f"warning: {e}", err=True)
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
    def promote(registry: str = _REG, version: str = typer.Argument(..., help="version id"),
                force: bool = typer.Option(False, "--force", help="promote even if its gate failed"),
                reason: str | None = typer.Option(None, "--reason", help="why (logged in HISTORY)")) -> None:
        """Verify a version and make it live (CURRENT replaced atomically); a failed gate needs --force."""
        from pi2i.publish import registry as reg

        reg.promote(registry, version, force=force, reason=reason)
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
        from pi2i.cli import UserError
        from pi2i.publish import registry as reg

        version = version or reg.current(registry)
        if version is None:
            raise UserError(f"registry {registry} has no live version")
        _echo(reg.verify(registry, version))

    @versions.command("resolve")
    def resolve(registry: str = _REG) -> None:
        """The version a starting server would load: CURRENT if it verifies, else the newest verified one in
        HISTORY (with the reason); exit 2 when none verifies."""
        from pi2i.cli import UserError
        from pi2i.publish import registry as reg

        choice = reg.resolve_serving_version(registry)
        _echo(choice.to_dict())
        if choice.version is None:
            raise UserError(choice.reason)

    @versions.command("gc")
    def gc(registry: str = _REG,
           older_than: float = typer.Option(3600.0, "--older-than", min=0.0,
                                            help="seconds: leave younger leftovers alone"),
           dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed")) -> None:
        """Remove what crashed publishes left (.staging-* dirs no live writer holds, incomplete versions on
        object stores, temp files) when older than --older-than; prints each path."""
        from pi2i.publish import registry as reg

        for path in reg.gc(registry, ttl_s=older_than, dry_run=dry_run):
            typer.echo(path)
