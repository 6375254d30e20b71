"""What the one-pass scikit-learn arms share: a featurisation and multinomial logistic regression, fitted
once on train (one "epoch"), scored on dev, and their result in the shape the torch arms report.

An arm here only says how a sequence becomes a feature vector (`featurizer`) and which hyperparameters it
takes: overlapping k-mer counts in `kmer.py` (position-blind), the one-hot of every position in `onehot.py`
(position-aware).

A fitted pipeline exports itself without pickle or joblib (`SklearnFitted.export`): what `fit` learnt is,
by scikit-learn's convention, the public attributes ending in `_` of each step (the logistic regression's
`coef_`, `intercept_`, `classes_`; the k-mer `vocabulary_` and `idf_`; the one-hot `length_`). Arrays go to
safetensors and the rest to JSON, under the key `<step>.<attribute>`; `harness.serving` rebuilds the same
pipeline with `SklearnArm.pipeline` and sets them back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline

from ..data import TaskData
from ..metrics import classification_metrics
from ..train import EpochCallback, EpochResult, FitResult
from .base import EXPORT_CONFIG, EXPORT_WEIGHTS, Arm, Budget, RunOptions


@dataclass
class SklearnFitted:
    pipeline: Pipeline
    task: TaskData
    result: FitResult
    arm: str  # the arm's name and hyperparameters: what rebuilds the (unfitted) pipeline
    params: dict[str, Any]

    @property
    def n_params(self) -> int:
        clf = self.pipeline[-1]
        return int(clf.coef_.size + clf.intercept_.size)

    def predict(self, split: str) -> np.ndarray:
        return self.pipeline.predict_proba(self.task.split(split).sequences)

    def artifacts(self, folder: Path) -> list[Path]:
        return []

    def truncated(self) -> dict[str, int]:
        """Sequences cut per split, where the featurisation cuts any (a fixed-length one-hot); k-mer counts
        use whole sequences."""
        featurizer = self.pipeline[0]
        if not hasattr(featurizer, "truncated"):
            return {}
        return {split: featurizer.truncated(self.task.split(split).sequences) for split in ("train", "dev", "test")}

    def export(self, folder: Path) -> None:
        """Every step's learnt state (arrays in safetensors, the rest in JSON) with the arm and hyperparameters
        that rebuild the steps; see the module docstring."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays, values = {}, {}
        for step_name, step in self.pipeline.steps:
            for attribute, value in learnt_state(step).items():
                key = f"{step_name}.{attribute}"
                if isinstance(value, np.ndarray):
                    arrays[key] = np.ascontiguousarray(value)
                else:
                    values[key] = value
        save_file(arrays, str(folder / EXPORT_WEIGHTS))
        config = {"kind": "sklearn", "arm": self.arm, "params": self.params, "num_classes": self.task.num_classes,
                  "state": values}
        (folder / EXPORT_CONFIG).write_text(json.dumps(config, indent=2, default=numpy_scalar))


def learnt_state(step: BaseEstimator) -> dict[str, Any]:
    """What `fit` set on a scikit-learn step: its public attributes ending in `_` (scikit-learn's convention)."""
    return {name: value for name, value in vars(step).items() if name.endswith("_") and not name.startswith("_")}


def numpy_scalar(value: Any) -> Any:
    """JSON for the numpy scalars in a learnt state (the k-mer vocabulary's column numbers); anything else that
    JSON cannot hold fails the export rather than coming back as something else."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot export a {type(value).__name__} without pickle: {value!r}")


@dataclass(frozen=True)
class SklearnArm(Arm):
    neural: bool = False  # one scikit-learn fit: one "epoch", fp32, no checkpoint

    def featurizer(self, params: dict[str, Any]) -> list[tuple[str, Any]]:
        """The pipeline steps that turn a list of sequences into a feature matrix."""
        raise NotImplementedError

    def pipeline(self, params: dict[str, Any], seed: int) -> Pipeline:
        """The unfitted pipeline: the arm's featurisation, then the logistic regression (step `clf`)."""
        return Pipeline([*self.featurizer(params),
                         ("clf", LogisticRegression(C=float(params["C"]), max_iter=1000, random_state=seed))])

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: EpochCallback | None = None) -> SklearnFitted:
        pipeline = self.pipeline(params, seed)
        start = time.perf_counter()
        features = pipeline[:-1].fit_transform(task.train.sequences)  # featurised once, reused below
        pipeline[-1].fit(features, task.train.labels)
        seconds = time.perf_counter() - start
        fitted = SklearnFitted(pipeline, task, FitResult(), self.name, dict(params))
        train_loss = log_loss(task.train.labels, pipeline[-1].predict_proba(features), labels=range(task.num_classes))
        dev = classification_metrics(task.dev.labels, fitted.predict("dev"))
        record = EpochResult(1, float(train_loss), dev, seconds)
        # Cost: each L-BFGS iteration is a forward and a backward product with the sparse design matrix.
        flops = 4.0 * features.nnz * task.num_classes * int(np.max(pipeline[-1].n_iter_))
        fitted.result = FitResult([record], 1, dev, seconds, flops)
        if on_epoch is not None:
            on_epoch(record)
        return fitted
