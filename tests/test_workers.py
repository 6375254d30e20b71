"""Many workers on one study, on sqlite and on a real PostgreSQL: the budget exact, final seeds once,
a worker killed with SIGKILL mid-trial losing nothing, storage faults handled, passwords never logged."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import TINY_STUDY
from harness import workers
from harness.cli import main as harness

FAST_HEARTBEAT = {"HARNESS_HEARTBEAT_S": "1", "HARNESS_HEARTBEAT_GRACE_S": "4", "HARNESS_POLL_S": "0.5",
                  "HARNESS_STORAGE_BACKOFF_S": "1",
                  "OMP_NUM_THREADS": "1"}  # several workers on 2 cores: one thread each, or they thrash
WORKER_STUDY = TINY_STUDY.replace("name: tiny", "name: shared").replace("max_epochs: 2", "max_epochs: 3")
CELL = "shared/unet_char/toy/motif_binary"


@functools.cache
def storage_at(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL for the whole test session: polling with a new one
    each time would exhaust the server's connections."""
    return optuna.storages.RDBStorage(url, engine_kwargs={} if url.startswith("sqlite") else {"pool_pre_ping": True})


# ------------------------------------------------------------------------------ unit: the budget rules
def test_a_trial_beyond_the_budget_is_skipped_not_counted():
    study = optuna.create_study()
    done = study.ask()
    study.tell(done, 0.5)
    a, b = study.ask(), study.ask()  # two workers asked at the same moment; budget 2 leaves one slot
    workers.check_trial_slot(a, 2)
    with pytest.raises(workers.SkippedTrial, match="beyond the budget: 1 finished and 1 running before it"):
        workers.check_trial_slot(b, 2)


def test_a_duplicate_configuration_is_redrawn():
    study = optuna.create_study()
    first = study.ask()
    first.suggest_float("lr", 0.1, 0.2)
    study.tell(first, 0.5)
    again = study.ask({"lr": optuna.distributions.FloatDistribution(0.1, 0.2)})
    again_params = {"lr": first.params["lr"]}
    recent: list[int] = []
    with pytest.raises(workers.SkippedTrial, match="same configuration as trial 0"):
        workers.check_not_duplicate(again, again_params, recent)
    workers.check_not_duplicate(again, {"lr": 0.15}, recent)  # a fresh draw passes and resets the count
    assert recent == []


