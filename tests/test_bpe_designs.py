"""The CNNs' default designs per tokenizer kind: BPE tokens (~5 nt each) get a U-Net with two fewer
halvings and a ConvNova with dilation base 2 (unet.py's and convnova.py's docstrings), and a study's
`fixed:` values still choose the old design."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from harness.arms import ARMS, RunOptions
from harness.models import MODELS
from harness.models.convnova import dilation_schedule
from harness.runtime import CPU
from harness.studies import load_study
from harness.tokenizers import BPETokenizer, CharTokenizer

CHAR_WIDTHS = [32, 64, 96, 128, 192]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    rng = np.random.default_rng(0)
    return BPETokenizer.train(["".join(rng.choice(list("ACGT"), 200)) for _ in range(50)], 64)


def bottleneck_positions(model: torch.nn.Module, tokens: int) -> int:
    """The length at a U-Net classifier's bottleneck for one sequence of `tokens` tokens."""
    seen = []
    hook = model.encoder.bottleneck.register_forward_hook(lambda module, args, out: seen.append(out.shape[-1]))
    ids = torch.full((1, tokens), 5)
    with torch.no_grad():
        model.eval()(ids, torch.ones_like(ids))
    hook.remove()
    return seen[0]


def test_bpe_unet_keeps_positions_at_the_bottleneck(bpe):
    spec = MODELS.get("unet")
    char, on_bpe = spec.architecture(CharTokenizer(), {}), spec.architecture(bpe, {})
    assert char["widths"] == CHAR_WIDTHS and on_bpe["widths"] == [96, 128, 192]  # two levels fewer
    # ~25 BPE tokens is a 101 bp sequence: the char design (4 halvings) would leave it 2 positions.
    assert bottleneck_positions(spec.classifier(on_bpe, bpe, 2, 0.0), 25) >= 6
    assert bottleneck_positions(spec.classifier({**on_bpe, "widths": CHAR_WIDTHS}, bpe, 2, 0.0), 25) == 2
    assert bottleneck_positions(spec.classifier(char, CharTokenizer(), 2, 0.0), 103) == 7  # char: as before


def test_bpe_convnova_dilates_by_tokens(bpe):
    spec = MODELS.get("convnova")
    char = spec.classifier(spec.architecture(CharTokenizer(), {"hidden_dim": 16}), CharTokenizer(), 2, 0.0)
    on_bpe = spec.classifier(spec.architecture(bpe, {"hidden_dim": 16}), bpe, 2, 0.0)
    assert dilation_schedule(char.encoder.config) == [1, 1, 1, 4, 16]
    assert dilation_schedule(on_bpe.encoder.config) == [1, 1, 1, 2, 4]


STUDY = """
name: old_cnn_designs
tasks: [toy/motif_binary]
budget: {n_trials: 1, max_epochs: 1, patience: 1, seeds: 1}
search_spaces:
  cnn:
    lr: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
    batch_size: {type: categorical, choices: [16]}
    fixed: {widths: [32, 64, 96, 128, 192], dilation_base: 4, hidden_dim: 16}   # the char designs
"""


@pytest.mark.parametrize("arm,key,value", [("unet_bpe", "widths", CHAR_WIDTHS), ("convnova_bpe", "dilation_base", 4)])
def test_a_study_s_fixed_values_choose_the_old_design(arm, key, value, bpe, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    study, options = load_study(str(path)), RunOptions(CPU)
    ARMS.get(arm).validate(study, options)  # the other CNN's fixed key is accepted, not "unused"
    params = study.suggest(optuna.trial.FixedTrial({"lr": 2e-3, "batch_size": 16}), "cnn")
    model, architecture = ARMS.get(arm).build_model(bpe, 2, params, options)
    assert architecture[key] == value
    if arm == "unet_bpe":
        assert len(model.encoder.down) == 4
    else:
        assert dilation_schedule(model.encoder.config) == [1, 1, 1, 4, 16]
