"""Read an experiment's results from MLflow into tidy tables, excluding nothing silently.

The harness files one parent run per (arm variant, task) with a child run per tuning trial
(stage=trial) and per final seed (stage=final, scored once on test); see harness/tracking.py. Only
FINISHED final runs count. Every run or cell left out is listed in `exclusions` with its reason.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run

from harness.errors import InputError
from harness.schema import (
    ARM_TAGS,
    COST_METRICS,
    FACTORS,
    OVERLAP_PAIRS,
    TEST_METRICS,
    Artifact,
    Metric,
    Mode,
    Stage,
    Tag,
    overlap_metric,
    overlap_pair,
    query,
)
from harness.tracking import redact


class AnalysisError(InputError):
    """Nothing to analyse, or an ambiguous request; the message says what to pass instead."""


@dataclass
class Results:
    experiment: str
    tracking_uri: str  # redacted
    metric: str
    runs: pd.DataFrame  # one row per (arm, task, seed): metrics and cost of a finished final run
    cells: pd.DataFrame  # one row per (arm, task): mean, sd, seeds, compute (tuning, finals, embedding pass)
    arms: pd.DataFrame  # one row per arm variant: base arm, family, model, tokenizer, init, mode
    exclusions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["what", "reason"]))
    studies: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    study_file: tuple[str, str] | None = None  # (where, text) of the study.yaml the newest parent logged
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)  # final run id -> its test_predictions.csv
    family_overrides: dict[str, str] = field(default_factory=dict)  # task -> family, from the study's analysis:

    def family(self, task: str) -> str:
        """A task's family: the study's `analysis: families:` entry, else the first part of its name
        (EMP/H3 -> EMP, prom/prom_300_all -> prom)."""
        return self.family_overrides.get(task) or task.split("/")[0]

    def identical_replicate_arms(self) -> list[str]:
        """Arms with a cell whose seeds are identical replicates (the same test metrics on every seed)."""
        return sorted(set(self.cells.loc[self.cells["identical_replicates"], "arm"])) \
            if "identical_replicates" in self.cells else []


# What runs of an older harness called the parameter count (Metric.PARAMS today); read when the new name is absent.
LEGACY_PARAMS = "params"


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
                     Metric.PARAMS: run.data.metrics.get(Metric.PARAMS, run.data.metrics.get(LEGACY_PARAMS, math.nan)),
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
    predictions = test_predictions(runs, excluded)
    cells = cell_table(runs, metric, tuning_cost(exp.experiment_id, by_id), predictions).merge(
        parent_table(parents), on=["arm", "task"], how="left")
    for _, c in cells[cells["n_runs"] == 1].iterrows():
        excluded.append({"what": f"{c['arm']} | {c['task']}",
                         "reason": "one seed only: no standard deviation (its mean still enters the across-task "
                                   "tests, its predictions the per-task tests)"})
    commits = sorted(set(runs["git_commit"]) - {""})
    return Results(experiment, uri, metric, runs.drop(columns=["end_time"]), cells, arms,
                   pd.DataFrame(excluded, columns=["what", "reason"]), studies, commits, logged_study_file(parents),
                   predictions)


def test_predictions(runs: pd.DataFrame, excluded: list[dict[str, str]]) -> dict[str, pd.DataFrame]:
    """Each final run's test_predictions.csv (row, label, prediction, prob_0..prob_{C-1}), read once; a run
    without it (an older harness, a failed upload) is left out of the per-task tests, stated."""
    out = {}
    for r in runs.itertuples():
        try:
            text = mlflow.artifacts.load_text(f"runs:/{r.run_id}/{Artifact.TEST_PREDICTIONS}")
        except Exception as err:  # MLflow raises several types for a missing artifact
            excluded.append({"what": f"{r.arm} | {r.task} | seed {r.seed}",
                             "reason": f"final run {r.run_id} has no readable {Artifact.TEST_PREDICTIONS} "
                                       f"({type(err).__name__}): left out of the per-task tests"})
            continue
        out[r.run_id] = pd.read_csv(io.StringIO(text)).sort_values("row").reset_index(drop=True)
    return out


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


# Tags an older harness did not write, and what its runs did: they all fine-tuned. Read so, they keep their
# contrasts (an unrecorded factor cannot be shown equal, so it would leave every task out of them).
UNRECORDED_MEANS = {Tag.MODE: Mode.FINETUNE}


def tags_of(run: Run, keys) -> dict[str, str]:
    """`keys` of a run's tags, "" where not recorded, but for the tags whose absence has a known meaning."""
    tags = {k: run.data.tags.get(k, "") for k in keys}
    return {k: v or UNRECORDED_MEANS.get(k, "") for k, v in tags.items()}


def arm_table(parents: list[Run]) -> pd.DataFrame:
    rows = {}
    for p in parents:
        rows[variant_of(p)] = tags_of(p, ARM_TAGS)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant").sort_index()


PARENT_TAGS = (*FACTORS, Tag.SEARCH_SPACE, Tag.TUNING_BOUNDARY, Tag.TUNING_BOUNDARY_SIDES, Tag.DEVICE)


def parent_table(parents: list[Run]) -> pd.DataFrame:
    """Per (arm variant, task): the factors its parent run recorded (what a contrast may vary or must hold
    equal), how well it was tuned, and where it ran. A factor an older run did not record is "" (its mode:
    finetune, UNRECORDED_MEANS)."""
    overlaps = [overlap_metric(overlap_pair(a, b, kind)) for a, b in OVERLAP_PAIRS for kind in ("exact", "contained")]
    numbers = [Tag.BEST_EPOCH_AT_CAP, *overlaps]
    rows = [{"arm": variant_of(p), "task": p.data.tags[Tag.TASK], **tags_of(p, PARENT_TAGS),
             **{n: parent_number(p, n) for n in numbers}} for p in parents]
    return pd.DataFrame(rows, columns=["arm", "task", *PARENT_TAGS, *numbers])


