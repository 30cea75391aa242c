"""``pi2i pipeline``: compile, run locally (kfp.local), submit to Kubeflow Pipelines; and ``pi2i demo``.

The pipeline itself lives in ``pipelines/`` (imported lazily: kfp is only needed by these commands).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="pi2i YAML config (the pipeline's `config`)")]


def _config(preset: str | None, config: Path | None) -> dict:
    """Preset overrides, then the YAML file's keys; validated here so a bad key fails before any step runs."""
    import yaml

    from pi2i.cli import UserError
    from pi2i.config import _merge, parse_config
    from pipelines.run_local import CONFIG_PRESETS

    data: dict = {}
    if preset:
        if preset not in CONFIG_PRESETS:
            raise UserError(f"unknown preset {preset!r}; available: {sorted(CONFIG_PRESETS)}")
        data = json.loads(json.dumps(CONFIG_PRESETS[preset]))
    if config is not None:
        if not config.exists():
            raise UserError(f"config file not found: {config}")
        loaded = yaml.safe_load(config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise UserError(f"config file {config} must hold a mapping at top level")
        data = _merge(data, loaded)
    parse_config(data)
    return data


def _date(run_date: str | None) -> str:
    from pi2i.cli import UserError

    if run_date is None:
        return dt.date.today().isoformat()
    try:
        return dt.date.fromisoformat(run_date).isoformat()
    except ValueError:
        raise UserError(f"--run-date must be YYYY-MM-DD, got {run_date!r}") from None


def _data_ready(data: Path | str) -> bool:
    from pi2i.contracts import EVENTS_FILE, exists, join

    return exists(join(str(data), EVENTS_FILE))


#: Where the cluster's data, registry and RayJob staging live unless told otherwise: the object-store layout of
#: k8s/README.md (the registry is the serving ConfigMap's PI2I_REGISTRY). Each is also read from the environment.
SUBMIT_DEFAULTS = {"data_uri": "s3://pi2i/data/latest", "registry_uri": "s3://pi2i/registry",
                   "staging_uri": "s3://pi2i/staging"}


def _cluster_uri(flag: str, uri: str) -> str:
    """Pipeline inputs must be URIs every pod can open (an object store), never a path on this machine."""
    from pi2i.cli import UserError

    if "://" not in uri or uri.startswith("file://"):
        raise UserError(f"{flag} {uri!r}: the cluster cannot read a local path; give an object-store URI "
                        f"(s3://bucket/prefix or gs://bucket/prefix)")
    return uri.rstrip("/")


HELP = "The daily Kubeflow pipeline: compile, run locally, submit to a cluster."


def register(app: typer.Typer) -> None:
    pipeline_app = typer.Typer(help=HELP, no_args_is_help=True)

    @pipeline_app.command("compile")
    def compile_cmd(out: Annotated[Path, typer.Option("--out", help="where to write the KFP IR YAML")],
                    config: ConfigOpt = None) -> None:
        """Compile the `pi2i-daily` pipeline to KFP IR YAML (what `submit` uploads); the `pipeline` section of
        `--config` (augment, methods) shapes the DAG."""
        from pipelines.daily import compile_pipeline

        typer.echo(str(compile_pipeline(out, _config(None, config))))

    @pipeline_app.command("run")
    def run_cmd(
        data: Annotated[str, typer.Option(
            "--data", help="data dir or URI (events.parquet, items.parquet, ...)")],
        registry: Annotated[str, typer.Option(
            "--registry", help="version registry (dir or URI, e.g. s3://b/registry); "
                               "gains a live version on a pass")],
        local: Annotated[bool, typer.Option(
            "--local/--no-local", help="run with kfp.local (the only mode here; "
                                       "use `submit` for a cluster)")] = True,
        work_dir: Annotated[Path | None, typer.Option(
            "--work-dir", help="pipeline root for artifacts "
                               "(default: <registry>/../pipeline-work)")] = None,
        run_date: Annotated[str | None, typer.Option("--run-date", help="YYYY-MM-DD (default: today)")] = None,
        preset: Annotated[str | None, typer.Option(
            "--preset", help="config preset for small data (tiny|demo); when --data holds no events.parquet the "
                             "synthetic preset of that name is generated there first")] = None,
        service_url: Annotated[str, typer.Option(
            "--service-url", help="running service to hot-swap and check")] = "",
        no_feast: Annotated[bool, typer.Option("--no-feast", help="skip the Feast ingestion")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """Run every step of the daily pipeline on this machine (kfp.local, the same pipeline function)."""
        from pi2i.cli import UserError

        if not local:
            raise UserError("only --local runs here; use `pi2i pipeline submit --host URL` for a cluster")
        cfg, day = _config(preset, config), _date(run_date)
        if not _data_ready(data):
            if not preset:
                raise UserError(f"no events.parquet in {data} (generate data with `pi2i data generate`, or pass "
                                f"--preset tiny|demo to generate it)")
            from pi2i.data.synthetic import generate_preset

            typer.echo(f"generating the {preset!r} preset into {data}", err=True)
            from pi2i.contracts import local_output_dir

            with local_output_dir(data) as local_data:  # a URI: generated locally, then uploaded
                generate_preset(preset, local_data, seed=0)
        from pipelines.run_local import run_local

        wd = work_dir or (Path(registry).resolve().parent / "pipeline-work" if "://" not in registry
                          else Path("pipeline-work").resolve())
        result = run_local(str(data), str(registry), str(wd), run_date=day, config=cfg,
                           feature_repo="" if no_feast else None, service_url=service_url)
        typer.echo(json.dumps(result, indent=2, default=str))
        if not result["new_version"]:
            gate = result.get("gate") or {}
            typer.echo(f"gate did not pass ({gate.get('reason', 'see the evaluate step')}): "
                       f"live version unchanged ({result['live']})", err=True)

    @pipeline_app.command("submit")
    def submit_cmd(
        host: Annotated[str, typer.Option("--host", envvar="KFP_HOST",
                                          help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow")],
        data_uri: Annotated[str, typer.Option("--data-uri", envvar="PI2I_DATA_URI",
                                              help="object-store data dir the daily run reads")]
        = SUBMIT_DEFAULTS["data_uri"],
        registry_uri: Annotated[str, typer.Option("--registry-uri", envvar="PI2I_REGISTRY",
                                                  help="object-store version registry")]
        = SUBMIT_DEFAULTS["registry_uri"],
        cron: Annotated[str, typer.Option("--cron", help="6-field cron, seconds first")] = "0 0 3 * * *",
        experiment: Annotated[str, typer.Option("--experiment")] = "pi2i",
        package: Annotated[Path | None, typer.Option("--package", help="compiled YAML (default: compile now)")]
        = None,
        compute: Annotated[str, typer.Option("--compute", help="local|rayjob")] = "rayjob",
        train_gpus: Annotated[int, typer.Option("--train-gpus", min=0)] = 1,
        staging_uri: Annotated[str, typer.Option("--staging-uri", envvar="PI2I_STAGING_URI",
                                                 help="object-store prefix for RayJob output")]
        = SUBMIT_DEFAULTS["staging_uri"],
        config: ConfigOpt = None,
    ) -> None:
        """Upload a pipeline version (named <date>-<git sha>) and create/replace the daily recurring run."""
        import tempfile

        from pi2i.cli import UserError
        from pipelines.daily import compile_pipeline
        from pipelines.submit import submit, validate_cron

        try:
            validate_cron(cron)
        except ValueError as e:
            raise UserError(str(e)) from None
        if compute not in ("local", "rayjob"):
            raise UserError(f"--compute must be local or rayjob, got {compute!r}")
        if package is not None and not package.is_file():
            raise UserError(f"--package: no such file: {package}")
        params = {"data_uri": _cluster_uri("--data-uri", data_uri),
                  "registry_uri": _cluster_uri("--registry-uri", registry_uri),
                  "config": _config(None, config), "compute": compute, "train_gpus": train_gpus,
                  "staging_uri": _cluster_uri("--staging-uri", staging_uri), "deploy_target": "kubernetes",
                  "feature_store_yaml": "feature_repo/feature_store.redis.yaml"}
        pkg = package or compile_pipeline(Path(tempfile.mkdtemp()) / "pi2i_daily.yaml", params["config"])
        try:
            result = submit(host, params, cron=cron, experiment=experiment, package=pkg)
        except Exception as e:
            reason = " ".join(str(e).split())[:300]
            raise UserError(f"submitting to Kubeflow Pipelines at {host} failed: "
                            f"{type(e).__name__}: {reason}") from e
        typer.echo(json.dumps(result, indent=2))

    app.add_typer(pipeline_app, name="pipeline")

    @app.command("demo")
    def demo_cmd(
        out: Annotated[Path, typer.Option("--out", help="demo dir: data/, registry/, pipeline-work/")] = Path(
            "runs/demo"),
        serve: Annotated[bool, typer.Option("--serve/--no-serve", help="start the service afterwards")] = True,
        port: Annotated[int, typer.Option("--port")] = 3000,
        preset: Annotated[str, typer.Option("--preset", help="synthetic data preset")] = "demo",
    ) -> None:
        """The whole thing on one machine: demo data -> daily pipeline (kfp.local) -> live service on localhost."""
        from pi2i.cli import UserError
        from pi2i.publish import registry as reg
        from pipelines.run_local import CONFIG_PRESETS, run_local

        data, registry, work = out / "data", out / "registry", out / "pipeline-work"
        if not _data_ready(data):
            from pi2i.data.synthetic import generate_preset

            typer.echo(f"[1/3] generating the {preset!r} preset into {data}", err=True)
            generate_preset(preset, str(data), seed=0)
        typer.echo(f"[2/3] running the daily pipeline (kfp.local) into {registry}", err=True)
        result = run_local(str(data), str(registry), str(work), config=CONFIG_PRESETS.get(preset, {}))
        live = reg.current(str(registry.resolve()))
        if live is None:
            raise UserError(f"the pipeline finished but no version is live in {registry} (gate: "
                            f"{(result.get('gate') or {}).get('reason', '?')}; artifacts in {result['run_dir']})")
        typer.echo(f"live version: {live}  (component logs: {result.get('log')})", err=True)
        url = f"http://127.0.0.1:{port}"
        example = (f"curl -s -X POST {url}/recommend -H 'content-type: application/json' "
                   f"-d '{{\"user_id\": 1, \"k\": 10}}'")
        if not serve:
            typer.echo(f"serve it with: pi2i serve --registry {registry} --port {port}\nthen try: {example}")
            return
        exe = shutil.which("pi2i") or str(Path(sys.executable).with_name("pi2i"))
        typer.echo(f"[3/3] serving {live} on {url}   (Ctrl-C to stop)\ntry: {example}", err=True)
        cmd = [exe, "serve", "--registry", str(registry), "--port", str(port)]
        env = dict(os.environ)
        if not env.get("PI2I_ADMIN_TOKEN"):  # a local demo gets its own token; a deployment brings a Secret
            import secrets

            env["PI2I_ADMIN_TOKEN"] = secrets.token_hex(16)
            typer.echo(f"demo tokens (admin + write): export PI2I_ADMIN_TOKEN={env['PI2I_ADMIN_TOKEN']} "
                       f"PI2I_WRITE_TOKEN={env['PI2I_ADMIN_TOKEN']}", err=True)
        try:
            sys.exit(subprocess.call(cmd, env=env))
        except KeyboardInterrupt:
            pass
