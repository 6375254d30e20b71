"""Read an experiment's results from MLflow into tidy tables, excluding nothing silently.

The harness files one parent run per (arm variant, task) with a child run per tuning trial
(stage=trial) and per final seed (stage=final, scored once on test); see harness/tracking.py. Only
FINISHED final runs count. Every run or cell left out is listed in `exclusions` with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlflow
import pandas as pd
from mlflow.entities import Run

from harness.errors import InputError
from harness.schema import ARM_TAGS, COST_METRICS, FACTORS, TEST_METRICS, Artifact, Metric, Stage, Tag, query
from harness.tracking import redact


class AnalysisError(InputError):
    """Nothing to analyse, or an ambiguous request; the message says what to pass instead."""


@dataclass
class Results:
    experiment: str
    tracking_uri: str  # redacted
    metric: str
    runs: pd.DataFrame  # one row per (arm, task, seed): metrics and cost of a finished final run
    cells: pd.DataFrame  # one row per (arm, task): mean, sd, seeds, tuning and final compute
    arms: pd.DataFrame  # one row per arm variant: base arm, family, model, tokenizer, init
    exclusions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["what", "reason"]))
    studies: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    study_file: tuple[str, str] | None = None  # (where, text) of the study.yaml the newest parent logged


def search(experiment_id: str, stage: str) -> list[Run]:
    return mlflow.search_runs([experiment_id], query({Tag.STAGE: stage}), output_format="list",
                              order_by=["attributes.start_time ASC"])


def variant_of(run: Run) -> str:
    return run.data.tags.get(Tag.VARIANT) or run.data.tags[Tag.ARM]


def collect(experiment: str, metric: str = Metric.TEST_MCC, study: str | None = None) -> Results:
    """All finished final runs of `experiment` (optionally of one study), with exclusions stated."""
    uri = redact(mlflow.get_tracking_uri())
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        known = sorted(e.name for e in mlflow.search_experiments())
        raise AnalysisError(f"no MLflow experiment named {experiment!r} at {uri}; "
                            f"experiments there: {', '.join(known) or '(none)'}")
    if metric not in TEST_METRICS:
        raise AnalysisError(f"metric={metric!r} is not a test metric the harness logs; use one of {TEST_METRICS}")
    excluded: list[dict[str, str]] = []
    parents = [r for r in search(exp.experiment_id, Stage.STUDY) if study is None or r.data.tags.get(Tag.STUDY) == study]
    studies = sorted({r.data.tags.get(Tag.STUDY, "?") for r in parents})
    if len(studies) > 1:
        raise AnalysisError(f"experiment {experiment!r} holds runs of several studies ({', '.join(studies)}): "
                            "their budgets differ, so pass study=NAME to analyse one")
    if not parents:
        raise AnalysisError(f"experiment {experiment!r} at {uri} has no harness runs ({query({Tag.STAGE: Stage.STUDY})})"
                            + (f" of study {study!r}" if study else "") + "; run the harness first")
    parents = latest_parent_per_cell(parents, excluded)
    by_id = {p.info.run_id: p for p in parents}

    rows = []
    for run in search(exp.experiment_id, Stage.FINAL):
        parent = by_id.get(run.data.tags.get(Tag.PARENT, ""))
        if parent is None:
            continue  # a child of a superseded or other study's parent: stated with that parent
        what = f"{variant_of(parent)} | {parent.data.tags[Tag.TASK]} | seed {run.data.tags.get(Tag.SEED, '?')}"
        if run.info.status != "FINISHED":
            why = "still RUNNING (or its worker died without ending it)" if run.info.status == "RUNNING" else ""
            excluded.append({"what": what, "reason": f"final run {run.info.run_id} is {run.info.status} {why}".strip()})
            continue
        if metric not in run.data.metrics:
            excluded.append({"what": what, "reason": f"final run {run.info.run_id} logged no {metric}"})
            continue
        rows.append({"arm": variant_of(parent), "task": parent.data.tags[Tag.TASK], "seed": int(run.data.tags[Tag.SEED]),
                     **{m: run.data.metrics.get(m, math.nan) for m in (*TEST_METRICS, Metric.DEV_MCC, *COST_METRICS)},
                     "run_id": run.info.run_id, "parent_run_id": parent.info.run_id,
                     "git_commit": run.data.tags.get(Tag.GIT_COMMIT, ""), "end_time": run.info.end_time})
    runs = drop_duplicate_seeds(pd.DataFrame(rows), excluded)
    used = set(runs["parent_run_id"]) if not runs.empty else set()
    for p in parents:
        if p.info.run_id not in used:
            excluded.append({"what": f"{variant_of(p)} | {p.data.tags[Tag.TASK]}",
                             "reason": f"no finished final run (parent run {p.info.run_id} is {p.info.status})"})
    if runs.empty:
        raise AnalysisError(f"experiment {experiment!r} has no finished final runs with {metric}; "
                            "see the exclusions:\n" + "\n".join(f"  {e['what']}: {e['reason']}" for e in excluded))
    arms = arm_table(parents)
    cells = cell_table(runs, metric, tuning_cost(exp.experiment_id, by_id)).merge(
        parent_table(parents), on=["arm", "task"], how="left")
    for _, c in cells[cells["n_seeds"] == 1].iterrows():
        excluded.append({"what": f"{c['arm']} | {c['task']}",
                         "reason": "one seed only: no standard deviation and no per-task test over seeds "
                                   "(its mean still enters the across-task tests)"})
    commits = sorted(set(runs["git_commit"]) - {""})
    return Results(experiment, uri, metric, runs.drop(columns=["end_time"]), cells, arms,
                   pd.DataFrame(excluded, columns=["what", "reason"]), studies, commits, logged_study_file(parents))


def logged_study_file(parents: list[Run]) -> tuple[str, str] | None:
    newest = max(parents, key=lambda p: p.info.start_time)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{newest.info.run_id}/{Artifact.STUDY_FILE}")
    except Exception:  # an older run without it: the caller falls back to the studies folder
        return None
    return f"{Artifact.STUDY_FILE} of run {newest.info.run_id}", text


def latest_parent_per_cell(parents: list[Run], excluded: list[dict[str, str]]) -> list[Run]:
    """One parent per (variant, task): a rerun under another configuration supersedes the older one."""
    latest: dict[tuple[str, str], Run] = {}
    for p in parents:  # oldest first
        key = (variant_of(p), p.data.tags[Tag.TASK])
        if key in latest:
            old = latest[key]
            excluded.append({"what": f"{key[0]} | {key[1]} (parent run {old.info.run_id})",
                             "reason": f"superseded by the newer parent run {p.info.run_id} of the same arm and "
                                       "task (another configuration or study storage); its runs are not used"})
        latest[key] = p
    return list(latest.values())


def drop_duplicate_seeds(runs: pd.DataFrame, excluded: list[dict[str, str]]) -> pd.DataFrame:
    if runs.empty:
        return runs
    runs = runs.sort_values("end_time")
    dup = runs.duplicated(["arm", "task", "seed"], keep="last")
    for _, r in runs[dup].iterrows():
        excluded.append({"what": f"{r['arm']} | {r['task']} | seed {r['seed']}",
                         "reason": f"duplicate final run {r['run_id']}: the later run of this seed is used"})
    return runs[~dup].sort_values(["arm", "task", "seed"]).reset_index(drop=True)


def arm_table(parents: list[Run]) -> pd.DataFrame:
    rows = {}
    for p in parents:
        rows[variant_of(p)] = {k: p.data.tags.get(k, "") for k in ARM_TAGS}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant").sort_index()


PARENT_TAGS = (*FACTORS, Tag.SEARCH_SPACE, Tag.TUNING_BOUNDARY, Tag.TUNING_BOUNDARY_SIDES, Tag.DEVICE)


def parent_table(parents: list[Run]) -> pd.DataFrame:
    """Per (arm variant, task): the factors its parent run recorded (what a contrast may vary or must hold
    equal), how well it was tuned, and where it ran. A factor an older run did not record is ""."""
    rows = [{"arm": variant_of(p), "task": p.data.tags[Tag.TASK], **{k: p.data.tags.get(k, "") for k in PARENT_TAGS},
             Metric.BEST_EPOCH_AT_CAP: p.data.metrics.get(Metric.BEST_EPOCH_AT_CAP, math.nan)} for p in parents]
    return pd.DataFrame(rows, columns=["arm", "task", *PARENT_TAGS, Metric.BEST_EPOCH_AT_CAP])


def tuning_cost(experiment_id: str, parents: dict[str, Run]) -> pd.DataFrame:
    """Compute spent on tuning per parent: every trial that trained, whatever its state."""
    rows = []
    for t in search(experiment_id, Stage.TRIAL):
        parent = parents.get(t.data.tags.get(Tag.PARENT, ""))
        if parent is not None:
            rows.append({"arm": variant_of(parent), "task": parent.data.tags[Tag.TASK],
                         "tuning_seconds": t.data.metrics.get(Metric.TRAIN_SECONDS, 0.0),
                         "tuning_flops": t.data.metrics.get(Metric.FLOPS, 0.0)})
    frame = pd.DataFrame(rows, columns=["arm", "task", "tuning_seconds", "tuning_flops"])
    return frame.groupby(["arm", "task"], as_index=False).agg(
        trials_run=("tuning_seconds", "size"), tuning_seconds=("tuning_seconds", "sum"),
        tuning_flops=("tuning_flops", "sum"))


def cell_table(runs: pd.DataFrame, metric: str, tuning: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, task): the metric's mean and sd over seeds, and the compute behind it."""
    g = runs.groupby(["arm", "task"])
    cells = g.agg(n_seeds=("seed", "size"),
                  **{f"{m}_mean": (m, "mean") for m in TEST_METRICS},
                  **{f"{m}_sd": (m, "std") for m in TEST_METRICS},
                  final_seconds=("train_seconds", "sum"), final_flops=("flops", "sum"),
                  params=("params", "first"), pretrain_seconds=("pretrain_seconds", "first"),
                  pretrain_flops=("pretrain_flops", "first"),
                  pretrain_gpu_hours=("pretrain_gpu_hours", "first")).reset_index()
    cells = cells.merge(tuning, on=["arm", "task"], how="left")
    cells[["trials_run", "tuning_seconds", "tuning_flops"]] = cells[["trials_run", "tuning_seconds", "tuning_flops"]].fillna(0)
    # What this arm's number on this task cost, tuning and final seeds together (pretraining apart).
    cells["compute_seconds"] = cells["tuning_seconds"] + cells["final_seconds"]
    cells["compute_flops"] = cells["tuning_flops"] + cells["final_flops"]
    cells["score_mean"], cells["score_sd"] = cells[f"{metric}_mean"], cells[f"{metric}_sd"]
    return cells
