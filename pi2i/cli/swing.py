"""``pi2i swing``: build the Swing i2i index (IBS); ``pi2i swing sweep``: the truncation study."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from pi2i.config import Config

HELP = ("Build the Swing I2I index from events: pi2i swing --events F --out F [--top-t T] [--alpha A] "
        "[--max-items-per-user N] [--max-users-per-item N] [--workers W]. 0 = no cap.")


def _swing_cfg(config: str | None, **flags: Any) -> Config:
    from pi2i.config import load_config

    overrides = {k: v for k, v in flags.items() if v is not None}
    return load_config(config, {"swing": overrides} if overrides else None)


def register(app: typer.Typer) -> None:
    swing_app = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)

    @swing_app.callback(invoke_without_command=True)
    def swing(
        ctx: typer.Context,
        events: str | None = typer.Option(None, "--events", help="events parquet of the contract"),
        out: str | None = typer.Option(None, "--out", help="output i2i parquet (stats: <out>.stats.json)"),
        top_t: int | None = typer.Option(None, "--top-t", help="targets kept per trigger (default 1250)"),
        alpha: float | None = typer.Option(None, "--alpha", help="smoothing alpha (default 1.0)"),
        max_items_per_user: int | None = typer.Option(None, "--max-items-per-user",
                                                         help="keep the N most recent items; 0 = no cap"),
        max_users_per_item: int | None = typer.Option(None, "--max-users-per-item",
                                                         help="seeded sample of N users per item; 0 = no cap"),
        behaviors: str | None = typer.Option(None, "--behaviors", help="comma list, e.g. click,buy"),
        seed: int | None = typer.Option(None, "--seed", help="seed of the user sample"),
        workers: int | None = typer.Option(None, "--workers", help="Ray tasks; 1 = in-process, no Ray"),
        config: str | None = typer.Option(None, "--config", help="YAML config; flags override it"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
    ) -> None:
        """Build the Swing I2I index (exact; caps optional)."""
        if ctx.invoked_subcommand is not None:
            return
        from pi2i.cli import UserError
        from pi2i.ibs.swing import run_swing

        if not events or not out:
            raise UserError("pi2i swing needs --events F and --out F (or a subcommand: sweep); see --help")
        if top_t is not None and top_t < 1:
            raise UserError(f"--top-t must be >= 1 (got {top_t})")
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be >= 1 (got {workers})")
        beh = [b.strip() for b in behaviors.split(",") if b.strip()] if behaviors else None
        cfg = _swing_cfg(config, top_t=top_t, alpha=alpha, max_items_per_user=max_items_per_user,
                         max_users_per_item=max_users_per_item, behaviors=beh, seed=seed, workers=workers)
        stats = run_swing(events, out, cfg.swing, workers=cfg.swing.workers, progress=progress)
        keys = ("triggers_with_row", "rows_total", "user_pairs_visited", "wall_s")
        typer.echo(json.dumps({k: stats[k] for k in keys}))

    @swing_app.command("sweep")
    def sweep_cmd(
        train: str = typer.Option(..., "--train", help="training data dir (events.parquet)"),
        test: str = typer.Option(..., "--test", help="test data dir (events.parquet)"),
        out: str = typer.Option(..., "--out", help="output dir: sweep.parquet/.csv/.png/.json"),
        i2i: str | None = typer.Option(None, "--i2i", help="i2i parquet; default: build Swing on --train "
                                                               "with T = the largest ladder value"),
        ladder: str = typer.Option(",".join(map(str, (10, 20, 50, 100, 200, 500, 1000, 1250, 2000))),
                                   "--ladder", help="comma list of T values"),
        num_triggers: int | None = typer.Option(None, "--num-triggers",
                                                   help="L: last distinct history items used as triggers"),
        workers: int = typer.Option(1, "--workers", help="Ray tasks when building the index"),
        exclude_history: bool = typer.Option(False, "--exclude-history/--include-history",
                                             help="drop test re-clicks of items already in the history"),
        config: str | None = typer.Option(None, "--config", help="YAML config; flags override it"),
    ) -> None:
        """Truncation study: HR of the I2I candidate pool and its size for a ladder of T (paper Fig. 4)."""
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.ibs.sweep import run_sweep

        try:
            t_ladder = [int(x) for x in ladder.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--ladder must be a comma list of integers (got {ladder!r})") from None
        if not t_ladder or min(t_ladder) < 1:
            raise UserError(f"--ladder values must be >= 1 (got {ladder!r})")
        cfg = load_config(config)
        summary = run_sweep(train, test, out, i2i_uri=i2i, cfg=cfg, t_ladder=t_ladder,
                            num_triggers=num_triggers, workers=workers, exclude_history=exclude_history)
        for row in summary["rows"]:
            typer.echo(f"T={row['T']:>6}  HR={row['hr']:.4f}  mean pool={row['mean_pool_size']:.1f}")

    app.add_typer(swing_app, name="swing")
