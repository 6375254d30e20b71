"""Parameters as the command lines and MLproject pass them: strings, "" for unset. Parsed here, once, with
errors that name the parameter."""

from __future__ import annotations

from .errors import ParameterError


def number(value: str, name: str, kind: type = int, low: float | None = None,
           high: float | None = None) -> int | float:
    """A number from a parameter's string: positive, or in [low, high) when given."""
    try:
        parsed = kind(value)
    except ValueError:
        raise ParameterError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None
    if low is not None:
        if parsed < low or (high is not None and parsed >= high):
            raise ParameterError(f"{name} must be in [{low}, {high if high is not None else 'inf'}), got {value!r}")
    elif parsed <= 0:
        raise ParameterError(f"{name} must be >= 1, got {parsed}" if kind is int else f"{name} must be > 0, got {parsed}")
    return parsed


def optional_int(value: str | None, name: str) -> int | None:
    return None if value in ("", None) else int(number(value, name))


def names(value: str | None) -> tuple[str, ...]:
    """A comma-separated list, e.g. tasks=tf/0,tf/1 (blanks ignored)."""
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


COSTS = ("gpu_hours", "flops", "seconds")


def costs(value: str | None, name: str) -> dict[str, float]:
    """A declared compute cost, e.g. pretrain_cost=gpu_hours=2688,flops=1.1e21 (any of gpu_hours, flops,
    seconds)."""
    out: dict[str, float] = {}
    for item in names(value):
        key, sep, amount = item.partition("=")
        if not sep or key.strip() not in COSTS:
            raise ParameterError(f"{name}: expected KEY=NUMBER with KEY one of {', '.join(COSTS)} "
                                 f"(e.g. {name}=gpu_hours=2688), got {item!r}")
        out[key.strip()] = float(number(amount.strip(), f"{name} {key.strip()}", float))
    return out
