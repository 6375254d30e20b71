"""The hf arms: any masked-LM checkpoint transformers implements natively, fine-tuned with its own tokenizer.

    hf_pretrained  checkpoint= (a local transformers folder, or a hub id where there is network): its config,
                   tokenizer and weights, under a pooled classification head (models/hf.py); variant
                   `hf_pretrained@<sha>`, the weights' fingerprint, so that each checkpoint is its own variant
    hf_scratch     the same checkpoint's config and tokenizer from random weights (`AutoModel.from_config`): its
                   twin, variant `hf_scratch~<sha>`; the two differ in initialisation only

Both are trained by the one training loop and tokenize through the per-(tokenizer, split) cache, like every
torch arm. Their search space is the study's `hf` family (or `hf_pretrained` / `hf_scratch` where declared):
lr, batch_size, weight_decay, warmup_ratio, dropout (the head's) and `pooling` (mean, first, ...: models/hf.py).
Sequences longer than the network can embed (absolute position embeddings) are truncated to what it can, and
reported like any token cap.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors.torch import save_model
from torch import nn

from .. import probe, train
from ..checkpoints import Checkpoint
from ..data import TaskData
from ..errors import CheckpointError, ParameterError
from ..hyperparameters import produced_values
from ..models import DEFAULT_DROPOUT
from ..models.hf import (
    HF_POOLINGS,
    hf_classifier,
    load_config,
    position_limit,
    pretrained_backbone,
    random_backbone,
)
from ..schema import Artifact, Init, Tag
from ..studies import StudySpec
from ..tokenizers import DNATokenizer, HFTokenizer, hf_tokenizer
from ..tracking import redact
from .base import EXPORT_CONFIG, EXPORT_WEIGHTS, Budget, RunOptions
from .neural import TorchArm, TorchFitted

# Inside an exported folder (serving.load_hf): the backbone's config.json and the tokenizer's files.
EXPORT_BACKBONE = "backbone"
EXPORT_TOKENIZER = "tokenizer"
# config.json keys that say how a file was written, not what network it describes.
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


def described_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's config.json as the network it describes (the architecture factor's content)."""
    return {k: v for k, v in checkpoint.architecture.items() if k not in VOLATILE_CONFIG_KEYS}


class HFFitted(TorchFitted):
    """A fitted hf arm: exported as its backbone's transformers config, its tokenizer files and safetensors."""

    def artifacts(self, folder: Path) -> list[Path]:
        tokenizer = folder / Artifact.TOKENIZER_TEXT
        tokenizer.write_text(json.dumps({"fingerprint": self.tokenizer.fingerprint,
                                         "files": [p.name for p in self.tokenizer.files],
                                         "source": redact(self.options.init or "")}, indent=2))
        config = folder / Artifact.MODEL_CONFIG
        config.write_text(json.dumps({"model": type(self.model).__name__, "architecture": self.architecture,
                                      "init": self.options.init if self.options.pretrained else Init.SCRATCH,
                                      "shape_of": self.options.init if self.options.twin else None},
                                     indent=2, default=str))
        return [tokenizer, config]

    def export(self, folder: Path) -> None:
        """weights.safetensors (the whole classifier), backbone/config.json (what AutoConfig rebuilds the network
        from), tokenizer/ (the checkpoint's tokenizer files, hence its fingerprint) and config.json (the head)."""
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(folder / EXPORT_WEIGHTS), force_contiguous=True)
        self.model.backbone.config.save_pretrained(str(folder / EXPORT_BACKBONE))
        self.tokenizer.save(folder / EXPORT_TOKENIZER)
        config = {"kind": "hf", "pooling": self.model.pooling, "num_classes": self.task.num_classes,
                  "tokenizer_fingerprint": self.tokenizer.fingerprint, "max_length": self.options.max_length}
        (folder / EXPORT_CONFIG).write_text(json.dumps(config, indent=2))


