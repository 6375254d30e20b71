"""Everything MLflow: where runs go, how they start and end, what is logged, and the figures.

Schema (one experiment per study):
  parent run  (arm, task)  tags arm, variant (arm, or arm@<init sha> when fine-tuned from init=), task, study,
                           stage=study, family, model, tokenizer, init, optuna_study, git_commit
                           params budget and search space; metrics best_dev_mcc, test_mcc_mean/std
    trial run              tags stage=trial, trial_number, trial_state (COMPLETE/PRUNED), fail_reason
                           params the sampled hyperparameters; per-epoch train_loss, dev_mcc (step=epoch)
    final run              tags stage=final, seed; test_mcc, test_f1, test_accuracy, test_auroc, dev_mcc,
                           params, train_seconds, flops; confusion matrix, learning curve, predictions
A run always ends FINISHED, FAILED or KILLED (Ctrl-C / SIGTERM), never left RUNNING.
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

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

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
        MlflowClient().set_tag(launcher, "stage", "launch")
        MlflowClient().set_tag(launcher, "results_experiment", experiment)
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
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = MlflowClient().search_runs([experiment_id], query, max_results=1000)
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
    query = f"tags.mlflow.parentRunId = '{parent_id}' and tags.stage = '{stage}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return MlflowClient().search_runs([experiment_id], query, max_results=10_000)


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


# ----------------------------------------------------------------------------------- figures
def save_confusion_matrix(cm: np.ndarray, path: Path, title: str) -> Path:
    size = max(3.6, 0.6 * len(cm) + 1.8)
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(cm, cmap="Blues")
        for (i, j), n in np.ndenumerate(cm):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black")
        ax.set(xlabel="predicted class", ylabel="true class", xticks=range(len(cm)), yticks=range(len(cm)))
        ax.set_title(title, fontsize=9)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
    return path


def save_learning_curve(history: list, path: Path, title: str) -> Path:
    epochs = [r.epoch for r in history]
    with plt.style.context("default"):
        return _plot_learning_curve(history, epochs, path, title)


def _plot_learning_curve(history: list, epochs: list[int], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [r.train_loss for r in history], "o-", color="tab:red", label="train loss")
    ax.set(xlabel="epoch", ylabel="train loss", title=title)
    ax2 = ax.twinx()
    ax2.plot(epochs, [r.dev["mcc"] for r in history], "s-", color="tab:blue", label="dev MCC")
    ax2.set_ylabel("dev MCC")
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_optuna_history(study, path: Path) -> Path:
    from optuna.visualization.matplotlib import plot_optimization_history

    # Optuna's plots switch matplotlib to its own style; the context restores ours afterwards.
    with _quiet_experimental(), plt.style.context("default"):
        ax = plot_optimization_history(study)
        ax.set_ylabel("dev MCC")
        ax.set_title(f"{study.study_name}: optimisation history", fontsize=9)
        ax.figure.set_size_inches(7, 3.5)
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
    return path


@contextlib.contextmanager
def _quiet_experimental():
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
