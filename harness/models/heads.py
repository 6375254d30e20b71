"""The two heads every encoder of the harness gets (DNABERT-2 keeps its own published heads).

An encoder maps input_ids, attention_mask [B, L] to features [B, L, H] and has `hidden_size` = H.

    SequenceClassifier: features -> mean over valid positions -> dropout -> Linear -> logits [B, C]
    MaskedLM:           features -> Linear -> logits [B, L, vocab]

Both keep the encoder under `encoder.`, so a masked-LM checkpoint loads into a classifier by key name:
the classifier's `classifier.*` is new, the checkpoint's `lm_head.*` is left out, and anything else
that does not match is an error (`weights.load_by_key_name`).
"""

from __future__ import annotations

import torch
from torch import nn

from .weights import load_by_key_name


class SequenceClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.classifier.weight.dtype)
        features = self.encoder(input_ids, attention_mask)
        pooled = (features * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.classifier(self.dropout(pooled))

    def load_published_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """A MaskedLM checkpoint (or another classifier's) -> this classifier, with a new head."""
        load_by_key_name(self, state, fresh=("classifier.",), may_leave=("lm_head.",))


class MaskedLM(nn.Module):
    def __init__(self, encoder: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.lm_head = nn.Linear(encoder.hidden_size, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.encoder(input_ids, attention_mask))
