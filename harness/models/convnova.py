"""ConvNova: a gated, dilated 1-D CNN for DNA.

ConvNova (Bo et al. 2025, "Revisiting Convolution Architectures in the Era of DNA Foundation Models",
ICLR) reads one-hot nucleotides through two convolutional stems, one on the sequence and one on its
complement, then stacks gated convolution blocks (GCBs) with a dilation schedule [1, 1, 1, b, b^2, ...]
(capped at `dilation_max`). In every block the complement branch only produces a sigmoid gate:

    h    = GELU(conv_i(LN(feat)))          g = sigmoid(gate_i(LN_rc(rc_feat)))
    feat = feat + h * g                    rc_feat = rc_feat + g
    feat = feat + FFN_i(feat)              (Linear -> GELU -> LayerNorm, when ffn=True)

and a final residual MLP (`milinear`) gives per-position features.

Shapes (B batch, L positions, A alphabet = 5, H hidden_dim):
    ids [B, L] in A=0 C=1 G=2 T=3 N=4 -> one-hot [B, A, L] -> stems [B, H, L]
    num_layers x GCB                  -> [B, H, L]
    milinear (+ residual)             -> features [B, L, H]
    classifier: masked mean over valid positions -> Linear -> logits [B, C]   (SequenceClassifier)

Quirks of the original that this port keeps, so original state dicts load (strictly, with their key
names) and give the same features (tested against the original's outputs to 1e-5):
  - the "rc" stem reads the *complement* (3 - id, N stays N), not the reverse complement;
  - the gate branch accumulates gates (`rc_feat = rc_feat + g`), it never sees the main branch;
  - padding is handled as N: the convolutions see padded positions as N (the original left-pads with
    N). The harness pads on the right; features at valid positions near the end therefore depend
    on padding, within the receptive field, as in the original. Pooling for classification is over
    valid positions only.
  - the dilation schedule starts [1, 1, 1, ...]: the original computes base ** (i - 2) from layer 2;
  - with num_cnn_stacks > 1 each layer is repeated in place ([d0, d0, d1, d1, ...]), not the stack.

Harness token ids are mapped onto the alphabet: for single-nucleotide tokens A..N map to 0..4 and
every special token ([CLS], [SEP], [PAD], [MASK], [UNK]) to N. The BPE variant (`token_embeddings=True`)
replaces the one-hot input with learned token embeddings of width H, the stems' input channels. A BPE
token has no per-position complement (for DNABERT-2's vocabulary, 81% of the tokens' complements are
not tokens), so the gate stem reads a second, separately learned embedding of the same tokens
(`rc_embed`): the gate branch stays, its complement input does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_by_key_name

ALPHABET = 5  # A C G T N
N_ID = 4


@dataclass
class ConvNovaConfig:
    hidden_dim: int = 128  # 128: ~1.7M parameters; 64: ~0.45M (the two published sizes)
    kernel_size: int = 9
    num_conv1d: int = 5
    num_cnn_stacks: int = 1
    dilation_base: int = 4
    dilation_max: int = 1024
    d_inner: int = 2
    ffn: bool = True
    dropout: float = 0.0
    vocab_size: int = ALPHABET  # with token_embeddings: the tokenizer's vocabulary
    token_embeddings: bool = False  # the BPE variant

    @property
    def num_layers(self) -> int:
        return self.num_conv1d * self.num_cnn_stacks

    def to_dict(self) -> dict:
        return asdict(self)


def dilation_schedule(c: ConvNovaConfig) -> list[int]:
    base = [1 if i < 2 else min(c.dilation_max, c.dilation_base ** (i - 2)) for i in range(c.num_conv1d)]
    return [d for d in base for _ in range(c.num_cnn_stacks)]


def dilated_convs(c: ConvNovaConfig) -> nn.ModuleList:
    k, h = c.kernel_size, c.hidden_dim
    return nn.ModuleList(nn.Conv1d(h, h, k, dilation=d, padding=(k - 1) // 2 * d) for d in dilation_schedule(c))


class ConvNova(nn.Module):
    """The encoder: ids [B, L] -> features [B, L, H]. `input_map` turns harness token ids into the
    alphabet (it depends on the tokenizer only, so it is a buffer, not a weight); without it, ids are
    alphabet ids as in the original."""

    def __init__(self, c: ConvNovaConfig, input_map: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = c
        self.hidden_size = h = c.hidden_dim
        n = c.num_layers
        if c.token_embeddings:
            self.embed = nn.Embedding(c.vocab_size, h)
            self.rc_embed = nn.Embedding(c.vocab_size, h)
        else:
            self.register_buffer("input_map", torch.arange(ALPHABET) if input_map is None else input_map,
                                 persistent=False)
        stem_in = h if c.token_embeddings else ALPHABET
        self.linear = nn.Conv1d(stem_in, h, kernel_size=9, padding=4)  # the original fixes 9 here
        self.rc_linear = nn.Conv1d(stem_in, h, kernel_size=9, padding=4)
        self.convs = dilated_convs(c)
        self.gates = dilated_convs(c)
        if c.ffn:
            self.mlpgroup2 = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h)) for _ in range(n))
        wide = h * c.d_inner
        self.milinear = nn.Sequential(nn.Linear(h, wide), nn.GELU(), nn.Linear(wide, wide), nn.LayerNorm(wide),
                                      nn.Linear(wide, wide), nn.GELU(), nn.Linear(wide, h), nn.LayerNorm(h))
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(n))
        self.rc_norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(n))
        self.dropout = nn.Dropout(c.dropout)

    def stem_inputs(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] ids -> the two stems' inputs [B, channels, L]."""
        if self.config.token_embeddings:
            return self.embed(ids).transpose(1, 2), self.rc_embed(ids).transpose(1, 2)
        ids = self.input_map[ids]
        complement = torch.where(ids == N_ID, ids, 3 - ids)
        one_hot = F.one_hot(torch.stack((ids, complement)), ALPHABET).to(self.linear.weight.dtype)
        return one_hot[0].transpose(1, 2), one_hot[1].transpose(1, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x, rc = self.stem_inputs(input_ids)  # attention_mask unused: padding is read as N (see above)
        feat, rc_feat = F.gelu(self.linear(x)), F.gelu(self.rc_linear(rc))  # [B, H, L]
        for i in range(self.config.num_layers):
            h = self.norms[i](self.dropout(feat).transpose(1, 2)).transpose(1, 2)
            rc_h = self.rc_norms[i](self.dropout(rc_feat).transpose(1, 2)).transpose(1, 2)
            g = torch.sigmoid(self.gates[i](rc_h))
            feat = feat + F.gelu(self.convs[i](h)) * g
            rc_feat = rc_feat + g
            if self.config.ffn:
                feat = feat + self.mlpgroup2[i](feat.transpose(1, 2)).transpose(1, 2)
        feat = feat.transpose(1, 2)  # [B, L, H]
        return self.milinear(feat) + feat


def load_original_state_dict(model: ConvNova, state: dict[str, torch.Tensor]) -> None:
    """Load an original ConvNova `CNNModel` state dict (its key names; strict). A pretraining head
    (`out_linear.*`) is left out: the harness gives every model its own heads."""
    load_by_key_name(model, state, may_leave=("out_linear.",))

