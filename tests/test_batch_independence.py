"""Every arm scores a sequence the same whatever else is in its evaluation batch (fp32, eval mode).

`train.predict` sorts a split by length and pads each batch to its longest sequence, so with
`eval_batch_size=256` a short sequence shares a batch with much longer ones, and with `eval_batch_size=1`
it is scored alone. Each registered arm (looked up in `harness.arms.ARMS`, so a new arm is covered without
editing this file) is fitted for one epoch in a tiny configuration on a task with lengths from 20 to 120 nt,
and its test probabilities must agree to 1e-5 between the two. A negative control shows that the setup
can see a dependence: ConvNova reading padding as N, as the original does, differs by more.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRANSFORMER
from harness.arms import ARMS, Arm, Budget, Fitted, RunOptions
from harness.checkpoints import save_checkpoint
from harness.data import Split, TaskData
from harness.models import MODELS
from harness.runtime import Runtime
from harness.tokenizers import BPETokenizer, CharTokenizer

ALONE = Runtime(torch.device("cpu"), "fp32", eval_batch_size=1)
BATCHED = Runtime(torch.device("cpu"), "fp32", eval_batch_size=256)  # the test split is one batch
TOLERANCE = 1e-5

# One tiny configuration for every family: each arm reads the keys it takes (the U-Net keeps its default
# widths, ~1.7M parameters, still about a second an epoch here).
TINY = {"lr": 3e-3, "batch_size": 16, "dropout": 0.1, "weight_decay": 0.01, "hidden_dim": 16,
        **TINY_TRANSFORMER, "k": 3, "C": 1.0}
BPE_VOCAB = 64


def variable_length_split(n: int, rng: np.random.Generator) -> Split:
    """Random DNA of 20-120 nt with a class motif (GGGGGGGG or AAAAAAAA) at a random place."""
    labels = rng.integers(0, 2, n)
    sequences = []
    for y in labels:
        background = "".join(rng.choice(list("ACGT"), rng.integers(12, 113)))
        at = rng.integers(0, len(background) + 1)
        sequences.append(background[:at] + ("GGGGGGGG" if y else "AAAAAAAA") + background[at:])
    return Split(sequences, labels)


@pytest.fixture(scope="module")
def task() -> TaskData:
    rng = np.random.default_rng(0)
    train, dev, test = (variable_length_split(n, rng) for n in (96, 48, 64))
    lengths = [len(s) for s in test.sequences]
    assert max(lengths) - min(lengths) > 60 and len(test) <= BATCHED.eval_batch_size  # one batch, mixed lengths
    return TaskData("synthetic/variable_length", train, dev, test, 2, "test_batch_independence")


def tiny_checkpoint(arm: Arm, task: TaskData, folder: Path) -> str:
    """A randomly initialised masked-LM checkpoint of the arm's model and tokenizer kind, in the layout
    `python -m harness pretrain` writes (for an arm that fine-tunes from a checkpoint)."""
    tok = CharTokenizer() if arm.tokenizer == "char" else BPETokenizer.train(task.train.sequences, BPE_VOCAB)
    spec = MODELS.get(arm.model)
    architecture = spec.architecture(tok, TINY)
    torch.manual_seed(0)
    save_checkpoint(folder, arm.model, architecture, spec.masked_lm(architecture, tok, 0.0), tok, {})
    return str(folder)


@pytest.fixture(scope="module")
def fitted(task: TaskData, tmp_path_factory: pytest.TempPathFactory):
    """name -> that arm fitted for one epoch (once per module: the negative control reuses ConvNova's)."""
    done: dict[str, Fitted] = {}

    def fit(name: str) -> Fitted:
        if name not in done:
            arm = ARMS.get(name)
            required, _ = arm.hyperparameters
            assert set(required) <= set(TINY), f"add a tiny value for {set(required) - set(TINY)} to TINY"
            if arm.checkpoint_reader == "hf":  # a transformers masked LM, pretrained or its random-weight twin
                from test_hf_arms import tiny_bert

                options = RunOptions(BATCHED, init=str(tiny_bert(tmp_path_factory.mktemp(name))),
                                     twin=not arm.requires_checkpoint, checkpoint_reader="hf")
            else:
                init = tiny_checkpoint(arm, task, tmp_path_factory.mktemp(name)) if arm.requires_checkpoint else None
                options = RunOptions(BATCHED, bpe_vocab_size=BPE_VOCAB, init=init)
            done[name] = arm.fit(task, TINY, 0, Budget(1, None), options)
        return done[name]

    return fit


def predict_with(fitted: Fitted, runtime: Runtime) -> np.ndarray:
    """Test probabilities scored with `runtime`. A fitted arm without run options (the scikit-learn
    arm) scores whole sequences without batches or padding: it is scored as it is."""
    if not hasattr(fitted, "options"):
        return fitted.predict("test")
    return replace(fitted, options=replace(fitted.options, runtime=runtime)).predict("test")


@pytest.mark.parametrize("name", list(ARMS))
def test_predictions_do_not_depend_on_the_batch(name, fitted):
    model = fitted(name)
    alone, batched = predict_with(model, ALONE), predict_with(model, BATCHED)
    assert alone.shape == batched.shape and np.isfinite(alone).all()
    np.testing.assert_allclose(batched, alone, atol=TOLERANCE, rtol=0,
                               err_msg=f"{name}: a sequence's probabilities depend on its evaluation batch")


def test_convnova_reading_padding_as_n_depends_on_the_batch(fitted):
    """The negative control: the fitted ConvNova's weights in the original's mode (padding read as N)."""
    model = fitted("convnova_char")
    assert model.model.encoder.config.mask_padding  # the arm's own mode, whatever its architecture dict says
    original = copy.deepcopy(model.model)
    original.encoder.config = replace(original.encoder.config, mask_padding=False)
    unmasked = replace(model, model=original)
    difference = np.abs(predict_with(unmasked, ALONE) - predict_with(unmasked, BATCHED)).max()
    assert difference > TOLERANCE
