"""Name -> object registries (arms, tasks, tokenizers, models), looked up by name like
lm-evaluation-harness registers its tasks and models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import ParameterError

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name the harness itself looked up and did not find (a bug); the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str, parameter: str | None = None) -> T:
        """The item registered as `name`. A name the user gave is looked up with the `parameter` it came in:
        an unknown one is then a ParameterError (exit 2), not a bug."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            message = f"unknown {self.kind} {name!r}; registered: {known}"
            if parameter:
                raise ParameterError(f"{parameter}={name}: {message}") from None
            raise UnknownNameError(message) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
