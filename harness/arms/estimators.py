"""What the one-pass scikit-learn arms share: a featurisation and multinomial logistic regression, fitted
once on train (one "epoch"), scored on dev, and their result in the shape the torch arms report.

An arm here only says how a sequence becomes a feature vector (`featurizer`) and which hyperparameters it
takes: overlapping k-mer counts in `kmer.py` (position-blind), the one-hot of every position in `onehot.py`
(position-aware).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline

from ..data import TaskData
from ..metrics import classification_metrics
from ..train import EpochCallback, EpochResult, FitResult
from .base import Arm, Budget, RunOptions


@dataclass
class SklearnFitted:
    pipeline: Pipeline
    task: TaskData
    result: FitResult

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


@dataclass(frozen=True)
class SklearnArm(Arm):
    neural: bool = False  # one scikit-learn fit: one "epoch", fp32, no checkpoint

    def featurizer(self, params: dict[str, Any]) -> list[tuple[str, Any]]:
        """The pipeline steps that turn a list of sequences into a feature matrix."""
        raise NotImplementedError

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: EpochCallback | None = None) -> SklearnFitted:
        pipeline = Pipeline([*self.featurizer(params),
                             ("clf", LogisticRegression(C=float(params["C"]), max_iter=1000, random_state=seed))])
        start = time.perf_counter()
        features = pipeline[:-1].fit_transform(task.train.sequences)  # featurised once, reused below
        pipeline[-1].fit(features, task.train.labels)
        seconds = time.perf_counter() - start
        fitted = SklearnFitted(pipeline, task, FitResult())
        train_loss = log_loss(task.train.labels, pipeline[-1].predict_proba(features), labels=range(task.num_classes))
        dev = classification_metrics(task.dev.labels, fitted.predict("dev"))
        record = EpochResult(1, float(train_loss), dev, seconds)
        # Cost: each L-BFGS iteration is a forward and a backward product with the sparse design matrix.
        flops = 4.0 * features.nnz * task.num_classes * int(np.max(pipeline[-1].n_iter_))
        fitted.result = FitResult([record], 1, dev, seconds, flops)
        if on_epoch is not None:
            on_epoch(record)
        return fitted
