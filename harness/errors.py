"""What the harness reports to a user as a message rather than a traceback, and with which exit code.

A `HarnessError` is a problem the user can fix, or a run that could not finish for a reason outside the
code; its message names the file, line, parameter or URL and says what to do. The command lines print it
as `error: <message>` and exit with its `exit_code`:

    2  InputError   bad data, study file, parameter, checkpoint, device or storage URL
    1  RunError     a run that started and could not finish (storage lost, no trial completed, diverged)

Any other exception is a bug: it is not caught, so it keeps its traceback.
"""

from __future__ import annotations

import errno
import sys

# A full disk, a read-only or forbidden folder, a path that is a file: the machine's state, not a bug.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO, errno.EEXIST,
                      errno.ENOTDIR, errno.EISDIR}


class HarnessError(Exception):
    exit_code = 1


class InputError(HarnessError):
    """Something the user passed cannot be used; fix it and run the same command again."""

    exit_code = 2


class DataError(InputError):
    """Invalid task data or corpus. The message names the file, the line (1-based, header = line 1) and a fix."""


class StudyError(InputError):
    """An invalid study file, or a study that does not fit an arm; the message names the file and the key."""


class ParameterError(InputError):
    """A command-line (MLproject) parameter that is malformed, unknown or does not fit the other parameters."""


class CheckpointError(InputError):
    """A checkpoint that cannot be found or read, or whose weights, model or tokenizer do not fit the arm."""


class DeviceError(InputError):
    """The requested device is not available on this machine."""


class RunError(HarnessError):
    """A run that started and could not finish; what it completed is kept, the same command resumes."""

    exit_code = 1


class StorageError(RunError):
    """The Optuna storage was lost mid-study; the message names the URL without its password."""


class NoCompletedTrialError(RunError):
    """Every trial of the budget was pruned or diverged: there is no configuration to retrain."""


class DivergedError(RunError):
    """The training loss became NaN or infinite (a tuning trial records it as pruned; a final run fails)."""


def reported(err: Exception) -> tuple[str, int] | None:
    """What a command line prints for `err` (after `error: `) and its exit code; None for a bug, which keeps
    its traceback. Besides HarnessErrors: MLflow refusing or unreachable, and a disk or folder that cannot
    be written, end a run (exit 1); what it completed is kept."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, HarnessError):
        return str(err), err.exit_code
    if isinstance(err, MlflowException):
        from .tracking import lost_server_message  # tracking imports this module

        return lost_server_message(err) or f"MLflow: {err.message}", 1
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        # Raised anywhere (a read or a write, before or during runs): say only what is known to be true.
        return (f"{err.filename or 'a file or folder'}: {err.strerror or err}. What the command completed is "
                "kept; fix it and run the same command again"), 1
    return None


def print_error(err: Exception) -> int:
    """At a command line's top: print a reported error as `error: ...` and return its exit code; raise a bug
    again, with its traceback."""
    report = reported(err)
    if report is None:
        raise err
    print(f"error: {report[0]}", file=sys.stderr)
    return report[1]
