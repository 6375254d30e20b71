"""Shared by the benchmarks that run the harness itself (the smoke study, or a study on real data): one
`python -m harness run` of an (arm, task) in a fresh folder with its own sqlite stores, reading what its
trial runs logged, and appending rows to a CSV."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def smoke_study(**overrides: str) -> str:
    """studies/smoke.yaml with top-level lines replaced, e.g. smoke_study(pruner="none")."""
    lines = (REPO / "studies" / "smoke.yaml").read_text().splitlines()
    missing = [key for key in overrides if not any(line.startswith(f"{key}:") for line in lines)]
    if missing:
        raise KeyError(f"studies/smoke.yaml has no top-level {missing}")
    return "\n".join(next((f"{key}: {value}" for key, value in overrides.items() if line.startswith(f"{key}:")), line)
                     for line in lines)


HARNESS = ("-m", "harness")
PLAIN_LOOP = (str(REPO / "benchmarks" / "plain_loop.py"),)  # the harness with the plain reference loop


def run_harness(folder: Path, study_text: str, arm: str, task: str, trials: int, seeds: int,
                extra: tuple[str, ...] = (), entry: tuple[str, ...] = HARNESS) -> float:
    """Run the study's tuning and final seeds for one (arm, task) in `folder` (`python -m harness run`, or
    `entry` instead of `-m harness`); returns the wall seconds. The stores are `folder`/optuna.db and
    `folder`/mlflow.db; the log is `folder`/harness.log."""
    (folder / "study.yaml").write_text(study_text)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db", MLFLOW_DISABLE_TELEMETRY="true")
    start = time.monotonic()
    with open(folder / "harness.log", "w") as log:
        done = subprocess.run([sys.executable, *entry, "run", "--arm", arm, "--tasks", task, "--study",
                               str(folder / "study.yaml"), "--n-trials", str(trials), "--seeds", str(seeds),
                               "--storage", f"sqlite:///{folder}/optuna.db", *extra],
                              cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"harness run failed (exit {done.returncode}); its log:\n"
                           + (folder / "harness.log").read_text()[-3000:])
    return time.monotonic() - start


def append_csv(path: Path, rows: list[dict]) -> None:
    """Add rows to the CSV (results of every run accumulate); a column the file lacks is added, empty in
    the older rows."""
    import pandas as pd

    from harness.tracking import git_commit

    new = pd.DataFrame(rows).assign(commit=git_commit())  # which code the rows measured
    old = pd.read_csv(path) if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([old, new], ignore_index=True).to_csv(path, index=False)


def logged_runs(folder: Path, experiment: str) -> dict[str, list[tuple[object, list[float]]]]:
    """The runs of `experiment` in `folder`/mlflow.db by stage ("trial", "final"), each with the
    `epoch_seconds` of every epoch it trained."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=5000)
    return {stage: [(r, [m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds")])
                    for r in runs if r.data.tags.get("stage") == stage] for stage in ("trial", "final")}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def save(rows: list[dict], out: Path, name: str, plot: Callable[[list[dict], Path], None]) -> None:
    """`<out>/<name>.csv` (appended) and `<out>/<name>.png` of this run's rows."""
    append_csv(out / f"{name}.csv", rows)
    plot(rows, out / f"{name}.png")
    print(f"wrote {out / f'{name}.csv'} (appended) and {out / f'{name}.png'}")
