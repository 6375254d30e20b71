"""The two heads every encoder of the harness gets (DNABERT-2 keeps its own published heads).

An encoder maps input_ids, attention_mask [B, L] to features [B, L, H] and has `hidden_size` = H.

    SequenceClassifier: features -> mean over valid positions -> dropout -> Linear -> logits [B, C]
    MaskedLM:           features -> Linear -> logits [B, L, vocab]

Both keep the encoder under `encoder.`, so a masked-LM checkpoint loads into a classifier by key name:
the classifier's `classifier.*` is new, the checkpoint's `lm_head.*` is left out, and anything else
that does not match is an error.
"""

from __future__ import annotations

import torch
from torch import nn


def load_by_key_name(model: nn.Module, state: dict[str, torch.Tensor], new_head: tuple[str, ...],
                     unused_head: tuple[str, ...]) -> None:
    """Load `state` into `model`; only keys under `new_head` may be missing and only keys under
    `unused_head` may be left over. Shapes must match (a different architecture is an error)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(new_head)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(unused_head)]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} weight(s) this model needs: {missing[:8]}")
    if unexpected:
        raise KeyError(f"checkpoint has {len(unexpected)} weight(s) this model does not know: {unexpected[:8]}")


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
        encoder_only = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_by_key_name(self, encoder_only, new_head=("classifier.",), unused_head=("lm_head.",))


class MaskedLM(nn.Module):
    def __init__(self, encoder: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.lm_head = nn.Linear(encoder.hidden_size, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.encoder(input_ids, attention_mask))
