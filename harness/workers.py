"""Many workers on one study: the trial budget exact, final seeds claimed once, dead workers' work redone.

Any number of processes, on any machines, run the same command against one Optuna storage (sqlite for
one machine, PostgreSQL for a cluster). What they share lives in that storage, and every decision that
two workers could race on goes through an operation the storage makes atomic:

  - **The study.** Exactly one worker creates a cell's study (the storage refuses a second) and records
    the run configuration on it; every worker, now or on a resume, must bring the same configuration
    (while no trial has finished, a corrected command replaces it instead).

  - **Trial budget.** A worker only starts a trial while `finished + running < n_trials`; a trial that
    still finds itself beyond the budget once created (two workers asked at the same moment) is skipped:
    a trial may run only if the finished trials plus the running trials numbered before it leave room.
    Trial numbers are unique and ordered by the storage, so exactly `n_trials` finish.
  - **Dead workers.** Trials send heartbeats; one whose worker died (SIGKILL, preemption, OOM killer)
    goes stale after the grace period, is failed and re-queued with its parameters, and a surviving or
    restarted worker runs it. A worker whose remaining slots are held by running trials of other workers
    waits for them rather than leaving, so a stale trial always finds someone to rerun it.
  - **Final seeds** are trials of a second study `<study>/final`, enqueued once per seed. A worker claims
    one by popping its WAITING trial (atomic in the storage) and runs it under a heartbeat like a tuning
    trial, so a seed whose worker died is re-queued, and each seed is run once.
  - **Storage faults.** Storage calls between trials are retried with exponential backoff; past the
    last retry the worker stops with an error naming the URL (never its password). Completed trials
    are in the storage already: rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from . import shutdown, tracking
from .errors import ParameterError, StorageError, StudyError
from .parameters import env_number
from .schema import final_study_name

log = logging.getLogger("harness")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states that use up the trial budget
WORKER = f"{socket.gethostname()}:{os.getpid()}"
T = TypeVar("T")


# Optuna takes whole seconds (>= 1) for heartbeats.
HEARTBEAT_INTERVAL_S = env_number("HARNESS_HEARTBEAT_S", 30, int)
HEARTBEAT_GRACE_S = env_number("HARNESS_HEARTBEAT_GRACE_S", 120, int)
POLL_S = env_number("HARNESS_POLL_S", 10.0)  # how often a waiting worker looks again
STORAGE_RETRIES = env_number("HARNESS_STORAGE_RETRIES", 5, int, low=0)
STORAGE_BACKOFF_S = env_number("HARNESS_STORAGE_BACKOFF_S", 2.0, low=0)  # 2, 4, 8, 16, 32 s: about a minute in all


class StorageLost(RuntimeError):
    """A trial ended in an error while the storage was unreachable (Optuna's own bookkeeping of the
    failure then fails too, with whatever error that gives)."""


STORAGE_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                  sqlalchemy.exc.DisconnectionError, optuna.exceptions.StorageInternalError, StorageLost)


class SkippedTrial(Exception):
    """A trial that must not run (beyond the budget, or a configuration another trial already has).
    Optuna records it as FAIL, which the budget does not count."""


def open_storage(url: str) -> RDBStorage:
    """An RDB storage with heartbeats: a trial whose process died is marked failed and re-queued.
    Refuses a database that belongs to another application (e.g. MLflow's): Optuna would add its tables to it."""
    # A database server may drop idle connections between trials: test each before use.
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
    for attempt in range(5):
        try:
            check_storage_database(url)
            return RDBStorage(
                url, heartbeat_interval=int(HEARTBEAT_INTERVAL_S), grace_period=int(HEARTBEAT_GRACE_S),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3), engine_kwargs=engine,
            )
        except ImportError as err:  # Optuna's "install appropriate one" hides which driver and why
            raise ParameterError(f"cannot open Optuna storage {tracking.redact(url)}: "
                                 f"{tracking.missing_driver(url, err.__cause__ or err)}") from None
        except sqlalchemy.exc.ArgumentError as err:
            raise ParameterError(f"cannot open Optuna storage {tracking.redact(url)}: not a database URL "
                                 f"({tracking.redact_urls(str(err), url)}); e.g. sqlite:///optuna.db or "
                                 "postgresql+psycopg2://user:password@host/db") from None
        except sqlalchemy.exc.SQLAlchemyError as err:
            # Workers starting together on an empty database race to create its tables: the losers retry.
            racing = isinstance(err, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) \
                or "already exists" in str(err)
            if racing and attempt < 4:
                time.sleep(random.uniform(0.2, 1.0))
                continue
            # The driver's message may echo the URL or its password.
            reason = tracking.redact_urls(str(err).splitlines()[0], url)
            raise ParameterError(f"cannot open Optuna storage {tracking.redact(url)}: {type(err).__name__}: "
                                 f"{reason}") from None
    raise AssertionError("unreachable")


