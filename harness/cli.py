"""Command line: ``python -m harness run|sweep|plan|pretrain|tokenizer|leakage|list`` (the MLproject's entry
points call them). Each command parses its parameters once into a request (`request.py`) and hands it on.

A problem the user can fix prints as `error: ...` and exits 2 (bad input) or 1 (a run that could not finish),
see `errors.py`; Ctrl-C or SIGTERM ends runs KILLED and exits 130; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings

log = logging.getLogger("harness")
DESCRIPTION = ("An evaluation harness for DNA models: every arm (pretrained or scratch transformers, CNNs, k-mer "
               "baselines) gets the same Optuna budget on GUE-style tasks, K seeded final runs and one test score, "
               "all logged to MLflow; `python -m analysis` then compares the arms. Start with `run --arm unet_char` "
               "(synthetic data) or `list`.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="tune, retrain with K seeds and test one arm on a study's tasks",
                         description="Tune one arm on each task of a study (the study's trial budget, dev MCC), retrain "
                                     "the best configuration with K seeds and score test once; runs resume.")
    run.add_argument("--arm", required=True, help="a registered arm (see: list arms)")
    add_grid_arguments(run)
    add_tracking_arguments(run)
    run.add_argument("--tokenizer", default="", help="tokenizer.json for BPE arms (default: train one on the task)")
    run.add_argument("--max-length", default="", help="truncate tokenized sequences to this many tokens")
    run.add_argument("--init", default="", help="fine-tune a scratch arm from this checkpoint (variant arm@sha): a "
                                                "folder or an MLflow URI (runs:/<run_id>/checkpoint from pretrain)")
    add_checkpoint_arguments(run)
    add_mode_argument(run)

    sweep = sub.add_parser("sweep", help="a study's (arm, task) grid: run it here, print a command per cell, "
                                         "or show which cells are done, running, partial or missing")
    add_arms_argument(sweep)
    add_grid_arguments(sweep)
    add_tracking_arguments(sweep)
    sweep.add_argument("--action", default="status", choices=["run", "print", "status"],
                       help="run every cell here in turn, print one `mlflow run` per cell, or report progress "
                            "(default: status)")
    sweep.add_argument("--tokenizer", default="", help="tokenizer.json for the BPE arms (default: the study's)")
    add_checkpoint_arguments(sweep)
    add_mode_argument(sweep)

    plan = sub.add_parser("plan", help="projected compute of a study per arm, from throughput measured here")
    add_arms_argument(plan)
    add_grid_arguments(plan)
    plan.add_argument("--sample", default="256", help="training sequences each measurement fits (default: 256)")
    plan.add_argument("--tokenizer", default="", help="tokenizer.json for BPE arms (default: trained on the sample)")
    add_checkpoint_arguments(plan, cost=False)
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
    add_exclude_eval_argument(pre)

    tok = sub.add_parser("tokenizer", help="train a BPE tokenizer on a corpus and log it to MLflow")
    tok.add_argument("--corpus", required=True, help="FASTA (.gz ok), a CSV, or a GUE-layout folder (train.csv only)")
    tok.add_argument("--vocab-size", default="4096", help="vocabulary size including 5 special tokens")
    tok.add_argument("--window", default="512", help="window length in nucleotides (default: 512)")
    tok.add_argument("--experiment", default="tokenizers", help="MLflow experiment (default: tokenizers)")
    add_exclude_eval_argument(tok)

    leak = sub.add_parser("leakage", help="sequences shared within and across a GUE folder's tasks and splits "
                                          "(exact and contained, either strand): CSV, summary, heat map, MLflow")
    leak.add_argument("--data", required=True, help="GUE-layout root (<data>/<family>/<task>/{train,dev,test}.csv)")
    leak.add_argument("--tasks", default="", help="comma-separated tasks (default: every task under data)")
    leak.add_argument("--out", default="reports/leakage", help="folder for leakage.csv/.md/.png (default: "
                                                                 "reports/leakage)")
    leak.add_argument("--experiment", default="leakage", help="MLflow experiment (default: leakage)")

    lst = sub.add_parser("list", help="list registered arms, tasks and studies")
    lst.add_argument("what", nargs="?", choices=["arms", "tasks", "studies"], help="only this registry")
    return parser


def add_exclude_eval_argument(parser: argparse.ArgumentParser) -> None:
    """Keep a corpus clear of evaluation data (pretrain, tokenizer)."""
    parser.add_argument("--exclude-eval", default="", help="a GUE-layout root: drop every corpus window that equals, "
                        "contains or lies inside one of its dev/test sequences (either strand). A GUE-folder corpus is "
                        "always checked against its own dev/test sequences")


def add_arms_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arms", default="", help="comma-separated arms (default: the study's `arms:`, else every "
                                                   "arm with a search space in it)")


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a study's cells and their budget (run, sweep and plan)."""
    parser.add_argument("--study", default="smoke", help="a study name in studies/ or a path to a .yaml (default: smoke)")
    parser.add_argument("--tasks", default="", help="comma-separated tasks overriding the study's, e.g. tf/0,tf/1")
    parser.add_argument("--data", default="", help="GUE-layout root (<data>/<family>/<task>/{train,dev,test}.csv; "
                                                   "default: the synthetic suite)")
    parser.add_argument("--n-trials", default="", help="override the study's trial budget (the same for every arm!)")
    parser.add_argument("--seeds", default="", help="override the study's number of final seeds K")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")


