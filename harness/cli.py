"""Command line: ``python -m harness run|sweep|plan|pretrain|tokenizer|list`` (the MLproject's entry points call them)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import warnings
from dataclasses import replace

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
    run.add_argument("--init", default="", help="fine-tune from this checkpoint: a folder or an MLflow URI "
                                                "(runs:/<run_id>/checkpoint from the pretrain entry point)")
    run.add_argument("--checkpoint", default="", help="dnabert2_pretrained: a DNABERT-2 folder or hub id")
    run.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                     help="bf16 autocast, fp32, or auto: bf16 on a GPU that supports it, else fp32")
    run.add_argument("--compile", default="false", choices=["false", "true"],
                     help="torch.compile the model (minutes of compilation per trial; pays off on a GPU)")
    run.add_argument("--fast-path", default="true", choices=["true", "false"],
                     help="false: the plain fp32 loop (no bucketing, padding to the longest sequence, for-loop "
                          "AdamW) that the fast path is checked against; a study is one or the other")

    sweep = sub.add_parser("sweep", help="a study's (arm, task) grid: run it here, print a command per cell, "
                                         "or show which cells are done, running, partial or missing")
    add_grid_arguments(sweep)
    sweep.add_argument("--action", default="status", choices=["run", "print", "status"],
                       help="run every cell here in turn, print one `mlflow run` per cell, or report progress")
    sweep.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna storage URL, shared by the cells")
    sweep.add_argument("--experiment", default="", help="MLflow experiment (default: the study's name)")
    sweep.add_argument("--checkpoint", default="", help="include dnabert2_pretrained with this checkpoint")
    sweep.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="passed to every cell")
    sweep.add_argument("--compile", default="false", choices=["false", "true"], help="passed to every cell")

    plan = sub.add_parser("plan", help="projected compute of a study per arm, from throughput measured here")
    add_grid_arguments(plan)
    plan.add_argument("--sample", default="256", help="training sequences each measurement fits (default: 256)")
    plan.add_argument("--tokenizer", default="", help="tokenizer.json for BPE arms (default: trained on the sample)")
    plan.add_argument("-P", dest="mlflow_style", action="append", default=[], metavar="KEY=VALUE",
                      help="the same options as MLflow parameters, e.g. -P study=gue -P data=/data/GUE")

    pre = sub.add_parser("pretrain", help="masked-LM pretraining of a torch arm on a corpus")
    pre.add_argument("--arm", required=True, help="a torch arm; its model and tokenizer are pretrained")
    pre.add_argument("--corpus", required=True, help="FASTA (.gz ok), a CSV, or a GUE-layout folder (train.csv only)")
    pre.add_argument("--study", default="smoke", help="the study whose fixed architecture the arm takes (default: smoke)")
    pre.add_argument("--window", default="128", help="window length in nucleotides (default: 128)")
    pre.add_argument("--steps", default="500", help="optimiser steps (default: 500)")
    pre.add_argument("--batch-size", default="32", help="windows per step (default: 32)")
    pre.add_argument("--lr", default="5e-4", help="peak learning rate (default: 5e-4)")
    pre.add_argument("--mask-prob", default="0.15", help="fraction of tokens masked (default: 0.15)")
    pre.add_argument("--seed", default="0")
    pre.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pre.add_argument("--tokenizer", default="", help="tokenizer.json for BPE arms (default: train one on the corpus)")
    pre.add_argument("--vocab-size", default="4096", help="BPE vocabulary when training a tokenizer (default: 4096)")
    pre.add_argument("--experiment", default="pretrain", help="MLflow experiment (default: pretrain)")
    pre.add_argument("--output", default="", help="also write the checkpoint to this local folder")

    tok = sub.add_parser("tokenizer", help="train a BPE tokenizer on a corpus and log it to MLflow")
    tok.add_argument("--corpus", required=True, help="FASTA (.gz ok), a CSV, or a GUE-layout folder (train.csv only)")
    tok.add_argument("--vocab-size", default="4096", help="vocabulary size including 5 special tokens")
    tok.add_argument("--window", default="512", help="window length in nucleotides (default: 512)")
    tok.add_argument("--experiment", default="tokenizers", help="MLflow experiment (default: tokenizers)")

    lst = sub.add_parser("list", help="list registered arms, tasks and studies")
    lst.add_argument("what", nargs="?", choices=["arms", "tasks", "studies"], help="only this registry")
    return parser


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a study's (arm, task) cells and their budget (sweep and plan)."""
    parser.add_argument("--study", default="smoke", help="a study name in studies/ or a path to a .yaml (default: smoke)")
    parser.add_argument("--arms", default="", help="comma-separated arms (default: the study's `arms:`, else every "
                                                   "arm with a search space in it)")
    parser.add_argument("--tasks", default="", help="comma-separated tasks (default: the study's)")
    parser.add_argument("--data", default="", help="GUE-layout root (default: synthetic)")
    parser.add_argument("--n-trials", default="", help="override the study's trial budget (for every arm alike)")
    parser.add_argument("--seeds", default="", help="override the study's number of final seeds")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def number(value: str, name: str, kind: type = int, low: float | None = None,
           high: float | None = None) -> int | float:
    """A number from a command-line string: positive, or in [low, high) when given; the error names the
    parameter."""
    try:
        parsed = kind(value)
    except ValueError:
        raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None
    if low is not None:
        if parsed < low or (high is not None and parsed >= high):
            raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}), got {value!r}")
    elif parsed <= 0:
        raise ValueError(f"{name} must be >= 1, got {parsed}" if kind is int else f"{name} must be > 0, got {parsed}")
    return parsed