def parent_number(parent: Run, name: str) -> float:
    """A count a parent run keeps as a tag (so that its metrics are its results alone); runs of an older harness
    logged it as a metric. NaN when neither."""
    if name in parent.data.tags:
        try:
            return float(parent.data.tags[name])
        except ValueError:
            return math.nan
    return parent.data.metrics.get(name, math.nan)


def overlap_notes(cells: pd.DataFrame) -> list[str]:
    """One line per task whose splits share sequences (exact or contained, either strand), as its parent runs
    recorded them: its results may flatter every arm alike (`python -m harness leakage` shows across tasks)."""
    columns = [c for c in cells.columns if c.startswith("overlap_")]
    notes = []
    for task, mine in cells.groupby("task"):
        found = {c.removeprefix("overlap_"): int(mine[c].max()) for c in columns if mine[c].max() > 0}
        if found:
            notes.append(f"{task}: its splits share sequences (" + ", ".join(f"{k} {v}" for k, v in found.items())
                         + "; reverse complements count): reported, not removed")
    return notes


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


def same_predictions(run_ids: list[str], predictions: dict[str, pd.DataFrame]) -> bool:
    """Whether these runs logged the same class probabilities for every test sequence (True when any of
    them logged none: the metrics alone then decide, which at worst counts equal seeds once)."""
    frames = [predictions[r].filter(like="prob_").to_numpy(float) for r in run_ids if r in predictions]
    if len(frames) < len(run_ids):
        return True
    return all(f.shape == frames[0].shape and np.allclose(f, frames[0], rtol=0, atol=1e-9) for f in frames[1:])


def cell_table(runs: pd.DataFrame, metric: str, tuning: pd.DataFrame,
               predictions: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per (arm, task): the metric's mean and sd over seeds, and the compute behind it.

    Seeds that gave the same value of every test metric and, where they logged them, the same class
    probabilities on every test sequence are identical replicates (a deterministic solver such as kmer_logreg
    ignores the seed): they are one observation, so the cell counts one seed (n_seeds = 1, no sd); n_runs
    keeps the number of final runs. The probabilities keep a model that collapsed to one class on every seed
    (the same MCC of 0, different weights) from passing for a deterministic one.

    Compute: tuning_seconds/flops (every trial), final_seconds/flops (every final seed), embed_seconds/flops (a
    probed cell's frozen-backbone pass over its splits, which its trials and seeds share: each final run carries
    the cell's value, so it is taken once; 0 for a fine-tuned cell), and compute_seconds/flops, their sum."""
    # Runs of an older harness (or tables built by hand) have no embedding columns: nothing was embedded.
    runs = runs.assign(**{m: math.nan for m in (Metric.EMBED_SECONDS, Metric.EMBED_FLOPS) if m not in runs})
    g = runs.groupby(["arm", "task"])
    cells = g.agg(n_runs=("seed", "size"),
                  **{f"{m}_mean": (m, "mean") for m in TEST_METRICS},
                  **{f"{m}_sd": (m, "std") for m in TEST_METRICS},
                  final_seconds=("train_seconds", "sum"), final_flops=("flops", "sum"),
                  params=(Metric.PARAMS, "first"), pretrain_seconds=("pretrain_seconds", "first"),
                  pretrain_flops=("pretrain_flops", "first"),
                  pretrain_gpu_hours=("pretrain_gpu_hours", "first"),
                  embed_seconds=(Metric.EMBED_SECONDS, "first"),
                  embed_flops=(Metric.EMBED_FLOPS, "first")).reset_index()
    identical = g[list(TEST_METRICS)].agg(lambda x: x.round(12).nunique(dropna=False) == 1).all(axis=1)
    # How many different values of the compared metric the seeds gave: 1 of 3 is one observation, not three
    # with a standard deviation of 0 (the report says so instead of printing ± 0.000).
    cells["n_distinct_scores"] = g[metric].agg(lambda x: x.round(12).nunique(dropna=False)).to_numpy()
    same = g["run_id"].agg(lambda ids: same_predictions(list(ids), predictions or {}))
    cells["identical_replicates"] = (cells["n_runs"] > 1) & identical.to_numpy() & same.to_numpy()
    cells.insert(2, "n_seeds", cells["n_runs"].where(~cells["identical_replicates"], 1))
    for m in TEST_METRICS:
        cells.loc[cells["identical_replicates"], f"{m}_sd"] = math.nan
    cells = cells.merge(tuning, on=["arm", "task"], how="left")
    cells[["trials_run", "tuning_seconds", "tuning_flops"]] = cells[["trials_run", "tuning_seconds", "tuning_flops"]].fillna(0)
    cells[["embed_seconds", "embed_flops"]] = cells[["embed_seconds", "embed_flops"]].fillna(0)
    # What this arm's number on this task cost: tuning, final seeds, the embedding pass once (pretraining apart).
    cells["compute_seconds"] = cells["tuning_seconds"] + cells["final_seconds"] + cells["embed_seconds"]
    cells["compute_flops"] = cells["tuning_flops"] + cells["final_flops"] + cells["embed_flops"]
    cells["score_mean"], cells["score_sd"] = cells[f"{metric}_mean"], cells[f"{metric}_sd"]
    return cells
