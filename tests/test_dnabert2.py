"""Native DNABERT-2 against the original implementation's outputs (../shared fixtures) and by hand."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import shared_path
from harness.errors import CheckpointError
from harness.models.dnabert2 import (DNABERT2Config, DNABERT2ForMaskedLM, DNABERT2ForSequenceClassification,
                                     DNABERT2Model, alibi_slopes)


@pytest.fixture(scope="module")
def expected():
    from safetensors.torch import load_file

    return load_file(shared_path("fixtures", "dnabert2_tiny", "expected.safetensors"))


def fixture_dir(kind: str):
    return shared_path("fixtures", "dnabert2_tiny", kind)


@torch.no_grad()
def test_encoder_and_mlm_match_the_original(expected):
    ids, mask = expected["input_ids"].long(), expected["attention_mask"].long()
    hidden = DNABERT2Model.from_pretrained(fixture_dir("mlm")).eval()(ids, mask).last_hidden_state
    torch.testing.assert_close(hidden, expected["last_hidden_state"], atol=1e-4, rtol=0)
    logits = DNABERT2ForMaskedLM.from_pretrained(fixture_dir("mlm")).eval()(ids, mask).logits
    torch.testing.assert_close(logits * mask[..., None], expected["mlm_logits"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_classifier_matches_the_original(expected):
    model = DNABERT2ForSequenceClassification.from_pretrained(fixture_dir("classifier")).eval()
    assert model.config.num_labels == 3
    logits = model(expected["input_ids"].long(), expected["attention_mask"].long()).logits
    torch.testing.assert_close(logits, expected["classifier_logits"], atol=1e-4, rtol=0)


def test_alibi_slopes_follow_the_published_formula():
    assert alibi_slopes(8) == pytest.approx([2 ** -(i + 1) for i in range(8)])
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads.
    sixteen = [2 ** (-(i + 1) / 2) for i in range(16)]
    assert alibi_slopes(12) == pytest.approx(alibi_slopes(8) + sixteen[0::2][:4])
    assert len(alibi_slopes(6)) == 6 and len(set(alibi_slopes(6))) == 6


@torch.no_grad()
def test_attention_by_hand_for_odd_heads_and_long_inputs():
    """One layer, 6 heads, a sequence longer than alibi_starting_size, computed step by step."""
    torch.manual_seed(0)
    c = DNABERT2Config(vocab_size=20, hidden_size=24, num_hidden_layers=1, num_attention_heads=6,
                       intermediate_size=32, alibi_starting_size=8, hidden_dropout_prob=0.0)
    model = DNABERT2Model(c).eval()
    ids = torch.randint(5, 20, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, 21:] = 0
    got = model(ids, mask).last_hidden_state

    emb = model.bert.embeddings
    x = emb.LayerNorm(emb.word_embeddings(ids) + emb.token_type_embeddings.weight[0])
    layer = model.bert.encoder.layer[0]
    q, k, v = layer.attention.self.Wqkv(x).split(24, dim=-1)
    heads = lambda t: t.view(2, 30, 6, 4).transpose(1, 2)  # noqa: E731
    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(4)
    pos = torch.arange(30)
    scores = scores - torch.tensor(alibi_slopes(6))[:, None, None] * (pos[None, :] - pos[:, None]).abs()
    scores = scores + (1 - mask[:, None, None, :]) * -10000.0
    att = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, 30, 24)
    h = layer.attention.output.LayerNorm(layer.attention.output.dense(att) + x)
    gate, value = layer.mlp.gated_layers(h).split(32, dim=-1)
    out = layer.mlp.layernorm(layer.mlp.wo(torch.nn.functional.gelu(gate) * value) + h) * mask[..., None]
    torch.testing.assert_close(got, out, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    c = DNABERT2Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=40, num_labels=5)
    model = DNABERT2ForSequenceClassification(c).eval()
    model.save_pretrained(tmp_path)
    again = DNABERT2ForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 50, (3, 17))
    torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_key_mismatches_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = DNABERT2Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40)
    DNABERT2ForMaskedLM(c).save_pretrained(tmp_path / "mlm")
    # An MLM checkpoint gives a classifier a new head: that is expected, not an error.
    DNABERT2ForSequenceClassification.from_pretrained(tmp_path / "mlm")
    # A checkpoint missing encoder weights is an error naming them.
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "mlm" / "model.safetensors"))
    del state["bert.encoder.layer.1.mlp.wo.weight"]
    save_file(state, str(tmp_path / "mlm" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks 1 weight.*bert.encoder.layer.1.mlp.wo.weight"):
        DNABERT2Model.from_pretrained(tmp_path / "mlm")
    with pytest.raises(CheckpointError, match="not a local checkpoint folder, and the hub could not provide it"):
        DNABERT2Model.from_pretrained("zhihan1996/DNABERT-2-117M")