def test_final_seeds_are_claimed_once(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    ran: list[int] = []
    one = workers.FinalSeeds(storage, "s/a/t", 3, done={1})  # seed 1 finished before (found in MLflow)
    other = workers.FinalSeeds(storage, "s/a/t", 3, done={1})  # a second worker queues nothing twice
    assert sorted(workers.seed_of(t) for t in other.study.trials) == [0, 2]
    one.run_all(lambda seed, claim: ran.append(seed) or 0.5, "test")
    other.run_all(lambda seed, claim: ran.append(seed) or 0.5, "test")
    completed = one.study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(ran) == [0, 2] and sorted(workers.seed_of(t) for t in completed) == [0, 2]


def test_storage_retries_back_off_then_fail_naming_the_url_without_password(monkeypatch, caplog):
    monkeypatch.setattr(workers, "STORAGE_BACKOFF_S", 0.01)
    calls = []

    def down():
        calls.append(time.monotonic())
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(workers.StorageError) as err:
        workers.with_storage_retries(down, "counting trials", "postgresql://alice:s3cret@db:5432/optuna")
    assert len(calls) == workers.STORAGE_RETRIES + 1
    assert "postgresql://alice:***@db:5432/optuna" in str(err.value) and "s3cret" not in str(err.value)
    assert "run the same command again" in str(err.value) and "s3cret" not in caplog.text
    attempts = []

    def back_after_one_failure():
        attempts.append(1)
        if len(attempts) == 1:
            raise sqlalchemy.exc.OperationalError("x", {}, Exception("gone"))
        return 42

    assert workers.with_storage_retries(back_after_one_failure, "x", "sqlite:///o.db") == 42 and len(attempts) == 2


# -------------------------------------------------------------------------- integration: real workers
def start_worker(root: Path, storage: str, tracking_uri: str, n_trials: int, seeds: int, name: str,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true", **FAST_HEARTBEAT, **(extra_env or {}))
    cmd = [sys.executable, "-m", "harness", "run", "--arm", "unet_char", "--study", str(root / "shared.yaml"),
           "--data", str(root / "gue"), "--n-trials", str(n_trials), "--seeds", str(seeds), "--storage", storage]
    log = open(root / f"{name}.log", "w")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def kill_mid_trial(storage: str, pid: int, timeout: float = 180) -> int:
    """SIGKILL worker `pid` while one of its trials is running inside its MLflow run (its run id recorded). Not
    "after an epoch was reported": a trial the pruner stops at its first report leaves no time to see that."""
    me = f"{socket.gethostname()}:{pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=CELL, storage=storage_at(storage)).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        for t in trials:
            if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == me and "mlflow_run_id" in t.user_attrs:
                os.kill(pid, signal.SIGKILL)
                return t.number
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} never ran a trial to kill")


def wait_all(procs: list[subprocess.Popen], root: Path, timeout: float = 400) -> None:
    for i, p in enumerate(procs):
        p.wait(timeout=timeout)
    for log in root.glob("worker*.log"):
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def check_nothing_lost(storage: str, tracking_uri: str, n_trials: int, seeds: int, killed_trial: int,
                       n_workers: int) -> None:
    study = optuna.load_study(study_name=CELL, storage=storage_at(storage))
    counted = study.get_trials(deepcopy=False, states=workers.COUNTED)
    assert len(counted) == n_trials  # exactly the budget: no overshoot, nothing lost
    assert study.trials[killed_trial].state == TrialState.FAIL  # the dead worker's trial, failed by heartbeat
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_trial]
    assert retried and retried[0].state in workers.COUNTED  # ... and rerun by a survivor
    configs = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(configs)) == len(configs)  # no configuration drawn twice by accident
    assert len({t.user_attrs["worker"] for t in study.trials}) == n_workers  # everyone took part
    finals = optuna.load_study(study_name=f"{CELL}/final", storage=storage_at(storage))
    assert sorted(workers.seed_of(t) for t in finals.get_trials(states=(TrialState.COMPLETE,))) == list(range(seeds))

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("shared").experiment_id
    runs = client.search_runs([exp], max_results=1000)
    elsewhere = [e.name for e in client.search_experiments() if e.experiment_id != exp
                 and client.search_runs([e.experiment_id], "tags.stage != 'launch'")]
    assert not elsewhere  # every run in the study's experiment, even when workers raced to create it
    assert [r.data.tags["stage"] for r in runs].count("study") == 1  # one parent, however many workers
    assert not [r for r in runs if r.info.status == "RUNNING"]  # nothing left RUNNING
    final_runs = [r for r in runs if r.data.tags["stage"] == "final" and r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["seed"]) for r in final_runs) == list(range(seeds))  # once each
    trial_runs = {int(r.data.tags["trial_number"]): r for r in runs if r.data.tags["stage"] == "trial"}
    assert trial_runs[killed_trial].info.status == "FAILED"
    assert sum(r.info.status == "FINISHED" for r in trial_runs.values()) == n_trials


@pytest.fixture
def shared_root(tmp_path, tiny_gue):
    (tmp_path / "shared.yaml").write_text(WORKER_STUDY)
    assert tiny_gue == tmp_path / "gue"
    return tmp_path


