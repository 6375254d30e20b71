"""deterministic=true: from the command line to the runtime, the recorded configuration and tags, PyTorch's
process-wide switches during the fits (and back afterwards), and the same test metrics twice."""

from __future__ import annotations

import os

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.arms import TorchArm
from harness.cli import main
from harness.request import RunRequest
from harness.runtime import Runtime
from harness.sweep import cell_requests, command


def switches() -> tuple[bool, bool, bool, bool]:
    """PyTorch's process-wide determinism switches, and whether the flash attention backend is allowed."""
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, torch.backends.cuda.flash_sdp_enabled())


def test_the_flag_reaches_the_runtime_and_the_printed_commands(tiny_study, monkeypatch):
    # An unset or non-deterministic cuBLAS setting is replaced (monkeypatch restores the original afterwards)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    on = RunRequest.parse({"arms": "unet_char", "study": str(tiny_study), "device": "cpu", "deterministic": "true"})
    assert on.runtime.deterministic and on.parameters()["deterministic"] == "true"
    assert all("-P deterministic=true" in command(one) for one in cell_requests(on))
    # cuBLAS reads its workspace setting when it first runs: it is set as soon as the runtime is resolved
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other deterministic setting is kept
    assert Runtime.resolve("cpu", deterministic=True).deterministic and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    off = RunRequest.parse({"arms": "unet_char", "study": str(tiny_study), "device": "cpu", "deterministic": ""})
    assert not off.runtime.deterministic and "deterministic" not in off.parameters()  # negative control
    assert "deterministic" not in command(cell_requests(off)[0])


def test_reproducible_sets_and_restores_the_switches():
    before = switches()
    assert before[0] is False  # the test suite's default: nothing else left it on
    with Runtime(torch.device("cpu"), deterministic=True).reproducible():
        assert switches() == (True, True, False, False)
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # strict: a missing kernel raises
    assert switches() == before
    with Runtime(torch.device("cpu")).reproducible():  # not asked: nothing changes
        assert switches() == before
    with pytest.raises(ValueError), Runtime(torch.device("cpu"), deterministic=True).reproducible():
        raise ValueError("a failing fit")
    assert switches() == before  # restored on the way out of an error too


def run_in_fresh_folders(tmp_path, tiny_gue, tiny_study, monkeypatch, *extra: str, times: int = 2) -> list[tuple]:
    """The same one-trial, one-seed unet_char command in `times` fresh folders (own MLflow and Optuna stores);
    each fit records whether deterministic algorithms were on while it ran."""
    real_fit, seen = TorchArm.fit, []
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # the runs' own setting is undone after the test

    def fit(self, *args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(TorchArm, "fit", fit)
    results = []
    for name in "ab"[:times]:
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        assert main(["run", "--arm", "unet_char", "--study", str(tiny_study), "--data", str(tiny_gue),
                     "--n-trials", "1", "--seeds", "1", "--device", "cpu", *extra]) == 0
        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        (parent,) = [r for r in runs if r.data.tags["stage"] == "study"]
        (final,) = [r for r in runs if r.data.tags["stage"] == "final"]
        results.append((parent.data.tags["deterministic"], parent.data.params["deterministic"],
                        final.data.tags["deterministic"], final.data.metrics["test_mcc"],
                        final.data.metrics["test_f1"], final.data.params["lr"]))
    assert len(seen) == 2 * times  # a trial and a final seed per run
    return [tuple(seen), *results]


@pytest.mark.slow
def test_deterministic_runs_repeat_and_say_so(tmp_path, tiny_gue, tiny_study, monkeypatch):
    seen, first, second = run_in_fresh_folders(tmp_path, tiny_gue, tiny_study, monkeypatch, "--deterministic", "true")
    assert seen == (True,) * 4 and not torch.are_deterministic_algorithms_enabled()  # on in every fit, off after
    assert first[:3] == ("true", "True", "true")  # parent tag, recorded configuration, final run's tag
    assert first == second  # identical test metrics (and chosen lr) from the same command


@pytest.mark.slow
def test_without_the_flag_the_switches_stay_off(tmp_path, tiny_gue, tiny_study, monkeypatch):
    seen, first = run_in_fresh_folders(tmp_path, tiny_gue, tiny_study, monkeypatch, times=1)
    assert seen == (False,) * 2
    assert first[:3] == ("false", "False", "false")
