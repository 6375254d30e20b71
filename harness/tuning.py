"""The tuning of one cell (an arm on a task): tune it with the study's budget, then retrain the best
configuration with K seeds and evaluate it once on test. One Optuna study per (study, arm variant, task),
persistent in the storage: running the same command again resumes it (finished trials and final runs are
kept, not redone). What is logged under which name is `schema.py`; how workers share a study is `workers.py`.

Fairness rules enforced here:
  - every arm gets the study's n_trials finished trials (complete or pruned) and its epoch cap;
  - tuning and checkpoint selection see dev only; test is scored only by the final runs;
  - a resumed study must have the same configuration (budget, search space, data, ...), else it is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import torch
import yaml
from matplotlib.colors import to_hex
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from . import figures, shutdown, tracking, workers
from .arms import Fitted, RunOptions
from .data import TaskData
from .errors import DivergedError, NoCompletedTrialError, StudyError
from .metrics import classification_metrics, confusion
from .progress import Progress, format_seconds
from .request import Cell, RunRequest
from .schema import (
    Artifact,
    Metric,
    Mode,
    Stage,
    Tag,
    final_run_name,
    seed_label,
    overlap_metric,
    split_metrics,
    trial_count_metric,
    trial_run_name,
    truncated_metric,
)
from .studies import as_study_entry, describe_distribution
from .train import MEMORY_ERRORS, EpochResult, free_memory

log = logging.getLogger("harness")
TRIAL_SEED_OFFSET = 10_000  # trial seeds never coincide with the final seeds 0..K-1


def tune(request: RunRequest) -> None:
    """Every cell of a request, once all of it is checked: runtime, arms, data, storage, MLflow."""
    tasks = request.validate()
    storage = workers.open_storage(request.storage)
    experiment_id = tracking.setup(request.experiment_name)
    log.info("arm %s on %d task(s) of study %s; MLflow %s, Optuna %s", ", ".join(request.arms), len(tasks),
             request.spec.name, tracking.redact(mlflow.get_tracking_uri()), tracking.redact(request.storage))
    with request.runtime.reproducible():  # deterministic kernels for every fit and scoring, when asked
        for cell in request.cells(tasks):
            tune_cell(cell, storage, experiment_id)
    for line in tracking.where_to_look(experiment_id, request.spec.name, request.experiment_name, request.storage):
        log.info("%s", line)


def run_config(cell: Cell) -> dict[str, Any]:
    """Everything that makes two runs of a cell the same comparison. A study resumed under a different
    configuration would mix results, so `workers.open_study` refuses it."""
    spec, arm, options = cell.spec, cell.arm, cell.options
    tokenizer_file = None
    if options.tokenizer_path:
        path = Path(options.tokenizer_path)
        tokenizer_file = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else options.tokenizer_path
    return {
        **spec.protocol(cell.space), "n_trials": cell.request.n_trials, "seeds": cell.request.seeds,
        "arm": arm.name, "search_space_name": cell.space,
        "sampler": {"seed": spec.sampler_seed, "n_startup_trials": spec.n_startup_trials},
        "data_fingerprint": {name: cell.task.split(name).fingerprint for name in ("train", "dev", "test")},
        "tokenizer_file_sha256": tokenizer_file, "bpe_vocab_size": options.bpe_vocab_size,
        "max_length": options.max_length,
        # bf16 and fp32 runs differ in their numbers: one study is one precision.
        "precision": options.runtime.precision if arm.neural else "fp32",
        # Deterministic kernels change the numbers too (another attention kernel, other conv algorithms).
        "deterministic": options.runtime.deterministic,
        # The weights' sha, not their source: a hub id and a local copy of it are the same checkpoint.
        "init": None if options.checkpoint is None else {"weights_sha256": options.checkpoint.fingerprint,
                                                         "weights": "random (twin)" if options.twin else "loaded"},
        # An hf arm's tokenizer is its checkpoint folder's files, which the weights' sha does not cover.
        **({"tokenizer_sha": arm.tokenizer_sha(cell.task, options)} if arm.checkpoint_reader == "hf" else {}),
    }


def open_study(cell: Cell, storage: RDBStorage, config: dict[str, Any]) -> optuna.Study:
    spec = cell.spec
    sampler = optuna.samplers.TPESampler(seed=workers.sampler_seed(spec.sampler_seed, cell.optuna_study, storage),
                                         n_startup_trials=spec.n_startup_trials)
    pruner = optuna.pruners.NopPruner() if spec.pruner is None else optuna.pruners.MedianPruner(**spec.pruner)
    return workers.open_study(cell.optuna_study, storage, sampler, pruner, config,
                              fix=f"{spec.path}, n_trials, data, tokenizer, max_length")


def fit_and_log(cell: Cell, params: dict[str, Any], seed: int, progress: Progress, stage: str,
                after_epoch: Callable[[EpochResult], None] | None = None,
                on_accumulation: Callable[[int], None] | None = None) -> Fitted:
    """The one path of every fit, trial or final seed, inside its MLflow run: train the cell's arm; after each
    epoch log its curves (step = epoch, names prefixed `epoch_`), print a progress line and call
    `after_epoch` (a trial's pruning); after the fit log its cost.

    A torch arm's fit that runs out of memory is rerun from scratch with twice the gradient accumulation (the
    same batches, optimiser steps and seed, in smaller micro-batches), until its micro-batch is one sequence;
    then the memory error propagates. The accumulation of each attempt is tagged `grad_accumulation` and
    passed to `on_accumulation` (a trial's user attribute). The rerun logs its curves under the same names
    and steps, after the failed attempt's: tag `oom_superseded_epochs` says how many epochs hold such an
    earlier point (an attempt usually runs out in its first epoch, before logging any). Optuna keeps the first
    value reported for an epoch, so the pruner sees those epochs of the failed attempt: the same training (same
    seed, batches and steps) up to float rounding and dropout draws."""
    options, max_epochs = cell.options, cell.budget.max_epochs
    superseded, logged = 0, 0  # epochs logged by the attempts that ran out of memory; by the current attempt

    def attempt(options: RunOptions) -> Fitted:
        nonlocal logged
        accumulation = options.grad_accumulation
        attempt_stage = stage if accumulation == 1 else f"{stage} [grad_accumulation {accumulation}]"
        best, logged = -math.inf, 0

        @shutdown.uninterrupted  # its writes (MLflow curves, Optuna's report) are never cut in half
        def on_epoch(record: EpochResult) -> None:
            nonlocal best, logged
            best, logged = max(best, record.dev["mcc"]), record.epoch
            tracking.log_metrics({f"{Metric.EPOCH_PREFIX}{Metric.TRAIN_LOSS}": record.train_loss,
                                  Metric.EPOCH_SECONDS: record.seconds,
                                  **split_metrics("dev", record.dev, Metric.EPOCH_PREFIX)}, step=record.epoch)
            progress.epoch(attempt_stage, record.epoch, max_epochs, record.train_loss, record.dev["mcc"], best,
                           record.seconds)
            if after_epoch is not None:
                after_epoch(record)

        return cell.arm.fit(cell.task, params, seed, cell.budget, options, on_epoch)

    while True:
        accumulation = options.grad_accumulation
        if cell.arm.neural:  # a one-pass estimator has no batches to accumulate
            with shutdown.deferred():
                mlflow.set_tag(Tag.GRAD_ACCUMULATION, accumulation)
                if on_accumulation is not None:
                    on_accumulation(accumulation)
        try:
            fitted = attempt(options)
            break
        except MEMORY_ERRORS as err:
            batch_size = int(params.get("batch_size", 1))
            if not cell.arm.neural or math.ceil(batch_size / accumulation) <= 1:
                raise  # nothing smaller to try: the caller prunes the trial or fails the final seed
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
        # Out of the except block, the failed attempt's traceback and with it its model, optimiser state and
        # activations are gone: only now can their memory be given back before the rerun.
        free_memory()
        progress.redo(logged)
        if logged > superseded:
            superseded = logged
            tracking.set_tags({Tag.OOM_SUPERSEDED_EPOCHS: superseded})
        # Up to one sequence per micro-batch, never more micro-batches than sequences in a batch.
        options = replace(options, grad_accumulation=min(2 * accumulation, batch_size))
        log.warning("%s | %s ran out of memory (%s) after %d epoch(s) at grad_accumulation %d; rerunning at "
                    "grad_accumulation %d (micro-batches of %d, batch size %d unchanged)", cell.label, stage, message,
                    logged, accumulation, options.grad_accumulation,
                    math.ceil(batch_size / options.grad_accumulation), batch_size)
    progress.skip(max_epochs - len(fitted.result.history))
    result = fitted.result
    tracking.log_metrics({Metric.BEST_EPOCH: result.best_epoch, Metric.PARAMS: fitted.n_params,
                          Metric.TRAIN_SECONDS: result.train_seconds, Metric.FLOPS: result.flops})
    if result.tags:
        tracking.set_tags(result.tags)
    return fitted


class Objective:
    """One Optuna trial = one nested MLflow run that trains the arm on train and scores dev."""

    def __init__(self, cell: Cell, progress: Progress, tags: dict[str, Any], datasets: dict[str, Any]) -> None:
        self.cell, self.progress, self.tags, self.datasets = cell, progress, tags, datasets
        self.recent_duplicates: list[int] = []

    def __call__(self, trial: optuna.Trial) -> float:
        cell, n_trials, max_epochs = self.cell, self.cell.request.n_trials, self.cell.budget.max_epochs
        try:
            with shutdown.deferred():  # Optuna writes the worker, the sampled parameters
                trial.set_user_attr("worker", workers.WORKER)
                workers.check_trial_slot(trial, n_trials)
                params = cell.spec.suggest(trial, cell.space)
                workers.check_not_duplicate(trial, trial.params, self.recent_duplicates)
        except workers.SkippedTrial as skipped:
            trial.set_user_attr("skip_reason", str(skipped))
            log.info("%s | trial %d skipped (not counted): %s", cell.label, trial.number, skipped)
            raise
        seed = TRIAL_SEED_OFFSET + trial.number
        tags = {**self.tags, Tag.STAGE: Stage.TRIAL, Tag.TRIAL_NUMBER: trial.number, Tag.TRAIN_SEED: seed}
        with tracking.run(trial_run_name(cell.label, trial.number, n_trials), tags, nested=True,
                          finished_on=(optuna.TrialPruned,)) as run:
            with shutdown.deferred():
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                tracking.log_params(params)
                tracking.log_datasets(self.datasets, ("train", "dev"))  # a trial never sees test
            # Trial numbers keep counting across resumes and retries; show the budget position too.
            stage = f"trial {trial.number} ({workers.counted_trials(trial.study) + 1}/{n_trials})"

            def prune(record: EpochResult) -> None:
                trial.report(record.dev["mcc"], record.epoch)
                if trial.should_prune():
                    self.progress.skip(max_epochs - record.epoch)
                    raise optuna.TrialPruned(f"pruned at epoch {record.epoch}: dev MCC {record.dev['mcc']:.4f} "
                                             "below the median of earlier trials")

            try:
                fitted = fit_and_log(cell, params, seed, self.progress, stage, after_epoch=prune,
                                     on_accumulation=lambda k: trial.set_user_attr(Tag.GRAD_ACCUMULATION, k))
            except optuna.TrialPruned as pruned:
                self.record_end(trial, "PRUNED", str(pruned))
                raise
            except DivergedError as err:
                self.progress.skip(max_epochs)  # upper bound; the ETA only needs a rough plan
                self.record_end(trial, "PRUNED", f"diverged: {err}")
                raise optuna.TrialPruned(f"diverged: {err}") from None
            except (torch.OutOfMemoryError, MemoryError) as err:  # the last resort: fit_and_log's reruns failed too
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.progress.skip(max_epochs)
                reason = f"out of memory: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                accumulation = trial.user_attrs.get(Tag.GRAD_ACCUMULATION, 1)
                if accumulation > 1:
                    micro = math.ceil(int(params["batch_size"]) / accumulation)
                    reason += f" (still at grad_accumulation {accumulation}, micro-batches of {micro})"
                self.record_end(trial, "PRUNED", reason)
                raise optuna.TrialPruned(reason) from None
            with shutdown.deferred():
                tracking.log_metrics({Metric.BEST_DEV_MCC: fitted.result.best_dev["mcc"]})
                trial.set_user_attr(Metric.BEST_EPOCH, fitted.result.best_epoch)
                self.record_end(trial, "COMPLETE", "")
            return fitted.result.best_dev["mcc"]

    @shutdown.uninterrupted
    def record_end(self, trial: optuna.Trial, state: str, reason: str) -> None:
        mlflow.set_tags({Tag.TRIAL_STATE: state, **({Tag.FAIL_REASON: reason[:5000]} if reason else {})})
        if reason:
            trial.set_user_attr("fail_reason", reason)
            log.warning("%s | trial %d %s: %s", self.cell.label, trial.number, state.lower(), reason)


def run_final(cell: Cell, params: dict[str, Any], seed: int, claim: optuna.Trial, progress: Progress,
              tags: dict[str, Any], datasets: dict[str, Any]) -> float:
    """Retrain the chosen configuration with one seed; score dev and, once, test. Returns dev MCC (the
    value of the seed's claim trial: test never reaches Optuna). With save_models= best or all, the fitted
    model is logged in the run (`register_models` registers it once every seed is done)."""
    tags = {**tags, Tag.STAGE: Stage.FINAL, Tag.SEED: seed, Tag.CLAIM_TRIAL: claim.number}
    name = seed_label(seed, cell.request.seeds)
    with tracking.run(final_run_name(cell.label, seed), tags, nested=True) as run:
        with shutdown.deferred():
            claim.set_user_attr("mlflow_run_id", run.info.run_id)
            tracking.log_params(params)
            tracking.log_datasets(datasets)
        fitted = fit_and_log(cell, params, seed, progress, name)
        task = cell.task
        dev_probs, test_probs = fitted.predict("dev"), fitted.predict("test")
        dev = classification_metrics(task.dev.labels, dev_probs)
        test = classification_metrics(task.test.labels, test_probs)
        tracking.log_metrics({**split_metrics("test", test), **split_metrics("dev", dev),
                              **cell.arm.inherited_cost(cell.options),
                              **cell.arm.embedding_cost(task, cell.options),  # the cell's, on every seed alike
                              **{truncated_metric(split): n for split, n in fitted.truncated().items()}})
        if fitted.result.tags:  # what scoring dev and test added (a probe: where the test embeddings came from)
            tracking.set_tags(fitted.result.tags)
        log_final_artifacts(fitted, cell, test_probs, seed)
        if cell.request.save_models != "none":
            log_model(fitted, task, cell.label, name)
        log.info("%s | %s | test_mcc %.4f | test_f1 %.4f | test_accuracy %.4f",
                 cell.label, name, test["mcc"], test["f1"], test["accuracy"])
        return dev["mcc"]


@shutdown.uninterrupted
def log_model(fitted: Fitted, task: TaskData, label: str, seed_name: str) -> None:
    """The seed's model, where save_models= asks. Its test score is already logged: a model that cannot be saved
    (a full disk, a lost artifact store, a bug in an export) is reported with its traceback and tagged
    `model_error`, and the seed still counts; it is then not registered."""
    from . import serving  # MLflow's pyfunc flavour: imported only where models are saved

    try:
        serving.log_model(fitted, input_example=task.dev.sequences[:3])
    except Exception as err:
        log.exception("%s | %s: its model could not be logged (%s); the seed's results are kept", label, seed_name,
                      type(err).__name__)
        tracking.set_tags({Tag.MODEL_ERROR: f"{type(err).__name__}: {err}"[:5000]})


@shutdown.uninterrupted
def log_final_artifacts(fitted: Fitted, cell: Cell, test_probs: np.ndarray, seed: int) -> None:
    task, what = cell.task, f"{cell.variant} on {cell.task.name}, seed {seed}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = [
            figures.confusion_matrix(confusion(task.test.labels, test_probs), folder / Artifact.CONFUSION_MATRIX,
                                     f"{what}: test"),
            figures.learning_curve(fitted.result.history, folder / Artifact.LEARNING_CURVE, what,
                                   selected_epoch=fitted.result.best_epoch if cell.arm.neural else None),
        ]
        predictions = pd.DataFrame({"label": task.test.labels, "prediction": test_probs.argmax(axis=1)})
        for c in range(test_probs.shape[1]):
            predictions[f"prob_{c}"] = test_probs[:, c]
        predictions.to_csv(folder / Artifact.TEST_PREDICTIONS, index_label="row")
        files += [folder / Artifact.TEST_PREDICTIONS, *fitted.artifacts(folder)]
        for path in files:
            mlflow.log_artifact(str(path))


@shutdown.uninterrupted
def close_stale_runs(experiment_id: str, parent_id: str, stage: str, number_tag: str, study: optuna.Study) -> None:
    """A worker killed with SIGKILL leaves its trial's (or final seed's) MLflow run RUNNING; once Optuna
    has failed that trial (heartbeat), its run is closed as FAILED."""
    trials = study.get_trials(deepcopy=False)
    for r in tracking.child_runs(experiment_id, parent_id, stage, status="RUNNING"):
        number = int(r.data.tags.get(number_tag, -1))
        if 0 <= number < len(trials) and trials[number].state != TrialState.RUNNING:
            MlflowClient().set_terminated(r.info.run_id, "FAILED")
            log.info("closed the MLflow run of %s %d (its process died) as FAILED", stage, number)


def check_same_stores(experiment_id: str, identity: dict[str, str], study: optuna.Study, cell: Cell) -> None:
    """A study with finished trials has its parent run in the MLflow store it ran with (the parent is made before
    the first trial). None here: these are not that study's two stores (a new mlflow.db beside an old optuna.db,
    another MLFLOW_TRACKING_URI, or the parent deleted in the UI), and resuming would report its finished trials
    and final seeds with no runs behind them."""
    if tracking.find_parent_run(experiment_id, identity) is None:
        raise StudyError(
            f"{cell.label}: the Optuna storage {tracking.redact(cell.request.storage)} has {workers.counted_trials(study)} "
            f"finished trial(s) of this cell, but the MLflow store {tracking.redact(mlflow.get_tracking_uri())} has no "
            "run of them (experiment, parent run): the two do not belong together. Point MLFLOW_TRACKING_URI at the "
            "store this study was run with, or pass a new storage= to start the cell afresh")


@contextlib.contextmanager
def parent_run(experiment_id: str, identity: dict[str, str], tags: dict[str, Any], label: str) -> Iterator[Run]:
    """The cell's parent run, claimed (created RUNNING if new) and started as one step: a signal meanwhile is
    raised once the run is started, so that it ends KILLED rather than staying RUNNING."""
    with contextlib.ExitStack() as stack:
        with shutdown.deferred():
            parent_id = tracking.claim_parent_run(experiment_id, identity, tags, label)
            # MLflow's system metrics (CPU, GPU, disk, network) only where MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING asks:
            # by default the parent's metrics are its results, first on its page and alone in its charts.
            parent = stack.enter_context(tracking.run(label, tags, run_id=parent_id))
        try:
            yield parent
        except BaseException as err:
            describe_stopped_parent(err)
            raise


def describe_stopped_parent(err: BaseException) -> None:
    """A parent that stops early says so in its description, which otherwise still reads "running: ..."."""
    if tracking.lost_server_message(err):
        return  # nothing can be written to a server that is gone
    what = ("interrupted: run the same command to resume" if isinstance(err, KeyboardInterrupt)
            else f"stopped by an error ({type(err).__name__}): see the log and the trial runs' fail_reason tags; "
                 "run the same command to resume")
    with shutdown.deferred(), contextlib.suppress(Exception):
        tracking.set_tags({Tag.NOTE: what})


def tune_cell(cell: Cell, storage: RDBStorage, experiment_id: str) -> None:
    """The whole protocol for one (arm, task): tune, pick on dev, retrain with K seeds, test once."""
    request, spec, arm, task = cell.request, cell.spec, cell.arm, cell.task
    config = run_config(cell)
    study = open_study(cell, storage, config)
    identity = {Tag.STUDY: spec.name, Tag.ARM: arm.name, Tag.VARIANT: cell.variant, Tag.TASK: task.name,
                Tag.STAGE: Stage.STUDY}
    uid, provenance = study.user_attrs["study_uid"], request.provenance()
    factors = {**arm.tags(cell.options), **cell.factors()}
    source = {**tracking.source_tags(request.command, provenance[Tag.GIT_COMMIT]),
              Tag.RUN_COLOR: arm_color(arm.name, cell.options.mode)}
    tags = {**identity, **factors, **provenance, **source, Tag.OPTUNA_STUDY: study.study_name, Tag.STUDY_UID: uid,
            Tag.TASK_SOURCE: task.source, Tag.NOTE: f"running: {budget_line(cell)}"}
    done_before = workers.counted_trials(study)
    if done_before:
        check_same_stores(experiment_id, {**identity, Tag.STUDY_UID: uid}, study, cell)
        log.info("%s | resuming: %d/%d trials already finished", cell.label, done_before, request.n_trials)
    log.info("%s | %s", cell.label, budget_line(cell))
    datasets = tracking.split_datasets(task)

    with parent_run(experiment_id, {**identity, Tag.STUDY_UID: uid}, tags, cell.label) as parent:
        with shutdown.deferred():  # writes that a signal must not cut in half
            tracking.log_params({**readable_config(cell, config), "num_classes": task.num_classes})
            mlflow.log_dict(task.summary(), Artifact.TASK_SUMMARY)
            mlflow.log_text(Path(spec.path).read_text(), Artifact.STUDY_FILE)
            mlflow.log_text(search_space_yaml(cell), Artifact.SEARCH_SPACE)
            tracking.log_datasets(datasets)
            tracking.set_tags({overlap_metric(pair): n for pair, n in task.overlaps.items()})
            tracking.log_metrics(arm.inherited_cost(cell.options))
            workers.with_storage_retries(lambda: describe_optuna_study(study, cell, experiment_id, parent.info.run_id),
                                         "describing the Optuna study", request.storage)

        seeds_done = {int(r.data.tags[Tag.SEED])
                      for r in tracking.child_runs(experiment_id, parent.info.run_id, Stage.FINAL)}
        final_seeds = workers.FinalSeeds(storage, study.study_name, request.seeds, seeds_done)
        with shutdown.deferred():
            workers.with_storage_retries(
                lambda: describe_optuna_study(final_seeds.study, cell, experiment_id, parent.info.run_id, final=True),
                "describing the final-seed study", request.storage)
        remaining = max(request.n_trials - done_before, 0)
        progress = Progress(cell.label, (remaining + request.seeds - len(seeds_done)) * cell.budget.max_epochs,
                            one_pass=not arm.neural)
        child_tags = {**identity, **factors, **source, Tag.GIT_COMMIT: provenance[Tag.GIT_COMMIT],
                      Tag.DEVICE: provenance[Tag.DEVICE], Tag.DETERMINISTIC: provenance[Tag.DETERMINISTIC]}

        def close_dead_workers_runs() -> None:
            close_stale_runs(experiment_id, parent.info.run_id, Stage.TRIAL, Tag.TRIAL_NUMBER, study)
            close_stale_runs(experiment_id, parent.info.run_id, Stage.FINAL, Tag.CLAIM_TRIAL, final_seeds.study)

        workers.run_trials(study, Objective(cell, progress, child_tags, datasets), request.n_trials, cell.label,
                           between=close_dead_workers_runs)
        best = record_best_trial(study, cell, request.n_trials)
        record_tuning_adequacy(best, spec.space(cell.space), cell.budget.max_epochs, cell.label)

        params = {**spec.fixed.get(cell.space, {}), **best.params}
        final_seeds.run_all(lambda seed, claim: run_final(cell, params, seed, claim, progress, child_tags, datasets),
                            cell.label, between=close_dead_workers_runs)

        finals = latest_per_seed(tracking.child_runs(experiment_id, parent.info.run_id, Stage.FINAL), request.seeds)
        test_mcc = [r.data.metrics[Metric.TEST_MCC] for r in finals]
        # The sample sd (n - 1), as the report gives it; none from one seed (not logged: MLflow drops NaN).
        sd = float(np.std(test_mcc, ddof=1)) if len(test_mcc) > 1 else float("nan")
        tracking.log_metrics({Metric.TEST_MCC_MEAN: float(np.mean(test_mcc)), Metric.TEST_MCC_STD: sd})
        tracking.set_tags({Tag.N_SEEDS: len(test_mcc)})
        if request.save_models != "none":
            register_models(cell, parent.info.run_id, finals)
        summary = result_line(cell, test_mcc, best, experiment_id, parent.info.run_id)
        tracking.set_tags({Tag.NOTE: summary})
        log.info("%s | done in %s: %s", cell.label, progress.elapsed(), summary)


def arm_color(arm: str, mode: str = Mode.FINETUNE) -> str:
    """An arm's colour in MLflow's charts, the same in every experiment (the registry's order, matplotlib's
    cycle): the UI otherwise hashes run ids into colours, often the same one for different arms. Probed, the
    same colour halfway to white: the two modes of one arm read as a pair, and apart."""
    from matplotlib.colors import to_rgb

    from .arms import ARMS

    color = np.array(to_rgb(figures.arm_colors(name for name, _ in ARMS.items())[arm]))
    return to_hex(color + (1 - color) / 2 if mode == Mode.PROBE else color)


def latest_per_seed(finals: list[Run], seeds: int) -> list[Run]:
    """One finished run per seed below `seeds`, the latest where a seed finished twice (a worker that died after
    its run ended but before Optuna recorded it): what the report keeps too (analysis/collect.py)."""
    latest: dict[int, Run] = {}
    for run in sorted(finals, key=lambda r: r.info.end_time or 0):
        seed = int(run.data.tags[Tag.SEED])
        if seed < seeds:
            latest[seed] = run
    return [latest[seed] for seed in sorted(latest)]


def budget_line(cell: Cell) -> str:
    """What the cell will run, in the words that fit the arm: a one-pass estimator has no epochs."""
    n_trials, seeds, epochs = cell.request.n_trials, cell.request.seeds, cell.budget.max_epochs
    fits = (f"{n_trials} trials (one pass each: a one-pass estimator) and {seeds} final seeds" if not cell.arm.neural
            else f"{n_trials} trials x up to {epochs} epochs and {seeds} final seeds")
    return f"tuning {fits}, study {cell.spec.name}"


def result_line(cell: Cell, test_mcc: list[float], best: optuna.trial.FrozenTrial, experiment_id: str,
                parent_id: str) -> str:
    """The parent run's description: its result in one line (mean ± sample sd over the seeds, the best trial,
    the compute of the whole cell)."""
    n = len(test_mcc)
    if n > 1 and max(test_mcc) - min(test_mcc) < 1e-12:
        score = f"test MCC {test_mcc[0]:.3f} (identical over {n} seeds: a deterministic fit)"
    elif n > 1:
        score = f"test MCC {np.mean(test_mcc):.3f} ± {np.std(test_mcc, ddof=1):.3f} (sd over {n} seeds)"
    else:
        score = f"test MCC {np.mean(test_mcc):.3f} (1 seed)"
    runs = [r for stage in (Stage.TRIAL, Stage.FINAL) for r in tracking.child_runs(experiment_id, parent_id, stage)]
    seconds = sum(r.data.metrics.get(Metric.TRAIN_SECONDS, 0.0) for r in runs)
    flops = sum(r.data.metrics.get(Metric.FLOPS, 0.0) for r in runs)
    # A probe's embedding pass is the cell's, once, whatever its fits reused (every final run logs the same value).
    embedding = max((r.data.metrics.get(Metric.EMBED_SECONDS, 0.0) for r in runs), default=0.0)
    embed_flops = max((r.data.metrics.get(Metric.EMBED_FLOPS, 0.0) for r in runs), default=0.0)
    took = f"{seconds:.1f}s" if seconds < 60 else format_seconds(seconds)
    line = (f"{score} · best trial {best.number}: dev MCC {best.value:.3f} · cost {took} of training, "
            f"{flops:.2g} FLOPs over {len(runs)} fits (tuning + finals)")
    if embedding:
        took = f"{embedding:.1f}s" if embedding < 60 else format_seconds(embedding)
        line += f" + {took}, {embed_flops:.2g} FLOPs embedding the splits once (frozen backbone)"
    return line


def readable_config(cell: Cell, config: dict[str, Any]) -> dict[str, Any]:
    """The run configuration as MLflow parameters a user can read: each tuned range in words."""
    space = cell.spec.space(cell.space)
    return {**config, "search_space": {name: describe_distribution(dist) for name, dist in space.items()}}


def search_space_yaml(cell: Cell) -> str:
    """The cell's search space, fixed values and budget, written the way the study file declares them."""
    spec = cell.spec
    return yaml.safe_dump({
        "study": spec.name, "search_space": cell.space,
        "tuned": {name: as_study_entry(dist) for name, dist in spec.space(cell.space).items()},
        "fixed": spec.fixed.get(cell.space, {}),
        "budget": {"n_trials": cell.request.n_trials, "max_epochs": cell.budget.max_epochs,
                   "patience": spec.patience, "seeds": cell.request.seeds},
    }, sort_keys=False)


