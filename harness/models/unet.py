"""A 1-D U-Net sequence classifier.

U-Net (Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation") in one dimension, as used on DNA by e.g. the Caduceus/HyenaDNA baselines: an encoder
that halves the length at every level, a decoder that doubles it back and concatenates the encoder's
features at the same resolution (skip connections), then a pooling over valid positions (mean by
default; `positional` sees where a motif is, see heads.py) and a linear classifier. It works on any token ids: single nucleotides or BPE tokens.

Shapes (B batch, L tokens, C_i the width of level i, D = len(widths) - 1 down-samplings):
    input_ids [B, L], attention_mask [B, L]   (L is padded up to a multiple of 2**D inside)
    embed            -> [B, C_0, L]
    encoder level i  -> [B, C_i, L / 2**i]     (ConvBlock, then stride-2 max-pool to level i+1)
    bottleneck       -> [B, C_D, L / 2**D]
    decoder level i  -> [B, C_i, L / 2**i]     (upsample x2, concat skip i, ConvBlock)
    features         -> [B, L, C_0]            (the encoder's output; zero at padded positions)
    pooling          -> [B, C_0]  -> classifier -> logits [B, num_classes]   (SequenceClassifier, heads.py)

Design per tokenizer (the defaults of harness/models/__init__.py; a study's `fixed:` can set `widths`
and `kernel_size`). The char U-Net, widths (32, 64, 96, 128, 192), halves four times. A DNABERT-2 BPE
token is ~5 nt (4.7-5.5 nt on average on GUE's prom_core, prom_300, mouse and tf tasks), about two
halvings, so on BPE tokens the same design leaves a 70 or 101 bp sequence 2 positions at the bottleneck
and a receptive field of several times the sequence. The BPE U-Net therefore starts where the char one
is after two halvings: it drops the first two levels, widths (96, 128, 192) (two halvings), kernel 7:

                                   receptive field (bottleneck / output)    positions at the bottleneck
                                                                            70 / 101 / 300 bp
    char, (32, 64, 96, 128, 192)   388 / 564 nt                             5 / 7 / 19
    BPE,  (32, 64, 96, 128, 192)   388 / 564 tokens, ~1900 / 2800 nt        2 / 2 / 4
    BPE,  (96, 128, 192)            88 / 124 tokens,  ~430 / 600 nt         5 / 6 / 16

(Lengths: 72 / 103 / 302 char tokens; BPE with the published tokenizer, medians 17 / 22 / 63 tokens,
[CLS] and [SEP] included. Receptive fields measured by gradients, lengths from `L / 2**D` rounded up.)
Sizes: ~1.67M parameters with char tokens; on a 4096-token vocabulary ~1.87M (its embedding is 96 wide)
against ~1.80M for the char design.

Padding never changes a sequence's prediction: padded positions are zeroed after every block, so in
eval mode a padded batch gives the same logits as the sequence alone (tested), which makes dynamic
padding safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    vocab_size: int
    pad_id: int = 3
    widths: tuple[int, ...] = (32, 64, 96, 128, 192)  # ~1.7M parameters with char tokens
    kernel_size: int = 7
    dropout: float = 0.1


class ConvBlock(nn.Module):
    """Two (conv -> BatchNorm -> GELU) layers with a residual connection; zeroes padded positions.

    In eval mode BatchNorm is a per-channel affine map, so padding cannot leak into valid positions;
    in training its batch statistics include the (zeroed) padded positions, which length-bucketed
    batches keep few. BatchNorm trained faster than a per-position LayerNorm here (tf/0: dev MCC
    0.556 vs 0.528 after 3 epochs on 8k sequences)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, padding=pad)
        self.norm1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, padding=pad)
        self.norm2 = nn.BatchNorm1d(c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # mask: [B, 1, L]
        h = F.gelu(self.norm1(self.conv1(x))) * mask
        h = self.dropout(F.gelu(self.norm2(self.conv2(h))))
        return (h + self.skip(x)) * mask


class UNet1D(nn.Module):
    """The encoder: input_ids, attention_mask [B, L] -> per-position features [B, L, C_0] (zero at padding)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.embed = nn.Embedding(config.vocab_size, w[0], padding_idx=config.pad_id)
        self.down = nn.ModuleList(
            ConvBlock(w[max(i - 1, 0)], w[i], config.kernel_size, config.dropout) for i in range(len(w) - 1)
        )
        self.bottleneck = ConvBlock(w[-2], w[-1], config.kernel_size, config.dropout)
        self.up = nn.ModuleList(
            ConvBlock(w[i + 1] + w[i], w[i], config.kernel_size, config.dropout) for i in reversed(range(len(w) - 1))
        )
        self.hidden_size = w[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length, multiple = input_ids.shape[1], 2 ** len(self.down)
        pad = (length + multiple - 1) // multiple * multiple - length  # not `% multiple`: torch.compile fails on it
        if pad:  # lengths must halve cleanly at every level
            input_ids = F.pad(input_ids, (0, pad), value=self.config.pad_id)
            attention_mask = F.pad(attention_mask, (0, pad), value=0)

        mask = attention_mask[:, None, :].to(self.embed.weight.dtype)  # [B, 1, L]
        x = self.embed(input_ids).transpose(1, 2) * mask  # [B, C0, L]
        skips = []
        for block in self.down:
            x = block(x, mask)
            skips.append((x, mask))
            x, mask = F.max_pool1d(x, 2), F.max_pool1d(mask, 2)
        x = self.bottleneck(x, mask)
        for block in self.up:
            skip, mask = skips.pop()
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skip], dim=1), mask)
        return x[:, :, :length].transpose(1, 2)