class HFArm(TorchArm):
    fitted_class = HFFitted
    variant_names_checkpoint = True  # `hf_pretrained@<sha>`, `hf_scratch~<sha>`; probed, `+probe`

    @property
    def hyperparameters(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("lr", "batch_size"), ("weight_decay", "warmup_ratio", "dropout", "pooling")

    @property
    def architecture_keys(self) -> tuple[str, ...]:
        return ("pooling",)  # the head's; the backbone is the checkpoint's config

    def checkpoint(self, options: RunOptions) -> Checkpoint:
        """The checkpoint this arm is built from (the pretrained arm's weights, the twin's shape): required."""
        if not options.init:
            uses = "its weights" if self.requires_checkpoint else "its config and tokenizer (random weights)"
            raise ParameterError(
                f"arm {self.name} needs checkpoint=<a transformers masked-LM folder (config.json + weights + tokenizer "
                "files, e.g. Nucleotide Transformer or GROVER downloaded with `hf download`), or its hub id where "
                f"there is network>: it uses {uses}")
        return options.checkpoint

    # ------------------------------------------------------------------ what the variant is
    def tags(self, options: RunOptions) -> dict[str, str]:
        tags = super().tags(options)
        ckpt = self.checkpoint(options)
        tags[Tag.TOKENIZER_SOURCE] = f"checkpoint {redact(ckpt.source)} (AutoTokenizer)"
        tags[Tag.ARCHITECTURE] = f"{ckpt.architecture.get('model_type')} from checkpoint {redact(ckpt.source)}"
        return tags

    def architecture(self, spec: StudySpec, space: str, task: TaskData, options: RunOptions) -> dict[str, Any]:
        return {"hf_config": described_config(self.checkpoint(options)), **spec.fixed.get(space, {})}

    def tokenizer_sha(self, task: TaskData, options: RunOptions) -> str:
        return self.build_tokenizer(task, options).fingerprint

    # ------------------------------------------------------------------ checks before anything runs
    def distribution_problem(self, name: str, dist: Any) -> str | None:
        if name == "pooling":  # the hf head also pools the first token (models/hf.py)
            problems = (pooling_problem(value, label) for label, value in produced_values(dist))
            return next((problem for problem in problems if problem), None)
        return super().distribution_problem(name, dist)

    def value_problem(self, name: str, value: Any) -> str | None:
        return pooling_problem(value, repr(value)) if name == "pooling" else super().value_problem(name, value)

    def validate(self, spec: StudySpec, options: RunOptions) -> None:
        """The search space; then the checkpoint: a native transformers folder (custom code is refused when it is
        opened), whose tokenizer reads DNA and whose ids fit the network's embedding table."""
        self.checkpoint(options)  # a missing checkpoint= first: the search space check needs none
        super(TorchArm, self).validate(spec, options)
        ckpt = self.checkpoint(options)
        tok = self.build_tokenizer(None, options)  # type: ignore[arg-type]  (the checkpoint's: no data needed)
        config = load_config(ckpt.folder)
        if tok.vocab_size > config.vocab_size:
            raise CheckpointError(f"checkpoint {ckpt.source}: its tokenizer has {tok.vocab_size} tokens, its network "
                                  f"embeds {config.vocab_size}; they are not one model's")

    # ------------------------------------------------------------------ building and fitting
    def build_tokenizer(self, task: TaskData, options: RunOptions) -> DNATokenizer:
        return hf_tokenizer(str(self.checkpoint(options).folder))

    def build_model(self, tok: DNATokenizer, num_classes: int, params: dict[str, Any],
                    options: RunOptions) -> tuple[nn.Module, dict[str, Any]]:
        ckpt = self.checkpoint(options)
        config = load_config(ckpt.folder)
        backbone = pretrained_backbone(ckpt.folder, config) if options.pretrained else random_backbone(config)
        pooling = str(params.get("pooling", "mean"))
        model = hf_classifier(backbone, num_classes, float(params.get("dropout", DEFAULT_DROPOUT)), pooling)
        return model, {"hf_config": described_config(ckpt), "pooling": pooling}

    def token_cap(self, tok: HFTokenizer, options: RunOptions) -> int | None:
        """The run's max_length, the tokenizer's own cap and the network's position limit: the smallest."""
        caps = [options.max_length, tok.model_max_length, position_limit(load_config(self.checkpoint(options).folder))]
        return min((c for c in caps if c), default=None)

    def hidden_state_count(self, options: RunOptions) -> int:
        return int(load_config(self.checkpoint(options).folder).num_hidden_layers) + 1  # the embeddings, each layer

    def backbone(self, task: TaskData, options: RunOptions) -> probe.Backbone:
        """Read with the token cap a fine-tuned network of this checkpoint gets."""
        tok = self.build_tokenizer(task, options)
        return super().backbone(task, replace(options, max_length=self.token_cap(tok, options)))

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: train.EpochCallback | None = None) -> HFFitted | probe.ProbeFitted:
        tok = self.build_tokenizer(task, options)
        return super().fit(task, params, seed, budget, replace(options, max_length=self.token_cap(tok, options)),
                           on_epoch)


def pooling_problem(value: Any, label: str) -> str | None:
    if value in HF_POOLINGS:
        return None
    return f"{label} is not a valid pooling (how the head pools token features): it must be one of " + \
        ", ".join(HF_POOLINGS)
