"""No trial lost to memory: gradient accumulation trains exactly like the whole batch, and a fit that runs out
of memory is rerun with more accumulation at the same effective batch size (recorded), and pruned only when a
micro-batch of one sequence still does not fit."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import tiny_dnabert2, toy_splits
from harness import train
from harness.arms import TorchArm
from harness.cli import main
from harness.runtime import CPU
from harness.train import TrainConfig, fit, predict
from harness.tuning import TRIAL_SEED_OFFSET


# ------------------------------------------------------------------------------ the training loop
def trained(grad_accumulation: int, lengths=(12, 52)) -> tuple[dict[str, torch.Tensor], train.FitResult]:
    """A tiny DNABERT-2 (no dropout: nothing in it depends on the batch) after one epoch of 6 steps of 16."""
    tok, train_split, dev = toy_splits(96, lengths=lengths)
    model = tiny_dnabert2(tok)
    cfg = TrainConfig(lr=3e-3, batch_size=16, max_epochs=1, patience=None, seed=3, grad_accumulation=grad_accumulation)
    result = fit(model, train_split, dev, tok.pad_id, cfg, CPU)
    return {k: v.clone() for k, v in model.state_dict().items()}, result


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_gradient_accumulation_trains_like_the_whole_batch(monkeypatch):
    """Micro-batches of 8 (2 per step), of 6, 6 and 4 (3 per step: unequal shares) and of 1 sequence end in the
    whole batch's weights and losses; the same split with each micro-batch weighted equally (1/3 instead of its
    share of the rows) does not. The starting weights are equal, so the difference is the training's."""
    whole, whole_result = trained(1)
    start = {k: v.clone() for k, v in tiny_dnabert2(toy_splits(96, lengths=(12, 52))[0]).state_dict().items()}
    assert max_difference(whole, start) > 1e-3  # the weights did move

    steps = []
    real_step = train.optimizer_step
    monkeypatch.setattr(train, "optimizer_step", lambda *a: steps.append(1) or real_step(*a))
    for accumulation in (2, 3, 16):
        steps.clear()
        weights, result = trained(accumulation)
        assert len(steps) == 6  # the same optimiser steps (and so the same learning-rate schedule)
        assert max_difference(weights, whole) < 1e-5, accumulation
        assert result.history[0].train_loss == pytest.approx(whole_result.history[0].train_loss, abs=1e-6)
        assert result.best_dev["mcc"] == pytest.approx(whole_result.best_dev["mcc"], abs=1e-6)

    # Negative control: 3 micro-batches of 6, 6 and 4 sequences, each weighted 1/3.
    real_backward = train.backward
    monkeypatch.setattr(train, "backward", lambda *a, weight, **k: real_backward(*a, weight=1 / 3, **k))
    equal_shares, _ = trained(3)
    assert max_difference(equal_shares, whole) > 1e-4


def test_flops_are_counted_once_and_scaled_by_tokens():
    """Sequences of one length (micro-batches pad alike): every accumulation counts the same training FLOPs."""
    _, whole = trained(1, lengths=None)
    for accumulation in (4, 16):
        _, result = trained(accumulation, lengths=None)
        assert result.flops == pytest.approx(whole.flops, rel=1e-9) and whole.flops > 0


def test_grad_accumulation_must_be_positive():
    with pytest.raises(ValueError, match="grad_accumulation must be >= 1"):
        TrainConfig(grad_accumulation=0)
    assert TrainConfig(batch_size=20, grad_accumulation=8).micro_batch_size == 3


