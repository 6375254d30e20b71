"""The GPU code paths: device placement, bf16 autocast, memory-efficient attention with the ALiBi bias.

What can run on a CPU runs here (autocast and the bias in bf16 use the same code on both devices); what
needs CUDA kernels is skipped with the reason. The GPU benchmarks (`benchmarks/dnabert2_vs_bert.py
--device cuda --bf16`, `benchmarks/harness_vs_bare.py --device cuda`) cover the speed side.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.models.dnabert2 import DNABERT2Config, DNABERT2ForSequenceClassification
from harness.train import TrainConfig, autocast, fit, resolve_precision

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none here); CI has none, the GPU machine runs these")


def tiny_dnabert2(device: str = "cpu") -> DNABERT2ForSequenceClassification:
    torch.manual_seed(0)
    config = DNABERT2Config(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, hidden_dropout_prob=0.0)
    return DNABERT2ForSequenceClassification(config).to(device).eval()


def padded_batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 40, (3, 50), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    mask[2, 7:] = 0
    return ids.to(device), mask.to(device)


def test_auto_precision_is_bf16_on_a_gpu_that_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"  # e.g. a V100
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def bf16_against_fp32(device: str) -> None:
    """Under bf16 autocast the ALiBi bias and the -10000 padding bias go to the attention in bf16: padding must
    still be masked (a padded sequence scores as it does alone) and the logits stay near fp32's."""
    model, (ids, mask) = tiny_dnabert2(device), padded_batch(device)
    with torch.no_grad():
        reference = model(ids, mask).logits
        with autocast("bf16", torch.device(device)):
            logits = model(ids, mask).logits
            alone = model(ids[2:, :7], mask[2:, :7]).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0.05)
    torch.testing.assert_close(alone.float(), logits[2:].float(), atol=0.02, rtol=0.02)


def test_bf16_attention_bias_masks_padding_on_cpu():
    bf16_against_fp32("cpu")


@needs_cuda
def test_bf16_attention_bias_masks_padding_on_cuda():
    bf16_against_fp32("cuda")


@needs_cuda
def test_memory_efficient_attention_takes_the_alibi_bias():
    """The ALiBi + padding bias is a float mask: flash attention refuses it, the memory-efficient kernel
    takes it. Forced to that kernel, forward and gradients match the reference (math) kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ids, mask = padded_batch("cuda")
    results = {}
    for backend in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        model = tiny_dnabert2("cuda").train()
        with sdpa_kernel([backend]), autocast("bf16", torch.device("cuda")):
            logits = model(ids, mask).logits
        logits.float().sum().backward()
        results[backend] = (logits.float(), model.bert.encoder.layer[0].attention.self.Wqkv.weight.grad)
    efficient, math = results[SDPBackend.EFFICIENT_ATTENTION], results[SDPBackend.MATH]
    torch.testing.assert_close(efficient[0], math[0], atol=0.03, rtol=0.03)
    torch.testing.assert_close(efficient[1], math[1], atol=0.03, rtol=0.05)


@needs_cuda
def test_fit_on_cuda_places_model_and_batches_on_the_gpu_in_bf16():
    from harness.data import Split
    from harness.tokenizers import CharTokenizer, tokenize

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    seqs = ["".join(rng.choice(list("ACGT"), rng.integers(20, 40))) + ("GGGG" if y else "AAAA") for y in labels]
    tok = CharTokenizer()
    train, dev = tokenize(tok, Split(seqs, labels)), tokenize(tok, Split(seqs[:32], labels[:32]))
    model = tiny_dnabert2("cpu")
    seen: set[tuple[str, str]] = set()
    hook = model.classifier.register_forward_hook(lambda m, a, out: seen.add((a[0].device.type, str(out.dtype))))
    result = fit(model, train, dev, tok.pad_id, TrainConfig(batch_size=16, max_epochs=2, device="cuda", precision="auto"))
    hook.remove()
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    assert seen == {("cuda", "torch.bfloat16")}
    assert np.isfinite(result.history[-1].train_loss) and result.flops > 0
