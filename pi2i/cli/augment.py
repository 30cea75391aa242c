"""``pi2i augment``: LLM-I2I augmentation (generator + discriminator) of an events table, and
``pi2i augment compare``: Swing / PI2I with vs without it on one split."""

from __future__ import annotations

import json

import typer

HELP = ("LLM-I2I augmentation: pi2i augment --events F --out D [--config C] [--generator PATH] [--tau T] "
        "writes D/events.parquet (real + synthetic rows, behavior='synthetic'), D/provenance.parquet and "
        "D/summary.json; `pi2i augment compare` evaluates Swing/PI2I with vs without it.")


def register(app: typer.Typer) -> None:
    aug_app = typer.Typer(help=HELP, invoke_without_command=True)
    app.add_typer(aug_app, name="augment")

    @aug_app.callback()
    def augment_cmd(
        ctx: typer.Context,
        events: str | None = typer.Option(None, "--events", help="events parquet of the contract (train split)"),
        out: str | None = typer.Option(None, "--out", help="output directory"),
        config: str | None = typer.Option(None, "--config", help="YAML config (section `augment`)"),
        generator: str | None = typer.Option(None, "--generator", help="local pretrained checkpoint to fine-tune"),
        tau: float | None = typer.Option(None, "--tau", help="discriminator threshold in [0, 1] (default: "
                                                             "chosen on the validation split)"),
        candidates: int | None = typer.Option(None, "--candidates", help="N items generated per user"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Generate, filter and append synthetic interactions; print the summary."""
        if ctx.invoked_subcommand is not None:
            return
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import exists

        if events is None or out is None:
            raise UserError("pi2i augment needs --events F and --out D")
        if not exists(events):
            raise UserError(f"--events: no such file: {events}")
        ov = {k: v for k, v in {"generator": generator, "tau": tau, "candidates_per_user": candidates}.items()
              if v is not None}
        cfg = load_config(config, {"augment": ov} if ov else None)
        from pi2i.augment import augment

        s = augment(events, out, cfg, progress=progress)
        keys = ("users", "proposed", "kept", "share_long_tail", "tau", "seconds")
        typer.echo(json.dumps({**{k: s[k] for k in keys},
                               "filter_precision": s["filter_validation"].get("precision"),
                               "filter_recall": s["filter_validation"].get("recall"), "out": out}))

    @aug_app.command("compare")
    def compare_cmd(
        train: str = typer.Option(..., "--train", help="train data dir (split output)"),
        test: str = typer.Option(..., "--test", help="test data dir (split output)"),
        out: str = typer.Option(..., "--out", help="output directory (compare.json, compare.md)"),
        methods: str = typer.Option("swing,pi2i", "--methods", help="comma-separated: swing, pi2i"),
        augmented: str | None = typer.Option(None, "--augmented", help="reuse an `pi2i augment` output dir"),
        config: str | None = typer.Option(None, "--config", help="YAML config"),
    ) -> None:
        """Swing (and PI2I) on original vs augmented train data, same test users; HR@K and tail HR@K."""
        from pi2i.augment.compare import compare, markdown
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import EVENTS_FILE, exists, join

        names = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in names if m not in ("swing", "pi2i")]
        if bad or not names:
            raise UserError(f"--methods: unknown {bad or names}; allowed: swing, pi2i")
        for what, d in (("--train", train), ("--test", test)) + ((("--augmented", augmented),) if augmented else ()):
            if not exists(join(d, EVENTS_FILE)):
                raise UserError(f"{what}: no {EVENTS_FILE} in {d}")
        res = compare(train, test, out, load_config(config), names, augmented, progress=True)
        typer.echo(markdown(res))
