"""DNABERT-2 in plain PyTorch, loading the published checkpoint layout by key name.

DNABERT-2 (Zhou et al. 2024, "DNABERT-2: Efficient Foundation Model and Benchmark for Multi-Species
Genome") is a post-LayerNorm BERT (MosaicBERT flavour) over BPE tokens:
  - no position embeddings: attention gets a symmetric ALiBi bias, -slope_h * |i - j| (Press et al.
    2022), with the published slope formula for any head count (interleaved for non powers of two);
  - fused query/key/value projection `Wqkv`;
  - gated-GELU MLP: `gated_layers` (no bias) -> GELU(gate) * value -> `wo` -> `layernorm`(+ residual);
  - [CLS] -> pooler (dense + tanh) -> classifier; masked-LM head with the decoder tied to the embeddings.

Shapes (B batch, L tokens, H hidden, A heads, D = H / A):
    input_ids, attention_mask [B, L] -> embeddings [B, L, H] -> 12 x layer [B, L, H]
    attention: Wqkv [B, L, 3H] -> q, k, v [B, A, L, D]; bias = ALiBi [A, L, L] + mask [B, 1, 1, L]
    last_hidden_state [B, L, H] (zero at padded positions) -> pooled [B, H] -> logits [B, C]
Attention runs through `torch.nn.functional.scaled_dot_product_attention` with the bias as its mask
(no Triton). The original computes the same on unpadded tokens; outputs at valid positions agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .weights import download_from_hub, load_by_key_name, read_state_dict


@dataclass
class ModelOutput:
    """What the models return, named as transformers names it (a dataclass, which torch.compile traces)."""

    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None


@dataclass
class DNABERT2Config:
    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    alibi_starting_size: int = 512
    classifier_dropout: float | None = None
    num_labels: int = 2

    @classmethod
    def from_dict(cls, raw: dict) -> DNABERT2Config:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "id2label" in raw and "num_labels" not in raw:
            values["num_labels"] = len(raw["id2label"])
        return cls(**values)

    def to_dict(self) -> dict:
        return {**asdict(self), "model_type": "bert", "id2label": {str(i): f"LABEL_{i}" for i in range(self.num_labels)}}


def alibi_slopes(n_heads: int) -> list[float]:
    """The published ALiBi slopes: geometric for a power of two, else interleaved from the next one."""
    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


class Dropout(nn.Dropout):
    """Inverted dropout. On CPU, `F.dropout` draws its mask with `bernoulli_`, about twice as slow per value
    as a uniform draw compared with p in isolation (in a whole 117M train step at 128 tokens: 4.41 s vs
    4.30 s). DNABERT-2 drops out its 3072-wide MLP activations in every layer, which is what makes its CPU
    step slower than BERT's (benchmarks/dnabert2_vs_bert.py). On CUDA the fused kernel is used."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.is_cuda:
            return super().forward(x)
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # in place: no bool mask, no cast
        return x * keep


class Embeddings(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]  # token type 0 only
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.n_heads, self.dropout_p = c.num_attention_heads, c.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, l, h = x.shape
        q, k, v = self.Wqkv(x).view(b, l, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, l, h)


