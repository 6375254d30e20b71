"""Arm registry. An arm is one model x tokenizer x initialisation; adding one is one `ARMS.add` line.

Every arm answers the same call, `arm.fit(task, params, seed, budget, options, on_epoch)`, and returns
a `Fitted` whose `predict(split)` scores dev or test. Torch arms all go through `train.fit`; the k-mer
baseline is scikit-learn's. `family` names the search space the study file declares for the arm.
"""

from __future__ import annotations

import json
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

from .checkpoints import Checkpoint, open_checkpoint
from .data import TaskData
from .metrics import classification_metrics
from .models import DEFAULT_DROPOUT, MODELS, count_parameters
from .registry import Registry
from .studies import StudyError, StudySpec
from .tokenizers import BPETokenizer, DNATokenizer, TokenizerRequest, build_tokenizer, tokenize
from .tracking import redact
from .train import (EpochCallback, EpochResult, FitResult, TrainConfig, check_plain_loop, fit, predict,
                    resolve_device, resolve_precision, seed_everything)


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
    init: str | None = None  # a checkpoint to fine-tune from (folder, MLflow URI or DNABERT-2 hub id)
    precision: str = "auto"  # fp32, bf16 (autocast), or auto: bf16 on a GPU that supports it
    compile: bool = False  # torch.compile the model (see train.TrainConfig)
    fast_path: bool = True  # False: the plain reference loop (see train.TrainConfig)

    def __post_init__(self) -> None:
        check_plain_loop(self.precision, self.compile, self.fast_path)  # before anything runs

    @property
    def checkpoint(self) -> Checkpoint | None:
        return open_checkpoint(self.init) if self.init else None


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

    def inherited_cost(self, options: RunOptions) -> dict[str, float]: ...

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
    architecture: dict[str, Any]

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)

    def tokens(self, split: str):
        return tokenize(self.tokenizer, self.task.split(split), self.options.max_length)

    def predict(self, split: str) -> np.ndarray:
        device, tokens, fast = resolve_device(self.options.device), self.tokens(split), self.options.fast_path
        return predict(self.model, tokens, self.tokenizer.pad_id, device, self.options.eval_batch_size,
                       resolve_precision(self.options.precision, device, fast),
                       pad_to=None if fast else int(tokens.lengths.max()))  # scored as fit scored dev

    def truncated(self) -> dict[str, int]:
        return {split: self.tokens(split).truncated for split in ("train", "dev", "test")}

    def artifacts(self, folder: Path) -> list[Path]:
        path = folder / ("tokenizer.json" if self.tokenizer.name == "bpe" else "tokenizer.txt")
        self.tokenizer.save(path)
        config = folder / "model_config.json"
        config.write_text(json.dumps({"model": type(self.model).__name__, "architecture": self.architecture,
                                      "init": self.options.init or "scratch"}, indent=2, default=str))
        return [path, config]


@dataclass(frozen=True)
class TorchArm:
    name: str
    family: str
    model: str
    tokenizer: str
    description: str
    requires_checkpoint: bool = False  # dnabert2_pretrained: checkpoint= is the point of the arm
    iterative: bool = True

    @property
    def hyperparameters(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("lr", "batch_size"), ("weight_decay", "warmup_ratio", "dropout", *MODELS.get(self.model).architecture_keys)

    def tags(self, options: RunOptions) -> dict[str, str]:
        source = options.tokenizer_path or (f"trained on train split, vocab {options.bpe_vocab_size}"
                                            if self.tokenizer == "bpe" else "built-in")
        tags = {"family": self.family, "model": self.model, "tokenizer": self.tokenizer,
                "tokenizer_source": source, "init": "scratch", "compile": str(options.compile).lower()}
        ckpt = options.checkpoint
        if ckpt is not None:
            if ckpt.tokenizer == "bpe" and not options.tokenizer_path:
                tags["tokenizer_source"] = f"checkpoint {redact(ckpt.source)}"
            tags.update({"init": "pretrained", "init_source": redact(ckpt.source), "init_weights_sha256": ckpt.fingerprint,
                         "architecture": "from checkpoint",
                         "pretrain_run_id": ckpt.pretraining.get("run_id", "not recorded (external checkpoint)")})
        return tags

    def inherited_cost(self, options: RunOptions) -> dict[str, float]:
        """The pretraining compute a fine-tuned arm inherits, where the checkpoint recorded it."""
        ckpt = options.checkpoint
        if ckpt is None or "seconds" not in ckpt.pretraining:
            return {}
        return {"pretrain_seconds": float(ckpt.pretraining["seconds"]), "pretrain_flops": float(ckpt.pretraining["flops"])}

    def build_tokenizer(self, task: TaskData, options: RunOptions) -> DNATokenizer:
        ckpt = options.checkpoint
        if ckpt is not None and ckpt.tokenizer == "bpe":  # a pretrained model keeps its tokenizer
            path = options.tokenizer_path or ckpt.tokenizer_file
            if path is None:
                raise ValueError(f"checkpoint {ckpt.source} has no tokenizer.json; pass its tokenizer with "
                                 "tokenizer= (for DNABERT-2, the published tokenizer.json)")
            return BPETokenizer.from_file(path)
        return build_tokenizer(self.tokenizer, TokenizerRequest(task.train, options.tokenizer_path,
                                                                options.bpe_vocab_size))

    def build_model(self, tok: DNATokenizer, num_classes: int, params: dict[str, Any],
                    options: RunOptions) -> tuple[nn.Module, dict[str, Any]]:
        spec, ckpt = MODELS.get(self.model), options.checkpoint
        dropout = float(params.get("dropout", DEFAULT_DROPOUT))
        architecture = ckpt.architecture if ckpt is not None else spec.architecture(tok, params)
        model = spec.classifier(architecture, tok, num_classes, dropout)
        if ckpt is not None:
            model.load_published_state_dict(ckpt.state_dict())
        return model, architecture

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: EpochCallback | None = None) -> TorchFitted:
        tok = self.build_tokenizer(task, options)
        train = tokenize(tok, task.train, options.max_length)
        dev = tokenize(tok, task.dev, options.max_length)
        seed_everything(seed)  # before the model exists: its initial weights depend on the seed
        model, architecture = self.build_model(tok, task.num_classes, params, options)
        cfg = TrainConfig(
            lr=float(params["lr"]), weight_decay=float(params.get("weight_decay", 0.0)),
            batch_size=int(params["batch_size"]), warmup_ratio=float(params.get("warmup_ratio", 0.06)),
            max_epochs=budget.max_epochs, patience=budget.patience, seed=seed, device=options.device,
            eval_batch_size=options.eval_batch_size, precision=options.precision, compile=options.compile,
            fast_path=options.fast_path,
        )
        result = fit(model, train, dev, tok.pad_id, cfg, on_epoch)
        return TorchFitted(model, tok, task, options, result, architecture)


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

    def inherited_cost(self, options: RunOptions) -> dict[str, float]:
        return {}

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
    # A family's fixed architecture of one model (ConvNova's hidden_dim) does not concern another (U-Net).
    other_architectures = {k for _, m in MODELS.items() for k in m.architecture_keys} & set(spec.fixed.get(arm.family, {}))
    missing, unknown = set(required) - names, names - set(required) - set(optional) - other_architectures
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
    check_init(arm, options)