def add_checkpoint_arguments(parser: argparse.ArgumentParser, cost: bool = True) -> None:
    """The pretrained checkpoint (run, sweep; plan times it and needs no cost)."""
    parser.add_argument("--checkpoint", default="", help="a DNABERT-2 (or harness) checkpoint folder, MLflow URI or hub "
                        "id: the weights of dnabert2_pretrained; a scratch arm of the same model and tokenizer kind "
                        "becomes its twin (its architecture and tokenizer, random weights; variant arm~sha)")
    if cost:
        parser.add_argument("--pretrain-cost", default="", help="the checkpoint's pretraining cost where it recorded none, "
                            "e.g. gpu_hours=2688,flops=1e21 (any of gpu_hours, flops, seconds)")


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    """How a pretrained arm (or its scratch twin) learns a task (run, sweep)."""
    parser.add_argument("--mode", default="finetune", choices=["finetune", "probe"],
                        help="finetune every weight (default), or probe: freeze the checkpoint's network, cache its "
                             "embeddings once per task and tune a head on them (the study's `probe` search space; "
                             "variant <arm>+probe)")


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """Where results go and how the torch arms compute (run and sweep)."""
    parser.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna storage URL (default: sqlite:///optuna.db)")
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the study's name)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="bf16 autocast, fp32, or auto: bf16 on a GPU that supports it, else fp32")
    parser.add_argument("--compile", default="false", choices=["false", "true"],
                        help="torch.compile the model (minutes of compilation per trial; pays off on a GPU)")
    parser.add_argument("--deterministic", default="false", choices=["false", "true"],
                        help="deterministic kernels only: bit-reproducible GPU runs where PyTorch can, slower "
                             "(nearly a no-op on a CPU)")
    parser.add_argument("--save-models", default="best", help="register final models in MLflow's Model Registry as "
                        "pyfunc models: best (the final seed with the best dev MCC, per arm and task; default), all "
                        "(every seed) or none")


def cmd_list(args: argparse.Namespace) -> int:
    from .arms import ARMS
    from .studies import list_studies
    from .tasks import TASKS

    if args.what in (None, "arms"):
        print("arms:")
        for name, arm in ARMS.items():
            print(f"  {name:<20} [{arm.family}] {arm.description}")
    if args.what in (None, "tasks"):
        print("tasks:")
        for name, info in TASKS.items():
            print(f"  {name:<28} {info.num_classes} classes  {info.description}")
        print("  (any other <family>/<task> folder under data= in the GUE layout works too)")
    if args.what in (None, "studies"):
        print("studies:")
        for name, path in list_studies().items():
            print(f"  {name:<20} {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .request import RunRequest
    from .tuning import tune

    tune(RunRequest.parse(vars(args), redacted_command(args.storage)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .request import RunRequest
    from .sweep import sweep

    return sweep(RunRequest.parse(vars(args), redacted_command(args.storage)), args.action)


def cmd_plan(args: argparse.Namespace) -> int:
    from .errors import ParameterError
    from .parameters import number
    from .plan import format_plan, project
    from .request import RunRequest

    params = vars(args)
    for pair in args.mlflow_style:  # -P study=gue, as `mlflow run` passes parameters
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in params or key == "mlflow_style":
            raise ParameterError(f"-P {pair!r}: expected KEY=VALUE with KEY one of study, arms, tasks, data, "
                                 "n_trials, seeds, device, sample, tokenizer, checkpoint")
        params[key] = value
    request = RunRequest.parse(params)
    rows = project(request, request.validate(), int(number(params["sample"], "sample")))
    print(format_plan(rows, request.runtime.describe()))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .checkpoints import local_path
    from .errors import ParameterError
    from .parameters import number
    from .pretrain import PretrainRequest, pretrain

    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ParameterError(f"output={args.output} is a file; pass a new or empty folder for the checkpoint")
    if args.output and os.path.isdir(args.output) and os.listdir(args.output):
        # Its files would be overwritten: another checkpoint (that studies were tuned from), or a user's.
        raise ParameterError(f"output={args.output} is not empty ({sorted(os.listdir(args.output))[0]}, ...); pass a "
                             "new or empty folder for the checkpoint")
    req = PretrainRequest(
        arm=args.arm, corpus=args.corpus, study=args.study, window=number(args.window, "window"),
        steps=number(args.steps, "steps"), batch_size=number(args.batch_size, "batch_size"),
        lr=number(args.lr, "lr", float), mask_prob=number(args.mask_prob, "mask_prob", float),
        seed=int(number(args.seed, "seed", int, 0)), device=args.device,
        tokenizer=str(local_path(args.tokenizer)) if args.tokenizer else None,
        vocab_size=number(args.vocab_size, "vocab_size"), experiment=args.experiment, output=args.output or None,
        exclude_eval=args.exclude_eval or None)
    if req.mask_prob >= 1:
        raise ParameterError(f"mask_prob must be below 1, got {req.mask_prob}")
    pretrain(req)
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from .parameters import number
    from .pretrain import train_tokenizer

    train_tokenizer(args.corpus, number(args.vocab_size, "vocab_size"), number(args.window, "window"), args.experiment,
                    args.exclude_eval or None)
    return 0


def cmd_leakage(args: argparse.Namespace) -> int:
    from .errors import ParameterError
    from .leakage import log_leakage_report
    from .parameters import names
    from .tasks import check_task_name

    tasks = [check_task_name(t, ParameterError, "--tasks:") for t in names(args.tasks, "tasks")]
    log_leakage_report(args.data, tasks or None, args.out or "reports/leakage", args.experiment or "leakage")
    return 0


def quiet_libraries() -> None:
    import optuna

    # Optuna's own warnings repeat, with a traceback, what the harness logs of every failed or skipped trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for noisy in ("mlflow", "alembic"):  # after import: MLflow configures its loggers when imported
        logging.getLogger(noisy).setLevel(logging.WARNING)


def redacted_command(storage: str, argv: list[str] | None = None) -> str:
    """The command line (sys.argv), quoted for a shell, with the secrets of the storage URL, of
    MLFLOW_TRACKING_URI and of any other URL in it masked. Each argument is redacted before quoting: quoting
    changes how a password with a quote or a space is written, and would let it slip past."""
    from .tracking import redact, redact_text, secrets_of

    urls = [u for u in (storage, os.environ.get("MLFLOW_TRACKING_URI")) if u]
    secrets = [s for url in urls for s in secrets_of(url)]

    def clean(arg: str) -> str:
        option, eq, value = arg.partition("=")  # --storage=URL, -P storage=URL
        if eq and "://" in value and "://" not in option:
            arg = f"{option}={redact(value)}"
        elif "://" in arg:
            arg = redact(arg)
        return redact_text(arg, secrets)

    return " ".join(shlex.quote(clean(a)) for a in (sys.argv if argv is None else argv))


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "plan": cmd_plan, "pretrain": cmd_pretrain,
            "tokenizer": cmd_tokenizer, "leakage": cmd_leakage, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.command == "list":
        return cmd_list(args)
    from .errors import HarnessError, print_error

    try:
        from .shutdown import die_with_parent, handle_signals  # reads HARNESS_FORCE_EXIT_S
    except HarnessError as err:
        return print_error(err)

    # A scheduler's SIGTERM ends runs KILLED, like Ctrl-C; any number of either, at any moment, the same way.
    with handle_signals():
        try:
            if os.environ.get("MLFLOW_RUN_ID"):  # started by `mlflow run`: stop with it
                die_with_parent()
            quiet_libraries()
            return COMMANDS[args.command](args)
        except Exception as err:
            return print_error(err)
        except KeyboardInterrupt as err:
            from .tracking import end_orphaned_launcher

            end_orphaned_launcher()
            reason = f"{err}; " if str(err).startswith("SIG") else ""  # the signal, from shutdown.py
            print(f"interrupted: {reason}runs were marked KILLED and unfinished trials failed (final seeds are "
                  "queued again); run the same command again to resume", file=sys.stderr)
            return 130