def check_storage_database(url: str) -> None:
    """Refuse, before Optuna creates any table, a database that already holds another application's tables."""
    if not tracking.is_database_url(url):
        return  # Optuna's own error says what is wrong with it
    tracking.parsed_database_url(url, "storage")
    tables = tracking.database_tables(url)
    owner = tracking.database_owner(tables)
    if owner in (None, "Optuna"):
        return
    telling = sorted(tables & tracking.MLFLOW_TABLES) + sorted(tables - tracking.MLFLOW_TABLES)
    found = ", ".join(telling[:6]) + (", ..." if len(tables) > 6 else "")
    raise ParameterError(
        f"storage={tracking.redact(url)} is not an Optuna storage: it looks like {owner}'s database (tables: "
        f"{found}). Optuna would add its tables to it: pass another database as storage, e.g. sqlite:///optuna.db"
        + (" (MLflow's stays the tracking URI)" if owner == "MLflow" else ""))


def open_study(name: str, storage: RDBStorage, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner, config: dict[str, Any], fix: str) -> optuna.Study:
    """Create or resume the Optuna study `name`; refuse a resume under another configuration (it would mix
    two comparisons), unless the study has no results yet; `fix` says what the user may restore."""
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
    wanted = json.loads(json.dumps(config))  # as the storage gives it back (tuples become lists)
    if wanted != recorded:
        changed = ", ".join(sorted(k for k in wanted.keys() | recorded.keys() if recorded.get(k) != wanted.get(k)))
        if not has_results(study):
            restart_with_config(study, wanted, changed)
        if study.user_attrs.get("config") != wanted:  # has results, or another worker restarted it otherwise
            raise StudyError(
                f"Optuna study {name!r} in this storage was run with a different configuration "
                f"(changed: {changed}); resuming would mix two comparisons. Restore the original "
                f"settings ({fix}) or use another study name or storage."
            )
    return study


def has_results(study: optuna.Study) -> bool:
    """Has any trial of the study finished or is one running (a worker on the recorded configuration), or
    has any final seed completed? A study without results can start again under another configuration."""
    if study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING)):
        return True
    try:
        finals = optuna.load_study(study_name=final_study_name(study.study_name), storage=study._storage)
    except KeyError:  # no final-seed study yet
        return False
    return bool(finals.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))


