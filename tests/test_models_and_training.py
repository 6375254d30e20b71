"""The U-Net, the training loop (and the plain reference loop of the benchmarks) and the arms on tiny data."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_TRANSFORMER, tiny_dnabert2, toy_splits
from harness import train
from harness.arms import ARMS, Budget, RunOptions
from harness.errors import DivergedError, ParameterError
from harness.models import count_parameters
from harness.models.heads import SequenceClassifier
from harness.models.unet import UNet1D, UNetConfig
from harness.runtime import CPU, Runtime, resolve_precision
from harness.tasks import load_task
from harness.train import TrainConfig, fit, length_bucketed_batches, predict

sys.path.insert(0, str(REPO / "benchmarks"))
import plain_loop  # noqa: E402  (the reference loop benchmarks/fast_path_parity.py checks the fast path against)


def unet(vocab_size: int, num_classes: int) -> SequenceClassifier:
    return SequenceClassifier(UNet1D(UNetConfig(vocab_size)), num_classes)


def test_unet_size_and_shapes():
    model = unet(vocab_size=10, num_classes=3)
    assert 1_000_000 <= count_parameters(model) <= 2_000_000
    ids = torch.randint(5, 10, (4, 37))  # not a multiple of 16: padded inside
    logits = model(ids, torch.ones_like(ids))
    assert logits.shape == (4, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unet_output_does_not_depend_on_padding():
    torch.manual_seed(0)
    model = unet(vocab_size=10, num_classes=2).eval()
    seq = torch.randint(5, 10, (1, 45))
    alone = model(seq, torch.ones_like(seq))
    padded = torch.cat([seq, torch.full((1, 30), 3)], dim=1)
    mask = torch.cat([torch.ones(1, 45, dtype=torch.long), torch.zeros(1, 30, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, mask), alone, atol=1e-5, rtol=1e-5)


def test_length_bucketed_batches_cover_every_index_once():
    lengths = np.random.default_rng(0).integers(10, 200, 1000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.2 * np.ptp(lengths)  # bucketing keeps similar lengths together


def test_training_learns_and_keeps_best_dev_checkpoint():
    tok, train, dev = toy_splits()
    torch.manual_seed(0)
    model = unet(tok.vocab_size, 2)
    epochs = []
    result = fit(model, train, dev, tok.pad_id, TrainConfig(lr=3e-3, batch_size=16, max_epochs=4, patience=None),
                 CPU, on_epoch=epochs.append)
    assert [e.epoch for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert result.best_dev["mcc"] == max(e.dev["mcc"] for e in epochs) > 0.9
    # The returned model holds the best epoch's weights: re-scoring dev reproduces its MCC.
    from harness.metrics import classification_metrics
    rescored = classification_metrics(dev.labels, predict(model, dev, tok.pad_id, CPU))
    assert rescored["mcc"] == pytest.approx(result.best_dev["mcc"])
    assert result.flops > 0 and result.train_seconds > 0


def test_early_stopping_patience():
    tok, train, dev = toy_splits()
    model = unet(tok.vocab_size, 2)
    result = fit(model, train, dev, tok.pad_id, TrainConfig(lr=0.0, batch_size=32, max_epochs=10, patience=2), CPU)
    assert len(result.history) == 3  # no improvement after epoch 1 with lr=0


def test_divergence_is_detected():
    tok, train, dev = toy_splits()
    model = unet(tok.vocab_size, 2)
    with torch.no_grad():
        model.classifier.weight.fill_(math.inf)
    with pytest.raises(DivergedError, match="training loss is nan"):
        fit(model, train, dev, tok.pad_id, TrainConfig(max_epochs=2, grad_clip=0), CPU)


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["unet_char", "unet_bpe", "convnova_char", "convnova_bpe", "dnabert2_scratch",
                                 "dnabert2_char_scratch", "kmer_logreg"])
def test_every_arm_fits_and_predicts(arm, tiny_gue, monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    task = load_task("toy/motif_binary", str(tiny_gue))
    params = {"lr": 2e-3, "batch_size": 32, "dropout": 0.1, "k": 4, "C": 1.0, "hidden_dim": 32,
              **(TINY_TRANSFORMER if arm.startswith("dnabert2") else {})}
    fitted = ARMS.get(arm).fit(task, params, 0, Budget(2, None), RunOptions(CPU, bpe_vocab_size=64))
    probs = fitted.predict("test")
    assert probs.shape == (len(task.test), 2)
    # The selected checkpoint scores dev as the fit recorded it: predict() and the loop agree.
    from harness.metrics import classification_metrics
    assert classification_metrics(task.dev.labels, fitted.predict("dev"))["mcc"] == pytest.approx(
        fitted.result.best_dev["mcc"], abs=1e-6)
    assert fitted.n_params > 0 and len(fitted.result.history) >= 1 and fitted.result.flops > 0
    if arm.startswith(("dnabert2", "convnova")):  # the study's architecture keys reached the model
        assert fitted.n_params < 200_000


def test_same_seed_same_model_other_seed_other_model(tiny_gue, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    task = load_task("toy/motif_binary", str(tiny_gue))
    arm, params = ARMS.get("unet_char"), {"lr": 2e-3, "batch_size": 16, "dropout": 0.1}
    torch.manual_seed(123)  # global state before the call must not matter: the arm seeds itself
    a = arm.fit(task, params, 7, Budget(2, None), RunOptions(CPU)).predict("test")
    torch.manual_seed(456)
    b = arm.fit(task, params, 7, Budget(2, None), RunOptions(CPU)).predict("test")
    c = arm.fit(task, params, 8, Budget(2, None), RunOptions(CPU)).predict("test")
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_many_classes_and_long_sequences(tmp_path, monkeypatch):
    """GUE's covid task is 9 classes of ~1000 bp; the arms must handle both (no AUROC for >2 classes)."""
    from conftest import write_split

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 90), ("dev", 27), ("test", 27)):
        labels = np.arange(n) % 9
        seqs = ["".join(rng.choice(list("ACGT"), int(rng.integers(950, 1050)))) for _ in labels]
        write_split(tmp_path / "virus" / "covid" / f"{split}.csv", seqs, labels)
    task = load_task("virus/covid", str(tmp_path))
    assert task.num_classes == 9
    for arm in ("unet_char", "kmer_logreg"):
        fitted = ARMS.get(arm).fit(task, {"lr": 1e-3, "batch_size": 16, "k": 3, "C": 1.0}, 0, Budget(1, None),
                                   RunOptions(CPU))
        assert fitted.predict("test").shape == (27, 9)
        assert "auroc" not in fitted.result.best_dev and "mcc" in fitted.result.best_dev


