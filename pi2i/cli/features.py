"""``pi2i features``: build the Feast offline tables, apply the repo, materialize the online store; inspect
it."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

HELP = "Feast feature store: ingest a data dir, show a user's or item's features."

RepoOpt = Annotated[Path, typer.Option("--repo", help="Feast repository (template for --work-dir, or the "
                                                      "ingested working repo for `show`)")]


def register(app: typer.Typer) -> None:
    features_app = typer.Typer(help=HELP, no_args_is_help=True)

    @features_app.command("ingest")
    def ingest_cmd(
        data: Annotated[str, typer.Option(
            "--data", help="data dir: events.parquet, items.parquet[, users.parquet]")],
        repo: RepoOpt = Path("feature_repo"),
        work_dir: Annotated[Path | None, typer.Option(
            "--work-dir", help="copy the repo here and keep all Feast state under it "
                               "(default: the repo in place)")] = None,
        history_len: Annotated[int | None, typer.Option(
            "--history-len", min=1,
            help="L, items in user_recent_items (default: serving.history_len)")] = None,
        behaviors: Annotated[str | None, typer.Option(
            "--behaviors", help="comma list of behaviours in the recent-items window "
                                "(default: sampling.behaviors, all four unless configured)")] = None,
        dedup: Annotated[bool | None, typer.Option(
            "--dedup-consecutive/--no-dedup-consecutive",
            help="collapse back-to-back repeats of one item in the window "
                 "(default: sampling.dedup_consecutive)")] = None,
        store_yaml: Annotated[Path | None, typer.Option(
            "--store-yaml", help="use this feature_store.yaml in the working repo "
                                 "(e.g. feature_store.redis.yaml; needs --work-dir)")] = None,
        config: Annotated[Path | None, typer.Option("--config", help="pi2i YAML config")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    ) -> None:
        """Write the offline parquet of every feature view, `feast apply`, materialize the online store."""
        from rich.console import Console
        from rich.table import Table

        from pi2i.cli import UserError
        from pi2i.config import load_config

        cfg = load_config(config)
        if store_yaml is not None and work_dir is None:
            raise UserError("--store-yaml needs --work-dir "
                            "(the template's feature_store.yaml is never overwritten)")
        console = Console(stderr=True)
        beh = ([b.strip() for b in behaviors.split(",") if b.strip()] if behaviors
               else list(cfg.sampling.behaviors))
        from pi2i.data.features import ingest

        with console.status("ingesting features") as status, contextlib.redirect_stdout(sys.stderr):
            def progress(msg: str) -> None:  # Feast's materialize log goes to stderr too: stdout = summary
                status.update(msg)
                console.log(msg)

            summary = ingest(data, repo_path=repo, work_dir=work_dir,
                             history_len=history_len or cfg.serving.history_len, behaviors=beh,
                             dedup_consecutive=cfg.sampling.dedup_consecutive if dedup is None else dedup,
                             store_yaml=store_yaml, progress=progress)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        table = Table(title=f"Feast features in {summary['repo']}")
        table.add_column("view")
        table.add_column("rows", justify="right")
        for view, n in summary["rows"].items():
            table.add_row(view, f"{n:,}")
        Console().print(table)
        ents = summary["entities_materialized"]
        typer.echo(f"materialized {ents['user']:,} users and {ents['item']:,} items "
                   f"({summary['time_range'][0]} .. {summary['time_range'][1]}); "
                   f"timings {summary['timings_s']}")
        if summary["skipped_columns"]:
            typer.echo(f"skipped columns of unsupported type: {', '.join(summary['skipped_columns'])}")


    @features_app.command("show")
    def show_cmd(
        user: Annotated[int | None, typer.Option("--user", help="user id")] = None,
        item: Annotated[int | None, typer.Option("--item", help="item id")] = None,
        repo: RepoOpt = Path("feature_repo"),
    ) -> None:
        """Print the online features of a user (recent items, profile) or an item (profile, popularity)."""
        from pi2i.cli import UserError
        from pi2i.data.features import feature_refs, online_features

        if (user is None) == (item is None):
            raise UserError("give exactly one of --user or --item")
        views = feature_refs(repo)
        key, value, mine = (("user_id", user, ("user_recent_items", "user_profile")) if user is not None
                            else ("item_id", item, ("item_profile", "item_popularity")))
        refs = [r for v in mine for r in views.get(v, [])]
        if not refs:
            raise UserError(f"no feature views for {key} in {repo}: run `pi2i features ingest` first")
        assert value is not None
        row = online_features(repo, refs, {key: [value]})
        typer.echo(json.dumps({k: v[0] for k, v in row.items()}, default=str))

    app.add_typer(features_app, name="features")
