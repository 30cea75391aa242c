"""``pi2i evaluate``: every requested retrieval method on the same test users, the rollout gate, the report."""

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


def _parse_methods(spec: str | None) -> list[str] | None:
    from pi2i.cli import UserError
    from pi2i.methods import METHODS

    if spec is None:
        return None
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown:
        raise UserError(f"--methods: unknown method(s) {unknown or spec!r}; registered: {', '.join(METHODS)}")
    return names


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        train: str = typer.Option(..., "--train", help="train split dir (S/train from `pi2i data split`)"),
        test: str = typer.Option(..., "--test", help="test split dir (S/test)"),
        i2i: str = typer.Option(..., "--i2i", help="i2i table parquet (the Swing index, full T)"),
        model: list[str] | None = typer.Option(None, "--model",  # noqa: B008
                                               help="model dir of a trained method (its method.json names "
                                                    "the method); repeatable"),
        methods: str | None = typer.Option(None, "--methods",
                                           help="comma-separated methods to evaluate (default: popularity,"
                                                "swing,pool + the methods of the --model dirs)"),
        out: str = typer.Option(..., "--out", help="output dir: metrics.json, report.html, report.md"),
        registry: str | None = typer.Option(None, "--registry",
                                            help="version registry: its live version is re-scored on the same "
                                                 "test users for the gate"),
        sweep: str | None = typer.Option(None, "--sweep", help="Swing truncation sweep (dir or .json/.parquet)"),
        samples: str | None = typer.Option(None, "--samples",
                                           help="samples dir or its stats.json (for the drop rate)"),
        ablation: list[str] | None = typer.Option(None, "--ablation",  # noqa: B008
                                                  help="NAME=MODEL_DIR, another model evaluated as NAME"),
        max_users: int | None = typer.Option(None, "--max-users", help="seeded user sample; 0 = all"),
        config: str | None = typer.Option(None, "--config", help="YAML config (eval section and others)"),
        fail_on_gate: bool = typer.Option(False, "--fail-on-gate", help="exit 1 when the gate fails"),
    ) -> None:
        """Evaluate the methods on the same test users (HR/recall/NDCG/tail HR/relevance/coverage @K), re-score
        the live version, decide the rollout gate; write metrics.json + report.html + report.md.

        Exits 0 whatever the gate says (the verdict is data in metrics.json) unless --fail-on-gate.
        """
        import logging

        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import exists, join, read_json
        from pi2i.evaluation.evaluate import evaluate

        progress = logging.getLogger("pi2i.evaluation")
        if not progress.handlers:  # long runs say where they are (stderr), like train does
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[evaluate] %(message)s"))
            progress.addHandler(handler)
            progress.setLevel(logging.INFO)

        cfg = load_config(config, {"eval": {"max_users": max_users}} if max_users is not None else None)
        stats = None
        if samples:
            from pi2i.layout import SAMPLES_STATS_FILE

            uri = samples if samples.endswith(".json") else join(samples, SAMPLES_STATS_FILE)
            if not exists(uri):
                raise UserError(f"no samples stats at {uri}")
            stats = read_json(uri)
        m = evaluate(train, test, i2i, model or [], out, cfg, methods=_parse_methods(methods), registry=registry,
                     sweep=sweep, ablations=_parse_ablations(ablation), samples_stats=stats)
        g = m["gate"]
        ks = m["ks"]
        typer.echo(f"{m['data'].get('test_users', 0)} test users; K={ks}")
        for name, mm in m["methods"].items():
            typer.echo(f"  {name:<16}" + " ".join(f"@{k}={100 * mm['hr'][str(k)]:.2f}%" for k in ks))
        typer.echo(f"gate: {g['reason']}")
        typer.echo(f"wrote {join(out, 'metrics.json')}, {join(out, 'report.html')}")
        if fail_on_gate and not g["passed"]:
            raise typer.Exit(1)
