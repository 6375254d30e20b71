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
import sys
from dataclasses import dataclass, replace

import optuna
from optuna.trial import TrialState

from .arms import ARMS, RunOptions
from .errors import InputError, reported
from .request import RunRequest
from .runtime import CPU
from .schema import final_study_name, optuna_study_name
from .workers import COUNTED, open_storage, seed_of

log = logging.getLogger("harness")


def cell_requests(request: RunRequest) -> list[RunRequest]:
    """The request narrowed to each (arm, task): one `run` each. The checkpoint goes only to the arms it
    concerns (`RunRequest.takes_checkpoint`: the pretrained arms' weights, their scratch twins' shape), the
    tokenizer only to BPE arms, a token cap, a precision and compile only to torch arms (a run of a scikit-learn arm
    refuses them rather than ignore them)."""
    out = []
    for name in request.arms:
        arm = ARMS.get(name)
        takes = request.takes_checkpoint(arm)
        explicit = request.explicit - ({"checkpoint"} if not takes else set()) \
            - ({"tokenizer"} if arm.tokenizer != "bpe" else set())
        torch_only = {} if arm.neural else {"max_length": None, "precision": "auto", "compile": False}
        out += [replace(request, arms=(name,), tasks=(task,), checkpoint=request.checkpoint if takes else None,
                        explicit=explicit, **torch_only) for task in request.tasks]
    return out


def command(one: RunRequest) -> str:
    """The `mlflow run` line of a one-cell request; storage URLs are printed without their password."""
    params = one.parameters()
    return "mlflow run . --env-manager local " + " ".join(f"-P {k}={shlex.quote(v)}" for k, v in params.items())


@dataclass(frozen=True)
class CellStatus:
    arm: str
    task: str
    state: str  # done | running | partial | missing | unknown (its checkpoint cannot be read here)
    trials: int  # finished (complete or pruned)
    running: int
    seeds: int  # final seeds completed


def cell_status(one: RunRequest, storage: optuna.storages.BaseStorage) -> CellStatus:
    """Progress of a one-cell request, from its Optuna studies (tuning and final seeds)."""
    (arm,), (task,) = one.arms, one.tasks
    try:  # arm@sha, arm~sha: their own studies (the variant needs the checkpoint, not the tokenizer)
        source, twin = one.initial(ARMS.get(arm))
        variant = ARMS.get(arm).variant(RunOptions(CPU, init=source, twin=twin,
                                                   checkpoint_reader=ARMS.get(arm).checkpoint_reader))
    except InputError as err:  # the checkpoint is not reachable from here (offline login node): say so
        log.warning("%s | %s: status unknown: %s", arm, task, err)
        return CellStatus(arm, task, "unknown", 0, 0, 0)
    name = optuna_study_name(one.spec.name, variant, task)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return CellStatus(arm, task, "missing", 0, 0, 0)
    try:
        finals = optuna.load_study(study_name=final_study_name(name), storage=storage).get_trials(deepcopy=False)
    except KeyError:
        finals = []
    finished = sum(t.state in COUNTED for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials + finals)
    seeds = len({seed_of(t) for t in finals if t.state == TrialState.COMPLETE})
    state = ("done" if finished >= one.n_trials and seeds >= one.seeds else "running" if running else "partial")
    return CellStatus(arm, task, state, finished, running, seeds)


def format_status(rows: list[CellStatus], n_trials: int, n_seeds: int) -> str:
    width = max([len(r.arm) for r in rows] + [3])
    twidth = max([len(r.task) for r in rows] + [4])
    lines = [f"{'arm':<{width}}  {'task':<{twidth}}  {'state':<8} trials     seeds  running"]
    for r in rows:
        lines.append(f"{r.arm:<{width}}  {r.task:<{twidth}}  {r.state:<8} "
                     f"{r.trials:>3}/{n_trials:<5} {r.seeds:>2}/{n_seeds:<3} {r.running:>4}")
    counts = {s: sum(r.state == s for r in rows) for s in ("done", "running", "partial", "missing")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)} cells")
    return "\n".join(lines)


def sweep(request: RunRequest, action: str) -> int:
    """print, status or run every cell of the request; a cell that fails does not stop the others."""
    from .tuning import tune

    cells = cell_requests(request)
    if action == "print":
        print("\n".join(command(one) for one in cells))
        return 0
    if action == "status":
        storage = open_storage(request.storage)
        print(format_status([cell_status(one, storage) for one in cells], request.n_trials, request.seeds))
        return 0
    failed = []
    for i, one in enumerate(cells, 1):
        where = f"{one.arms[0]} on {one.tasks[0]}"
        log.info("sweep | cell %d/%d: %s", i, len(cells), where)
        try:
            tune(one)
        except Exception as err:  # what `main` would report ends this cell only; a bug ends the sweep
            message = reported(err)
            if message is None:
                raise
            log.error("sweep | %s failed: %s: %s", where, type(err).__name__, message[0])
            failed.append(f"{where} ({type(err).__name__}: {message[0]})")
    if failed:
        print("failed cells (run the sweep again to resume them):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0
