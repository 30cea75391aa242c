"""Run ``pi2i_daily`` on this machine with ``kfp.local`` — the same pipeline function the cluster runs.

Every component runs as a subprocess of the current Python (``SubprocessRunner(use_venv=False)``: the
project's environment plays the role of the project image), artifacts land under ``<work_dir>/pipeline_root``.
"""

import contextlib
import datetime as dt
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Config overrides for small data (the pipeline's ``config`` parameter); others keep pi2i.config defaults.
CONFIG_PRESETS: dict[str, dict] = {
    "tiny": {"swing": {"top_t": 200}, "sampling": {"hard_negatives": 10, "easy_negatives": 20},
             "train": {"epochs": 2, "batch_size": 128, "patience": 0},
             "eval": {"ks": [20, 50, 100, 200], "gate_k": 50}},
    # sized for `make demo` on 2 shared cores (minutes, not hours): fewer negatives and capped epochs
    "demo": {"swing": {"top_t": 500}, "sampling": {"hard_negatives": 10, "easy_negatives": 40},
             "train": {"epochs": 1, "max_batches_per_epoch": 100, "patience": 0},
             "eval": {"ks": [20, 50, 100, 200, 500], "gate_k": 100, "max_users": 1000}},
}


def default_feature_repo() -> str:
    """The Feast repository template of this checkout (``feature_repo/``), or '' (skip Feast) if absent."""
    repo = REPO_ROOT / "feature_repo"
    return str(repo) if (repo / "definitions.py").exists() else ""


#: Component output lines echoed to the terminal (progress); everything else (the KFP executor's input/output
#: JSON dumps, library logs) goes only to the run's log file.
PROGRESS = re.compile(r"Executing task|finished with status|^\s*\[(train|pdn|mtmh|evaluate|swing|samples|split|ingest|augment|"
                      r"publish|deploy|features|pipeline)[^\]]*\]|^\s*gate: |^\s*samples: \d|evaluating \[|"
                      r"Traceback|Error: ")


class _ProgressTee:
    """A stdout stand-in for the KFP local runner: every line to ``log``, progress lines also to ``echo``."""

    def __init__(self, log, echo):
        self.log, self.echo, self.buf = log, echo, ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            if PROGRESS.search(line):
                self.echo.write(line + "\n")
                self.echo.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.echo.flush()


def run_local(data_uri: str, registry_uri: str, work_dir: str, run_date: str | None = None,
              config: dict | None = None, feature_repo: str | None = None, service_url: str = "",
              raise_on_error: bool = True) -> dict[str, Any]:
    """Execute every step of ``pi2i_daily`` locally; returns the run date, the live version before and after,
    and where the artifacts are."""
    from kfp import local

    from pi2i.publish import registry
    from pipelines.daily import pipeline_for

    work = Path(work_dir).resolve()
    root = work / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    data_uri = data_uri if "://" in data_uri else str(Path(data_uri).resolve())
    registry_uri = registry_uri if "://" in registry_uri else str(Path(registry_uri).resolve())
    run_date = run_date or dt.date.today().isoformat()
    before = registry.current(registry_uri)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(work / "workspace"), raise_on_error=raise_on_error)
    # Ray inside component subprocesses: no dashboard, no usage ping, quiet.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    before_runs = set(root.glob("pi2i-daily-*"))
    with warnings.catch_warnings():  # "custom image in a Python environment": intended, the venv IS the image
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # cpu/memory/accelerator requests are for the cluster; locally the machine is what it is
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        log_path = work / f"pipeline-{run_date}.log"
        print(f"[pipeline] running pi2i-daily {run_date}; component logs: {log_path}", file=sys.stderr)
        try:
            with open(log_path, "a") as log, contextlib.redirect_stdout(_ProgressTee(log, sys.stderr)):
                # the DAG shape of the config's `pipeline` section (augment, methods)
                pipeline_for(config)(run_date=run_date, data_uri=data_uri, registry_uri=registry_uri,
                                     config=config or {},
                                     feature_repo=default_feature_repo() if feature_repo is None else feature_repo,
                                     service_url=service_url)
        except Exception:
            print(f"[pipeline] a step failed; its full output is in {log_path}", file=sys.stderr)
            raise
    after = registry.current(registry_uri)
    runs = sorted(set(root.glob("pi2i-daily-*")) - before_runs)
    run_dir = runs[-1] if runs else None
    gate = None
    if run_dir is not None and (run_dir / "evaluate" / "report" / "metrics.json").exists():
        gate = json.loads((run_dir / "evaluate" / "report" / "metrics.json").read_text()).get("gate")
    return {"run_date": run_date, "live_before": before, "live": after, "new_version": after != before,
            "gate": gate, "run_dir": str(run_dir) if run_dir else None, "registry": registry_uri,
            "log": str(log_path)}
