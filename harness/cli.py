"""Command line: ``python -m harness run|list`` (the MLproject's entry point calls `run`)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import warnings

from .registry import UnknownNameError

log = logging.getLogger("harness")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="tune, retrain with K seeds and test one arm on a study's tasks")
    run.add_argument("--arm", required=True, help="a registered arm (see: list arms)")
    run.add_argument("--study", default="smoke", help="a study name in studies/ or a path to a .yaml (default: smoke)")
    run.add_argument("--tasks", default="", help="comma-separated tasks overriding the study's, e.g. tf/0,tf/1")
    run.add_argument("--data", default="", help="GUE-layout root (<data>/<family>/<task>/{train,dev,test}.csv)")
    run.add_argument("--n-trials", default="", help="override the study's trial budget (the same for every arm!)")
    run.add_argument("--seeds", default="", help="override the study's number of final seeds K")
    run.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna storage URL (default: sqlite:///optuna.db)")
    run.add_argument("--experiment", default="", help="MLflow experiment (default: the study's name)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    run.add_argument("--tokenizer", default="", help="tokenizer.json for BPE arms (default: train one on the task)")
    run.add_argument("--max-length", default="", help="truncate tokenized sequences to this many tokens")

    lst = sub.add_parser("list", help="list registered arms, tasks and studies")
    lst.add_argument("what", nargs="?", choices=["arms", "tasks", "studies"], help="only this registry")
    return parser


def optional_int(value: str, name: str) -> int | None:
    if value in ("", None):
        return None
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if parsed < 1:
        raise ValueError(f"{name} must be >= 1, got {parsed}")
    return parsed


def cmd_list(what: str | None) -> None:
    from .arms import ARMS
    from .studies import list_studies
    from .tasks import TASKS

    if what in (None, "arms"):
        print("arms:")
        for name, arm in ARMS.items():
            print(f"  {name:<20} [{arm.family}] {arm.description}")
    if what in (None, "tasks"):
        print("tasks:")
        for name, info in TASKS.items():
            print(f"  {name:<28} {info.num_classes} classes  {info.description}")
        print("  (any other <family>/<task> folder under data= in the GUE layout works too)")
    if what in (None, "studies"):
        print("studies:")
        for name, path in list_studies().items():
            print(f"  {name:<20} {path}")


def cmd_run(args: argparse.Namespace) -> int:
    import mlflow
    import optuna

    from . import tracking
    from .arms import ARMS, RunOptions, check_arm_setup
    from .studies import load_study
    from .tasks import load_task
    from .train import resolve_device
    from .tuning import open_storage, tune_and_evaluate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for noisy in ("mlflow", "alembic"):  # after import: MLflow configures its loggers when imported
        logging.getLogger(noisy).setLevel(logging.WARNING)
    arm = ARMS.get(args.arm)
    spec = load_study(args.study)
    n_trials = optional_int(args.n_trials, "n_trials") or spec.n_trials
    seeds = optional_int(args.seeds, "seeds") or spec.seeds
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or spec.tasks
    options = RunOptions(device=args.device, tokenizer_path=args.tokenizer or None,
                         bpe_vocab_size=spec.bpe_vocab_size, max_length=optional_int(args.max_length, "max_length"))
    device = resolve_device(args.device)  # fail now if cuda was asked for and is absent
    check_arm_setup(arm, spec, options)  # fail now, not after an hour, if the study does not fit the arm
    data = [load_task(t, args.data or None) for t in tasks]  # validate every task before any run starts
    storage = open_storage(args.storage)
    experiment_id = tracking.setup(args.experiment or spec.name)
    provenance = {"git_commit": tracking.git_commit(), "storage": tracking.redact(args.storage),
                  "device": describe_device(device), "device_requested": args.device,
                  "data": args.data or "synthetic", "command": redacted_command(args.storage)}
    log.info("arm %s on %d task(s) of study %s: %d trials x %d epochs, %d seeds; MLflow %s, Optuna %s",
             arm.name, len(tasks), spec.name, n_trials, spec.max_epochs, seeds,
             tracking.redact(mlflow.get_tracking_uri()), tracking.redact(args.storage))
    for task in data:
        tune_and_evaluate(spec, arm, task, storage, experiment_id, options, n_trials, seeds, provenance)
    return 0


def describe_device(device) -> str:
    import torch

    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def redacted_command(storage: str) -> str:
    from .tracking import redact

    return " ".join(shlex.quote(a) for a in sys.argv).replace(storage, redact(storage))


def _sigterm_as_interrupt(signum, frame):  # a scheduler's SIGTERM ends runs as KILLED, like Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.command == "list":
        cmd_list(args.what)
        return 0
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    from .data import DataError
    from .studies import StudyError
    from .train import DeviceError
    from mlflow.exceptions import MlflowException

    from .tuning import NoCompletedTrialError, StorageError

    try:
        return cmd_run(args)
    except (DataError, StudyError, StorageError, UnknownNameError, ValueError, FileNotFoundError,
            DeviceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (NoCompletedTrialError, MlflowException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: runs were marked KILLED; run the same command again to resume", file=sys.stderr)
        return 130
