"""Upload the compiled pipeline to Kubeflow Pipelines and keep one daily recurring run pointing at it.

The pipeline version is named ``<date>-<git sha>``; the recurring run (KFP's 6-field cron, seconds first) is
re-created on every submit so it always runs the newest version, with ``run_date`` taken from the schedule
(``[[ScheduledTime.2006-01-02]]`` is substituted by KFP's ScheduledWorkflow controller at each trigger).
"""

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

from pipelines.daily import COMPILED, PIPELINE_NAME

DEFAULT_CRON = "0 0 3 * * *"  # 03:00:00 every day (seconds minutes hours day-of-month month day-of-week)
SCHEDULED_DATE = "[[ScheduledTime.2006-01-02]]"


def validate_cron(expr: str) -> str:
    """KFP (robfig/cron with seconds) wants six fields; a 5-field Unix cron is a common mistake."""
    fields = expr.split()
    if len(fields) != 6:
        raise ValueError(f"cron {expr!r} has {len(fields)} fields; KFP needs 6, seconds first (e.g. "
                         f"{DEFAULT_CRON!r})")
    return expr


def git_sha(repo: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], cwd=repo or Path(__file__).parent,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"


def version_name(today: dt.date | None = None, sha: str | None = None) -> str:
    return f"{PIPELINE_NAME}-{(today or dt.date.today()).strftime('%Y%m%d')}-{sha or git_sha()}"


def submit(host: str | None, params: dict[str, Any], cron: str = DEFAULT_CRON, experiment: str = "pi2i",
           package: str | Path = COMPILED, name: str | None = None, client: Any = None,
           service_account: str | None = "pi2i-pipeline-runner") -> dict[str, str]:
    """Upload ``package`` as a new version of the ``pi2i-daily`` pipeline and (re)create the daily recurring
    run ``pi2i-daily-schedule`` on it. ``client`` defaults to ``kfp.Client(host)``."""
    validate_cron(cron)
    if client is None:
        import kfp

        client = kfp.Client(host=host)
    vname = name or version_name()
    pid = client.get_pipeline_id(PIPELINE_NAME)
    if pid is None:
        pid = client.upload_pipeline(str(package), pipeline_name=PIPELINE_NAME,
                                     description="Daily PI2I retrain").pipeline_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=vname, pipeline_id=pid)
    exp = client.create_experiment(experiment)  # returns the existing one when present
    job = f"{PIPELINE_NAME}-schedule"
    listed = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=100)
    for rr in listed.recurring_runs or []:
        if rr.display_name == job:
            client.delete_recurring_run(rr.recurring_run_id)
    params = {"run_date": SCHEDULED_DATE, **params}
    rr = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=job, cron_expression=cron, max_concurrency=1,
        no_catchup=True, params=params, pipeline_id=pid, version_id=version.pipeline_version_id,
        enabled=True, service_account=service_account)
    return {"pipeline_id": pid, "version_id": version.pipeline_version_id, "version_name": vname,
            "experiment_id": exp.experiment_id, "recurring_run_id": rr.recurring_run_id, "cron": cron}
