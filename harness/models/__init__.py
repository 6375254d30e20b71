"""Model registry: name -> ModelSpec, which builds that architecture's classifier and masked-LM.

An architecture is described by a plain dict (saved in checkpoints, logged with every run), made from
the tokenizer and the hyperparameters named in `architecture_keys` (a study fixes or searches them).
A checkpoint brings its own architecture; dropout always comes from the run's hyperparameters, and so
do the classification head's keys (`head_keys`: the CNNs' pooling), since a masked-LM checkpoint has
no classification head to bring (`ModelSpec.classifier_architecture`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..registry import Registry
from .convnova import ConvNova, ConvNovaConfig
from .dnabert2 import DNABERT2Config, DNABERT2ForMaskedLM, DNABERT2ForSequenceClassification
from .heads import MaskedLM, SequenceClassifier
from .unet import UNet1D, UNetConfig

DEFAULT_DROPOUT = 0.1


@dataclass(frozen=True)
class ModelSpec:
    architecture_keys: tuple[str, ...]
    architecture: Callable[[Any, dict[str, Any]], dict[str, Any]]  # (tokenizer, hyperparameters) -> config
    classifier: Callable[[dict[str, Any], Any, int, float], nn.Module]  # (config, tokenizer, classes, dropout)
    masked_lm: Callable[[dict[str, Any], Any, float], nn.Module]  # (config, tokenizer, dropout)
    head_keys: tuple[str, ...] = ()  # those architecture keys that shape the classification head, not the encoder
    # How many hidden states the classifier's `hidden_states` gives (a probe's layers): a CNN gives its last only.
    hidden_state_count: Callable[[dict[str, Any]], int] = lambda config: 1

    def classifier_architecture(self, tok, hp: dict[str, Any], checkpoint: dict[str, Any] | None = None
                                ) -> dict[str, Any]:
        """The architecture a classifier is built with: a checkpoint's, else the hyperparameters'; the head's
        keys come from the hyperparameters either way (a trial's sampled pooling reaches a fine-tuned model)."""
        if checkpoint is None:
            return self.architecture(tok, hp)
        own = self.architecture(tok, hp) if self.head_keys else {}
        return {**checkpoint, **{k: own[k] for k in self.head_keys}}


MODELS: Registry[ModelSpec] = Registry("model")


def pick(hp: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {k: type(v)(hp.get(k, v)) for k, v in defaults.items()}


# --------------------------------------------------------------------------- the CNNs' classifier head
# SequenceClassifier's pooling (heads.py: mean, max, attention, positional). An architecture key like the
# encoder's (in the saved dict, fixed or searched by a study's cnn space), but the encoders never see it.
CNN_HEAD = {"pooling": "mean"}


def cnn_classifier(encoder: nn.Module, config: dict[str, Any], num_classes: int, dropout: float) -> SequenceClassifier:
    """`encoder` under the head `config` names; mean pooling where a saved architecture predates the choice."""
    return SequenceClassifier(encoder, num_classes, dropout, pooling=config.get("pooling", CNN_HEAD["pooling"]))


# ------------------------------------------------------------------------------------------ U-Net
def unet_encoder(config: dict[str, Any], tokenizer, dropout: float) -> UNet1D:
    return UNet1D(UNetConfig(tokenizer.vocab_size, tokenizer.pad_id, dropout=dropout,
                             widths=tuple(config["widths"]), kernel_size=config["kernel_size"]))


UNET_DEFAULTS = {"widths": list(UNetConfig.widths), "kernel_size": UNetConfig.kernel_size}  # the char design
# A BPE token is ~4-5 nt, about two of the char U-Net's halvings: the BPE U-Net starts at the char one's
# third level (widths 96, 128, 192). Receptive fields and bottleneck lengths: unet.py's docstring.
UNET_BPE_DEFAULTS = {**UNET_DEFAULTS, "widths": list(UNetConfig.widths[2:])}

MODELS.add("unet", ModelSpec(
    architecture_keys=(*UNET_DEFAULTS, *CNN_HEAD),
    architecture=lambda tok, hp: pick(hp, {**(UNET_BPE_DEFAULTS if tok.name == "bpe" else UNET_DEFAULTS), **CNN_HEAD}),
    classifier=lambda cfg, tok, n, p: cnn_classifier(unet_encoder(cfg, tok, p), cfg, n, p),
    masked_lm=lambda cfg, tok, p: MaskedLM(unet_encoder(cfg, tok, p), tok.vocab_size),
    head_keys=tuple(CNN_HEAD),
))


# --------------------------------------------------------------------------------------- ConvNova
CONVNOVA_DEFAULTS = {"hidden_dim": 128, "kernel_size": 9, "num_conv1d": 5, "dilation_base": 4}
# Dilations [1, 1, 1, 2, 4] in BPE tokens (~5 nt): the widest layer's taps land ~20 nt apart, as the char
# model's (16 nt) do. The char schedule [1, 1, 1, 4, 16] would span ~190 tokens. See convnova.py's docstring.
CONVNOVA_BPE_DEFAULTS = {**CONVNOVA_DEFAULTS, "dilation_base": 2}


def convnova_encoder(config: dict[str, Any], tokenizer, dropout: float) -> ConvNova:
    """Single-nucleotide tokens become ConvNova's one-hot alphabet; any other tokenizer (BPE) feeds
    token embeddings. Always in masked mode, so that predictions do not depend on the batch; forced here,
    not read from `config`, so that architectures saved before the mode existed get it too."""
    from ..tokenizers import nucleotide_alphabet_map

    config = {**{k: v for k, v in config.items() if k not in CNN_HEAD}, "mask_padding": True}
    if tokenizer.name == "char":
        return ConvNova(ConvNovaConfig(**config, dropout=dropout), input_map=nucleotide_alphabet_map(tokenizer))
    c = ConvNovaConfig(**config, dropout=dropout, vocab_size=tokenizer.vocab_size, token_embeddings=True)
    return ConvNova(c)


MODELS.add("convnova", ModelSpec(
    architecture_keys=(*CONVNOVA_DEFAULTS, *CNN_HEAD),
    architecture=lambda tok, hp: pick(hp, {**(CONVNOVA_BPE_DEFAULTS if tok.name == "bpe" else CONVNOVA_DEFAULTS),
                                           **CNN_HEAD}),
    classifier=lambda cfg, tok, n, p: cnn_classifier(convnova_encoder(cfg, tok, p), cfg, n, p),
    masked_lm=lambda cfg, tok, p: MaskedLM(convnova_encoder(cfg, tok, p), tok.vocab_size),
    head_keys=tuple(CNN_HEAD),
))


# -------------------------------------------------------------------------------------- DNABERT-2
DNABERT2_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072}  # the published 117M model


def dnabert2_config(config: dict[str, Any], tokenizer, dropout: float, num_labels: int = 2) -> DNABERT2Config:
    # A checkpoint's config.json carries other fields (alibi_starting_size, layer_norm_eps ...): kept.
    known = {k: v for k, v in config.items() if k in DNABERT2Config.__dataclass_fields__}
    return DNABERT2Config(**{**known, "vocab_size": tokenizer.vocab_size, "hidden_dropout_prob": dropout,
                             "num_labels": num_labels, "classifier_dropout": None})


MODELS.add("dnabert2", ModelSpec(
    architecture_keys=tuple(DNABERT2_DEFAULTS),
    architecture=lambda tok, hp: pick(hp, DNABERT2_DEFAULTS),
    classifier=lambda cfg, tok, n, p: DNABERT2ForSequenceClassification(dnabert2_config(cfg, tok, p, n)),
    masked_lm=lambda cfg, tok, p: DNABERT2ForMaskedLM(dnabert2_config(cfg, tok, p)),
    hidden_state_count=lambda cfg: int(cfg["num_hidden_layers"]) + 1,  # the embeddings, then each layer
))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def logits_of(output: torch.Tensor | Any) -> torch.Tensor:
    """Models return a logits tensor, or (the DNABERT-2 classes, like transformers) an object with `.logits`."""
    return output if isinstance(output, torch.Tensor) else output.logits
