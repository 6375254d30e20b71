"""Projected compute of a study before anything runs: each arm's throughput, measured here, times the work.

Work per (arm, task) = (n_trials + seeds) fits x max_epochs x the task's training sequences, with dev scored
after every epoch. That is an upper bound: early stopping and pruning only shorten it. Throughput is
measured on this machine by fitting the arm for two epochs (timing the second) on a random sample of the
task's own sequences (the real code path: tokenizer, the study's architecture and token cap, the smallest
batch size and mid-range values of the other hyperparameters), with a dev sample in the task's dev/train
proportion so that scoring is counted too.

    python -m harness plan --study gue --data /data/GUE            # or: python -m harness plan -P study=gue ...
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .arms import ARMS, Arm, Budget, RunOptions
from .data import Split, TaskData
from .request import RunRequest
from .studies import StudySpec

log = logging.getLogger("harness")


@dataclass(frozen=True)
class Projection:
    arm: str
    task: str
    n_train: int
    fits: int  # tuning trials + final seeds
    epochs: int
    epoch_seconds: float  # one epoch on the whole task, dev scoring included (measured on a sample)

    @property
    def seconds(self) -> float:
        return self.fits * self.epochs * self.epoch_seconds


def timed_configuration(space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The configuration whose epochs are timed: the smallest batch size (the most steps per epoch, so the
    projection stays an upper bound over the trials' batch sizes), and the middle of every other range
    (geometric for log scales) or the middle categorical choice."""
    params: dict[str, Any] = {}
    for name, d in space.items():
        if name == "batch_size" and isinstance(d, CategoricalDistribution):
            params[name] = min(d.choices)
        elif isinstance(d, CategoricalDistribution):
            params[name] = d.choices[len(d.choices) // 2]
        elif isinstance(d, (FloatDistribution, IntDistribution)):
            mid = math.sqrt(d.low * d.high) if d.log else (d.low + d.high) / 2
            params[name] = round(mid) if isinstance(d, IntDistribution) else mid
    return params


def sample_task(task: TaskData, n: int, seed: int = 0) -> TaskData:
    """`n` training sequences of the task and a dev sample in the task's dev/train proportion."""
    rng = np.random.default_rng(seed)

    def take(split: Split, k: int) -> Split:
        idx = rng.choice(len(split), size=min(k, len(split)), replace=False)
        return Split([split.sequences[i] for i in idx], split.labels[idx])

    n_dev = max(1, round(n * len(task.dev) / len(task.train)))
    return replace(task, train=take(task.train, n), dev=take(task.dev, n_dev), test=take(task.test, 1))


def measure_epoch_seconds(arm: Arm, task: TaskData, spec: StudySpec, options: RunOptions, sample: int) -> float:
    """Seconds for one epoch over the whole task, from a steady-state epoch over a sample of it: the second
    of two, since the first also pays one-off costs (the FLOP count of the first step, warm-up), which on a
    few-step sample epoch would dominate (the projection came out 1.3x too high on mouse/2)."""
    space = arm.space(spec, options)
    params = {**spec.fixed.get(space, {}), **timed_configuration(spec.space(space))}
    part = sample_task(task, sample)
    fitted = arm.fit(part, params, seed=0, budget=Budget(2 if arm.neural else 1, None), options=options)
    if not arm.neural:  # one pass (k-mer): time a second fit, the first paid the warm-up
        fitted = arm.fit(part, params, seed=0, budget=Budget(1, None), options=options)
    return fitted.result.history[-1].seconds * len(task.train) / len(part.train)


def project(request: RunRequest, tasks: list[TaskData], sample: int) -> list[Projection]:
    """Every (arm, task) of the request; an arm that needs a checkpoint is timed by its stand-in."""
    out = []
    for name in request.arms:
        arm = ARMS.get(name)
        arm = ARMS.get(arm.stand_in) if arm.stand_in else arm  # same architecture, measured without a checkpoint
        for task in tasks:
            seconds = measure_epoch_seconds(arm, task, request.spec, request.options(arm, task.name), sample)
            out.append(Projection(name, task.name, len(task.train), request.n_trials + request.seeds,
                                  arm.budget(request.spec).max_epochs, seconds))
            log.info("plan | %s on %s: %.1f s per epoch -> %s", name, task.name, seconds,
                     hours(out[-1].seconds))
    return out


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def format_plan(rows: list[Projection], device: str) -> str:
    width = max(len(r.arm) for r in rows)
    twidth = max(len(r.task) for r in rows)
    lines = [f"projected compute on {device} (upper bound: every fit runs all its epochs; pruning and early "
             "stopping only shorten it)",
             f"{'arm':<{width}}  {'task':<{twidth}}  {'train':>7}  {'fits x epochs':>13}  {'s/epoch':>9}  projected"]
    for r in rows:
        lines.append(f"{r.arm:<{width}}  {r.task:<{twidth}}  {r.n_train:>7}  {r.fits:>6} x {r.epochs:<4}  "
                     f"{r.epoch_seconds:>9.1f}  {hours(r.seconds)}")
    lines.append("per arm:")
    for arm in dict.fromkeys(r.arm for r in rows):
        lines.append(f"  {arm:<{width}}  {hours(sum(r.seconds for r in rows if r.arm == arm))}")
    lines.append(f"whole study: {hours(sum(r.seconds for r in rows))}")
    return "\n".join(lines)