@pytest.mark.slow
def test_two_workers_on_sqlite_one_killed(shared_root):
    storage, tracking_uri = f"sqlite:///{shared_root}/optuna.db", f"sqlite:///{shared_root}/mlflow.db"
    # Create both databases' tables first: two processes creating one sqlite schema at once can collide.
    optuna.storages.RDBStorage(storage)
    MlflowClient(tracking_uri).search_experiments()
    procs = [start_worker(shared_root, storage, tracking_uri, 6, 2, f"worker{i}") for i in range(2)]
    killed = kill_mid_trial(storage, procs[0].pid)
    wait_all(procs[1:], shared_root)
    check_nothing_lost(storage, tracking_uri, 6, 2, killed, n_workers=2)


@pytest.mark.slow
def test_three_workers_on_postgres_one_killed(shared_root, postgres):
    tracking_uri = f"sqlite:///{shared_root}/mlflow.db"
    MlflowClient(tracking_uri).search_experiments()
    procs = [start_worker(shared_root, postgres.url, tracking_uri, 12, 2, f"worker{i}") for i in range(3)]
    killed = kill_mid_trial(postgres.url, procs[1].pid)
    wait_all([procs[0], procs[2]], shared_root)
    check_nothing_lost(postgres.url, tracking_uri, 12, 2, killed, n_workers=3)
    # The password in the storage URL reaches neither the logs nor MLflow.
    for log in shared_root.glob("worker*.log"):
        assert "s3cret-pw" not in log.read_text()
    client = MlflowClient(tracking_uri)
    for run in client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000):
        assert "s3cret-pw" not in repr(run.data.params) + repr(run.data.tags)


# ------------------------------------------------------------------------------------ fault injection
def run_args(root: Path, storage: str, n_trials: int = 3, seeds: int = 2) -> list[str]:
    return ["run", "--arm", "unet_char", "--study", str(root / "shared.yaml"), "--data", str(root / "gue"),
            "--n-trials", str(n_trials), "--seeds", str(seeds), "--storage", storage]


