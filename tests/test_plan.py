"""`plan`: projected compute of a study from throughput measured on this machine."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from harness.cli import main as harness
from harness.plan import Projection, format_plan, project, sample_task, timed_configuration
from harness.request import RunRequest
from harness.tasks import load_task


def plan_request(study, data, arms: str, **overrides: str) -> RunRequest:
    return RunRequest.parse({"study": str(study), "data": str(data), "arms": arms, "device": "cpu", **overrides})


def test_timed_configuration_and_sample():
    space = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.2),
             "k": IntDistribution(3, 6), "batch_size": CategoricalDistribution([16, 32, 64])}
    space["kernel"] = CategoricalDistribution([5, 7, 9])
    assert timed_configuration(space) == pytest.approx({"lr": 1e-3, "dropout": 0.1, "k": 4, "batch_size": 16,
                                                        "kernel": 7})  # the smallest batch: the slowest epoch
    task = load_task("synthetic/motif_binary")
    part = sample_task(task, 100)
    assert len(part.train) == 100 and len(part.dev) == round(100 * len(task.dev) / len(task.train))
    assert set(part.train.sequences) <= set(task.train.sequences)


def test_projection_is_fits_times_epochs_times_measured_epoch(tiny_study, tiny_gue):
    request = plan_request(tiny_study, tiny_gue, "unet_char,kmer_logreg", n_trials="3", seeds="2")
    spec, (task,) = request.spec, request.load_tasks()
    rows = project(request, [task], sample=64)
    unet, kmer = rows
    assert (unet.fits, unet.epochs, kmer.epochs, unet.n_train) == (5, spec.max_epochs, 1, len(task.train))
    assert unet.epoch_seconds > 0 and unet.seconds == pytest.approx(5 * spec.max_epochs * unet.epoch_seconds)
    text = format_plan(rows, "cpu")
    assert "unet_char" in text and "whole study:" in text and "upper bound" in text


def test_plan_accepts_mlflow_style_parameters(tiny_study, tiny_gue, capsys):
    assert harness(["plan", "-P", f"study={tiny_study}", "-P", f"data={tiny_gue}", "-P", "arms=kmer_logreg",
                    "-P", "sample=32"]) == 0
    out = capsys.readouterr().out
    assert "kmer_logreg" in out and "toy/motif_binary" in out and "whole study:" in out
    assert harness(["plan", "-P", "nonsense"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_format_plan_totals():
    rows = [Projection("a", "t1", 100, 23, 10, 18.0), Projection("a", "t2", 100, 23, 10, 2.0)]
    text = format_plan(rows, "cuda")
    assert "  a  1.28 h" in text and "whole study: 1.28 h" in text  # 23 x 10 x 20 s = 4600 s


def test_plan_times_a_steady_state_epoch_at_the_smallest_batch(tiny_study, tiny_gue, monkeypatch):
    """The first epoch of a sample fit pays one-off costs (FLOP count, warm-up): the second is timed, at the
    smallest batch size (the slowest epoch); a one-pass arm is fitted twice and the second fit timed."""
    from types import SimpleNamespace

    from harness.arms import KmerLogRegArm, TorchArm
    from harness.train import EpochResult, FitResult

    calls = []

    def fake_fit(self, task, params, seed, budget, options, on_epoch=None):
        calls.append((self.name, budget.max_epochs, params.get("batch_size")))
        first = 10.0 if sum(c[0] == self.name for c in calls) == 1 else 1.0
        history = [EpochResult(e, 0.5, {"mcc": 0.0}, first if e == 1 else 2.0) for e in range(1, budget.max_epochs + 1)]
        return SimpleNamespace(result=FitResult(history=history))

    monkeypatch.setattr(TorchArm, "fit", fake_fit)
    monkeypatch.setattr(KmerLogRegArm, "fit", fake_fit)
    text = tiny_study.read_text()
    tiny_study.write_text(text.replace("dropout: {type: float, low: 0.0, high: 0.2}\n    batch_size: {type: categorical, choices: [16]}",
                                       "dropout: {type: float, low: 0.0, high: 0.2}\n    batch_size: {type: categorical, choices: [32, 8, 64]}"))
    request = plan_request(tiny_study, tiny_gue, "unet_char,kmer_logreg,dnabert2_pretrained", n_trials="3", seeds="2")
    spec, task = request.spec, load_task("toy/motif_binary", str(tiny_gue))
    unet, kmer, pretrained = project(request, [task], sample=40)
    scale = len(task.train) / 40
    assert unet.epoch_seconds == pytest.approx(2.0 * scale)  # the second epoch, not the first (10 s)
    assert kmer.epoch_seconds == pytest.approx(1.0 * scale)  # the second fit, not the first (10 s)
    assert spec.space("cnn")["batch_size"].choices == (32, 8, 64)
    assert calls[0] == ("unet_char", 2, 8) and calls[1:3] == [("kmer_logreg", 1, None)] * 2
    # Without a checkpoint, the pretrained arm is timed by the arm of its architecture that needs none.
    assert calls[3:] == [("dnabert2_scratch", 2, 16)] and pretrained.arm == "dnabert2_pretrained"
