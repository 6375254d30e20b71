"""MLflow I/O: where runs go, how they start and always end, logging, and finding runs again.

What is logged under which name is `schema.py`. A run always ends FINISHED, FAILED or KILLED (Ctrl-C /
SIGTERM), never left RUNNING; nothing secret (a password inside a storage URL) is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from .schema import Stage, Tag, query

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARAM_LIMIT = 6000  # MLflow's limit on a param value


def redact(url: str) -> str:
    """A storage/tracking URL without its password, safe for logs, params and tags."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL (a path, http://...): strip any user:password@
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url


def setup(experiment: str) -> str:
    """Point MLflow at the tracking store (default sqlite:///mlflow.db) and the study's experiment.

    Under `mlflow run`, MLflow has already opened a launcher run (MLFLOW_RUN_ID). The harness's runs
    go to the study's experiment instead, so the launcher run is tagged with a pointer to them and
    detached from this process.
    """
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    exp = mlflow.set_experiment(experiment)
    # When another worker created the experiment a moment before, MLflow returns it without making it the
    # active one, and nested runs would land in "Default": make it active explicitly.
    mlflow.set_experiment(experiment_id=exp.experiment_id)
    if launcher:
        MlflowClient().set_tag(launcher, Tag.STAGE, Stage.LAUNCH)
        MlflowClient().set_tag(launcher, Tag.RESULTS_EXPERIMENT, experiment)
    return exp.experiment_id


@contextlib.contextmanager
def run(name: str, tags: dict[str, Any], nested: bool = False, run_id: str | None = None,
        finished_on: tuple[type[BaseException], ...] = (), **kwargs: Any) -> Iterator[Run]:
    """Start (or resume) a run and always end it: FINISHED on success or on `finished_on`
    exceptions (e.g. a pruned trial), KILLED on Ctrl-C/SIGTERM, FAILED on any other error."""
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested,
                              tags={k: str(v) for k, v in tags.items()}, **kwargs)
    status = "FAILED"
    try:
        yield active
        status = "FINISHED"
    except finished_on:
        status = "FINISHED"
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)


def log_params(params: dict[str, Any]) -> None:
    flat = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in params.items()}
    mlflow.log_params({k: str(v)[:PARAM_LIMIT] for k, v in flat.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=step)


def find_parent_run(experiment_id: str, tags: dict[str, str]) -> str | None:
    """The parent run with these tags (to resume it), or None. Should workers starting together have
    created several, every worker picks the same one: the earliest."""
    runs = MlflowClient().search_runs([experiment_id], query(tags), max_results=1000)
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else None


def claim_parent_run(experiment_id: str, identity: dict[str, str], tags: dict[str, Any], name: str) -> str:
    """The parent run of `identity`, created if there is none. Workers that created one at the same
    moment all keep the earliest and delete their own, so a cell has one parent however many workers."""
    found = find_parent_run(experiment_id, identity)
    if found:
        return found
    mine = MlflowClient().create_run(experiment_id, tags={k: str(v) for k, v in tags.items()}, run_name=name)
    chosen = find_parent_run(experiment_id, identity)
    if chosen != mine.info.run_id:
        MlflowClient().set_terminated(mine.info.run_id, "KILLED")
        MlflowClient().delete_run(mine.info.run_id)
    return chosen


def child_runs(experiment_id: str, parent_id: str, stage: str, status: str | None = "FINISHED") -> list[Run]:
    filter_string = query({Tag.PARENT: parent_id, Tag.STAGE: stage})
    if status:
        filter_string += f" and attributes.status = '{status}'"
    return MlflowClient().search_runs([experiment_id], filter_string, max_results=10_000)


def git_commit() -> str:
    """The commit of the harness's checkout (with '+dirty' if it has uncommitted changes)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
