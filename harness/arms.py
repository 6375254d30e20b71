"""Arm registry. An arm is one model x tokenizer x initialisation; adding one is one `ARMS.add` line.

Every arm answers the same call, `arm.fit(task, params, seed, budget, options, on_epoch)`, and returns
a `Fitted` whose `predict(split)` scores dev or test. Torch arms all go through `train.fit`; the k-mer
baseline is scikit-learn's. `family` names the search space the study file declares for the arm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from torch import nn

from .data import TaskData
from .metrics import classification_metrics
from .models import MODELS, count_parameters
from .registry import Registry
from .studies import StudyError, StudySpec
from .tokenizers import BPETokenizer, DNATokenizer, TokenizerRequest, build_tokenizer, tokenize
from .train import EpochCallback, EpochResult, FitResult, TrainConfig, fit, predict, resolve_device, seed_everything


@dataclass(frozen=True)
class Budget:
    """What every arm gets alike (from the study): the epoch cap and the early-stopping patience."""

    max_epochs: int
    patience: int | None = None


@dataclass(frozen=True)
class RunOptions:
    """Per-invocation settings that are not hyperparameters."""

    device: str = "auto"
    tokenizer_path: str | None = None  # a tokenizer.json for BPE arms
    bpe_vocab_size: int = 4096  # when a BPE arm trains its own tokenizer
    max_length: int | None = None  # tokens, truncating longer sequences (reported)
    eval_batch_size: int = 256


class Fitted(Protocol):
    result: FitResult
    n_params: int

    def predict(self, split: str) -> np.ndarray: ...

    def artifacts(self, folder: Path) -> list[Path]: ...

    def truncated(self) -> dict[str, int]: ...


class Arm(Protocol):
    name: str
    family: str
    description: str
    hyperparameters: tuple[tuple[str, ...], tuple[str, ...]]  # (required, optional) names
    tokenizer: str
    iterative: bool  # trained epoch by epoch (torch) or in one pass (scikit-learn)

    def tags(self, options: RunOptions) -> dict[str, str]: ...

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: EpochCallback | None = None) -> Fitted: ...


# ----------------------------------------------------------------------------------- torch arms
@dataclass
class TorchFitted:
    model: nn.Module
    tokenizer: DNATokenizer
    task: TaskData
    options: RunOptions
    result: FitResult

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)

    def tokens(self, split: str):
        return tokenize(self.tokenizer, self.task.split(split), self.options.max_length)

    def predict(self, split: str) -> np.ndarray:
        device = resolve_device(self.options.device)
        return predict(self.model, self.tokens(split), self.tokenizer.pad_id, device, self.options.eval_batch_size)

    def truncated(self) -> dict[str, int]:
        return {split: self.tokens(split).truncated for split in ("train", "dev", "test")}

    def artifacts(self, folder: Path) -> list[Path]:
        path = folder / ("tokenizer.json" if self.tokenizer.name == "bpe" else "tokenizer.txt")
        self.tokenizer.save(path)
        return [path]


@dataclass(frozen=True)
class TorchArm:
    name: str
    family: str
    model: str
    tokenizer: str
    description: str
    hyperparameters: tuple[tuple[str, ...], tuple[str, ...]] = (
        ("lr", "batch_size"), ("weight_decay", "warmup_ratio", "dropout"))
    iterative: bool = True

    def tags(self, options: RunOptions) -> dict[str, str]:
        source = options.tokenizer_path or (f"trained on train split, vocab {options.bpe_vocab_size}"
                                            if self.tokenizer == "bpe" else "built-in")
        return {"family": self.family, "model": self.model, "tokenizer": self.tokenizer,
                "tokenizer_source": source, "init": "scratch"}

    def build_tokenizer(self, task: TaskData, options: RunOptions) -> DNATokenizer:
        return build_tokenizer(self.tokenizer, TokenizerRequest(task.train, options.tokenizer_path,
                                                                options.bpe_vocab_size))

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: EpochCallback | None = None) -> TorchFitted:
        tok = self.build_tokenizer(task, options)
        train = tokenize(tok, task.train, options.max_length)
        dev = tokenize(tok, task.dev, options.max_length)
        seed_everything(seed)  # before the model exists: its initial weights depend on the seed
        model = MODELS.get(self.model)(tok.vocab_size, task.num_classes, tok.pad_id, params)
        cfg = TrainConfig(
            lr=float(params["lr"]), weight_decay=float(params.get("weight_decay", 0.0)),
            batch_size=int(params["batch_size"]), warmup_ratio=float(params.get("warmup_ratio", 0.06)),
            max_epochs=budget.max_epochs, patience=budget.patience, seed=seed, device=options.device,
            eval_batch_size=options.eval_batch_size,
        )
        result = fit(model, train, dev, tok.pad_id, cfg, on_epoch)
        return TorchFitted(model, tok, task, options, result)


# ----------------------------------------------------------------------------------- k-mer baseline
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
        return {}  # k-mer counts use whole sequences


@dataclass(frozen=True)
class KmerLogRegArm:
    """Overlapping k-mer counts (tf-idf weighted, L2-normalised) + multinomial logistic regression."""

    name: str = "kmer_logreg"
    family: str = "kmer"
    description: str = "k-mer counts + logistic regression (scikit-learn), the cheapest honest baseline"
    hyperparameters: tuple[tuple[str, ...], tuple[str, ...]] = (("k", "C"), ())
    tokenizer: str = "kmer"
    iterative: bool = False

    def tags(self, options: RunOptions) -> dict[str, str]:
        return {"family": self.family, "model": "logistic_regression", "tokenizer": "kmer", "init": "scratch"}

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: EpochCallback | None = None) -> SklearnFitted:
        k = int(params["k"])
        pipeline = Pipeline([
            ("kmers", CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False, dtype=np.float32)),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
            ("clf", LogisticRegression(C=float(params["C"]), max_iter=1000, random_state=seed)),
        ])
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


def check_arm_setup(arm: Arm, spec: StudySpec, options: RunOptions) -> None:
    """Before anything runs: the study's search space fits the arm, and a tokenizer= file fits it too."""
    names = set(spec.space(arm.family)) | set(spec.fixed.get(arm.family, {}))
    required, optional = arm.hyperparameters
    missing, unknown = set(required) - names, names - set(required) - set(optional)
    if missing or unknown:
        raise StudyError(
            f"{spec.path}: search space {arm.family!r} does not fit arm {arm.name}: "
            + (f"missing {sorted(missing)}; " if missing else "") + (f"unused {sorted(unknown)}; " if unknown else "")
            + f"it takes {list(required)} and optionally {list(optional)}"
        )
    if options.tokenizer_path:
        if arm.tokenizer != "bpe":
            raise ValueError(f"tokenizer={options.tokenizer_path} applies to BPE arms; {arm.name} uses "
                             f"{arm.tokenizer} tokens. Leave tokenizer empty.")
        BPETokenizer.from_file(options.tokenizer_path)  # a missing or broken file fails here, not in trial 0


ARMS: Registry[Arm] = Registry("arm")
ARMS.add("unet_char", TorchArm("unet_char", "cnn", "unet", "char",
                               "1-D U-Net on single-nucleotide tokens, random init"))
ARMS.add("unet_bpe", TorchArm("unet_bpe", "cnn", "unet", "bpe",
                              "1-D U-Net on BPE tokens (tokenizer= or trained on the task), random init"))
ARMS.add("kmer_logreg", KmerLogRegArm())
