"""Checks of an output folder (`--out`), made before any work or MLflow run starts.

A command that writes a folder of results must not fail after minutes of work because the folder cannot be
written, and must never delete files it did not write: a folder it replaces wholesale has to be one of its
own previous outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ParameterError


def check_writable(out: Path, option: str = "--out", what: str = "report folder") -> None:
    """Refuse an output folder that cannot be written (a read-only or missing mount, a path that is a file or
    lies under a file), naming it, rather than failing after the work on a temporary folder beside it."""
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{option} {out} is a file; pass a folder (new or existing) for the {what}")
    above = next((parent for parent in out.parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise ParameterError(f"{option} {out}: {above} is a file, so no folder can be made under it; pass a "
                             f"folder (new or existing) for the {what}")
    try:
        # A temporary folder in the nearest folder that exists (beside `out` where its parent exists: where a
        # replacing writer stages its output): a real write test that creates nothing that stays, should the
        # command then fail on something else.
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.check-", dir=above or Path.cwd()):
            pass
    except OSError as err:
        raise ParameterError(f"{option} {out}: cannot write the {what} there ({err.strerror or err}); "
                             "pass a writable folder") from None


def check_replaceable(out: Path, foreign: Callable[[Path], list[str]], option: str = "--out",
                      what: str = "report") -> None:
    """Refuse to replace `out` wholesale unless it is absent, empty or a previous output: `foreign(out)` lists
    (relative to `out`) what in it the command did not write; the first one is named in the message."""
    if not out.is_dir():
        return
    others = foreign(out)
    if others:
        raise ParameterError(f"{option} {out} holds files that are not a {what} (e.g. {others[0]}); pass a new "
                             f"or empty folder, or a previous {what} folder")
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        # Replacing a folder renames it away: the working folder (or one above it) would vanish under us.
        raise ParameterError(f"{option} {out} is the working folder or holds it; pass a new or empty folder, "
                             f"or a previous {what} folder")
