"""The GPU code paths: device placement, bf16 autocast, memory-efficient attention with the ALiBi bias.

What can run on a CPU runs here (autocast and the bias in bf16 use the same code on both devices); what
needs CUDA kernels is skipped with the reason. The GPU benchmarks (`benchmarks/dnabert2_vs_bert.py
--device cuda --bf16`, `benchmarks/harness_vs_bare.py --device cuda`) cover the speed side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conftest import tiny_dnabert2, toy_splits
from harness.models.dnabert2 import DNABERT2Config, Encoder, SelfAttention
from harness.runtime import Runtime, autocast, resolve_precision
from harness.train import TrainConfig, fit

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none here); CI has none, the GPU machine runs these")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@dataclass
class AttentionCase:
    """One DNABERT-2 self-attention layer, unit-variance inputs, and its bias three ways: ALiBi + padding
    (the real one), without the padding mask, without ALiBi."""

    attention: SelfAttention
    x: torch.Tensor  # [3, 50, 64]; row 1 has 30 real tokens, row 2 has 7
    bias: torch.Tensor
    bias_without_padding: torch.Tensor
    bias_without_alibi: torch.Tensor


def attention_case(device: str) -> AttentionCase:
    torch.manual_seed(0)
    config = DNABERT2Config(vocab_size=40, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=128)
    encoder, attention = Encoder(config).to(device), SelfAttention(config).to(device).eval()
    x = torch.randn(3, 50, 64, device=device)
    mask = torch.ones(3, 50, dtype=torch.long, device=device)
    mask[1, 30:], mask[2, 7:] = 0, 0
    padding_only = ((1.0 - mask[:, None, None, :].float()) * -10000.0).expand(3, 4, 50, 50)
    return AttentionCase(attention, x, encoder.attention_bias(mask, torch.float32),
                         encoder.attention_bias(torch.ones_like(mask), torch.float32), padding_only)


def check_bf16_attention(device: str) -> None:
    """Under bf16 autocast the float ALiBi + padding bias goes to the attention in bf16: the output stays
    within bf16 rounding of fp32's, padded keys stay masked (a padded row equals the row alone), and the
    checks can fail: dropping the padding mask or ALiBi moves the output 100x more than the tolerance."""
    case, dev = attention_case(device), torch.device(device)
    with torch.no_grad():
        reference = case.attention(case.x, case.bias)
        with autocast("bf16", dev):
            out = case.attention(case.x, case.bias)
            alone = case.attention(case.x[2:, :7], case.bias[2:, :, :7, :7])
            unmasked = case.attention(case.x, case.bias_without_padding)
            without_alibi = case.attention(case.x, case.bias_without_alibi)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, reference) < 0.02
    assert relative_error(out[2:, :7], alone) < 0.01
    assert relative_error(unmasked[2:, :7], out[2:, :7]) > 0.2  # the controls
    assert relative_error(without_alibi, out) > 0.2


def check_fused_kernel_takes_the_bias(device: str, backend, bf16: bool, tolerance: float) -> None:
    """Forced to a fused SDPA kernel, the attention with the float ALiBi + padding bias matches the reference
    (math) kernel forward and in its input gradient; without the padding mask it would not."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    case, dev = attention_case(device), torch.device(device)
    weights = torch.linspace(-1, 1, 64, device=device)  # a loss whose gradient is not uniform

    def run(kernel, bias):
        x = case.x.clone().requires_grad_()
        with sdpa_kernel([kernel]), autocast("bf16" if bf16 else "fp32", dev):
            out = case.attention(x, bias)
        (out.float() * weights).sum().backward()
        return out.detach(), x.grad

    fused, math = run(backend, case.bias), run(SDPBackend.MATH, case.bias)
    assert relative_error(fused[0], math[0]) < tolerance and relative_error(fused[1], math[1]) < tolerance
    unmasked = run(SDPBackend.MATH, case.bias_without_padding)
    assert relative_error(unmasked[0], fused[0]) > 0.2 and relative_error(unmasked[1], fused[1]) > 0.2


def test_auto_precision_is_bf16_on_a_gpu_that_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"  # e.g. a V100
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_bf16_attention_bias_on_cpu():
    check_bf16_attention("cpu")


def test_cpu_fused_attention_kernel_takes_the_alibi_bias():
    from torch.nn.attention import SDPBackend

    check_fused_kernel_takes_the_bias("cpu", SDPBackend.FLASH_ATTENTION, bf16=False, tolerance=1e-4)


@needs_cuda
def test_bf16_attention_bias_on_cuda():
    check_bf16_attention("cuda")


@needs_cuda
def test_memory_efficient_attention_takes_the_alibi_bias():
    """Flash attention refuses a float mask; the memory-efficient kernel takes it (in bf16 on a GPU)."""
    from torch.nn.attention import SDPBackend

    check_fused_kernel_takes_the_bias("cuda", SDPBackend.EFFICIENT_ATTENTION, bf16=True, tolerance=0.05)


@needs_cuda
def test_fit_on_cuda_places_model_and_batches_on_the_gpu_in_bf16():
    tok, train, dev = toy_splits(64, lengths=(20, 40))
    model = tiny_dnabert2(tok)
    seen: set[tuple[str, str]] = set()
    hook = model.classifier.register_forward_hook(lambda m, a, out: seen.add((a[0].device.type, str(out.dtype))))
    result = fit(model, train, dev, tok.pad_id, TrainConfig(batch_size=16, max_epochs=2), Runtime.resolve("cuda", "auto"))
    hook.remove()
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    assert seen == {("cuda", "torch.bfloat16")}
    assert np.isfinite(result.history[-1].train_loss) and result.flops > 0
