"""Tune an arm on a task with the study's budget, then retrain the best configuration with K seeds and
evaluate it once on test. One Optuna study per (study, arm, task), persistent in the storage: running
the same command again resumes it (finished trials and final runs are kept, not redone).

Fairness rules enforced here:
  - every arm gets the study's n_trials finished trials (complete or pruned) and its epoch cap;
  - tuning and checkpoint selection see dev only; test is scored only by the final runs;
  - a resumed study must have the same protocol (budget, search space), else it is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import sqlalchemy.exc
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from . import tracking, workers
from .arms import Arm, Budget, Fitted, RunOptions, variant_name
from .data import TaskData
from .metrics import classification_metrics, confusion
from .progress import Progress
from .studies import StudyError, StudySpec
from .train import DivergedError, EpochResult, resolve_device, resolve_precision
from .workers import StorageError  # noqa: F401  (re-exported: the CLI reports it)

log = logging.getLogger("harness")
TRIAL_SEED_OFFSET = 10_000  # trial seeds never coincide with the final seeds 0..K-1


class NoCompletedTrialError(RuntimeError):
    """Every trial of the budget was pruned or diverged: there is no configuration to retrain."""


@dataclass
class ArmTaskResult:
    arm: str
    task: str
    parent_run_id: str
    best_dev_mcc: float
    best_params: dict[str, Any]
    test_mcc: list[float] = field(default_factory=list)


def open_storage(url: str) -> RDBStorage:
    """An RDB storage with heartbeats: a trial whose process died is marked failed and re-queued."""
    # A database server may drop idle connections between trials: test each before use.
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
    for attempt in range(5):
        try:
            return RDBStorage(
                url, heartbeat_interval=int(workers.HEARTBEAT_INTERVAL_S), grace_period=int(workers.HEARTBEAT_GRACE_S),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3), engine_kwargs=engine,
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
            # Workers starting together on an empty database race to create its tables: the losers retry.
            racing = isinstance(err, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) \
                or "already exists" in str(err)
            if racing and attempt < 4:
                time.sleep(random.uniform(0.2, 1.0))
                continue
            raise StorageError(f"cannot open Optuna storage {tracking.redact(url)}: {type(err).__name__}: "
                               f"{str(err).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def run_config(spec: StudySpec, arm: Arm, task: TaskData, options: RunOptions, n_trials: int) -> dict[str, Any]:
    """Everything that makes two runs of (arm, task) the same comparison. A study resumed under a
    different configuration would mix results, so `open_study` refuses it."""
    tokenizer_file = None
    if options.tokenizer_path:
        tokenizer_file = hashlib.sha256(Path(options.tokenizer_path).read_bytes()).hexdigest()[:16] \
            if Path(options.tokenizer_path).is_file() else options.tokenizer_path
    return {
        **spec.protocol(arm.family), "n_trials": n_trials, "arm": arm.name,
        "sampler": {"seed": spec.sampler_seed, "n_startup_trials": spec.n_startup_trials},
        "data_fingerprint": {name: task.split(name).fingerprint for name in ("train", "dev", "test")},
        "tokenizer_file_sha256": tokenizer_file, "bpe_vocab_size": options.bpe_vocab_size,
        "max_length": options.max_length,
        # bf16 and fp32 runs differ in their numbers: one study is one precision.
        "precision": resolve_precision(options.precision, resolve_device(options.device), options.fast_path)
        if arm.iterative else "fp32",
        # The plain reference loop batches differently; absent when on, so that older studies resume.
        **({} if options.fast_path or not arm.iterative else {"fast_path": False}),
        "init": None if options.checkpoint is None else {"source": tracking.redact(options.checkpoint.source),
                                                         "weights_sha256": options.checkpoint.fingerprint},
    }


def open_study(spec: StudySpec, variant: str, task: str, storage: RDBStorage, config: dict[str, Any]) -> optuna.Study:
    """Create or resume the Optuna study of (study, arm variant, task); refuse a resume with another config."""
    name = f"{spec.name}/{variant}/{task}"
    sampler = optuna.samplers.TPESampler(seed=workers.sampler_seed(spec.sampler_seed, name, storage),
                                         n_startup_trials=spec.n_startup_trials)
    pruner = optuna.pruners.NopPruner() if spec.pruner is None else optuna.pruners.MedianPruner(**spec.pruner)
    try:  # exactly one worker creates the study (the storage says which) and records its configuration
        storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if created:
        study.set_user_attr("config", config)
        study.set_user_attr("study_uid", uuid.uuid4().hex)  # tells this study from a namesake in another DB
    recorded = wait_for_user_attr(study, "study_uid") and study.user_attrs.get("config")
    if json.loads(json.dumps(config)) != recorded:
        changed = sorted(k for k in config.keys() | recorded.keys() if recorded.get(k) != json.loads(json.dumps(config.get(k))))
        raise StudyError(
            f"Optuna study {name!r} in this storage was run with a different configuration "
            f"(changed: {', '.join(changed)}); resuming would mix two comparisons. Restore the original "
            f"settings ({spec.path}, n_trials, data, tokenizer, max_length) or use another study name or storage."
        )
    return study


def wait_for_user_attr(study: optuna.Study, key: str, timeout_s: float = 60) -> Any:
    """A study another worker has just created gets its attributes a moment later."""
    deadline = time.monotonic() + timeout_s
    while key not in study.user_attrs:
        if time.monotonic() > deadline:
            raise StudyError(f"Optuna study {study.study_name!r} has no {key!r}: it was not created by the harness, "
                             "or its creator died while creating it; delete it (optuna delete-study) and rerun")
        time.sleep(0.2)
    return study.user_attrs[key]


def counted_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=workers.COUNTED))


class Objective:
    """One Optuna trial = one nested MLflow run that trains the arm on train and scores dev."""

    def __init__(self, spec: StudySpec, arm: Arm, task: TaskData, budget: Budget, options: RunOptions,
                 n_trials: int, progress: Progress, tags: dict[str, str]) -> None:
        self.spec, self.arm, self.task, self.budget, self.options = spec, arm, task, budget, options
        self.n_trials = n_trials
        self.progress, self.tags = progress, tags
        self.recent_duplicates: list[int] = []

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", workers.WORKER)
        try:
            workers.check_trial_slot(trial, self.n_trials)
            params = self.spec.suggest(trial, self.arm.family)
            workers.check_not_duplicate(trial, trial.params, self.recent_duplicates)
        except workers.SkippedTrial as skipped:
            trial.set_user_attr("skip_reason", str(skipped))
            log.info("%s | trial %d skipped (not counted): %s", self.progress.label, trial.number, skipped)
            raise
        seed = TRIAL_SEED_OFFSET + trial.number
        tags = {**self.tags, "stage": "trial", "trial_number": trial.number, "train_seed": seed}
        with tracking.run(f"trial-{trial.number}", tags, nested=True, finished_on=(optuna.TrialPruned,)) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            tracking.log_params(params)
            # Trial numbers keep counting across resumes and retries; show the budget position too.
            stage = f"trial {trial.number} ({counted_trials(trial.study) + 1}/{self.n_trials})"
            best = -math.inf

            def on_epoch(record: EpochResult) -> None:
                nonlocal best
                best = max(best, record.dev["mcc"])
                log_epoch(record)
                self.progress.epoch(stage, record.epoch, self.budget.max_epochs, record.train_loss,
                                    record.dev["mcc"], best, record.seconds)
                trial.report(record.dev["mcc"], record.epoch)
                if trial.should_prune():
                    self.progress.skip(self.budget.max_epochs - record.epoch)
                    raise optuna.TrialPruned(f"pruned at epoch {record.epoch}: dev MCC {record.dev['mcc']:.4f} "
                                             "below the median of earlier trials")

            try:
                fitted = self.arm.fit(self.task, params, seed, self.budget, self.options, on_epoch)
            except optuna.TrialPruned as pruned:
                self.record_end(trial, "PRUNED", str(pruned))
                raise
            except DivergedError as err:
                self.progress.skip(self.budget.max_epochs)  # upper bound; the ETA only needs a rough plan
                self.record_end(trial, "PRUNED", f"diverged: {err}")
                raise optuna.TrialPruned(f"diverged: {err}") from None
            except (torch.OutOfMemoryError, MemoryError) as err:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.progress.skip(self.budget.max_epochs)
                reason = f"out of memory: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                self.record_end(trial, "PRUNED", reason)
                raise optuna.TrialPruned(reason) from None

            result = fitted.result
            self.progress.skip(self.budget.max_epochs - len(result.history))
            tracking.log_metrics({"best_dev_mcc": result.best_dev["mcc"], "best_epoch": result.best_epoch,
                                  "params": fitted.n_params, "train_seconds": result.train_seconds,
                                  "flops": result.flops})
            self.record_end(trial, "COMPLETE", "")
            return result.best_dev["mcc"]

    def record_end(self, trial: optuna.Trial, state: str, reason: str) -> None:
        mlflow.set_tags({"trial_state": state, **({"fail_reason": reason[:5000]} if reason else {})})
        if reason:
            trial.set_user_attr("fail_reason", reason)
            log.warning("%s | trial %d %s: %s", self.progress.label, trial.number, state.lower(), reason)


def log_epoch(record: EpochResult, prefix: str = "") -> None:
    """Per-epoch curves (step = epoch). Final runs prefix them with `epoch_` because their plain
    `dev_*` metrics are the selected checkpoint's, and MLflow shows a metric's highest-step value."""
    tracking.log_metrics({f"{prefix}train_loss": record.train_loss, "epoch_seconds": record.seconds,
                          **{f"{prefix}dev_{k}": v for k, v in record.dev.items()}}, step=record.epoch)


def run_final(arm: Arm, task: TaskData, params: dict[str, Any], seed: int, budget: Budget,
              options: RunOptions, progress: Progress, tags: dict[str, str], n_seeds: int,
              claim: optuna.Trial) -> float:
    """Retrain the chosen configuration with one seed; score dev and, once, test. Returns dev MCC (the
    value of the seed's claim trial: test never reaches Optuna)."""
    tags = {**tags, "stage": "final", "seed": seed, "claim_trial": claim.number}
    with tracking.run(f"final-seed{seed}", tags, nested=True) as run:
        claim.set_user_attr("mlflow_run_id", run.info.run_id)
        tracking.log_params(params)
        best = -math.inf

        def on_epoch(record: EpochResult) -> None:
            nonlocal best
            best = max(best, record.dev["mcc"])
            log_epoch(record, prefix="epoch_")
            progress.epoch(f"final seed {seed + 1}/{n_seeds}", record.epoch, budget.max_epochs,
                           record.train_loss, record.dev["mcc"], best, record.seconds)

        fitted = arm.fit(task, params, seed, budget, options, on_epoch)
        progress.skip(budget.max_epochs - len(fitted.result.history))
        dev_probs, test_probs = fitted.predict("dev"), fitted.predict("test")
        dev = classification_metrics(task.dev.labels, dev_probs)
        test = classification_metrics(task.test.labels, test_probs)
        result = fitted.result
        tracking.log_metrics({**{f"test_{k}": v for k, v in test.items()}, **{f"dev_{k}": v for k, v in dev.items()},
                              **arm.inherited_cost(options),
                              "params": fitted.n_params, "train_seconds": result.train_seconds,
                              "flops": result.flops, "best_epoch": result.best_epoch,
                              **{f"truncated_{k}": v for k, v in fitted.truncated().items()}})
        log_final_artifacts(fitted, task, test_probs, seed)
        log.info("%s | final seed %d | test_mcc %.4f | test_f1 %.4f | test_accuracy %.4f",
                 progress.label, seed, test["mcc"], test["f1"], test["accuracy"])
        return dev["mcc"]


def log_final_artifacts(fitted: Fitted, task: TaskData, test_probs: np.ndarray, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = [
            tracking.save_confusion_matrix(confusion(task.test.labels, test_probs), folder / "confusion_matrix.png",
                                           f"{task.name} test, seed {seed}"),
            tracking.save_learning_curve(fitted.result.history, folder / "learning_curve.png",
                                         f"{task.name}, seed {seed}"),
        ]
        predictions = pd.DataFrame({"label": task.test.labels, "prediction": test_probs.argmax(axis=1)})
        for c in range(test_probs.shape[1]):
            predictions[f"prob_{c}"] = test_probs[:, c]
        predictions.to_csv(folder / "test_predictions.csv", index_label="row")
        files += [folder / "test_predictions.csv", *fitted.artifacts(folder)]
        for path in files:
            mlflow.log_artifact(str(path))


def close_stale_runs(experiment_id: str, parent_id: str, stage: str, number_tag: str, study: optuna.Study) -> None:
    """A worker killed with SIGKILL leaves its trial's (or final seed's) MLflow run RUNNING; once Optuna
    has failed that trial (heartbeat), its run is closed as FAILED."""
    trials = study.get_trials(deepcopy=False)
    for r in tracking.child_runs(experiment_id, parent_id, stage, status="RUNNING"):
        number = int(r.data.tags.get(number_tag, -1))
        if 0 <= number < len(trials) and trials[number].state != TrialState.RUNNING:
            MlflowClient().set_terminated(r.info.run_id, "FAILED")
            log.info("closed the MLflow run of %s %d (its process died) as FAILED", stage, number)


def tune_and_evaluate(spec: StudySpec, arm: Arm, task: TaskData, storage: RDBStorage, experiment_id: str,
                      options: RunOptions, n_trials: int, seeds: int, provenance: dict[str, str]) -> ArmTaskResult:
    """The whole protocol for one (arm, task): tune, pick on dev, retrain with K seeds, test once."""
    # A single-pass arm (the k-mer baseline) has one "epoch"; its progress and ETA count it as one.
    budget = Budget(spec.max_epochs if arm.iterative else 1, spec.patience)
    config = run_config(spec, arm, task, options, n_trials)
    variant = variant_name(arm, options)
    study = open_study(spec, variant, task.name, storage, config)
    identity = {"study": spec.name, "arm": arm.name, "variant": variant, "task": task.name, "stage": "study"}
    uid = study.user_attrs["study_uid"]
    tags = {**identity, **arm.tags(options), **provenance, "optuna_study": study.study_name, "study_uid": uid,
            "task_source": task.source}
    parent_id = tracking.claim_parent_run(experiment_id, {**identity, "study_uid": uid}, tags, f"{variant} | {task.name}")
    done_before = counted_trials(study)
    label = f"{variant} | {task.name}"
    if done_before:
        log.info("%s | resuming: %d/%d trials already finished", label, done_before, n_trials)

    with tracking.run(f"{variant} | {task.name}", tags, run_id=parent_id, log_system_metrics=True) as parent:
        tracking.log_params({**config, "num_classes": task.num_classes})  # fixed for this study: see open_study
        mlflow.set_tags({"seeds": seeds})
        mlflow.log_dict(task.summary(), "task_summary.json")
        mlflow.log_text(Path(spec.path).read_text(), "study.yaml")  # the analysis reads its contrasts here
        tracking.log_metrics({**{f"overlap_{k}": v for k, v in task.overlaps.items()}, **arm.inherited_cost(options)})

        seeds_done = {int(r.data.tags["seed"]) for r in tracking.child_runs(experiment_id, parent.info.run_id, "final")}
        final_seeds = workers.FinalSeeds(storage, study.study_name, seeds, seeds_done)
        remaining = max(n_trials - done_before, 0)
        progress = Progress(label, (remaining + seeds - len(seeds_done)) * budget.max_epochs)
        child_tags = {**identity, **arm.tags(options), **{k: provenance[k] for k in ("git_commit", "device")}}

        def close_dead_workers_runs() -> None:
            close_stale_runs(experiment_id, parent.info.run_id, "trial", "trial_number", study)
            close_stale_runs(experiment_id, parent.info.run_id, "final", "claim_trial", final_seeds.study)

        objective = Objective(spec, arm, task, budget, options, n_trials, progress, child_tags)
        workers.run_trials(study, objective, n_trials, label, between=close_dead_workers_runs)
        best = record_best_trial(study, label, n_trials)

        params = {**spec.fixed.get(arm.family, {}), **best.params}
        final_seeds.run_all(lambda seed, claim: run_final(arm, task, params, seed, budget, options, progress,
                                                          child_tags, seeds, claim), label,
                            between=close_dead_workers_runs)

        finals = tracking.child_runs(experiment_id, parent.info.run_id, "final")
        test_mcc = [r.data.metrics["test_mcc"] for r in finals if int(r.data.tags["seed"]) < seeds]
        tracking.log_metrics({"test_mcc_mean": float(np.mean(test_mcc)), "test_mcc_std": float(np.std(test_mcc)),
                              "n_seeds": len(test_mcc)})
        log.info("%s | done in %s: test_mcc %.4f +/- %.4f over %d seeds", label, progress.elapsed(),
                 np.mean(test_mcc), np.std(test_mcc), len(test_mcc))
        return ArmTaskResult(arm.name, task.name, parent.info.run_id, best.value, best.params, test_mcc)


def record_best_trial(study: optuna.Study, label: str, n_trials: int) -> optuna.trial.FrozenTrial:
    """Log the tuning outcome on the parent run (best trial, state counts, history plot)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise NoCompletedTrialError(f"{label}: none of the {n_trials} trials completed (all pruned or diverged); "
                                    "see the trial runs' fail_reason tags and widen the search space")
    best = study.best_trial
    tracking.log_metrics({"best_dev_mcc": best.value, "best_trial_number": best.number,
                          **{f"n_trials_{s.name.lower()}": len(study.get_trials(deepcopy=False, states=(s,)))
                             for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}})
    mlflow.log_dict(best.params, "best_params.json")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(tracking.save_optuna_history(study, Path(tmp) / "optuna_history.png")))
    log.info("%s | best trial %d: dev_mcc %.4f with %s", label, best.number, best.value, best.params)
    return best
