"""``pi2i evaluate``: HR@K of PI2I and its baselines on a temporal split, the rollout gate, the report."""

from __future__ import annotations

import typer


def _parse_ablations(items: list[str] | None) -> dict[str, str]:
    from pi2i.cli import UserError

    out: dict[str, str] = {}
    for it in items or []:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--ablation expects NAME=MODEL_DIR, got {it!r}")
        out[name] = path
    return out


def _live_from_registry(registry: str) -> tuple[dict | None, str | None]:
    from pi2i.cli import UserError
    from pi2i.contracts import exists, join, read_json

    try:
        from pi2i.publish import registry as reg
    except ImportError as e:  # the versions area not built yet
        raise UserError(f"--registry needs pi2i.publish.registry: {e}") from None
    version = reg.current(registry)
    if version is None:
        return None, None
    uri = join(reg.version_path(registry, version), "metrics.json")
    return (read_json(uri) if exists(uri) else None), version


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        train: str = typer.Option(..., "--train", help="train split dir (S/train from `pi2i data split`)"),
        test: str = typer.Option(..., "--test", help="test split dir (S/test)"),
        i2i: str = typer.Option(..., "--i2i", help="i2i table parquet (the Swing index, full T)"),
        model: str | None = typer.Option(None, "--model", help="trained scorer model dir (PI2I)"),
        out: str = typer.Option(..., "--out", help="output dir: metrics.json, report.html, report.md"),
        live_metrics: str | None = typer.Option(None, "--live-metrics",
                                                   help="metrics.json of the live version (gate baseline)"),
        registry: str | None = typer.Option(None, "--registry",
                                               help="version registry: read the CURRENT version's metrics.json"),
        sweep: str | None = typer.Option(None, "--sweep", help="Swing truncation sweep (.json/.parquet)"),
        samples: str | None = typer.Option(None, "--samples",
                                              help="samples dir or its stats.json (for the drop rate)"),
        ablation: list[str] | None = typer.Option(None, "--ablation",  # noqa: B008
                                                     help="NAME=MODEL_DIR, an ablated scorer (repeatable)"),
        max_users: int | None = typer.Option(None, "--max-users", help="seeded user sample; 0 = all"),
        config: str | None = typer.Option(None, "--config", help="YAML config (eval section and others)"),
        fail_on_gate: bool = typer.Option(False, "--fail-on-gate", help="exit 1 when the gate fails"),
    ) -> None:
        """Evaluate popularity, classic Swing, Swing relaxed-T, the pool ceiling and PI2I on the same test
        users; decide the rollout gate; write metrics.json + report.html + report.md.

        Exits 0 whatever the gate says (the verdict is data in metrics.json) unless --fail-on-gate.
        """
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import exists, join, read_json
        from pi2i.evaluation.evaluate import evaluate

        cfg = load_config(config, {"eval": {"max_users": max_users}} if max_users is not None else None)
        if live_metrics and registry:
            raise UserError("give --live-metrics or --registry, not both")
        live, version = None, None
        if live_metrics:
            live = read_json(live_metrics)
        elif registry:
            live, version = _live_from_registry(registry)
        stats = None
        if samples:
            uri = samples if samples.endswith(".json") else join(samples, "stats.json")
            if not exists(uri):
                raise UserError(f"no samples stats at {uri}")
            stats = read_json(uri)
        m = evaluate(train, test, i2i, model, out, cfg, live_metrics=live, sweep=sweep,
                     ablations=_parse_ablations(ablation), samples_stats=stats, live_version=version)
        g = m["gate"]
        ks = m["ks"]
        typer.echo(f"{m['data'].get('test_users', 0)} test users; K={ks}")
        for name, mm in m["methods"].items():
            typer.echo(f"  {name:<16}" + " ".join(f"@{k}={100 * mm['hr'][str(k)]:.2f}%" for k in ks))
        typer.echo(f"gate: {g['reason']}")
        typer.echo(f"wrote {join(out, 'metrics.json')}, {join(out, 'report.html')}")
        if fail_on_gate and not g["passed"]:
            raise typer.Exit(1)
