"""``pi2i samples`` (trigger–target sampling) and ``pi2i train`` (the PRS scorer under Ray Train)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

HELP = "PRS: trigger-target samples and scorer training (same as top-level commands)."

ConfigOpt = Annotated[str | None, typer.Option("--config", help="YAML config; flags override it")]


def register(app: typer.Typer) -> None:
    """Top-level ``pi2i samples`` / ``pi2i train`` (the contract), also reachable as ``pi2i prs samples|train``."""
    prs_app = typer.Typer(help=HELP, no_args_is_help=True)
    app.add_typer(prs_app, name="prs")

    @app.command("samples")
    @prs_app.command("samples")
    def samples_cmd(
        events: Annotated[str, typer.Option("--events", help="events parquet of the contract")],
        i2i: Annotated[str, typer.Option("--i2i", help="i2i table parquet (trigger, target, score, rank)")],
        out: Annotated[str, typer.Option("--out", help="output samples directory")],
        items: Annotated[str | None, typer.Option(
            "--items", help="items parquet (side info); default: items.parquet beside the events, if any")] = None,
        num_triggers: Annotated[int | None, typer.Option(
            "--num-triggers", help="L, distinct recent triggers")] = None,
        hard: Annotated[int | None, typer.Option("--hard", help="hard negatives per sample (default 20)")] = None,
        easy: Annotated[int | None, typer.Option("--easy", help="easy negatives per sample (default 80)")] = None,
        max_samples: Annotated[int | None, typer.Option("--max-samples", help="seeded cap; 0 = all")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="sampling seed")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Trigger–target training samples (PI2I Alg. 1): positives, hard and easy negatives from the i2i rows."""
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import exists
        from pi2i.prs.sampling import build_samples

        for what, p in (("--events", events), ("--i2i", i2i)) + ((("--items", items),) if items else ()):
            if not exists(p):
                raise UserError(f"{what}: no such file: {p}")
        ov = {k: v for k, v in {"num_triggers": num_triggers, "hard_negatives": hard, "easy_negatives": easy,
                                    "max_samples": max_samples, "seed": seed}.items() if v is not None}
        cfg = load_config(config, {"sampling": ov} if ov else None)
        stats = build_samples(events, i2i, out, cfg, items_uri=items, progress=True)
        keys = ("samples", "positions", "drop_rate", "samples_per_s_sampling", "seconds_total")
        typer.echo(json.dumps({k: stats[k] for k in keys}))

    @app.command("train")
    @prs_app.command("train")
    def train_cmd(
        samples: Annotated[str, typer.Option("--samples", help="samples directory from `pi2i samples`")],
        out: Annotated[str, typer.Option("--out", help="output model directory")],
        method: Annotated[str, typer.Option("--method", help="trained method: pi2i, pdn or mtmh")] = "pi2i",
        epochs: Annotated[int | None, typer.Option(
            "--epochs", help="maximum epochs (early stopping may end sooner)")] = None,
        workers: Annotated[int | None, typer.Option("--workers", help="Ray Train workers; 0 = in-process")] = None,
        gpu: Annotated[bool, typer.Option("--gpu", help="use one GPU per Ray Train worker")] = False,
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="samples per batch")] = None,
        max_batches: Annotated[int | None, typer.Option(
            "--max-batches", help="cap batches per epoch; 0 = all")] = None,
        storage: Annotated[str | None, typer.Option(
            "--storage", help="Ray Train storage path (checkpoints)")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Train a method (default: the PI2I target-attention scorer) with Ray Train and write a self-contained
        model directory recording the method (method.json)."""
        from pi2i.cli import UserError
        from pi2i.config import load_config
        from pi2i.contracts import isdir, join
        from pi2i.prs.sampling import SAMPLES_SUBDIR
        from pi2i.prs.train import train

        if not isdir(join(samples, SAMPLES_SUBDIR)):
            raise UserError(f"--samples: {samples} is not a samples directory (run `pi2i samples` first)")
        ov = {k: v for k, v in {"epochs": epochs, "num_workers": workers, "batch_size": batch_size,
                                    "max_batches_per_epoch": max_batches, "storage_path": storage}.items()
              if v is not None}
        if gpu:
            ov["use_gpu"] = True
        cfg = load_config(config, {"train": ov} if ov else None)
        if method != "pi2i":
            _train_method(method, samples, out, cfg, ov)
            return
        m = train(samples, out, cfg)
        typer.echo(json.dumps({"best_epoch": m["best_epoch"], "val_loss": m["best"]["val_loss"],
                               "val_hr10": m["best"]["val_hr10"], "epochs_run": m["epochs_run"],
                               "seconds": m["seconds"], "out": out}))


def _train_method(method: str, samples: str, out: str, cfg, ov: dict) -> None:
    """``pi2i train --method pdn|mtmh``: fit the registered method on the samples directory and save it.
    ``--epochs/--batch-size/--max-batches`` also set MTMH's own loop (``methods.mtmh.*``) and PDN's batch cap."""
    from pi2i.cli import UserError
    from pi2i.contracts import exists, join, read_json
    from pi2i.methods import METHODS, get_method
    from pi2i.methods.base import METHOD_FILE, TrainInputs

    trained = [n for n, c in METHODS.items() if c.trained]
    if method not in METHODS or not METHODS[method].trained:
        raise UserError(f"--method: {method!r} is not a trained method; choose one of {', '.join(trained)}")
    if exists(join(out, METHOD_FILE)):
        held = (read_json(join(out, METHOD_FILE)) or {}).get("method")
        if held != method:
            raise UserError(f"--out {out} holds a {held} model; train {method} into another directory")
    if method == "mtmh":
        keys = {"epochs": "epochs", "batch_size": "batch_size", "max_batches_per_epoch": "max_batches_per_epoch"}
        for k, v in keys.items():
            if k in ov:
                setattr(cfg.methods.mtmh, v, ov[k])
    if method == "pdn" and "max_batches_per_epoch" in ov:
        cfg.methods.pdn.max_batches_per_epoch = ov["max_batches_per_epoch"]
    model = get_method(method).fit(TrainInputs(samples_dir=samples), cfg)
    model.save(out)
    metrics = getattr(model, "metrics", {})
    best = metrics.get("best", {})
    typer.echo(json.dumps({"method": method, "best_epoch": metrics.get("best_epoch"),
                           "val_loss": best.get("val_loss"), "epochs_run": metrics.get("epochs_run"),
                           "seconds": metrics.get("seconds"), "out": out}))