def test_database_down_at_start_is_a_clear_error(shared_root, workdir, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg2://harness:s3cret-pw@127.0.0.1:{port}/studies"
    assert harness(run_args(shared_root, url)) == 2
    err = capsys.readouterr().err
    assert f"cannot open Optuna storage postgresql+psycopg2://harness:***@127.0.0.1:{port}/studies" in err
    assert "s3cret-pw" not in err
    assert not MlflowClient().search_experiments(filter_string="name = 'shared'")  # nothing was started


@pytest.mark.slow
def test_database_restarted_mid_study_loses_nothing(shared_root, postgres):
    url = postgres.database("restarted")
    tracking_uri = f"sqlite:///{shared_root}/mlflow.db"
    proc = start_worker(shared_root, url, tracking_uri, 6, 2, "worker0")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            done = len(optuna.load_study(study_name=CELL, storage=storage_at(url)).get_trials(states=workers.COUNTED))
        except KeyError:
            done = 0
        if done >= 2:
            break
        time.sleep(0.2)
    postgres.stop()  # the database goes away mid-study ...
    time.sleep(4)
    postgres.start()  # ... and comes back within the worker's retries
    assert proc.wait(timeout=400) == 0, (shared_root / "worker0.log").read_text()[-3000:]
    log = (shared_root / "worker0.log").read_text()
    assert "unreachable" in log and "retry 1/" in log and "s3cret-pw" not in log
    study = optuna.load_study(study_name=CELL, storage=storage_at(url))
    assert len(study.get_trials(states=workers.COUNTED)) == 6
    finals = optuna.load_study(study_name=f"{CELL}/final", storage=storage_at(url))
    assert sorted(workers.seed_of(t) for t in finals.get_trials(states=(TrialState.COMPLETE,))) == [0, 1]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.slow
@pytest.mark.parametrize("errno,message", [(28, "No space left on device"), (30, "Read-only file system")])
def test_full_or_read_only_artifact_store_loses_nothing(shared_root, workdir, monkeypatch, capsys, errno, message):
    storage = f"sqlite:///{workdir}/optuna.db"
    real = mlflow.log_artifact

    def failing(path, *args, **kwargs):
        if Path(path).name == "test_predictions.csv":
            raise OSError(errno, message, str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(mlflow, "log_artifact", failing)
    assert harness(run_args(shared_root, storage)) == 1
    err = capsys.readouterr().err
    assert f"test_predictions.csv: {message}" in err and "run the same command again" in err
    client = MlflowClient()
    exp = client.get_experiment_by_name("shared").experiment_id
    runs = client.search_runs([exp], max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert [r.info.status for r in runs if r.data.tags["stage"] == "final"] == ["FAILED"]

    monkeypatch.setattr(mlflow, "log_artifact", real)  # space freed: the same command resumes
    assert harness(run_args(shared_root, storage)) == 0
    study = optuna.load_study(study_name=CELL, storage=storage_at(storage))
    assert len(study.get_trials(states=workers.COUNTED)) == 3  # trials kept, not redone
    runs = client.search_runs([exp], "tags.stage = 'final' and attributes.status = 'FINISHED'")
    assert sorted(int(r.data.tags["seed"]) for r in runs) == [0, 1]


@pytest.mark.slow
def test_workers_and_analysis_on_an_mlflow_server(shared_root, postgres):
    """The cluster set-up of the README: MLflow server on PostgreSQL with proxied artifacts, Optuna on
    PostgreSQL, two workers, then the analysis reading the server."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    artifacts = shared_root / "mlartifacts"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres.database("mlflow"),
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=shared_root, stdout=open(shared_root / "server.log", "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, (shared_root / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        storage = postgres.database("served")
        procs = [start_worker(shared_root, storage, uri, 4, 1, f"worker{i}") for i in range(2)]
        wait_all(procs, shared_root)
        assert [p.returncode for p in procs] == [0, 0]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000)
        stages = sorted(r.data.tags["stage"] for r in runs if r.info.status == "FINISHED")
        assert stages.count("final") == 1 and stages.count("trial") == 4 and stages.count("study") == 1
        (final,) = [r for r in runs if r.data.tags["stage"] == "final"]
        assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(final.info.run_id)}
        assert list(artifacts.rglob("confusion_matrix.png"))  # stored by the server, not by the workers
        from analysis.cli import main as analyze

        assert analyze(["--experiment", "shared", "--tracking-uri", uri, "--out", str(shared_root / "report"),
                        "--no-log"]) == 0
        assert "unet_char" in (shared_root / "report" / "report.md").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_setup_activates_an_experiment_another_worker_just_created(workdir, monkeypatch):
    """MLflow's set_experiment, losing the race to create an experiment, returns it without activating it."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from harness import tracking

    MlflowClient().create_experiment("raced")  # the other worker was first
    real, calls = TrackingServiceClient.get_experiment_by_name, []

    def not_there_yet(self, name):  # what this worker saw a moment before
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", not_there_yet)
    experiment_id = tracking.setup("raced")
    with mlflow.start_run() as run:
        pass
    assert run.info.experiment_id == experiment_id == MlflowClient().get_experiment_by_name("raced").experiment_id


def test_an_mlflow_write_lost_to_another_worker_is_retried_and_other_errors_are_not(monkeypatch):
    """Two workers logging the same parameters or dataset race in MLflow's look-up-then-insert: the loser's
    unique-constraint error is retried (the row is there by then); any other MLflow error propagates at once."""
    from mlflow.exceptions import MlflowException

    from harness import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def loses_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: params.key, params.run_uuid")

    tracking.retry_lost_race(loses_once)
    assert len(calls) == 2

    def broken() -> None:
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run 'x' not found")

    calls.clear()
    with pytest.raises(MlflowException, match="not found"):
        tracking.retry_lost_race(broken)
    assert len(calls) == 1  # negative control: not retried
