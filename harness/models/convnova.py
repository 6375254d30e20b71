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
    classifier: pooling over valid positions -> Linear -> logits [B, C]       (SequenceClassifier)

Quirks of the original that this port keeps, so original state dicts load (strictly, with their key
names) and give the same features (tested against the original's outputs to 1e-5):
  - the "rc" stem reads the *complement* (3 - id, N stays N), not the reverse complement;
  - the gate branch accumulates gates (`rc_feat = rc_feat + g`), it never sees the main branch;
  - by default (`mask_padding=False`) padding is handled as N: the convolutions see padded positions as
    N (the original left-pads with N), so features at valid positions within a receptive field of the
    padding depend on how much padding the batch has: a sequence's score depends on the other
    sequences in its batch.
  - the dilation schedule starts [1, 1, 1, ...]: the original computes base ** (i - 2) from layer 2;
  - with num_cnn_stacks > 1 each layer is repeated in place ([d0, d0, d1, d1, ...]), not the stack.

Padding (`mask_padding=True`, what the harness's arms always use): every convolution's input is zero
at padded positions, exactly what a convolution's own zero padding gives past the end of a sequence
alone. That is the stems' inputs (one-hot or embeddings) and the LayerNorm outputs fed to `convs` and
`gates` (LayerNorm maps a zero vector to its bias, so the mask comes after the norm). Everything else
is per position, so features at valid positions never see padding and, in eval mode, a sequence
scores the same alone or in a right-padded batch of any length (tests/test_batch_independence.py).
The output features are zeroed at padded positions, and pooling for classification is over valid
positions only. The weights are the same in both modes: an original state dict loads into either.

Harness token ids are mapped onto the alphabet: for single-nucleotide tokens A..N map to 0..4 and
every special token ([CLS], [SEP], [PAD], [MASK], [UNK]) to N. The BPE variant (`token_embeddings=True`)
replaces the one-hot input with learned token embeddings of width H, the stems' input channels. A BPE
token has no per-position complement (for DNABERT-2's vocabulary, 81% of the tokens' complements are
not tokens), so the gate stem reads a second, separately learned embedding of the same tokens
(`rc_embed`): the gate branch stays, its complement input does not.

Dilations for BPE tokens. The schedule counts positions, and a DNABERT-2 BPE token is ~5 nt (4.7-5.5 nt
on average on GUE's prom_core, prom_300, mouse and tf tasks). On BPE tokens the char schedule
[1, 1, 1, 4, 16] spans 193 tokens, ~950 nt, several times a 101 bp sequence (~22 tokens): its last
layer's taps are 16 tokens apart, so for 70 and 101 bp all but its middle tap read padding. The BPE
default of the harness is dilation base 2, [1, 1, 1, 2, 4] (harness/models/__init__.py):

                                receptive field        last layer's taps    taps inside, at the middle of
                                                       are apart by         70 / 101 / 300 bp
    char, base 4 (nucleotides)  193 nt                 16 nt                5 / 7 / 9 of 9
    BPE,  base 4 (tokens)       193 tokens, ~950 nt    16 tokens, ~80 nt    1 / 1 / 3
    BPE,  base 2 (the default)   81 tokens, ~400 nt     4 tokens, ~20 nt    5 / 5 / 9
    BPE,  base 1 (no dilation)   49 tokens, ~240 nt     1 token,   ~5 nt    9 / 9 / 9

(BPE lengths with the published tokenizer, [CLS] and [SEP] included: median 17, 22 and 63 tokens.)
Base 2 spaces the widest layer's taps about as far apart in nucleotides as the char model does, so it
samples a sequence at about the same places. Its receptive field is still twice the char model's,
because an undilated layer cannot step by less than a token (kernel 9 = ~45 nt); base 1 would come
closer in total span but shrink the widest layer's reach from ±16 tokens (~±80 nt; the char model's:
±64 nt) to ±4 tokens (~±20 nt). A study can fix `dilation_base: 4` (its `cnn` section's `fixed:`) to
run the char schedule on BPE tokens.
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
    # False reads padding as N, as the original (its outputs are reproduced to 1e-5); True zeroes every
    # convolution's input at padded positions, so predictions do not depend on the batch (see above).
    mask_padding: bool = False

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
        """input_ids, attention_mask [B, L] -> features [B, L, H]. Without mask_padding (or without a mask)
        the attention mask is unused and padding is read as N, as in the original."""
        mask = None  # [B, 1, L] in masked mode: multiplies every convolution's input
        if self.config.mask_padding and attention_mask is not None:
            mask = attention_mask[:, None, :].to(self.linear.weight.dtype)

        def conv_input(t: torch.Tensor) -> torch.Tensor:  # t: [B, channels, L]
            return t if mask is None else t * mask

        x, rc = self.stem_inputs(input_ids)
        feat, rc_feat = F.gelu(self.linear(conv_input(x))), F.gelu(self.rc_linear(conv_input(rc)))  # [B, H, L]
        for i in range(self.config.num_layers):
            h = conv_input(self.norms[i](self.dropout(feat).transpose(1, 2)).transpose(1, 2))
            rc_h = conv_input(self.rc_norms[i](self.dropout(rc_feat).transpose(1, 2)).transpose(1, 2))
            g = torch.sigmoid(self.gates[i](rc_h))
            feat = feat + F.gelu(self.convs[i](h)) * g
            rc_feat = rc_feat + g
            if self.config.ffn:
                feat = feat + self.mlpgroup2[i](feat.transpose(1, 2)).transpose(1, 2)
        feat = feat.transpose(1, 2)  # [B, L, H]
        out = self.milinear(feat) + feat
        # Zero at padding, as the U-Net's: a head that forgot the mask would still not read leftovers there.
        return out if mask is None else out * mask.transpose(1, 2)


def load_original_state_dict(model: ConvNova, state: dict[str, torch.Tensor]) -> None:
    """Load an original ConvNova `CNNModel` state dict (its key names; strict). A pretraining head
    (`out_linear.*`) is left out: the harness gives every model its own heads."""
    load_by_key_name(model, state, may_leave=("out_linear.",))