def restart_with_config(study: optuna.Study, config: dict[str, Any], changed: str) -> None:
    """Record `config` on a study that has no results (e.g. its only trial was interrupted), so a corrected
    command starts it afresh instead of being refused. Trials queued under the old configuration (retries of
    failed trials, final seeds) are dropped: their parameters or seeds may not fit the new one. Workers
    starting together all record the same configuration."""
    log.warning("Optuna study %r has no finished trial yet: its recorded configuration is replaced by this "
                "command's (changed: %s)", study.study_name, changed)
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    with contextlib.suppress(KeyError):
        final = optuna.load_study(study_name=final_study_name(study.study_name), storage=study._storage)
        queued += final.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for trial in queued:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker ran it meanwhile
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    study.set_user_attr("config", config)


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
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def with_storage_retries(call: Callable[[], T], what: str, url: str) -> T:
    """`call()`, retried with exponential backoff while the storage is unreachable."""
    for attempt in range(STORAGE_RETRIES + 1):
        try:
            return call()
        except STORAGE_ERRORS as err:
            reason = f"{type(err).__name__}: {tracking.redact_urls(str(err).splitlines()[0], url) if str(err) else ''}"
            if attempt == STORAGE_RETRIES:
                raise StorageError(
                    f"lost the Optuna storage {tracking.redact(url)} while {what} ({reason}); gave up after "
                    f"{STORAGE_RETRIES} retries. Completed trials and final runs are kept in the storage and "
                    "MLflow: run the same command again when the database is back") from None
            delay = STORAGE_BACKOFF_S * 2**attempt
            log.warning("storage %s unreachable while %s (%s); retry %d/%d in %.0fs", tracking.redact(url), what,
                        reason, attempt + 1, STORAGE_RETRIES, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped sending heartbeats (their retries are queued as WAITING); a signal
    waits until both are done, or a failed trial could lose its retry."""
    with warnings.catch_warnings(), shutdown.deferred():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def optimize_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
    """One trial; an error that comes with an unreachable storage is reported as StorageLost.

    Only the objective itself is interruptible. A signal while Optuna creates the trial or records its end is
    raised once that is done: cut there, the trial would stay RUNNING (and Optuna, interrupted while recording
    it, fails with an UnboundLocalError). A KeyboardInterrupt from the objective is recorded as FAIL by Optuna,
    which then raises it again."""

    def interruptible_objective(trial: optuna.Trial) -> float:
        with shutdown.interruptible():
            return objective(trial)

    try:
        with shutdown.deferred():
            study.optimize(interruptible_objective, n_trials=1, catch=(SkippedTrial,))
    except STORAGE_ERRORS:
        raise
    except Exception as err:
        try:
            study._storage.get_all_studies()  # is the storage there?
        except STORAGE_ERRORS:
            raise StorageLost(f"{type(err).__name__} during a trial, storage unreachable") from err
        raise


def storage_url(study: optuna.Study) -> str:
    return getattr(study._storage, "url", "the Optuna storage")


def counts(study: optuna.Study) -> dict[TrialState, int]:
    out = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int, label: str,
               between: Callable[[], None] = lambda: None) -> None:
    """Run trials of `study` until exactly `n_trials` have finished (complete or pruned), sharing the
    study with any other workers. `between` runs before each trial (e.g. closing dead workers' runs)."""
    url, waiting_logged = storage_url(study), False

    def state() -> dict[TrialState, int]:
        fail_stale(study)
        between()
        return counts(study)

    while True:
        n = with_storage_retries(state, "counting trials", url)
        finished = n[TrialState.COMPLETE] + n[TrialState.PRUNED]
        if finished >= n_trials:
            return
        if finished + n[TrialState.RUNNING] >= n_trials and not n[TrialState.WAITING]:
            if not waiting_logged:
                log.info("%s | %d/%d trials finished, %d running in other workers: waiting for them (a dead "
                         "worker's trial is rerun here after %.0fs)", label, finished, n_trials,
                         n[TrialState.RUNNING], HEARTBEAT_GRACE_S)
                waiting_logged = True
            time.sleep(POLL_S)
            continue
        waiting_logged = False
        with_storage_retries(lambda: optimize_one(study, objective), "running a trial", url)


def check_trial_slot(trial: optuna.Trial, n_trials: int) -> None:
    """Raise SkippedTrial if this new trial is beyond the budget: the finished trials and the running
    ones numbered before it already fill it (another worker asked at the same moment)."""
    ahead = 0
    finished = 0
    for t in trial.study.get_trials(deepcopy=False):
        finished += t.state in COUNTED
        ahead += t.state == TrialState.RUNNING and t.number < trial.number
    if finished + ahead >= n_trials:
        raise SkippedTrial(f"beyond the budget: {finished} finished and {ahead} running before it")


def check_not_duplicate(trial: optuna.Trial, params: dict[str, Any], recent_duplicates: list[int]) -> None:
    """Raise SkippedTrial if another live trial has exactly these parameters (two workers' samplers
    drew alike). After 3 such draws in a row the space is taken to be exhausted and duplicates run."""
    for t in trial.study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING)):
        if t.number != trial.number and t.params == params:
            if len(recent_duplicates) >= 3:
                return
            recent_duplicates.append(t.number)
            trial.study.sampler.reseed_rng()  # draw elsewhere next time
            raise SkippedTrial(f"same configuration as trial {t.number}")
    recent_duplicates.clear()