def describe_optuna_study(study: optuna.Study, cell: Cell, experiment_id: str, parent_id: str,
                          final: bool = False) -> None:
    """What optuna-dashboard shows of a study: the objective's name, the cell it tunes and its MLflow runs; a
    seed queue says it is not a tuning study."""
    metric = FINAL_QUEUE_METRIC if final else Metric.DEV_MCC
    if study.metric_names != [metric]:
        study.set_metric_names([metric])
    attrs = {Tag.ARM: cell.arm.name, Tag.VARIANT: cell.variant, Tag.TASK: cell.task.name, Tag.STUDY: cell.spec.name,
             "mlflow_experiment_id": experiment_id, "mlflow_parent_run_id": parent_id,
             "kind": FINAL_QUEUE_KIND if final else "tuning: one trial per sampled configuration, dev MCC"}
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


FINAL_QUEUE_METRIC = "dev_mcc of one final seed (not tuned: never pick a best seed)"
FINAL_QUEUE_KIND = ("final seeds, not a tuning study: each trial retrains the best configuration with one seed "
                    "(user attribute `seed`); compare the seeds, never pick one")


@shutdown.uninterrupted
def register_models(cell: Cell, parent_id: str, finals: list[Run]) -> None:
    """Register the cell's final model(s) once every seed is done: `best`, the seed with the best dev MCC (never
    chosen on test; the other seeds' logged models are deleted); `all`, every seed. Done once per cell: a
    resumed or second worker finds the parent tagged."""
    from . import serving

    parent = MlflowClient().get_run(parent_id)
    if Tag.REGISTERED_MODEL in parent.data.tags:
        return
    model_ids = {r.info.run_id: serving.logged_model_id(r) for r in finals}  # searched once per seed
    with_model = [r for r in finals if model_ids[r.info.run_id] is not None]
    best = max(finals, key=lambda r: (r.data.metrics[Metric.DEV_MCC], -int(r.data.tags[Tag.SEED])))
    chosen = with_model if cell.request.save_models == "all" else [best] if best in with_model else []
    if not chosen:
        log.warning("%s | the best final seed by dev MCC (seed %s) logged no model (save_models=none when it ran, or "
                    "its model_error tag): nothing registered", cell.label, best.data.tags[Tag.SEED])
        return
    name = serving.registered_model_name(cell.spec.name, cell.variant, cell.task.name)
    versions = []
    for run in sorted(chosen, key=lambda r: int(r.data.tags[Tag.SEED])):
        # Another worker finishing the cell at the same moment may have registered it already.
        done = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        if done:
            versions.append(f"{name}/{min(int(v.version) for v in done)}")
            continue
        version = serving.register(serving.model_uri(model_ids[run.info.run_id]), name, {
            Tag.STUDY: cell.spec.name, Tag.VARIANT: cell.variant, Tag.TASK: cell.task.name,
            Tag.SEED: run.data.tags[Tag.SEED], Metric.DEV_MCC: f"{run.data.metrics[Metric.DEV_MCC]:.4f}",
            "mlflow_run_id": run.info.run_id})
        versions.append(f"{name}/{version.version}")
    for run in with_model:
        if run not in chosen:
            serving.discard(model_ids[run.info.run_id])
    tracking.set_tags({Tag.REGISTERED_MODEL: ", ".join(versions)})
    log.info("%s | registered %s (%s): mlflow.pyfunc.load_model('models:/%s').predict([\"ACGT...\"])", cell.label,
             ", ".join(versions), "best final seed by dev MCC" if cell.request.save_models == "best" else "every seed",
             versions[0])


