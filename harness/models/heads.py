"""The two heads every encoder of the harness gets (DNABERT-2 keeps its own published heads).

An encoder maps input_ids, attention_mask [B, L] to features [B, L, H] and has `hidden_size` = H.

    SequenceClassifier: features -> pool over valid positions -> dropout -> Linear -> logits [B, C]
    MaskedLM:           features -> Linear -> logits [B, L, vocab]

Pooling (`pooling=`, a hyperparameter of the CNN families, saved in their architecture dict). With
features f [B, L, H], the valid-position mask m [B, L] (1 = token, 0 = padding) and i the absolute token
position (0 = [CLS]; the harness pads on the right, so padding never moves a token's position):

    mean        sum_i m_i f_i / sum_i m_i                                   no parameters (the default)
    max         max over valid i of f_i, per channel                        no parameters
    attention   sum_i a_i f_i,  a = softmax over valid i of  q . f_i         q [H]
    positional  sum_i a_i f_i,  a = softmax over valid i of  q . f_i + b_i   q [H], b [max_positions = 2048]

`attention` is attention pooling with one learned query (the simplest form of the attentive pooling of
Lin et al. 2017, "A Structured Self-attentive Sentence Embedding", and Ilse et al. 2018, "Attention-based
Deep Multiple Instance Learning", which score with a small MLP). Like mean and max it is blind to where a
motif is, unless the encoder's features encode position. `positional` adds a learned bias per absolute
position (a learned absolute position table as in BERT, Devlin et al. 2019, but added to the pooling
score rather than to the features), so the head can look at a fixed place, such as the
splice site at the centre of GUE's splice task or a promoter's TATA box, whatever the encoder's
receptive field. Positions at or beyond the table (i >= 2048) share its last bias: longer sequences
still run, but their positions past 2047 cannot be told apart by the bias (GUE's longest task, covid,
has 1002 char tokens). Positions count tokens: with BPE tokens a fixed nucleotide position moves by a
few tokens from sequence to sequence, so `positional` suits single-nucleotide tokens best; and
positions are counted from the sequence's start, so they are fixed places only where sequences have
one length or are aligned at their start (GUE's promoter, TF and mouse tasks in ../shared have one each).

Both attention modes start as mean pooling (q = 0, b = 0: uniform weights over valid positions).
Adam moves every parameter by about lr per step whatever its gradient, so a bias entry would move by
about lr per step while a content score q . f_i moves by up to lr * sum_h |f_ih| (every channel of q
moves), of order lr * H for unit-scale features;
the bias is therefore stored divided by `BIAS_SCALE` (b = BIAS_SCALE * table), a per-parameter learning
rate, so that position is learnt at the pace of content. Measured on synthetic/motif_position
(convnova_char, hidden 128, lr 3e-3, batch 64, 8 epochs = 104 steps): with BIAS_SCALE 1 the bias stayed
within +-0.02 and test MCC at 0.00 (mean pooling: 0.04); with 16 it spanned -1.6..1.7, peaking on the
motif's tokens, and test MCC was 0.96.

All modes ignore padded positions entirely: in eval mode a padded batch gives the same logits as each
sequence alone, for an encoder whose valid-position features do not depend on padding.

Both heads keep the encoder under `encoder.`, so a masked-LM checkpoint loads into a classifier by key
name: the classifier's `classifier.*` and `pool.*` (the pooling's query and bias) are new, the
checkpoint's `lm_head.*` is left out, and anything else that does not match is an error
(`weights.load_by_key_name`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry
from .weights import load_by_key_name

MAX_POSITIONS = 2048  # the positional bias table: positions >= this share its last entry
BIAS_SCALE = 16.0  # b = BIAS_SCALE * table: the bias's learning rate relative to the query's (see module)


class MeanPooling(nn.Module):
    """features [B, L, H], mask [B, L] -> the mean over valid positions [B, H] (0 for a row with none)."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1)
        return (features * m).sum(1) / m.sum(1).clamp(min=1)


class MaxPooling(nn.Module):
    """features [B, L, H], mask [B, L] -> the per-channel max over valid positions [B, H] (0 for a row with none)."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask.unsqueeze(-1) > 0
        pooled = features.masked_fill(~valid, torch.finfo(features.dtype).min).amax(1)
        return torch.where(valid.any(1), pooled, torch.zeros_like(pooled))


class AttentionPooling(nn.Module):
    """features [B, L, H], mask [B, L] -> sum_i a_i f_i [B, H], a = softmax over valid i of scores [B, L]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden_size))  # zero: starts as mean pooling

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.query.to(features.dtype)  # [B, L]

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask > 0
        scores = self.scores(features).float().masked_fill(~valid, torch.finfo(torch.float32).min)
        # A row without valid positions would get uniform weights over padding: multiplying by the mask
        # gives it zeros instead; a row with some gets exactly 0 at padding from the softmax already.
        weights = torch.softmax(scores, dim=1) * valid
        return torch.einsum("bl,blh->bh", weights.to(features.dtype), features)


class PositionalPooling(AttentionPooling):
    """AttentionPooling whose score adds a learned bias per absolute position (table of `max_positions`)."""

    def __init__(self, hidden_size: int, max_positions: int = MAX_POSITIONS) -> None:
        super().__init__(hidden_size)
        self.position_bias = nn.Parameter(torch.zeros(max_positions))  # zero: starts as mean pooling

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(features.shape[1], device=features.device).clamp(max=len(self.position_bias) - 1)
        bias = BIAS_SCALE * self.position_bias[positions]  # [L]
        return super().scores(features) + bias.to(features.dtype)


POOLINGS: Registry[type[nn.Module]] = Registry("pooling")
POOLINGS.add("mean", MeanPooling)
POOLINGS.add("max", MaxPooling)
POOLINGS.add("attention", AttentionPooling)
POOLINGS.add("positional", PositionalPooling)


def make_pooling(name: str, hidden_size: int) -> nn.Module:
    """The pooling registered as `name` for features of width `hidden_size`."""
    cls = POOLINGS.get(name, "pooling")
    return cls(hidden_size) if issubclass(cls, AttentionPooling) else cls()


class SequenceClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1, pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.pool = make_pooling(pooling, encoder.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(self.classifier.weight.dtype)  # [B, L]; fp32 under autocast: pooled sums in fp32
        pooled = self.pool(self.encoder(input_ids, attention_mask), mask)
        return self.classifier(self.dropout(pooled))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder's features [B, L, H], its only layer a probe can read (harness/probe.py)."""
        return (self.encoder(input_ids, attention_mask),)

    def load_published_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """A MaskedLM checkpoint (or another classifier's) -> this classifier, with a new head (pooling included)."""
        load_by_key_name(self, state, fresh=("classifier.", "pool."), may_leave=("lm_head.",))


class MaskedLM(nn.Module):
    def __init__(self, encoder: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.lm_head = nn.Linear(encoder.hidden_size, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.encoder(input_ids, attention_mask))