def test_scoring_that_runs_out_of_memory_halves_its_batches(caplog):
    """predict: a batch of more than 10 sequences runs out of memory; the 40 sequences are scored in batches of
    40, 20, then 10, with the same probabilities. With batches of one sequence out of memory too, the error
    propagates."""
    tok, _, dev = toy_splits(80, lengths=(12, 52))
    model = tiny_dnabert2(tok)
    expected = predict(model, dev, tok.pad_id, CPU)
    limit = {"rows": 10}

    def out_of_memory(module, args):
        if args[0].shape[0] > limit["rows"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    model.register_forward_pre_hook(out_of_memory)
    caplog.set_level("WARNING", logger="harness")
    np.testing.assert_allclose(predict(model, dev, tok.pad_id, CPU), expected, atol=1e-6)
    assert [r.getMessage().split("; ")[1] for r in caplog.records] == ["scoring in batches of 20",
                                                                      "scoring in batches of 10"]
    limit["rows"] = 0
    with pytest.raises(torch.OutOfMemoryError):
        predict(model, dev, tok.pad_id, CPU)


# ------------------------------------------------------------------------------ the tuner's reruns
def run_cli(study, data, *extra) -> int:
    """The tiny study with ConvNova (a few times faster to train than the U-Net) and one final seed."""
    return main(["run", "--arm", "convnova_char", "--study", str(study), "--data", str(data), "--seeds", "1", *extra])


def runs(stage: str) -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'", max_results=100)


def load_study() -> optuna.Study:
    return optuna.load_study(study_name="tiny/convnova_char/toy/motif_binary", storage="sqlite:///optuna.db")


class MemoryLimit:
    """Every model a torch arm builds runs out of memory on a training micro-batch of more than `rows`
    sequences (from its `after`-th training forward on; only in the fits of `seeds`, if given). Records each
    fit: its seed, grad_accumulation, the sequences of each optimiser step and its largest micro-batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rows: int, after: int = 0, seeds=None) -> None:
        self.rows, self.after, self.seeds = rows, after, seeds
        self.fits: list[dict] = []
        real_fit, real_build, real_step = TorchArm.fit, TorchArm.build_model, train.optimizer_step

        def fit(arm, task, params, seed, budget, options, on_epoch=None):
            self.fits.append({"seed": seed, "accumulation": options.grad_accumulation, "steps": [], "pending": 0,
                              "largest": 0})
            return real_fit(arm, task, params, seed, budget, options, on_epoch)

        def build_model(arm, *args, **kwargs):
            model, architecture = real_build(arm, *args, **kwargs)
            this = self.fits[-1]
            limited = self.seeds is None or this["seed"] in self.seeds
            forwards = {"n": 0}

            def forward(module, inputs):
                if not module.training:
                    return
                forwards["n"] += 1
                rows = inputs[0].shape[0]
                if limited and forwards["n"] > self.after and rows > self.rows:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                this["pending"] += rows
                this["largest"] = max(this["largest"], rows)

            model.register_forward_pre_hook(forward)
            return model, architecture

        def optimizer_step(*args):
            this = self.fits[-1]
            this["steps"].append(this["pending"])
            this["pending"] = 0
            return real_step(*args)

        monkeypatch.setattr(TorchArm, "fit", fit)
        monkeypatch.setattr(TorchArm, "build_model", build_model)
        monkeypatch.setattr(train, "optimizer_step", optimizer_step)

    def attempts(self) -> list[tuple[int, int]]:
        return [(f["seed"], f["accumulation"]) for f in self.fits]


@pytest.mark.slow
@pytest.mark.parametrize("rows, after, accumulation, superseded", [
    (4, 0, 4, None),  # out of memory at once: batches of 16, then micro-batches of 8, then of 4
    (8, 10, 2, "1"),  # out of memory in epoch 2 (10 steps of 16 per epoch): epoch 1's curves were logged
])
def test_out_of_memory_fit_reruns_with_gradient_accumulation(workdir, tiny_gue, tiny_study, monkeypatch, caplog,
                                                             rows, after, accumulation, superseded):
    """A trial and a final seed that run out of memory on batches of 16 complete, at the same effective batch
    size (16 sequences per optimiser step), with grad_accumulation recorded on the runs and the trial."""
    caplog.set_level("INFO", logger="harness")
    limit = MemoryLimit(monkeypatch, rows, after)
    assert run_cli(tiny_study, tiny_gue, "--n-trials", "1") == 0

    ladder = [1, 2, 4][:[1, 2, 4].index(accumulation) + 1]
    assert limit.attempts() == [(TRIAL_SEED_OFFSET, k) for k in ladder] + [(0, k) for k in ladder]
    for completed in (limit.fits[len(ladder) - 1], limit.fits[-1]):  # the trial's and the final seed's
        assert completed["largest"] == rows  # micro-batches of `rows` sequences, never more...
        assert completed["steps"] == [16] * (2 * 160 // 16)  # ...16 per step in 2 epochs of 160, as asked
    (trial,) = load_study().trials
    assert trial.state.name == "COMPLETE" and trial.params["batch_size"] == 16
    assert trial.user_attrs["grad_accumulation"] == accumulation
    (trial_run,), (final_run,) = runs("trial"), runs("final")
    for run in (trial_run, final_run):
        assert run.info.status == "FINISHED" and run.data.params["batch_size"] == "16"
        assert run.data.tags["grad_accumulation"] == str(accumulation)
        assert run.data.tags.get("oom_superseded_epochs") == superseded
    assert trial_run.data.tags["trial_state"] == "COMPLETE" and "test_mcc" in final_run.data.metrics
    # The rerun's curves are logged at steps 1 and 2; a failed attempt's epoch 1 sits before the rerun's.
    history = MlflowClient().get_metric_history(trial_run.info.run_id, "epoch_dev_mcc")
    assert sorted(m.step for m in history) == ([1, 1, 2] if superseded else [1, 2])
    assert f"rerunning at grad_accumulation {accumulation} (micro-batches of {rows}, batch size 16" in caplog.text
    assert f"[grad_accumulation {accumulation}] | epoch 2/2" in caplog.text  # the progress lines say so


@pytest.mark.slow
def test_trial_still_out_of_memory_at_one_sequence_is_pruned(workdir, tiny_gue, tiny_study, monkeypatch):
    """Trial 0 runs out of memory even on micro-batches of one sequence: after reruns at 2, 4, 8 and 16 it is
    pruned with an out-of-memory reason; trials that fit (the control) run once, at grad_accumulation 1."""
    limit = MemoryLimit(monkeypatch, rows=0, seeds={TRIAL_SEED_OFFSET})
    assert run_cli(tiny_study, tiny_gue) == 0
    assert limit.attempts()[:5] == [(TRIAL_SEED_OFFSET, k) for k in (1, 2, 4, 8, 16)]
    assert limit.attempts()[5:] == [(TRIAL_SEED_OFFSET + 1, 1), (TRIAL_SEED_OFFSET + 2, 1), (0, 1)]
    study = load_study()
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE", "COMPLETE"]
    assert [t.user_attrs["grad_accumulation"] for t in study.trials] == [16, 1, 1]
    reason = study.trials[0].user_attrs["fail_reason"]
    assert reason == ("out of memory: CUDA out of memory. Tried to allocate 2.00 GiB "
                      "(still at grad_accumulation 16, micro-batches of 1)")
    by_number = {r.data.tags["trial_number"]: r for r in runs("trial")}
    assert by_number["0"].data.tags["trial_state"] == "PRUNED" and by_number["0"].data.tags["fail_reason"] == reason
    assert [by_number[n].data.tags["grad_accumulation"] for n in "012"] == ["16", "1", "1"]
    assert runs("final")[0].data.tags["grad_accumulation"] == "1"