class SelfOutput(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.self = SelfAttention(c)
        self.output = SelfOutput(c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class GatedMLP(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.intermediate_size = c.intermediate_size
        self.gated_layers = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.wo = nn.Linear(c.intermediate_size, c.hidden_size)
        self.layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.gated_layers(x).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(self.dropout(F.gelu(gate) * value)) + x)


class Layer(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.attention = Attention(c)
        self.mlp = GatedMLP(c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(x, bias))


class Encoder(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.register_buffer("slopes", torch.tensor(alibi_slopes(c.num_attention_heads)), persistent=False)

    def attention_bias(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ALiBi [1, A, L, L] plus -10000 at padded keys [B, 1, 1, L], as the original adds them;
        computed for the actual length, so inputs longer than alibi_starting_size need nothing extra."""
        positions = torch.arange(mask.shape[1], device=mask.device)
        distance = (positions[None, :] - positions[:, None]).abs()
        alibi = -self.slopes.to(mask.device)[:, None, None] * distance
        padding = (1.0 - mask[:, None, None, :].to(dtype)) * -10000.0
        return (alibi[None] + padding).to(dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = self.attention_bias(mask, x.dtype)
        for layer in self.layer:
            x = layer(x, bias)
        return x * mask[..., None].to(x.dtype)  # padded positions are zero, as in the original's output

    def hidden_states(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The embeddings and every layer's output [B, L, H], zero at padded positions as the original's output."""
        bias, keep = self.attention_bias(mask, x.dtype), mask[..., None].to(x.dtype)
        states = [x * keep]
        for layer in self.layer:
            x = layer(x, bias)
            states.append(x * keep)
        return tuple(states)


class Pooler(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class PreTrainedMixin:
    """Loading and saving in the published layout (config.json + pytorch_model.bin/model.safetensors)."""

    config: DNABERT2Config
    # Keys a fresh head may lack when loading a checkpoint of another kind (e.g. MLM -> classifier).
    optional_missing: tuple[str, ...] = ()
    # A classification checkpoint's pooler/classifier, or a masked-LM's head, unused by another kind.
    unused_heads = ("bert.pooler", "classifier", "cls.")

    def _init_weights(self) -> None:
        for m in self.modules():  # BERT's initialisation: N(0, 0.02) weights, zero biases, unit norms
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.initializer_range)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides):
        """A local folder in the published layout, or a hub id such as zhihan1996/DNABERT-2-117M
        (weights and config only: no remote code is fetched or run)."""
        folder = Path(path) if Path(path).is_dir() else download_from_hub(str(path))
        raw = json.loads((folder / "config.json").read_text())
        model = cls(DNABERT2Config.from_dict({**raw, **overrides}))
        model.load_published_state_dict(read_state_dict(folder))
        return model

    def load_published_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_by_key_name(self, state, may_lack=self.optional_missing, may_leave=self.unused_heads)  # type: ignore[arg-type]

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        state = {k: v.contiguous() for k, v in self.state_dict().items() if k != "cls.predictions.decoder.weight"}  # type: ignore[attr-defined]
        save_file(state, str(folder / "model.safetensors"))


class BertBody(nn.Module):
    """The `bert.` prefix of the published key names."""

    def __init__(self, c: DNABERT2Config, pooler: bool) -> None:
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c) if pooler else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.encoder(self.embeddings(input_ids), attention_mask)


class DNABERT2Model(PreTrainedMixin, nn.Module):
    """Encoder only: `.last_hidden_state` [B, L, H] and `.pooler_output` [B, H]."""

    optional_missing = ("bert.pooler.",)

    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.config = config
        self.bert = BertBody(config, pooler=True)
        self._init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutput:
        hidden = self.bert(input_ids, attention_mask)
        return ModelOutput(last_hidden_state=hidden, pooler_output=self.bert.pooler(hidden))


class PredictionHead(nn.Module):
    def __init__(self, c: DNABERT2Config) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform.LayerNorm(F.gelu(self.transform.dense(x))))


class DNABERT2ForMaskedLM(PreTrainedMixin, nn.Module):
    """Masked-LM: `.logits` [B, L, vocab]; the decoder weight is the word embedding matrix."""

    optional_missing = ("cls.predictions.decoder.weight",)

    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.config = config
        self.bert = BertBody(config, pooler=False)
        self.cls = nn.Module()
        self.cls.predictions = PredictionHead(config)
        self._init_weights()
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tied

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(logits=self.cls.predictions(self.bert(input_ids, attention_mask)))


class DNABERT2ForSequenceClassification(PreTrainedMixin, nn.Module):
    """[CLS] -> pooler -> dropout -> classifier: `.logits` [B, num_labels]. A checkpoint without a
    pooler/classifier (e.g. the published MLM one) loads with a freshly initialised head."""

    optional_missing = ("bert.pooler.", "classifier.")

    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.config = config
        self.bert = BertBody(config, pooler=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self._init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutput:
        hidden = self.bert(input_ids, attention_mask)
        return ModelOutput(logits=self.classifier(self.dropout(self.bert.pooler(hidden))))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Embeddings, then each layer's output [B, L, H]: what a probe reads (harness/probe.py)."""
        return self.bert.encoder.hidden_states(self.bert.embeddings(input_ids), attention_mask)
