"""A probe: a small head trained on a frozen backbone's pooled embeddings.

Probing asks what a pretrained network's representations hold without changing them, as BEND (Marin et al.
2024, ICLR) and Tang et al. (2025, Genome Biology) ask it of DNA language models; against the same network
with random weights it measures what pretraining put there (Vishniakov et al., "Genomic foundationless
models", found such random-weight baselines strong).

    backbone.hidden_states(input_ids, attention_mask)   embeddings, layer 1, ..., layer N   each [B, L, H]
        [layer]                                         -1 the last layer, -2 the one below, ..., -(N+1) the embeddings
        -> pool over valid tokens (`pooling`)           [B, H]     computed once per split and cached (harness/probe.py)
    ProbeHead: features [B, H]
        -> standardise with the train split's mean and sd (fixed, not learnt)
        -> linear: dropout -> Linear(H, C)                                              logits [B, C]
           mlp:    Linear(H, head_hidden) -> GELU -> dropout -> Linear(head_hidden, C)

Poolings have no parameters, so that a pooled embedding serves every trial: `mean` over valid tokens, `max`
per channel over them, `first` the first token's ([CLS] / <cls> in BERT-style models; for a CNN merely its
first position). Standardising first puts a random network's features, whose scale is arbitrary, and a
pretrained one's on one scale, so that one learning-rate range serves both (as a StandardScaler before a
logistic regression would).

`ProbedClassifier` puts the frozen backbone, the chosen layer and pooling and the head back together: raw
tokens in, logits out, the call every harness classifier answers. It is what a probed model exports and serves;
training never runs it (the head learns from the cached embeddings).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import Registry
from .heads import AttentionPooling
from .hf import HF_POOLINGS

# The poolings without parameters (mean, max, first): what is pooled once can be cached for every trial.
PROBE_POOLINGS: Registry[type[nn.Module]] = Registry("pooling")
for _name, _cls in HF_POOLINGS.items():
    if not issubclass(_cls, AttentionPooling):
        PROBE_POOLINGS.add(_name, _cls)
PROBE_HEADS = ("linear", "mlp")
# A probe's defaults where its search space neither tunes nor fixes a key.
PROBE_DEFAULTS: dict[str, Any] = {"head": "linear", "head_hidden": 256, "layer": -1, "pooling": "mean"}


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """states [B, L, H], mask [B, L] -> [B, H] in float32 (bf16 states are pooled in float32)."""
    return PROBE_POOLINGS.get(pooling, "pooling")()(states.float(), mask.float())


class ProbeHead(nn.Module):
    """features [B, H] -> logits [B, C]: standardised, then a linear or a one-hidden-layer MLP head."""

    def __init__(self, hidden_size: int, num_classes: int, head: str = "linear", head_hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.kind = head
        # Set from the train split's features before training (`standardise_with`); buffers: saved, never trained.
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("scale", torch.ones(hidden_size))
        self.dropout = nn.Dropout(dropout)
        if head == "linear":
            self.classifier = nn.Linear(hidden_size, num_classes)
        elif head == "mlp":
            self.classifier = nn.Sequential(nn.Linear(hidden_size, head_hidden), nn.GELU(), self.dropout,
                                            nn.Linear(head_hidden, num_classes))
        else:
            raise ValueError(f"head {head!r}: one of {', '.join(PROBE_HEADS)}")

    def standardise_with(self, features: torch.Tensor) -> None:
        """The train split's per-channel mean and sd (a constant channel keeps scale 1)."""
        sd = features.float().std(0)
        self.mean.copy_(features.float().mean(0))
        self.scale.copy_(torch.where(sd > 1e-6, sd, torch.ones_like(sd)))

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = (features.float() - self.mean) / self.scale
        return self.classifier(x if self.kind == "mlp" else self.dropout(x))


class ProbedClassifier(nn.Module):
    """A frozen backbone (a harness classifier with `hidden_states`), one of its layers, a pooling and a trained
    ProbeHead: input_ids, attention_mask [B, L] -> logits [B, C]."""

    def __init__(self, backbone: nn.Module, layer: int, pooling: str, head: ProbeHead) -> None:
        super().__init__()
        self.backbone, self.layer, self.pooling, self.head = backbone, layer, pooling, head
        self.backbone.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone.hidden_states(input_ids, attention_mask)[self.layer]
        return self.head(pool(states, attention_mask, self.pooling))
