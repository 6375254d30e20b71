"""Ctrl-C and SIGTERM, any number and at any moment: every MLflow run ends KILLED (never RUNNING), every Optuna
trial failed or re-queued (never RUNNING), exit code 130 with `interrupted: ...` and no traceback; the same
command resumes. And a study that has no finished trial restarts freely under a corrected configuration."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import REPO, TINY_STUDY
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import shutdown, workers
from harness.errors import StudyError

CELL = "interrupts/unet_char/toy/motif_binary"


def study_yaml(root: Path, max_epochs: int) -> Path:
    """The tiny study with a longer epoch cap and no early stopping, so a trial trains for seconds."""
    text = TINY_STUDY.replace("name: tiny", "name: interrupts").replace(
        "max_epochs: 2, patience: 2", f"max_epochs: {max_epochs}, patience: {max_epochs}")
    path = root / "interrupts.yaml"
    path.write_text(text)
    return path


class Worker:
    """`python -m harness run` of unet_char on the tiny GUE task, with its own MLflow and Optuna databases."""

    def __init__(self, root: Path, gue: Path, max_epochs: int, n_trials: int, seeds: int) -> None:
        self.root, self.log = root, root / "stderr.log"
        self.storage, self.tracking = f"sqlite:///{root}/optuna.db", f"sqlite:///{root}/mlflow.db"
        self.cmd = [sys.executable, "-m", "harness", "run", "--arm", "unet_char", "--study",
                    str(study_yaml(root, max_epochs)), "--data", str(gue), "--n-trials", str(n_trials),
                    "--seeds", str(seeds), "--storage", self.storage, "--device", "cpu"]
        self.env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
        self.env.update(MLFLOW_TRACKING_URI=self.tracking, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    def start(self) -> subprocess.Popen:
        with open(self.log, "w") as stderr:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen(self.cmd, cwd=self.root, env=self.env, stdout=subprocess.DEVNULL,
                                         stderr=stderr)
        return self.proc

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout}s:\n{self.stderr()[-3000:]}"
            time.sleep(0.05)

    def signal(self, signals: list[tuple[float, int]]) -> None:
        """Send each signal after its delay (seconds after the previous one)."""
        for delay, signum in signals:
            time.sleep(delay)
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signum)

    def trials(self) -> dict[str, list[optuna.trial.FrozenTrial]]:
        storage = optuna.storages.RDBStorage(self.storage)
        return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
                for s in optuna.get_all_study_summaries(storage)}

    def runs(self) -> list:
        client = MlflowClient(self.tracking)
        return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def assert_ended_cleanly(worker: Worker, rc: int) -> None:
    err = worker.stderr()
    assert rc == 130, err[-3000:]
    assert "interrupted: SIG" in err and "run the same command again" in err
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    runs = worker.runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    stages = {(r.data.tags.get("stage"), r.info.status) for r in runs}
    assert ("study", "KILLED") in stages  # negative control: the run was interrupted, not finished
    trials = worker.trials()
    assert {name: [t.number for t in ts if t.state == TrialState.RUNNING] for name, ts in trials.items()} == \
        {name: [] for name in trials}
    assert f"{CELL}/final" in trials  # both studies were checked


SIGTERM, SIGINT = signal.SIGTERM, signal.SIGINT
TIMINGS = {  # (delay before it, signal): the first one is sent while a trial trains
    "sigterm-twice-at-once": [(0, SIGTERM), (0, SIGTERM)],
    "sigterm-twice-0.05s-apart": [(0, SIGTERM), (0.05, SIGTERM)],
    "sigterm-twice-0.3s-apart": [(0, SIGTERM), (0.3, SIGTERM)],
    "sigterm-twice-1s-apart": [(0, SIGTERM), (1, SIGTERM)],
    "sigint-then-sigterm": [(0, SIGINT), (0.03, SIGTERM)],  # 0.03-0.05s: while Optuna records the trial
    "three-signals": [(0, SIGTERM), (0.02, SIGINT), (0.2, SIGTERM)],
}


@pytest.mark.slow
@pytest.mark.parametrize("signals", TIMINGS.values(), ids=TIMINGS.keys())
def test_repeated_signals_during_a_trial_end_everything(tmp_path, tiny_gue, signals):
    worker = Worker(tmp_path, tiny_gue, max_epochs=30, n_trials=3, seeds=2)
    worker.start()
    worker.wait_for("epoch 1/30")
    worker.signal(signals)
    assert_ended_cleanly(worker, worker.proc.wait(timeout=120))
    tuning = worker.trials()[CELL]
    assert [t.state for t in tuning] == [TrialState.FAIL]  # the interrupted trial, failed: nothing counted


@pytest.mark.slow
def test_signals_during_final_seeds_requeue_the_seed_and_the_rerun_completes(tmp_path, tiny_gue):
    worker = Worker(tmp_path, tiny_gue, max_epochs=4, n_trials=1, seeds=2)
    worker.start()
    worker.wait_for("final seed 0 (1/2) | epoch 1/4")
    worker.signal([(0, SIGTERM), (0.3, SIGTERM)])
    assert_ended_cleanly(worker, worker.proc.wait(timeout=120))
    finals = worker.trials()[f"{CELL}/final"]
    assert {workers.seed_of(t) for t in finals if t.state == TrialState.WAITING} == {0, 1}  # re-queued
    assert "final" in {r.data.tags.get("stage") for r in worker.runs() if r.info.status == "KILLED"}

    assert worker.start().wait(timeout=300) == 0, worker.stderr()[-3000:]  # the same command resumes
    assert "Traceback" not in worker.stderr()
    runs = worker.runs()
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    assert sorted(int(r.data.tags["seed"]) for r in runs
                  if r.data.tags.get("stage") == "final" and r.info.status == "FINISHED") == [0, 1]
    assert [r.info.status for r in runs if r.data.tags.get("stage") == "study"] == ["FINISHED"]  # resumed
    assert len(worker.trials()[CELL]) == 1  # the finished trial was kept, not rerun


# ------------------------------------------------------------------- the deferral itself, in-process
def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends():
    with shutdown.handle_signals():
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"), shutdown.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            finished_inside = True  # not cut short
        assert finished_inside
        os.kill(os.getpid(), signal.SIGTERM)  # once interrupted, further signals are recorded, not raised
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the process is exiting: no kill now
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


HANGING_CLEANUP = """
import os, signal, time
from harness import shutdown
with shutdown.handle_signals():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except KeyboardInterrupt:  # a cleanup that hangs (the storage is down and being retried)
        os.kill(os.getpid(), signal.SIGINT)  # soon after the first: recorded, not raised
        time.sleep(1.0)
        print("cleanup went on", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # past HARNESS_FORCE_EXIT_S: exits at once
        time.sleep(5)
        print("not reached", flush=True)
"""


def test_a_signal_long_after_the_first_exits_at_once_when_cleanup_hangs():
    env = {**os.environ, "HARNESS_FORCE_EXIT_S": "0.8",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", HANGING_CLEANUP], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 130
    assert done.stdout == "cleanup went on\n"  # the second signal did not cut the cleanup short
    assert "SIGINT: already stopping" in done.stderr and "send it again after 1s" in done.stderr
    assert "interrupted: SIGTERM during a cleanup that took over 1s; exiting at once" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_a_signal_the_previous_handlers_return():
    before = signal.getsignal(signal.SIGINT)
    with shutdown.handle_signals():
        assert signal.getsignal(signal.SIGINT) is shutdown._on_signal
    assert signal.getsignal(signal.SIGINT) is before


# ------------------------------------------------------------- a study without results restarts freely
def open_tiny_study(storage: optuna.storages.RDBStorage, n_trials: int) -> optuna.Study:
    return workers.open_study("s/arm/task", storage, optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(),
                              {"n_trials": n_trials, "space": [1, 2]}, fix="the study file, n_trials")


def test_a_study_whose_only_trial_failed_restarts_under_a_changed_configuration(tmp_path, caplog):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    study = open_tiny_study(storage, 3)
    study.tell(study.ask(), state=TrialState.FAIL)  # e.g. interrupted before it finished
    study.enqueue_trial({"x": 1})  # a retry queued under the old configuration
    with caplog.at_level(logging.WARNING, logger="harness"):
        study = open_tiny_study(storage, 5)
    assert study.user_attrs["config"]["n_trials"] == 5
    assert "no finished trial yet" in caplog.text and "n_trials" in caplog.text
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]  # the stale retry dropped
    assert open_tiny_study(storage, 5).user_attrs["config"]["n_trials"] == 5  # the same again: fine

    study.tell(study.ask(), 0.5)  # now a trial has finished: the configuration is fixed
    with pytest.raises(StudyError, match=r"different configuration \(changed: n_trials\).*n_trials"):
        open_tiny_study(storage, 3)
    assert optuna.load_study(study_name="s/arm/task", storage=storage).user_attrs["config"]["n_trials"] == 5


def test_a_study_with_a_running_trial_or_a_finished_final_seed_is_not_restarted(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    study = open_tiny_study(storage, 3)
    running = study.ask()  # another worker, on the recorded configuration, is training it
    with pytest.raises(StudyError, match="changed: n_trials"):
        open_tiny_study(storage, 4)
    study.tell(running, state=TrialState.FAIL)
    final = optuna.create_study(study_name="s/arm/task/final", storage=storage, direction="maximize")
    final.enqueue_trial({"seed": 0})
    final.tell(final.ask(), 0.7)
    with pytest.raises(StudyError, match="changed: n_trials"):
        open_tiny_study(storage, 4)


def test_a_signal_swallowed_in_a_callback_is_sent_again(capfd):
    """Python cannot raise from a weakref or garbage-collection callback: a KeyboardInterrupt raised there is
    printed and lost (the command would go on, and count itself as stopping). It is sent again instead."""
    import threading
    import weakref

    from harness import shutdown

    class Thing:
        pass

    def slow_callback(ref):
        time.sleep(0.5)  # the signal arrives while Python runs this

    finished = False
    with pytest.raises(KeyboardInterrupt, match="SIGINT"), shutdown.handle_signals():
        thing = Thing()
        ref = weakref.ref(thing, slow_callback)  # noqa: F841 (kept alive until `thing` goes)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        del thing
        for _ in range(40):
            time.sleep(0.05)
        finished = True
    assert not finished and "Traceback" not in capfd.readouterr().err


@pytest.mark.slow
def test_a_killed_mlflow_run_parent_stops_its_entry_point_and_ends_the_launcher_run(tmp_path, tiny_gue):
    """`mlflow run` does not pass a SIGTERM on: killed, it would leave the entry point running as an orphan and its
    launcher run RUNNING. The entry point asks Linux for a SIGTERM when its parent dies, and ends the launcher."""
    worker = Worker(tmp_path, tiny_gue, max_epochs=30, n_trials=3, seeds=2)
    client = MlflowClient(worker.tracking)
    launcher = client.create_run(client.create_experiment("launch")).info.run_id  # as `mlflow run` makes it
    worker.env["MLFLOW_RUN_ID"] = launcher
    # A stand-in for `mlflow run`: starts the entry point (as bash -c execs it) and waits, until it is killed.
    parent_code = ("import subprocess, sys, time; p = subprocess.Popen(sys.argv[1:], stderr=open('stderr.log', 'w'), "
                   "stdout=subprocess.DEVNULL); print(p.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code, *worker.cmd], cwd=tmp_path, env=worker.env,
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    worker.proc = parent  # wait_for checks that this one lives
    worker.wait_for("epoch 1/30")
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 120
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:  # an orphan is reaped by init
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists(), "the entry point outlived its killed parent"
    err = worker.stderr()
    assert "interrupted: SIGTERM" in err and "Traceback" not in err, err[-3000:]
    runs = worker.runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert client.get_run(launcher).info.status == "KILLED"
    assert ("study", "KILLED") in {(r.data.tags.get("stage"), r.info.status) for r in runs}


def test_a_signal_during_a_database_write_is_raised_when_the_write_is_done():
    """Cut in half, a sqlite write leaves its transaction open: every later write waits on "database is locked"
    and runs stay RUNNING. The harness's MLflow and Optuna writes are `uninterrupted`."""
    steps = []

    @shutdown.uninterrupted
    def write() -> None:
        steps.append("begin")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler has run by now: deferred, not raised
        steps.append("commit")

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), shutdown.handle_signals():
        write()
        steps.append("after")  # never reached: the signal is raised as the write ends
    assert steps == ["begin", "commit"]