def test_precision_resolves_per_device():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ParameterError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", torch.device("cpu"))
    assert Runtime.resolve("cpu", "auto", compile=True) == Runtime(torch.device("cpu"), "fp32", True)


@pytest.mark.parametrize("precision,dtype", [("bf16", "bfloat16"), ("fp32", "float32")])
def test_training_in_bf16_runs_its_matmuls_in_bf16(precision, dtype, tiny_gue):
    import yaml

    from conftest import TINY_STUDY
    from harness.studies import parse_study
    from harness.tasks import load_task

    spec = parse_study(yaml.safe_load(TINY_STUDY), "tiny.yaml")
    task = load_task("toy/motif_binary", str(tiny_gue))
    seen: set[str] = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.add(str(out.dtype).removeprefix("torch."))
        if isinstance(module, torch.nn.Linear) and module.training else None)
    try:
        fitted = ARMS.get("dnabert2_scratch").fit(task, {**spec.fixed["transformer"], "lr": 1e-3, "batch_size": 16},
                                                  seed=0, budget=Budget(1),
                                                  options=RunOptions(Runtime(torch.device("cpu"), precision),
                                                                     bpe_vocab_size=64))
    finally:
        hook.remove()
    assert seen == {dtype}
    assert all(p.dtype == torch.float32 for p in fitted.model.parameters())  # weights stay fp32
    assert np.isfinite(fitted.result.history[0].train_loss) and fitted.predict("dev").dtype == np.float32


def batch_shapes_seen(model) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], object]:
    """Shapes of the input ids of every training and every evaluation forward pass."""
    training: list[tuple[int, ...]] = []
    evaluation: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(
        lambda m, args: (training if m.training else evaluation).append(tuple(args[0].shape)))
    return training, evaluation, handle


