"""Parameters as the command lines and MLproject pass them: strings, "" for unset. Parsed here, once, with
errors that name the parameter."""

from __future__ import annotations

import math
import os

from .errors import ParameterError


def number(value: str, name: str, kind: type = int, low: float | None = None,
           high: float | None = None) -> int | float:
    """A number from a parameter's string: positive, or in [low, high) when given."""
    try:
        parsed = kind(value)
    except ValueError:
        raise ParameterError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None
    if not math.isfinite(parsed):  # float("nan"), float("inf") parse, and fail later inside torch or optuna
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    if low is not None:
        if parsed < low or (high is not None and parsed >= high):
            raise ParameterError(f"{name} must be in [{low}, {high if high is not None else 'inf'}), got {value!r}")
    elif parsed <= 0:
        raise ParameterError(f"{name} must be >= 1, got {parsed}" if kind is int else f"{name} must be > 0, got {parsed}")
    return parsed


def optional_int(value: str | None, name: str) -> int | None:
    return None if value in ("", None) else int(number(value, name))


def names(value: str | None, name: str) -> tuple[str, ...]:
    """A comma-separated list, e.g. tasks=tf/0,tf/1: blanks ignored, repeats dropped (first kept, in order).
    Unset ("" or None) is empty; a value that lists nothing (`,,,`) is a ParameterError, not the default."""
    listed = tuple(dict.fromkeys(v.strip() for v in (value or "").split(",") if v.strip()))
    if value and not listed:
        raise ParameterError(f"{name}={value!r} names no {name.rstrip('s')}; give a comma-separated list, "
                             f"or leave {name} unset for the default")
    return listed


COSTS = ("gpu_hours", "flops", "seconds")


def costs(value: str | None, name: str) -> dict[str, float]:
    """A declared compute cost, e.g. pretrain_cost=gpu_hours=2688,flops=1.1e21 (any of gpu_hours, flops,
    seconds)."""
    out: dict[str, float] = {}
    for item in names(value, name):
        key, sep, amount = item.partition("=")
        if not sep or key.strip() not in COSTS:
            raise ParameterError(f"{name}: expected KEY=NUMBER with KEY one of {', '.join(COSTS)} "
                                 f"(e.g. {name}=gpu_hours=2688), got {item!r}")
        out[key.strip()] = float(number(amount.strip(), f"{name} {key.strip()}", float))
    return out


def experiment_name(value: str, name: str = "experiment") -> str:
    """An MLflow experiment name: MLflow refuses one longer than its limit only when the run starts, after the
    data is read; checked here, up front."""
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    if len(value) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ParameterError(f"{name} is {len(value)} characters long; MLflow allows at most "
                             f"{MAX_EXPERIMENT_NAME_LENGTH}: give a shorter {name}")
    return value


def env_number(name: str, default: float, kind: type = float, low: float | None = None) -> int | float:
    """A tuning knob from the environment (HARNESS_HEARTBEAT_S=...), checked like a parameter: `default` when
    unset; otherwise positive, or >= `low` when given; a ParameterError naming the variable."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        return number(raw.strip(), name, kind, low)
    except ParameterError as err:
        raise ParameterError(f"environment variable {err}; unset it for the default ({default})") from None


def choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    """One of `allowed` (argparse checks the CLI's own choices; MLproject passes any string)."""
    if value not in allowed:
        raise ParameterError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value
