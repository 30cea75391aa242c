"""Record run: the ExitHandler's exit task; writes how the run ended into the registry's run log."""

from kfp import dsl

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def record_run(registry_uri: str, run_date: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Write ``<registry>/runs/<run_date>-<utc time>.json`` with the final state (SUCCEEDED/FAILED/...) and
    the error, so a failed daily run is visible next to the versions it did not produce."""
    import datetime as dt

    from pi2i.contracts import join, makedirs, write_json

    now = dt.datetime.now(dt.UTC)
    record = {"run_date": run_date, "state": status.state, "finished_at": now.isoformat(),
              "pipeline_job": status.pipeline_job_resource_name, "task": status.pipeline_task_name,
              "error_code": status.error_code, "error_message": status.error_message}
    runs = join(registry_uri, "runs")
    makedirs(runs)
    path = join(runs, f"{run_date}-{now.strftime('%H%M%S%f')}.json")
    write_json(record, path)
    print(f"run {status.state}: {path}")
    return status.state
