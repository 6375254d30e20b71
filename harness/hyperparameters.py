"""What each hyperparameter a study may search or fix means, and which values it can take.

One table, keyed by the hyperparameter's name as the arms declare it (`Arm.hyperparameters`, the models'
`architecture_keys`): its kind, its valid range and a sentence of what it is. `Arm.check_search_space`
checks every value a study's distribution can produce against it (a float or int range's low and high, every
categorical choice, every `fixed:` value) before anything runs, so that `C: {low: 0}` or `batch_size:
{choices: [32, "64"]}` is refused with the file, the key and the range rather than failing mid-study.

The ranges are what the code needs to run and mean something, no stricter: dropout 0 and a tiny C are
valid; a learning rate of 0 or a batch of 0 are not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def pooling_names() -> list[str]:
    from .models.heads import POOLINGS  # torch: imported when a pooling is checked, not with this module

    return list(POOLINGS)


def probe_pooling_names() -> list[str]:
    from .models.probe import PROBE_POOLINGS

    return list(PROBE_POOLINGS)


def probe_head_names() -> list[str]:
    from .models.probe import PROBE_HEADS

    return list(PROBE_HEADS)


@dataclass(frozen=True)
class Rule:
    """A hyperparameter's kind (int, float, str or list of ints) and range; `low`/`high` inclusive unless
    `low_open`/`high_open`."""

    kind: type
    meaning: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    odd: bool = False  # a convolution kernel: an even one shifts the output by one position against its input
    choices: Callable[[], Iterable[str]] | None = None  # names registered elsewhere (poolings)
    item: Rule | None = None  # kind list: the rule of each element

    def valid_range(self) -> str:
        """The valid values in words: `a number > 0`, `an integer >= 1`, `one of mean, max`..."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices())
        if self.kind is list:
            return f"a non-empty list, each {self.item.valid_range()}"
        noun = {int: "an odd integer" if self.odd else "an integer", float: "a number", str: "a string"}[self.kind]
        if self.low is not None and self.high is not None:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {opening}{self.low:g}, {self.high:g}{closing}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return noun

    def accepts(self, value: Any) -> bool:
        if self.kind is list:
            return isinstance(value, list) and bool(value) and all(self.item.accepts(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else self.kind):
            return False  # a bool is an int to Python, never a hyperparameter's number
        if self.choices is not None:
            return value in self.choices()
        if self.kind is str:
            return True
        if math.isnan(value) or (self.odd and value % 2 == 0):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


POSITIVE_INT = Rule(int, "", low=1)

# name -> rule. Every name an arm declares has one (tests/test_study_schema.py checks it).
RULES: dict[str, Rule] = {
    # training (TorchArm: harness/train.py)
    "lr": Rule(float, "the peak learning rate of AdamW", low=0, low_open=True),
    "weight_decay": Rule(float, "AdamW's decoupled weight decay; 0 is none", low=0),
    "warmup_ratio": Rule(float, "the fraction of optimiser steps spent warming the learning rate up", low=0, high=1,
                         high_open=True),
    "dropout": Rule(float, "the probability of zeroing an activation in training; 0 is none", low=0, high=1,
                    high_open=True),
    "batch_size": Rule(int, "sequences per optimiser step", low=1),
    # the scikit-learn baselines (estimators.py, kmer.py, onehot.py)
    "C": Rule(float, "logistic regression's inverse regularisation strength", low=0, low_open=True),
    "k": Rule(int, "the k-mer length counted", low=1),
    # the CNNs' classification head (models/heads.py)
    "pooling": Rule(str, "how the head pools token features", choices=pooling_names),
    # U-Net (models/unet.py)
    "widths": Rule(list, "the channels of each U-Net level", item=POSITIVE_INT),
    "kernel_size": Rule(int, "the convolution kernel, in tokens (odd, so that a layer keeps the length)", low=1,
                        odd=True),
    # ConvNova (models/convnova.py)
    "hidden_dim": Rule(int, "ConvNova's channels", low=1),
    "num_conv1d": Rule(int, "ConvNova's dilated convolution layers", low=1),
    "dilation_base": Rule(int, "the growth of ConvNova's dilations", low=1),
    # DNABERT-2 (models/dnabert2.py)
    "hidden_size": Rule(int, "the transformer's width", low=1),
    "num_hidden_layers": Rule(int, "the transformer's layers", low=1),
    "num_attention_heads": Rule(int, "attention heads per layer (they split hidden_size)", low=1),
    "intermediate_size": Rule(int, "the width of each layer's feed-forward block", low=1),
    # a probe's head and what it reads (mode=probe: models/probe.py)
    "head": Rule(str, "the probe's head", choices=probe_head_names),
    "head_hidden": Rule(int, "the width of the probe's MLP head", low=1),
    "layer": Rule(int, "which hidden state a probe reads: -1 the last layer, -2 the one below, ...", high=-1),
}
# In a probe search space (mode=probe) a key may mean something else: the probe's pooling has no parameters.
PROBE_RULES: dict[str, Rule] = {
    **RULES,
    "pooling": Rule(str, "how the probe pools a layer's token features; without parameters, so pooled once and cached",
                    choices=probe_pooling_names),
}


def produced_values(dist: BaseDistribution) -> list[tuple[str, Any]]:
    """(label, value) of every value `dist` can produce that a range check needs: a numeric range's bounds
    (the rules are intervals, so the bounds decide), a categorical's every choice."""
    if isinstance(dist, CategoricalDistribution):
        return [(f"choice {c!r}", c) for c in dist.choices]
    return [(f"low={dist.low!r}", dist.low), (f"high={dist.high!r}", dist.high)]


def distribution_problem(name: str, dist: BaseDistribution, rules: dict[str, Rule] = RULES) -> str | None:
    """Why `dist` cannot serve hyperparameter `name` (a float range for an integer, a value out of range),
    or None."""
    rule = rules.get(name)
    if rule is None:
        return None
    if rule.kind is int and isinstance(dist, FloatDistribution):
        return f"a float range for an integer; use type int or categorical ({name} must be {rule.valid_range()})"
    if rule.kind in (str, list) and isinstance(dist, (FloatDistribution, IntDistribution)):
        return f"a numeric range; use type categorical ({name} must be {rule.valid_range()})"
    for label, value in produced_values(dist):
        problem = value_problem(name, value, label, rules)
        if problem:
            return problem
    return None


def value_problem(name: str, value: Any, label: str | None = None, rules: dict[str, Rule] = RULES) -> str | None:
    """Why `value` (called `label` where given: `low=0.0`) is not a valid `name`, naming the valid range, or None
    (also for a name without a rule)."""
    rule = rules.get(name)
    if rule is None or rule.accepts(value):
        return None
    return f"{label or repr(value)} is not a valid {name} ({rule.meaning}): it must be {rule.valid_range()}"


def fixed_problem(fixed: dict[str, Any]) -> str | None:
    """A combination of fixed architecture values that cannot be built: attention heads must split the width."""
    width, heads = fixed.get("hidden_size"), fixed.get("num_attention_heads")
    if RULES["hidden_size"].accepts(width) and RULES["num_attention_heads"].accepts(heads) and width % heads:
        return (f"num_attention_heads={heads} does not divide hidden_size={width}: each head takes "
                "hidden_size / num_attention_heads dimensions")
    return None
