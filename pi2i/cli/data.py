"""``pi2i data``: load real logs onto the data contract, generate synthetic data, split in time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import typer

HELP = ("Data: `load` real logs (taobao | movielens | csv | parquet) onto the contract, `generate` synthetic "
        "e-commerce data (or a --preset), `split` a data dir in time into train/ and test/.")


@contextmanager
def _bar(label: str, unit: str) -> Iterator:
    """A rich progress bar on stderr; yields ``update(done, total)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), TaskProgressColumn(),
                  MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as prog:
        task = prog.add_task(label, total=None)

        def update(done: int, total: int | None) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def _parse_map(items: list[str] | None) -> dict[str, str] | None:
    from pi2i.cli import UserError

    if not items:
        return None
    out: dict[str, str] = {}
    for raw in items:
        for part in raw.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise UserError(f"--map expects contract=source pairs like user_id=uid (got {part!r})")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help=HELP, no_args_is_help=True)

    @data_app.command("load")
    def load_cmd(
        format: str = typer.Option(..., "--format", "-f", help="taobao | movielens | csv | parquet"),
        input: str = typer.Option(..., "--input", "-i", help="input file (local path or URI)"),
        out: str = typer.Option(..., "--out", "-o", help="output data dir"),
        map: list[str] | None = typer.Option(  # noqa: B008
            None, "--map", help="column map contract=source, repeatable or comma separated, e.g. "
                                "user_id=uid,item_id=iid,ts=time,behavior=event,category_id=cat "
                                "(csv/parquet; source may be a 0-based column index for headerless csv)"),
        delimiter: str | None = typer.Option(None, "--delimiter", help="csv field delimiter (default ',')"),
        ts_unit: str | None = typer.Option(None, "--ts-unit", help="auto | s | ms | us | iso"),
        config: str | None = typer.Option(None, "--config", help="YAML config (data.* keys); flags override"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
    ) -> None:
        """Load a real log onto the data contract; bad rows go to quarantine.parquet with a reason."""
        from pi2i.config import load_config
        from pi2i.data.loaders import load

        overrides = {k: v for k, v in {"delimiter": delimiter, "ts_unit": ts_unit}.items() if v is not None}
        cfg = load_config(config, {"data": overrides} if overrides else None)
        if progress:
            with _bar(f"load {format}", "bytes") as upd:
                summary = load(format, input, out, column_map=_parse_map(map), cfg=cfg, progress=upd)
        else:
            summary = load(format, input, out, column_map=_parse_map(map), cfg=cfg)
        keys = ("rows_in", "rows_kept", "rows_quarantined", "quarantine_reasons", "users", "items")
        typer.echo(json.dumps({k: summary.get(k) for k in keys}))

    @data_app.command("generate")
    def generate_cmd(
        out: str = typer.Option(..., "--out", "-o", help="output data dir"),
        preset: str | None = typer.Option(None, "--preset", help="tiny | demo | swing-bench | bench-10m"),
        users: int | None = typer.Option(None, "--users", help="number of users"),
        items: int | None = typer.Option(None, "--items", help="number of items"),
        events: int | None = typer.Option(None, "--events", help="number of events (exact)"),
        seed: int = typer.Option(0, "--seed", help="random seed; same seed, identical files"),
        zipf: float | None = typer.Option(None, "--zipf", help="Zipf exponent of item popularity"),
        days: float | None = typer.Option(None, "--days", help="length of the time window in days"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
    ) -> None:
        """Generate synthetic e-commerce events (see pi2i/data/synthetic.py for the generative story)."""
        from pi2i.cli import UserError
        from pi2i.data.synthetic import PRESETS, generate, generate_preset

        opts = {k: v for k, v in {"zipf": zipf, "days": days}.items() if v is not None}
        sizes = {"users": users, "items": items, "events": events}
        if preset is None and any(v is None for v in sizes.values()):
            raise UserError("pi2i data generate needs --users N --items M --events E, or --preset NAME "
                            f"({', '.join(sorted(PRESETS))})")
        with _bar("generate", "events") if progress else _null() as upd:
            if preset is not None:
                opts.update({k: v for k, v in sizes.items() if v is not None})
                summary = generate_preset(preset, out, seed=seed, progress=upd, **opts)
            else:
                assert users is not None and items is not None and events is not None  # checked above
                summary = generate(out, users, items, events, seed, progress=upd, **opts)
        keys = ("preset", "users", "items", "events", "distinct_user_items", "ts_min", "ts_max", "seconds")
        typer.echo(json.dumps({k: summary.get(k) for k in keys}))

    @data_app.command("split")
    def split_cmd(
        data: str = typer.Option(..., "--data", "-d", help="input data dir (events.parquet, items.parquet)"),
        out: str = typer.Option(..., "--out", "-o", help="output dir: OUT/train and OUT/test"),
        test_days: float | None = typer.Option(None, "--test-days", help="the last N days are the test "
                                                                             "period (default data.test_days)"),
        cut: str | None = typer.Option(None, "--cut", help="cut time, ISO 8601 (UTC if no offset)"),
        fraction: float | None = typer.Option(None, "--fraction", help="the last fraction of events by "
                                                                           "time is the test period"),
        per_user_fraction: float | None = typer.Option(
            None, "--per-user-fraction", help="per-user split: each user's last fraction of events (at least "
                                              "one; users with >= --min-events events) is the test part"),
        min_events: int = typer.Option(3, "--min-events", help="per-user split: users with fewer events stay "
                                                               "in train only"),
        allow_small_test: bool = typer.Option(False, "--allow-small-test", help="keep a test side smaller "
                                                                                "than 0.1% of the events"),
        config: str | None = typer.Option(None, "--config", help="YAML config (data.test_days)"),
    ) -> None:
        """Split: temporal (train = events before the cut; test = per user, distinct items clicked after it) or
        per user (--per-user-fraction: each user's last events are the test part)."""
        from pi2i.config import load_config
        from pi2i.data.split import split

        cfg = load_config(config)
        if test_days is None and cut is None and fraction is None and per_user_fraction is None:
            test_days = cfg.data.test_days
        summary = split(data, out, test_days=test_days, cut=cut, fraction=fraction,
                        per_user_fraction=per_user_fraction, min_events=min_events,
                        allow_small_test=allow_small_test)
        typer.echo(json.dumps(summary))

    app.add_typer(data_app, name="data")


@contextmanager
def _null() -> Iterator:
    yield None
