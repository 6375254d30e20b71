"""The (arm, task) grid of a study: run it here in sequence, print one command per cell for a cluster
scheduler, or report which cells are done, running, partial or missing (from the Optuna storage).

    python -m harness sweep --study gue_quick --action print > jobs.txt   # one line per cell
    python -m harness sweep --study gue_quick --action status             # progress of every cell
    python -m harness sweep --study smoke --action run                    # every cell, here, in turn

Every cell is an ordinary `run` of one arm on one task, so many machines can work through the printed
commands at once (even the same one twice: they share the cell's study, see workers.py).
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from .arms import ARMS
from .studies import StudySpec
from .tracking import redact
from .workers import COUNTED, seed_of

log = logging.getLogger("harness")


@dataclass(frozen=True)
class Cell:
    arm: str
    task: str


def default_arms(spec: StudySpec, checkpoint: str = "") -> list[str]:
    """The study's `arms:` list, else every registered arm whose family has a search space here (arms
    that need a checkpoint only when one is given)."""
    if spec.arms:
        return list(spec.arms)
    return [name for name, arm in ARMS.items() if arm.family in spec.search_spaces
            and (checkpoint or not getattr(arm, "requires_checkpoint", False))]


def grid(arms: list[str], tasks: list[str]) -> list[Cell]:
    for name in arms:
        ARMS.get(name)  # an unknown arm fails here, listing the known ones
    return [Cell(arm, task) for arm in arms for task in tasks]


def command(cell: Cell, study: str, passthrough: dict[str, str]) -> str:
    """The `mlflow run` line of one cell; storage URLs are printed without their password."""
    params = {"arm": cell.arm, "tasks": cell.task, "study": study,
              **{k: (redact(v) if k == "storage" else v) for k, v in passthrough.items() if v}}
    return "mlflow run . --env-manager local " + " ".join(f"-P {k}={shlex.quote(str(v))}" for k, v in params.items())


@dataclass(frozen=True)
class CellStatus:
    cell: Cell
    state: str  # done | running | partial | missing
    trials: int  # finished (complete or pruned)
    running: int
    seeds: int  # final seeds completed


def cell_status(spec: StudySpec, cell: Cell, storage: optuna.storages.BaseStorage, n_trials: int,
                n_seeds: int) -> CellStatus:
    name = f"{spec.name}/{cell.arm}/{cell.task}"
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return CellStatus(cell, "missing", 0, 0, 0)
    try:
        finals = optuna.load_study(study_name=f"{name}/final", storage=storage).get_trials(deepcopy=False)
    except KeyError:
        finals = []
    finished = sum(t.state in COUNTED for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials + finals)
    seeds = len({seed_of(t) for t in finals if t.state == TrialState.COMPLETE})
    state = ("done" if finished >= n_trials and seeds >= n_seeds else "running" if running else "partial")
    return CellStatus(cell, state, finished, running, seeds)


def format_status(rows: list[CellStatus], n_trials: int, n_seeds: int) -> str:
    width = max([len(r.cell.arm) for r in rows] + [3])
    twidth = max([len(r.cell.task) for r in rows] + [4])
    lines = [f"{'arm':<{width}}  {'task':<{twidth}}  {'state':<8} trials     seeds  running"]
    for r in rows:
        lines.append(f"{r.cell.arm:<{width}}  {r.cell.task:<{twidth}}  {r.state:<8} "
                     f"{r.trials:>3}/{n_trials:<5} {r.seeds:>2}/{n_seeds:<3} {r.running:>4}")
    counts = {s: sum(r.state == s for r in rows) for s in ("done", "running", "partial", "missing")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)} cells")
    return "\n".join(lines)
