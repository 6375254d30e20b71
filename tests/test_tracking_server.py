"""The MLflow tracking server going away mid-study: a real `mlflow server` on a loopback port, killed after the
first trial run finished and started again on the same port and database.

A blip shorter than MLflow's HTTP retries is waited for (the run finishes as if nothing happened); an outage
longer than them ends the run with `error: lost the MLflow tracking server <uri> ...` (exit 1, no traceback),
and the same command resumes once the server is back: earlier completed trials are kept, nothing stays RUNNING.
The retry bounds are set small through MLflow's environment variables so that the test is quick.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO

N_TRIALS, SEEDS = 6, 2
CELL_RUN = "kmer_logreg | synthetic/motif_binary"  # the parent run's name; its trials and seeds add " | trial N"
COMMAND = ["run", "--arm", "kmer_logreg", "--study", "smoke", "--tasks", "synthetic/motif_binary",
           "--n-trials", str(N_TRIALS), "--seeds", str(SEEDS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """`mlflow server` on sqlite in `folder`, on a fixed loopback port, that can be killed and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> None:
        if self.process is not None:
            return
        # Job execution would start seven more processes (huey consumers) the test does not need.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.process = subprocess.Popen(
            [shutil.which("mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            env=env, stdout=open(self.folder / "server.log", "a"), stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: killing it kills the uvicorn worker too
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    log = (self.folder / "server.log").read_text()[-2000:]
                    pytest.skip(f"`mlflow server` did not start on port {self.port} within {timeout_s:.0f} s:\n{log}")
                time.sleep(0.3)

    def kill(self) -> None:
        """A crash: SIGKILL to the server and its workers, nothing closed cleanly."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
        self.process = None

    def runs(self, experiment: str) -> list[tuple[str, str]]:
        """(run name, status) of every run of `experiment`, read from the server's database."""
        with sqlite3.connect(f"file:{self.folder}/mlflow.db?mode=ro", uri=True) as db:
            return db.execute("select r.name, r.status from runs r join experiments e using (experiment_id) "
                              "where e.name = ? and r.lifecycle_stage = 'active'", (experiment,)).fetchall()


@pytest.fixture(scope="module")
def started_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """One server for the module (it takes seconds to start); each test logs to its own experiment."""
    if shutil.which("mlflow") is None:
        pytest.skip("the `mlflow` command is not on PATH: cannot start a tracking server")
    tracking = TrackingServer(tmp_path_factory.mktemp("server"))
    tracking.start()
    yield tracking
    tracking.kill()


@pytest.fixture
def server(started_server: TrackingServer) -> TrackingServer:
    started_server.start()  # again, if the test before left it killed
    return started_server


def start_harness(tmp_path: Path, uri: str, retries: int, backoff_factor: int, log: str) -> subprocess.Popen:
    """The harness on the smoke study, logging to the experiment named after the test's folder."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(backoff_factor), "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "harness", *COMMAND, "--storage", f"sqlite:///{tmp_path}/optuna.db",
                             "--experiment", tmp_path.name],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / log, "w"), text=True)


def kill_after_first_trial(server: TrackingServer, harness: subprocess.Popen, experiment: str,
                           timeout_s: float = 120) -> None:
    """Kill the server as soon as the first trial run has finished, while the harness is still running."""
    deadline = time.monotonic() + timeout_s
    while (f"{CELL_RUN} | trial 00", "FINISHED") not in server.runs(experiment):
        assert harness.poll() is None, "the harness ended before its first trial finished"
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.1)
    server.kill()
    # Negative control: the outage must hit the study mid-way, or the test below would prove nothing.
    assert harness.poll() is None, "the harness finished before the server went down"


def trial_states(tmp_path: Path) -> dict[int, str]:
    """Tuning trial number -> Optuna state (the final-seed study not included)."""
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        return dict(db.execute("select t.number, t.state from trials t join studies s using (study_id) "
                               "where s.study_name not like '%/final'").fetchall())


def assert_study_complete(server: TrackingServer, experiment: str) -> None:
    runs = server.runs(experiment)
    assert not [run for run in runs if run[1] == "RUNNING"], runs
    assert (CELL_RUN, "FINISHED") in runs
    assert sorted(n for n, s in runs if n.startswith(f"{CELL_RUN} | seed ") and s == "FINISHED") == \
        [f"{CELL_RUN} | seed {seed}" for seed in range(SEEDS)], runs
    assert sum(n.startswith(f"{CELL_RUN} | trial ") and s == "FINISHED" for n, s in runs) >= N_TRIALS, runs


@pytest.mark.slow
def test_a_blip_shorter_than_the_retries_is_waited_for(tmp_path: Path, server: TrackingServer) -> None:
    # 6 retries, backoff factor 1: waits of 0, 2, 4, 8, 16 and 32 s, about a minute for a restart of a few seconds.
    harness = start_harness(tmp_path, server.uri, retries=6, backoff_factor=1, log="blip.err")
    try:
        kill_after_first_trial(server, harness, tmp_path.name)
        time.sleep(3)
        server.start()
        assert harness.wait(timeout=180) == 0, (tmp_path / "blip.err").read_text()[-3000:]
    finally:
        if harness.poll() is None:
            harness.kill()
    stderr = (tmp_path / "blip.err").read_text()
    assert "Retrying" in stderr  # MLflow's client did see the server gone
    assert "Traceback" not in stderr and "error:" not in stderr
    assert list(trial_states(tmp_path).values()).count("COMPLETE") == N_TRIALS
    assert_study_complete(server, tmp_path.name)


@pytest.mark.slow
def test_an_outage_longer_than_the_retries_stops_with_an_error_and_the_same_command_resumes(
        tmp_path: Path, server: TrackingServer) -> None:
    # A password in the tracking URI (the server ignores it) must not be printed.
    uri = server.uri.replace("http://", "http://harness:s3cret@")
    # 2 retries, factor 1: 2 s of backoff, far shorter than the outage (until the harness has stopped).
    harness = start_harness(tmp_path, uri, retries=2, backoff_factor=1, log="outage.err")
    try:
        kill_after_first_trial(server, harness, tmp_path.name)
        assert harness.wait(timeout=120) == 1
    finally:
        if harness.poll() is None:
            harness.kill()
    stderr = (tmp_path / "outage.err").read_text()
    assert "Traceback" not in stderr
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert error and f"lost the MLflow tracking server http://harness:***@127.0.0.1:{server.port} while" in error[0]
    assert "run the same command again when it is back" in error[0]
    assert "s3cret" not in stderr
    completed_before = {n for n, s in trial_states(tmp_path).items() if s == "COMPLETE"}
    assert 1 <= len(completed_before) < N_TRIALS  # stopped mid-study, with the first trial kept

    server.start()
    again = start_harness(tmp_path, uri, retries=2, backoff_factor=1, log="resume.err")
    assert again.wait(timeout=180) == 0, (tmp_path / "resume.err").read_text()[-3000:]
    resumed = (tmp_path / "resume.err").read_text()
    assert "Traceback" not in resumed and f"resuming: {len(completed_before)}/{N_TRIALS} trials" in resumed
    states = trial_states(tmp_path)
    # No completed trial redone: the earlier ones are still there and the budget is exactly met.
    assert completed_before <= {n for n, s in states.items() if s == "COMPLETE"}
    assert list(states.values()).count("COMPLETE") == N_TRIALS
    assert_study_complete(server, tmp_path.name)


# ------------------------------------------------------------------ the pieces, without a harness run
@pytest.mark.parametrize("user_set", [False, True])
def test_http_retry_bounds_are_set_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch, user_set: bool) -> None:
    from harness import tracking

    for name in tracking.HTTP_CLIENT_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    if user_set:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    tracking.configure_http_client()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == ("3" if user_set else "7")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
    # urllib3's waits: 0, 4, 8, 16, 32, 64, 120 (capped) s for 7 retries; 0, 4, 8 s for 3
    assert tracking.http_retry_wait_s() == (12 if user_set else 244)


def test_an_unreachable_server_is_reported_by_its_uri_without_password(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness.errors import reported

    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://harness:s3cret@127.0.0.1:{port}")
    try:
        with pytest.raises(MlflowException) as lost:
            MlflowClient().search_runs(["0"])
        message, code = reported(lost.value)
    finally:
        mlflow.set_tracking_uri(previous)
    assert code == 1 and "s3cret" not in message
    assert message.startswith(f"lost the MLflow tracking server http://harness:***@127.0.0.1:{port} while "
                              "searching runs (Connection refused; gave up after 1 retry over 0 s); completed trials")
    # Negative control: an MLflow error that is not about reaching the server keeps MLflow's message.
    assert reported(MlflowException("RESOURCE_DOES_NOT_EXIST: no run abc")) == (
        "MLflow: RESOURCE_DOES_NOT_EXIST: no run abc", 1)


@pytest.mark.slow
def test_ending_a_run_while_the_server_is_gone_is_bounded_and_hides_no_error(
        server: TrackingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """tracking.end_run, the end of tracking.run while an error unwinds: one attempt when the error is the lost
    server, and the lost server never replaces the error (a bug keeps its traceback)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from harness import tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")  # 0 + 4 + 8 + 16 s = 28 s if waited for
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.uri)
    try:
        experiment = mlflow.set_experiment("end_run").experiment_id
        parent = mlflow.start_run(experiment_id=experiment)
        mlflow.start_run(nested=True)
        server.kill()
        with tracking.single_http_attempt(), pytest.raises(MlflowException) as lost:
            mlflow.log_metric("x", 1.0)
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"  # the bound is restored
        started = time.monotonic()
        tracking.end_run("FAILED", lost.value)  # the lost server: tried once more, and no exception
        assert time.monotonic() - started < 5
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the nested run is off MLflow's stack
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        tracking.end_run("FAILED", ValueError("a bug"))  # retried as usual, then the bug is not hidden: no exception
        assert mlflow.active_run() is None
        with pytest.raises(MlflowException):  # no error unwinding: a lost server is raised as usual
            mlflow.start_run(experiment_id=experiment)
    finally:
        with tracking.single_http_attempt():
            while mlflow.active_run() is not None:
                with contextlib.suppress(MlflowException):
                    mlflow.end_run()
        mlflow.set_tracking_uri(previous)


def test_an_answer_cut_off_mid_body_is_retried_except_for_creating_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3 retries only before an answer arrives; a server restarting under a request can cut the answer off
    (IncompleteRead), which MLflow raises at once. Retried by the harness, unless the call creates something
    (sent again, it might create it twice)."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.utils import rest_utils

    from harness import tracking

    calls: list[str] = []

    def cut_off_twice(host_creds, endpoint, method, **kwargs):
        calls.append(endpoint)
        if len(calls) <= 2:
            try:
                raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(0 bytes read)")
            except requests.exceptions.ChunkedEncodingError as err:  # as MLflow wraps it
                raise MlflowException(f"API request to {endpoint} failed with exception {err}")  # noqa: B904
        return "answer"

    from mlflow.store.tracking import rest_store

    monkeypatch.setattr(rest_utils, "http_request", cut_off_twice)
    monkeypatch.setattr(rest_store, "http_request", rest_store.http_request)  # restored after the test
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    tracking.retry_broken_responses()
    assert rest_utils.http_request(None, "/api/2.0/mlflow/runs/update", "POST") == "answer" and len(calls) == 3
    calls.clear()
    with pytest.raises(MlflowException, match="IncompleteRead"):  # negative control: a create is not repeated
        rest_utils.http_request(None, "/api/2.0/mlflow/runs/create", "POST")
    assert len(calls) == 1