def optional_int(value: str, name: str) -> int | None:
    return None if value in ("", None) else int(number(value, name))


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

    # Optuna's own warnings repeat, with a traceback, what the harness logs of every failed or skipped trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    quiet_libraries()
    arm = ARMS.get(args.arm)
    spec = load_study(args.study)
    n_trials = optional_int(args.n_trials, "n_trials") or spec.n_trials
    seeds = optional_int(args.seeds, "seeds") or spec.seeds
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or spec.tasks
    if args.init and args.checkpoint and args.init != args.checkpoint:
        raise ValueError("pass either init= or checkpoint=, not both")
    options = RunOptions(device=args.device, tokenizer_path=resolve_tokenizer(args.tokenizer),
                         bpe_vocab_size=spec.bpe_vocab_size, max_length=optional_int(args.max_length, "max_length"),
                         init=args.init or args.checkpoint or None, precision=args.precision,
                         compile=args.compile == "true", fast_path=args.fast_path == "true")
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
        # max_length= overrides the study's per-task cap (which is set so as not to truncate).
        capped = replace(options, max_length=options.max_length or spec.max_length(task.name, getattr(arm, "tokenizer", None)))
        tune_and_evaluate(spec, arm, task, storage, experiment_id, capped, n_trials, seeds, provenance)
    return 0


def resolve_tokenizer(source: str) -> str | None:
    """tokenizer= is a local tokenizer.json or an MLflow artifact URI (from the tokenizer entry point)."""
    from .checkpoints import local_path

    return str(local_path(source)) if source else None