def sampler_seed(base: int, study_name: str, storage: optuna.storages.BaseStorage) -> int:
    """A worker's sampler seed: the study's seed offset by the trials so far (a resumed process must not
    replay the first draws) and, when other workers are running trials, by how many (two workers must
    not draw alike). One worker alone gets the same seed on every run: results stay reproducible."""
    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return base
    return base + len(trials) + 7919 * sum(t.state == TrialState.RUNNING for t in trials)


# --------------------------------------------------------------------------------------- final seeds
def seed_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The seed of a final-seed trial: queued (fixed_params), or a parameter in studies made before the
    harness kept it out of the parameters."""
    fixed = trial.system_attrs.get("fixed_params", {})
    seed = trial.params.get("seed", fixed.get("seed"))
    return None if seed is None else int(seed)


class FinalSeeds:
    """The K final seeds of one (arm, task) as trials of the study `<name>/final`, one per seed."""

    def __init__(self, storage: optuna.storages.BaseStorage, name: str, seeds: int, done: set[int]) -> None:
        self.seeds, self.url, self.done_before = seeds, getattr(storage, "url", "the Optuna storage"), done
        self.study = with_storage_retries(
            lambda: optuna.create_study(study_name=final_study_name(name), storage=storage, load_if_exists=True,
                                        direction="maximize"), "opening the final-seed study", self.url)
        with_storage_retries(self.enqueue_missing, "queueing final seeds", self.url)

    def enqueue_missing(self) -> None:
        """Queue every seed that is neither done (here, or in MLflow before this study existed) nor
        queued or running."""
        live = {seed_of(t) for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
        for seed in range(self.seeds):
            if seed not in live and seed not in self.done_before:
                self.study.enqueue_trial({"seed": seed})

    def run_all(self, run_seed: Callable[[int, optuna.Trial], float], label: str,
                between: Callable[[], None] = lambda: None) -> None:
        """Claim and run queued seeds until none is queued or running anywhere."""
        waiting_logged = False

        def objective(trial: optuna.Trial) -> float:
            trial.set_user_attr("worker", WORKER)
            trials = trial.study.get_trials(deepcopy=False)
            me = next(t for t in trials if t.number == trial.number)
            if "fixed_params" not in me.system_attrs:  # another worker took the last queued seed
                raise SkippedTrial("no final seed left to claim")
            # The seed is the queued trial's, kept as a user attribute rather than a parameter: a "parameter"
            # would let optuna-dashboard rank seeds by importance and invite picking the best one.
            seed = int(me.system_attrs["fixed_params"]["seed"])
            trial.set_user_attr("seed", seed)
            earlier = [t for t in trials if t.number < trial.number and t.state != TrialState.FAIL and seed_of(t) == seed]
            if earlier:  # queued twice by workers racing to enqueue: the earliest claim runs it
                raise SkippedTrial(f"seed {seed} is claimed by final trial {earlier[0].number}")
            return run_seed(seed, trial)

        def state() -> dict[TrialState, int]:
            fail_stale(self.study)
            between()
            self.enqueue_missing()  # a seed whose worker was interrupted, or died past Optuna's retries
            return counts(self.study)

        while True:
            n = with_storage_retries(state, "counting final seeds", self.url)
            if n[TrialState.WAITING]:
                waiting_logged = False
                try:
                    with_storage_retries(lambda: optimize_one(self.study, objective), "running a final seed",
                                         self.url)
                except KeyboardInterrupt:
                    with_storage_retries(self.enqueue_missing, "re-queueing a seed", self.url)
                    raise
            elif n[TrialState.RUNNING]:
                if not waiting_logged:
                    log.info("%s | %d final seed(s) running in other workers: waiting for them", label,
                             n[TrialState.RUNNING])
                    waiting_logged = True
                time.sleep(POLL_S)
            else:
                return
