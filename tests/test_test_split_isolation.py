"""Negative control: test labels never reach tuning. Permuting a task's test labels must change no trial value,
no chosen parameter and no dev metric of any arm; only the test metrics may move (and must, for at least one
arm: otherwise the permutation did nothing and the test proves nothing)."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main

ARMS = ("kmer_logreg", "unet_char", "dnabert2_scratch")  # an estimator, a CNN and a transformer (tiny sizes)
TASK = "toy/motif_binary"


def permute_test_labels(root, task: str, seed: int = 0) -> None:
    """Shuffle the labels of `task`'s test.csv among its rows: every class keeps its count (so every class is
    still present), but labels no longer belong to their sequences."""
    path = root / task / "test.csv"
    frame = pd.read_csv(path)
    labels = frame["label"].to_numpy()
    shuffled = np.random.default_rng(seed).permutation(labels)
    assert (shuffled != labels).mean() > 0.25 and sorted(shuffled) == sorted(labels)
    frame.assign(label=shuffled).to_csv(path, index=False)


def outcome(folder, data, study) -> dict[str, dict]:
    """Run every arm on `data` in `folder` (own MLflow and Optuna stores); per arm the Optuna trials (number,
    state, value, params), the best parameters, and the final run's dev and test metrics."""
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    storage = f"sqlite:///{folder}/optuna.db"
    for arm in ARMS:
        assert main(["run", "--arm", arm, "--study", str(study), "--data", str(data), "--tasks", TASK,
                     "--n-trials", "2", "--seeds", "1", "--device", "cpu", "--storage", storage]) == 0
    client = MlflowClient()
    finals = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.stage = 'final'")
    out = {}
    for arm in ARMS:
        study_ = optuna.load_study(study_name=f"tiny/{arm}/{TASK}", storage=storage)
        (final,) = [r for r in finals if r.data.tags["arm"] == arm]
        metrics = final.data.metrics
        out[arm] = {
            "trials": [(t.number, t.state.name, t.value, t.params) for t in study_.get_trials()],
            "best_params": study_.best_params,
            "dev": {k: v for k, v in metrics.items() if k.startswith(("dev_", "epoch_dev_"))},
            "test": {k: v for k, v in metrics.items() if k.startswith("test_")},
        }
    return out


@pytest.mark.slow
def test_permuted_test_labels_change_nothing_in_tuning(tmp_path, tiny_gue, tiny_study, monkeypatch):
    permuted = tmp_path / "gue_permuted"
    shutil.copytree(tiny_gue, permuted)
    permute_test_labels(permuted, TASK)
    results = {}
    for name, data in (("original", tiny_gue), ("permuted", permuted)):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        results[name] = outcome(folder, data, tiny_study)
    original, shuffled = results["original"], results["permuted"]
    for arm in ARMS:
        assert original[arm]["trials"] == shuffled[arm]["trials"], arm
        assert original[arm]["best_params"] == shuffled[arm]["best_params"], arm
        assert original[arm]["dev"] and original[arm]["dev"] == shuffled[arm]["dev"], arm
    # The control: the permutation reached the test metrics of at least one arm.
    assert any(original[arm]["test"] != shuffled[arm]["test"] for arm in ARMS)