def cmd_sweep(args: argparse.Namespace) -> int:
    from .arms import ARMS
    from .studies import load_study
    from .sweep import cell_status, command, default_arms, format_status, grid
    from .tuning import open_storage

    spec = load_study(args.study)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] or default_arms(spec, args.checkpoint)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or spec.tasks
    cells = grid(arms, tasks)
    n_trials = optional_int(args.n_trials, "n_trials") or spec.n_trials
    seeds = optional_int(args.seeds, "seeds") or spec.seeds
    shared = {"data": args.data, "storage": args.storage, "experiment": args.experiment, "n_trials": args.n_trials,
              "seeds": args.seeds, "device": "" if args.device == "auto" else args.device,
              "precision": "" if args.precision == "auto" else args.precision,
              "compile": "" if args.compile == "false" else args.compile}

    def own(cell) -> dict[str, str]:
        needs = getattr(ARMS.get(cell.arm), "requires_checkpoint", False)
        return {**shared, "checkpoint": args.checkpoint if needs else ""}

    if args.action == "print":
        for cell in cells:
            print(command(cell, args.study, own(cell)))
        return 0
    if args.action == "status":
        storage = open_storage(args.storage)
        print(format_status([cell_status(spec, c, storage, n_trials, seeds) for c in cells], n_trials, seeds))
        return 0
    failed = []
    for i, cell in enumerate(cells, 1):
        log.info("sweep | cell %d/%d: %s on %s", i, len(cells), cell.arm, cell.task)
        argv = ["run", "--arm", cell.arm, "--tasks", cell.task, "--study", args.study]
        argv += [x for k, v in own(cell).items() if v for x in (f"--{k.replace('_', '-')}", v)]
        try:
            cmd_run(build_parser().parse_args(argv))
        except Exception as err:  # one failed cell must not stop the others; all are reported at the end
            log.error("sweep | %s on %s failed: %s: %s", cell.arm, cell.task, type(err).__name__, err)
            failed.append(f"{cell.arm} on {cell.task} ({type(err).__name__}: {err})")
    if failed:
        print("failed cells (run the sweep again to resume them):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .arms import RunOptions
    from .plan import format_plan, project
    from .studies import load_study
    from .sweep import default_arms
    from .tasks import load_task
    from .train import resolve_device

    for pair in args.mlflow_style:  # -P study=gue, as `mlflow run` passes parameters
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(args, key.replace("-", "_")) or key == "mlflow_style":
            raise ValueError(f"-P {pair!r}: expected KEY=VALUE with KEY one of study, arms, tasks, data, "
                             "n_trials, seeds, device, sample, tokenizer")
        setattr(args, key.replace("-", "_"), value)
    quiet_libraries()
    spec = load_study(args.study)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] or default_arms(spec)
    tasks = [load_task(t.strip(), args.data or None) for t in (args.tasks.split(",") if args.tasks else spec.tasks)]
    options = RunOptions(device=args.device, tokenizer_path=resolve_tokenizer(args.tokenizer),
                         bpe_vocab_size=spec.bpe_vocab_size)
    rows = project(spec, arms, tasks, options, optional_int(args.n_trials, "n_trials") or spec.n_trials,
                   optional_int(args.seeds, "seeds") or spec.seeds, number(args.sample, "sample"))
    print(format_plan(rows, describe_device(resolve_device(args.device))))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import PretrainRequest, pretrain

    quiet_libraries()
    req = PretrainRequest(
        arm=args.arm, corpus=args.corpus, study=args.study, window=number(args.window, "window"),
        steps=number(args.steps, "steps"), batch_size=number(args.batch_size, "batch_size"),
        lr=number(args.lr, "lr", float), mask_prob=number(args.mask_prob, "mask_prob", float),
        seed=int(args.seed), device=args.device, tokenizer=resolve_tokenizer(args.tokenizer),
        vocab_size=number(args.vocab_size, "vocab_size"), experiment=args.experiment, output=args.output or None)
    if req.mask_prob >= 1:
        raise ValueError(f"mask_prob must be below 1, got {req.mask_prob}")
    pretrain(req)
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from .pretrain import train_tokenizer

    quiet_libraries()
    train_tokenizer(args.corpus, number(args.vocab_size, "vocab_size"), number(args.window, "window"), args.experiment)
    return 0


def quiet_libraries() -> None:
    for noisy in ("mlflow", "alembic"):  # after import: MLflow configures its loggers when imported
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    from .train import DeviceError, DivergedError
    from mlflow.exceptions import MlflowException

    from .tuning import NoCompletedTrialError, StorageError

    commands = {"run": cmd_run, "sweep": cmd_sweep, "plan": cmd_plan, "pretrain": cmd_pretrain,
                "tokenizer": cmd_tokenizer}
    try:
        return commands[args.command](args)
    except (DataError, StudyError, StorageError, UnknownNameError, ValueError, FileNotFoundError,
            DeviceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyError as err:  # a checkpoint whose weights do not fit the model
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    except (NoCompletedTrialError, MlflowException, DivergedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk or a read-only artifact folder
        print(f"error: cannot write {err.filename or 'results'}: {err.strerror or err}. Runs in progress were "
              "marked FAILED; completed trials and final runs are kept: fix it and run the same command again",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: runs were marked KILLED; run the same command again to resume", file=sys.stderr)
        return 130