@pytest.mark.parametrize("loop", ["fast", "plain"])
def test_fast_path_and_plain_loop_batches(loop, monkeypatch):
    """The harness's loop pads each batch to its own longest sequence and uses fused AdamW; the plain reference
    loop of the benchmarks pads every batch to the split's longest sequence and uses for-loop AdamW."""
    tok, train_split, dev = toy_splits(96, lengths=(12, 52))
    model = tiny_dnabert2(tok)
    shapes, evaluated, handle = batch_shapes_seen(model)
    optimizers = []
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: optimizers.append(k) or real_adamw(*a, **k))
    loop_fit = fit if loop == "fast" else plain_loop.plain_fit
    result = loop_fit(model, train_split, dev, tok.pad_id, TrainConfig(lr=1e-3, batch_size=16, max_epochs=2), CPU)
    handle.remove()
    assert len(shapes) == 2 * 6 and sum(s[0] for s in shapes) == 2 * len(train_split)
    widths = {s[1] for s in shapes}
    if loop == "fast":
        assert optimizers[0].get("fused") is True
        assert len(widths) > 3 and min(widths) < train_split.lengths.max()  # each batch to its own longest
        padding = sum(s[0] * s[1] for s in shapes) / (2 * train_split.lengths.sum())
        assert padding < 1.15  # bucketing keeps padding small
    else:
        assert optimizers[0] == {"lr": 1e-3, "foreach": False}
        assert widths == {int(train_split.lengths.max())}
        assert {s[1] for s in evaluated} == {int(dev.lengths.max())}  # dev is scored padded the same way
    assert np.isfinite(result.history[-1].train_loss)


def test_plain_loop_takes_the_harness_s_place_and_gives_it_back(tiny_gue):
    """Inside `plain_loop()` a torch arm trains and scores with the plain loop (fp32, no compile); after it,
    with the harness's loop again."""
    task = load_task("toy/motif_binary", str(tiny_gue))
    arm, params = ARMS.get("unet_char"), {"lr": 2e-3, "batch_size": 16}
    fast_fit, fast_predict = train.fit, train.predict
    with plain_loop.plain_loop():
        assert (train.fit, train.predict) == (plain_loop.plain_fit, plain_loop.plain_predict)
        fitted = arm.fit(task, params, 0, Budget(1), RunOptions(CPU))
        with pytest.raises(ValueError, match="the plain loop is fp32 without compile"):
            arm.fit(task, params, 0, Budget(1), RunOptions(Runtime(torch.device("cpu"), "bf16")))
    assert (train.fit, train.predict) == (fast_fit, fast_predict)
    assert fitted.predict("test").shape == (len(task.test), 2) and fitted.result.flops > 0


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(monkeypatch):
    """compile=True: the model really is compiled (dynamo captures its graphs without a break), trains to the
    same losses as eager mode, and its weights keep their own names. A second compiled fit in the same
    process (another trial: another model, another dropout) is compiled too, not left in eager mode by
    dynamo's recompile limit."""
    from torch._dynamo.utils import counters

    tok, train_split, dev = toy_splits(96, lengths=(12, 52))
    cfg = TrainConfig(lr=1e-3, batch_size=16, max_epochs=2, patience=None, seed=3)  # no dropout: same arithmetic
    compiling = Runtime(torch.device("cpu"), compile=True)
    eager, compiled = tiny_dnabert2(tok), tiny_dnabert2(tok)
    counters.clear()
    eager_result = fit(eager, train_split, dev, tok.pad_id, cfg, CPU)
    compiled_result = fit(compiled, train_split, dev, tok.pad_id, cfg, compiling)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    losses = lambda r: [e.train_loss for e in r.history]  # noqa: E731
    np.testing.assert_allclose(losses(compiled_result), losses(eager_result), rtol=1e-4)
    assert compiled_result.best_dev["mcc"] == pytest.approx(eager_result.best_dev["mcc"], abs=1e-6)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix
    assert compiled_result.flops == pytest.approx(eager_result.flops)

    one_fit = counters["frames"]["ok"]  # graphs compiled by one fit (training and evaluation)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", one_fit)  # room for one fit's graphs only
    fit(tiny_dnabert2(tok, dropout=0.2), train_split, dev, tok.pad_id, cfg, compiling)
    assert one_fit >= 1 and counters["frames"]["ok"] == 2 * one_fit
    torch.compiler.reset()