@shutdown.uninterrupted
def record_best_trial(study: optuna.Study, cell: Cell, n_trials: int) -> optuna.trial.FrozenTrial:
    """Log the tuning outcome on the parent run (best trial, state counts, history plot)."""
    label = cell.label
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise NoCompletedTrialError(f"{label}: none of the {n_trials} trials completed (all pruned or diverged); "
                                    "see the trial runs' fail_reason tags and widen the search space")
    best = study.best_trial
    tracking.log_metrics({Metric.BEST_DEV_MCC: best.value})
    tracking.set_tags({Tag.BEST_TRIAL: best.number,
                       **{trial_count_metric(s.name): len(study.get_trials(deepcopy=False, states=(s,)))
                          for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}})
    mlflow.log_dict(best.params, Artifact.BEST_PARAMS)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(figures.optuna_history(study, Path(tmp) / Artifact.OPTUNA_HISTORY,
                                                       f"Tuning {cell.variant} on {cell.task.name}")))
    log.info("%s | best trial %d: dev_mcc %.4f with %s", label, best.number, best.value, best.params)
    return best


BOUNDARY_SHARE = 0.05  # a best value in the outer 5% of its range (log space for log ranges) is at a boundary


def boundary_side(value: Any, dist: optuna.distributions.BaseDistribution) -> str | None:
    """`lower` or `upper` when a continuous parameter's value lies in the outer 5% of its range, else None."""
    if not isinstance(dist, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)):
        return None
    low, high, x = float(dist.low), float(dist.high), float(value)
    if dist.log:
        low, high, x = math.log(low), math.log(high), math.log(x)
    if high <= low:
        return None
    position = (x - low) / (high - low)
    return "lower" if position <= BOUNDARY_SHARE else "upper" if position >= 1 - BOUNDARY_SHARE else None


