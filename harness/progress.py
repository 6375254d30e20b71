"""Progress lines a user can follow on a long run: arm, task, stage, epoch, dev MCC and an ETA.

Plain log lines (not a redrawn bar) so they read the same in a terminal, a SLURM log or MLflow's
captured output. The ETA is the mean epoch time so far times the epochs still planned; a pruned or
early-stopped fit gives its unused epochs back.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("harness")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, label: str, planned_epochs: int, one_pass: bool = False) -> None:
        self.label = label
        self.one_pass = one_pass  # a one-pass estimator: its fit is one step, not "epoch 1/1"
        self.planned = planned_epochs
        self.done = 0
        self.epoch_seconds = 0.0
        self.start = time.perf_counter()

    def epoch(self, stage: str, epoch: int, max_epochs: int, train_loss: float, dev_mcc: float,
              best: float, seconds: float) -> None:
        self.done += 1
        self.epoch_seconds += seconds
        remaining = max(self.planned - self.done, 0) * self.epoch_seconds / self.done
        if self.one_pass:
            log.info("%s | %s | one pass | loss %.4f | dev_mcc %.4f | %.1fs | ETA %s", self.label, stage, train_loss,
                     dev_mcc, seconds, format_seconds(remaining))
            return
        log.info("%s | %s | epoch %d/%d | loss %.4f | dev_mcc %.4f (best %.4f) | %.1fs/epoch | ETA %s",
                 self.label, stage, epoch, max_epochs, train_loss, dev_mcc, best, seconds,
                 format_seconds(remaining))

    def skip(self, epochs: int) -> None:
        """A fit ended before its epoch cap: those epochs will not run."""
        self.planned -= max(epochs, 0)

    def redo(self, epochs: int) -> None:
        """A fit is rerun (it ran out of memory): the epochs its failed attempt ran are planned again."""
        self.planned += max(epochs, 0)

    def elapsed(self) -> str:
        return format_seconds(time.perf_counter() - self.start)