def variant_name(arm: Arm, options: RunOptions) -> str:
    """The label results are filed under: an arm fine-tuned from `init=` is its own variant
    (`convnova_char@1a2b3c4d`, the checkpoint's weight fingerprint), so that it has its own Optuna study and
    sits beside its scratch twin in one experiment. dnabert2_pretrained is pretrained by definition."""
    if options.init and not getattr(arm, "requires_checkpoint", False):
        return f"{arm.name}@{options.checkpoint.fingerprint[:8]}"
    return arm.name


def check_init(arm: Arm, options: RunOptions) -> None:
    """A checkpoint must exist and fit the arm (model, tokenizer, vocabulary) before anything runs."""
    if getattr(arm, "requires_checkpoint", False) and not options.init:
        raise ValueError(f"arm {arm.name} fine-tunes a pretrained model: pass checkpoint=<a DNABERT-2 folder "
                         "(config.json + weights, e.g. from `hf download zhihan1996/DNABERT-2-117M`), a hub id, "
                         "or runs:/<run_id>/checkpoint from the pretrain entry point>")
    ckpt = options.checkpoint
    if ckpt is None:
        return
    if not isinstance(arm, TorchArm):
        raise ValueError(f"init={options.init}: arm {arm.name} is not a neural network; init applies to torch arms")
    if ckpt.model != arm.model or ckpt.tokenizer != arm.tokenizer:
        raise ValueError(f"checkpoint {ckpt.source} holds a {ckpt.model} model on {ckpt.tokenizer} tokens; arm "
                         f"{arm.name} is {arm.model} on {arm.tokenizer} tokens. Pick the matching arm.")
    if ckpt.tokenizer == "bpe":
        tok = arm.build_tokenizer(None, options)  # type: ignore[arg-type]  (a checkpoint's never needs data)
        expected = ckpt.architecture.get("vocab_size", tok.vocab_size)
        if tok.vocab_size != expected or ckpt.tokenizer_fingerprint not in (None, tok.fingerprint):
            raise ValueError(f"tokenizer {options.tokenizer_path or ckpt.tokenizer_file} is not the one checkpoint "
                             f"{ckpt.source} was trained with (vocabulary {tok.vocab_size} vs {expected}); "
                             "leave tokenizer= empty to use the checkpoint's own")


ARMS: Registry[Arm] = Registry("arm")
ARMS.add("unet_char", TorchArm("unet_char", "cnn", "unet", "char",
                               "1-D U-Net on single-nucleotide tokens, random init"))
ARMS.add("unet_bpe", TorchArm("unet_bpe", "cnn", "unet", "bpe",
                              "1-D U-Net on BPE tokens (tokenizer= or trained on the task), random init"))
ARMS.add("convnova_char", TorchArm("convnova_char", "cnn", "convnova", "char",
                                   "ConvNova gated dilated CNN on one-hot nucleotides, random init (or init=)"))
ARMS.add("convnova_bpe", TorchArm("convnova_bpe", "cnn", "convnova", "bpe",
                                  "ConvNova on BPE token embeddings (tokenizer= or trained on the task)"))
ARMS.add("dnabert2_pretrained", TorchArm("dnabert2_pretrained", "transformer", "dnabert2", "bpe",
                                         "DNABERT-2 fine-tuned from checkpoint= (e.g. the published 117M)",
                                         requires_checkpoint=True))
ARMS.add("dnabert2_scratch", TorchArm("dnabert2_scratch", "transformer", "dnabert2", "bpe",
                                      "DNABERT-2 architecture on BPE tokens, BERT random init"))
ARMS.add("dnabert2_char_scratch", TorchArm("dnabert2_char_scratch", "transformer", "dnabert2", "char",
                                           "DNABERT-2 architecture on single-nucleotide tokens, random init"))
ARMS.add("kmer_logreg", KmerLogRegArm())
