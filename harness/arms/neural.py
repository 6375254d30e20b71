"""The torch arms: a model of `harness.models` on a tokenizer, from random weights or a checkpoint, trained
by the one training loop (`train.fit`) and scored by `train.predict`."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn

from .. import probe, train
from ..data import TaskData
from ..errors import CheckpointError
from ..models import DEFAULT_DROPOUT, MODELS, count_parameters
from ..schema import Artifact, Init, Metric, Tag
from ..studies import StudySpec
from ..tokenizers import BPETokenizer, DNATokenizer, TokenizedSplit, TokenizerRequest, build_tokenizer, tokenize
from ..tracking import redact
from .base import EXPORT_CONFIG, EXPORT_WEIGHTS, Arm, Budget, RunOptions, digest


@dataclass
class TorchFitted:
    model: nn.Module
    tokenizer: DNATokenizer
    task: TaskData
    options: RunOptions
    result: train.FitResult
    architecture: dict[str, Any]
    model_name: str  # its harness.models name, which rebuilds it from `architecture`

    @property
    def n_params(self) -> int:
        return count_parameters(self.model)

    def tokens(self, split: str) -> TokenizedSplit:
        return tokenize(self.tokenizer, self.task.split(split), self.options.max_length)

    def predict(self, split: str) -> np.ndarray:
        return train.predict(self.model, self.tokens(split), self.tokenizer.pad_id, self.options.runtime)

    def truncated(self) -> dict[str, int]:
        return {split: self.tokens(split).truncated for split in ("train", "dev", "test")}

    def artifacts(self, folder: Path) -> list[Path]:
        path = folder / (Artifact.TOKENIZER if self.tokenizer.name == "bpe" else Artifact.TOKENIZER_TEXT)
        self.tokenizer.save(path)
        config = folder / Artifact.MODEL_CONFIG
        config.write_text(json.dumps({"model": type(self.model).__name__, "architecture": self.architecture,
                                      "init": self.options.init if self.options.pretrained else Init.SCRATCH,
                                      "shape_of": self.options.init if self.options.twin else None},
                                     indent=2, default=str))
        return [path, config]

    def export(self, folder: Path) -> None:
        """The weights (safetensors: tensors the network shares are stored once, and no pickle), the tokenizer
        (tokenizer.json for BPE; the built-in char tokenizer is named by its fingerprint) and how to rebuild the
        network: its harness.models name, architecture, classes and token cap. Dropout is not recorded: the
        network predicts in eval mode, where dropout does nothing."""
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(folder / EXPORT_WEIGHTS), force_contiguous=True)
        if self.tokenizer.name == "bpe":
            self.tokenizer.save(folder / Artifact.TOKENIZER)
        config = {"kind": "torch", "model": self.model_name, "architecture": self.architecture,
                  "num_classes": self.task.num_classes, "tokenizer": self.tokenizer.name,
                  "tokenizer_fingerprint": self.tokenizer.fingerprint, "max_length": self.options.max_length}
        # No `default=`: a value JSON cannot hold must fail here, not come back as a string that builds another net.
        (folder / EXPORT_CONFIG).write_text(json.dumps(config, indent=2))


class TorchArm(Arm):
    fitted_class = TorchFitted  # what `fit` returns (the hf arms export their own way)

    @property
    def hyperparameters(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("lr", "batch_size"), ("weight_decay", "warmup_ratio", "dropout", *self.architecture_keys)

    @property
    def architecture_keys(self) -> tuple[str, ...]:
        return MODELS.get(self.model).architecture_keys

    def tags(self, options: RunOptions) -> dict[str, str]:
        source = options.tokenizer_path or (f"trained on train split, vocab {options.bpe_vocab_size}"
                                            if self.tokenizer == "bpe" else "built-in")
        tags = {**super().tags(options), Tag.TOKENIZER_SOURCE: source,
                Tag.COMPILE: str(options.runtime.compile).lower()}
        ckpt = options.checkpoint
        if ckpt is not None:
            if ckpt.tokenizer == "bpe" and not options.tokenizer_path:
                tags[Tag.TOKENIZER_SOURCE] = f"checkpoint {redact(ckpt.source)}"
            tags[Tag.ARCHITECTURE] = f"from checkpoint {redact(ckpt.source)}"
            if options.twin:
                tags[Tag.SHAPE_SOURCE] = redact(ckpt.source)
            else:
                tags.update({Tag.INIT_SOURCE: redact(ckpt.source),
                             Tag.PRETRAIN_RUN: ckpt.pretraining.get("run_id", "not recorded (external checkpoint)")})
                cost = self.inherited_cost(options)
                tags[Tag.PRETRAIN_COST_SOURCE] = ("pretrain_cost= parameter" if options.pretrain_cost else
                                                  ckpt.cost_source if cost else "not recorded: pass pretrain_cost=")
        return tags

    def inherited_cost(self, options: RunOptions) -> dict[str, float]:
        """Recorded by `python -m harness pretrain`, declared beside external weights (pretrain_cost.json), or
        given with pretrain_cost= (which wins): seconds, FLOPs, GPU-hours, whichever are known."""
        if not options.pretrained:
            return {}
        cost = {**options.checkpoint.pretraining_cost, **options.pretrain_cost}
        names = {"seconds": Metric.PRETRAIN_SECONDS, "flops": Metric.PRETRAIN_FLOPS,
                 "gpu_hours": Metric.PRETRAIN_GPU_HOURS}
        return {names[k]: float(v) for k, v in cost.items() if k in names}

    def architecture(self, spec: StudySpec, space: str, task: TaskData, options: RunOptions) -> dict[str, Any]:
        ckpt = options.checkpoint
        return MODELS.get(self.model).classifier_architecture(self.build_tokenizer(task, options),
                                                              spec.fixed.get(space, {}),
                                                              ckpt.architecture if ckpt is not None else None)

    def tokenizer_sha(self, task: TaskData, options: RunOptions) -> str:
        tok = self.build_tokenizer(task, options)
        return "char" if tok.name == "char" else tok.fingerprint

    def validate(self, spec: StudySpec, options: RunOptions) -> None:
        """Also: a checkpoint must exist and fit the arm (model, tokenizer, vocabulary)."""
        super().validate(spec, options)
        ckpt = options.checkpoint
        if ckpt is None:
            return
        if ckpt.model != self.model or ckpt.tokenizer != self.tokenizer:
            raise CheckpointError(f"checkpoint {ckpt.source} holds a {ckpt.model} model on {ckpt.tokenizer} tokens; "
                                  f"arm {self.name} is {self.model} on {self.tokenizer} tokens. Pick the matching arm.")
        if ckpt.tokenizer == "bpe":
            tok = self.build_tokenizer(None, options)  # type: ignore[arg-type]  (a checkpoint's never needs data)
            expected = ckpt.architecture.get("vocab_size", tok.vocab_size)
            if tok.vocab_size != expected or ckpt.tokenizer_fingerprint not in (None, tok.fingerprint):
                raise CheckpointError(
                    f"tokenizer {options.tokenizer_path or ckpt.tokenizer_file} is not the one checkpoint {ckpt.source} "
                    f"was trained with (vocabulary {tok.vocab_size} vs {expected}); leave tokenizer= empty to use the "
                    "checkpoint's own")

    def build_tokenizer(self, task: TaskData, options: RunOptions) -> DNATokenizer:
        ckpt = options.checkpoint
        if ckpt is not None and ckpt.tokenizer == "bpe":  # a pretrained model keeps its tokenizer
            path = options.tokenizer_path or ckpt.tokenizer_file
            if path is None:
                raise CheckpointError(f"checkpoint {ckpt.source} has no tokenizer.json; pass its tokenizer with "
                                      "tokenizer= (for DNABERT-2, the published tokenizer.json)")
            return BPETokenizer.from_file(path)
        return build_tokenizer(self.tokenizer, TokenizerRequest(task.train, options.tokenizer_path,
                                                                options.bpe_vocab_size))

    def build_model(self, tok: DNATokenizer, num_classes: int, params: dict[str, Any],
                    options: RunOptions) -> tuple[nn.Module, dict[str, Any]]:
        spec, ckpt = MODELS.get(self.model), options.checkpoint
        dropout = float(params.get("dropout", DEFAULT_DROPOUT))
        # A checkpoint brings its encoder's architecture; the head's keys (pooling) are the trial's.
        architecture = spec.classifier_architecture(tok, params, ckpt.architecture if ckpt is not None else None)
        model = spec.classifier(architecture, tok, num_classes, dropout)
        if options.pretrained:  # a twin keeps the checkpoint's architecture with its own random weights
            model.load_published_state_dict(ckpt.state_dict())
        return model, architecture

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: train.EpochCallback | None = None) -> TorchFitted | probe.ProbeFitted:
        if options.probing:
            return self.fit_probed(task, params, seed, budget, options, on_epoch)
        tok = self.build_tokenizer(task, options)
        train_split = tokenize(tok, task.train, options.max_length)
        dev_split = tokenize(tok, task.dev, options.max_length)
        train.seed_everything(seed)  # before the model exists: its initial weights depend on the seed
        model, architecture = self.build_model(tok, task.num_classes, params, options)
        cfg = train_config(params, seed, budget, options)
        result = train.fit(model, train_split, dev_split, tok.pad_id, cfg, options.runtime, on_epoch)
        return self.fitted_class(model, tok, task, options, result, architecture, self.model)

    # ------------------------------------------------------------------ probing (mode=probe, harness/probe.py)
    def fit_probed(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
                  on_epoch: train.EpochCallback | None = None) -> probe.ProbeFitted:
        """A head on the frozen backbone's cached embeddings: the same budget, schedule and dev selection."""
        backbone = self.backbone(task, options)

        def export_backbone(folder: Path) -> None:  # as a fine-tuned network of this arm exports
            model, architecture = self.frozen_network(backbone.tokenizer, task.num_classes, options)
            self.fitted_class(model, backbone.tokenizer, task, options, train.FitResult(), architecture,
                              self.model).export(folder)

        return probe.fit_probe(backbone, task, params, seed, train_config(params, seed, budget, options),
                               options.probe_views, options.runtime, on_epoch, export_backbone)

    def backbone(self, task: TaskData, options: RunOptions) -> probe.Backbone:
        """The frozen network a probe of this arm reads, keyed by what its outputs depend on: the checkpoint's
        weights (sha256) or, for a twin, the seed its random weights are drawn with; the checkpoint's config; the
        code that runs the network (the harness's models, torch, transformers for an hf checkpoint)."""
        tok = self.build_tokenizer(task, options)
        ckpt = options.checkpoint
        weights = {"weights": ckpt.fingerprint} if options.pretrained else {"random": probe.BACKBONE_SEED}
        key = digest({**weights, "config": ckpt.architecture, "code": probe.model_code_digest(),
                      "torch": torch.__version__,
                      "transformers": importlib.metadata.version("transformers") if self.checkpoint_reader == "hf"
                      else None})
        return probe.Backbone(key, lambda: self.frozen_network(tok, task.num_classes, options)[0], tok,
                              options.max_length, {"model": self.model, "checkpoint": redact(ckpt.source),
                                                   "pretrained": options.pretrained})

    def frozen_network(self, tok: DNATokenizer, num_classes: int, options: RunOptions) -> tuple[nn.Module, dict]:
        """The arm's network with the checkpoint's weights (or a twin's random ones, drawn with a fixed seed), in
        eval mode with every parameter frozen. The global random state is left as it was."""
        with torch.random.fork_rng(devices=[]):
            train.seed_everything(probe.BACKBONE_SEED)
            model, architecture = self.build_model(tok, num_classes, {}, options)
        model.requires_grad_(False)
        return model.eval(), architecture

    def hidden_state_count(self, options: RunOptions) -> int:
        ckpt = options.checkpoint
        return MODELS.get(self.model).hidden_state_count(ckpt.architecture if ckpt is not None else {})

    def embedding_cost(self, task: TaskData, options: RunOptions) -> dict[str, float]:
        if not options.probing:
            return {}
        return probe.pass_cost(self.backbone(task, options), task, options.runtime, options.probe_views)


def train_config(params: dict[str, Any], seed: int, budget: Budget, options: RunOptions) -> train.TrainConfig:
    """A trial's (or final seed's) training hyperparameters and the study's epoch budget."""
    return train.TrainConfig(
        lr=float(params["lr"]), weight_decay=float(params.get("weight_decay", 0.0)),
        batch_size=int(params["batch_size"]), warmup_ratio=float(params.get("warmup_ratio", 0.06)),
        max_epochs=budget.max_epochs, patience=budget.patience, seed=seed,
        grad_accumulation=options.grad_accumulation,
    )