@shutdown.uninterrupted
def record_tuning_adequacy(best: optuna.trial.FrozenTrial, space: dict[str, Any], max_epochs: int,
                           label: str) -> None:
    """Was the arm tuned well enough? The best trial's parameters at the edge of their range (the optimum may
    lie outside it: widen the space) and whether its best epoch was the epoch cap (still improving: more epochs).
    Tags `tuning_boundary` (names), `tuning_boundary_sides` (name:side) and `best_epoch_at_cap` (0/1) on the
    parent run; the report sums them up per arm."""
    sides = {name: side for name, value in best.params.items() if name in space
             for side in [boundary_side(value, space[name])] if side}
    best_epoch = best.user_attrs.get(Metric.BEST_EPOCH)
    at_cap = int(max_epochs > 1 and best_epoch is not None and best_epoch >= max_epochs)
    mlflow.set_tags({Tag.TUNING_BOUNDARY: ",".join(sorted(sides)),
                     Tag.TUNING_BOUNDARY_SIDES: ",".join(f"{k}:{v}" for k, v in sorted(sides.items()))})
    tracking.set_tags({Tag.BEST_EPOCH_AT_CAP: at_cap})
    if sides or at_cap:
        log.warning("%s | tuning may be inadequate: %s", label, "; ".join(
            [f"{k} at its {v} bound ({best.params[k]:.3g})" for k, v in sorted(sides.items())]
            + (["the best trial was still improving at the epoch cap"] if at_cap else [])))
