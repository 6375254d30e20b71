"""Ctrl-C (SIGINT) and SIGTERM end a command cleanly however many arrive, and whenever they arrive.

The first signal raises KeyboardInterrupt once. Every level then unwinds: each MLflow run ends KILLED,
Optuna marks the trial FAIL (a final seed's claim is re-queued), and the command exits 130 with
`interrupted: ...`. Signals after the first are recorded, not raised: a second KeyboardInterrupt in the
middle of that cleanup would leave runs RUNNING (Optuna itself, interrupted while recording a trial's
state, fails with an UnboundLocalError and leaves the trial RUNNING).

Bookkeeping that must not be cut in half (starting or ending an MLflow run, Optuna creating a trial or
recording its state) runs inside `deferred()`: a first signal arriving there is raised as soon as the
block is left. `interruptible()` reopens a deferred block for the long work inside it (a trial's training).

A signal that lands while Python runs a callback it cannot raise from (garbage collection, a weakref's, a
__del__) would be swallowed, with a printed traceback: it is sent again a moment later instead.

Should cleanup hang (the storage is down and being retried), a signal arriving FORCE_EXIT_AFTER_S or
more after the first exits at once with code 130, saying that runs may be left RUNNING (a rerun's
heartbeat check fails their trials; `close_stale_runs` then closes their MLflow runs). Once the command has
returned, further signals are ignored while the process exits (see `handle_signals`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import ParamSpec, TypeVar

from .parameters import env_number

SIGNALS = (signal.SIGINT, signal.SIGTERM)
P, R = ParamSpec("P"), TypeVar("R")
FORCE_EXIT_AFTER_S = env_number("HARNESS_FORCE_EXIT_S", 10.0)
RESEND_AFTER_S = 0.05  # a signal swallowed in a callback is sent again this much later


@dataclass
class _State:
    depth: int = 0  # nesting of deferred() blocks: a signal in one is raised when the outermost ends
    pending: int | None = None  # a first signal that arrived inside a deferred block, not raised yet
    first_signal_at: float | None = None  # time.monotonic() of the first signal (raised or pending)
    interrupted: bool = False  # a KeyboardInterrupt is unwinding: never raise another


_state = _State()


def _say(text: str) -> None:
    """Write to stderr from a signal handler: unbuffered, as the interrupted code may be inside a print."""
    os.write(2, (text + "\n").encode())


def _raise_interrupt(signum: int) -> None:
    _state.interrupted = True
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _on_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A KeyboardInterrupt raised while Python ran a callback it cannot raise from (a garbage-collection or
    weakref callback, a __del__) is swallowed: nothing unwinds. Send the signal again, so that it is raised
    where the command can act on it, instead of printing a traceback and going on as if none came."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _state.interrupted:
        _state.interrupted, _state.first_signal_at = False, None
        signum = getattr(signal.Signals, str(unraisable.exc_value), signal.SIGINT)
        # From another thread, a moment later: sent from here, it would be raised inside this hook, and lost again.
        threading.Timer(RESEND_AFTER_S, os.kill, (os.getpid(), signum)).start()
        return
    _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


def _on_signal(signum: int, frame: FrameType | None) -> None:
    now = time.monotonic()
    if _state.first_signal_at is None:
        _state.first_signal_at = now
    elif now - _state.first_signal_at >= FORCE_EXIT_AFTER_S:
        _say(f"interrupted: {signal.Signals(signum).name} during a cleanup that took over "
             f"{FORCE_EXIT_AFTER_S:.0f}s; exiting at once. Runs may be left RUNNING: the same command run again "
             "fails their trials once their heartbeat is stale and resumes")
        os._exit(130)
    if _state.interrupted or _state.pending is not None:
        _say(f"{signal.Signals(signum).name}: already stopping (ending runs KILLED); send it again after "
             f"{FORCE_EXIT_AFTER_S:.0f}s to exit at once")
        return
    if _state.depth > 0:
        _state.pending = signum
        return
    _raise_interrupt(signum)


def note_interrupt() -> None:
    """A KeyboardInterrupt is unwinding (whoever raised it): later signals must not raise another."""
    _state.interrupted = True


def _raise_pending() -> None:
    if _state.pending is not None and not _state.interrupted:
        signum, _state.pending = _state.pending, None
        _raise_interrupt(signum)


class deferred:  # lower case: used like a function, `with shutdown.deferred():`
    """A block no signal cuts short; a signal that arrived in it is raised when the outermost one ends."""

    def __enter__(self) -> None:
        _state.depth += 1

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        _state.depth = max(_state.depth - 1, 0)
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            note_interrupt()  # already unwinding: nothing to add
        elif _state.depth == 0:
            _raise_pending()


def uninterrupted(write: Callable[P, R]) -> Callable[P, R]:
    """A function that writes to MLflow or Optuna, run as one `deferred` block: a signal cutting a database
    write in half leaves its transaction open (sqlite: "database is locked" for every later write, runs left
    RUNNING); deferred, it is raised as soon as the write is done."""

    @functools.wraps(write)
    def whole(*args: P.args, **kwargs: P.kwargs) -> R:
        with deferred():
            return write(*args, **kwargs)

    return whole


class interruptible:
    """Inside a deferred block, the long work that signals may interrupt (a trial's training); a signal that
    arrived while deferred is raised on entry."""

    def __enter__(self) -> None:
        self.saved = _state.depth
        _raise_pending()
        _state.depth = 0

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        _state.depth = self.saved


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Under `mlflow run`, MLflow's process is this one's parent (bash execs the entry point's one command). A
    SIGTERM to it is not passed on: it dies and this process would go on as an orphan, its runs outliving the
    job. Ask Linux to send this process SIGTERM when its parent dies (elsewhere: nothing to do)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM interrupt the command once (see the module's docstring). Once a signal came, both
    are ignored after the block: the runs have ended and the process is exiting, which can take seconds
    (library teardown), and Python restores the default handlers as it finalizes, so a further signal would
    turn exit code 130 into a kill. Otherwise the previous handlers return (the command was called
    in-process, e.g. by a test)."""
    global _state, _previous_unraisablehook
    _state = _State()
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _on_unraisable
    try:
        yield
    finally:
        sys.unraisablehook = _previous_unraisablehook
        for s, handler in previous.items():
            signal.signal(s, handler if _state.first_signal_at is None else signal.SIG_IGN)
