"""Mean against positional pooling for the CNN arms, beside the two linear baselines, on tasks whose label
depends on WHERE a motif is.

What is compared
----------------
For each task, test MCC (mean ± sd over seeds) of

* unet_char and convnova_char with `pooling=mean` (the head every CNN arm had) and `pooling=positional`
  (attention pooling with a learned bias per absolute position; harness/models/heads.py), trained through
  the arms' own `arm.fit(task, params, seed, budget, options)` with fixed hyperparameters, the same for
  every model and pooling: lr 3e-3, batch 64, weight decay 0.01, dropout 0.1, warm-up 6%, at most
  `--epochs` (8) epochs, patience 3 on dev MCC (the best dev epoch is kept), fp32 on the CPU.
  ConvNova at its small published width (hidden_dim 64, ~0.45M parameters; `--convnova-width`), the
  U-Net at the harness's default widths (~1.7M parameters);
* onehot_logreg (C in 0.01, 0.1, 1) and kmer_logreg (k in 4, 6 x C in 0.1, 1), each configuration picked
  on dev MCC. scikit-learn's L-BFGS is deterministic: one fit, sd 0.

Tasks: `synthetic/motif_position` (the 5' splice-site consensus at the centre vs elsewhere: same k-mer
content, only position decides) and the GUE promoter tasks `prom/prom_core_tata` (70 bp) and
`prom/prom_300_tata` (300 bp), read from `--data` (../shared/data/gue; skipped with a note if absent).
To keep a 2-core shared CPU under ~20 minutes, each task's train split is cut to `--max-train` sequences
(a fixed random subset, the same for every arm and seed; 0 keeps all); dev and test are whole.

How to run
----------
    python benchmarks/pooling.py                                    # the defaults below, ~15-20 CPU minutes
    python benchmarks/pooling.py --tasks synthetic/motif_position --seeds 3 --epochs 8
    python benchmarks/pooling.py --max-train 0 --convnova-width 128  # whole train splits (a GPU's job)

Options: `--data`, `--tasks` (comma-separated), `--seeds` (2), `--epochs` (8), `--max-train` (1000),
`--convnova-width` (64), `--poolings` (mean,positional; any of heads.POOLINGS), `--threads` (1:
`torch.set_num_threads`), `--out` (benchmarks/results).

Outputs: a table on stdout and `<out>/pooling.csv`, one row per (task, arm, configuration, seed):
`task, arm, pooling, config, seed, dev_mcc, test_mcc, best_epoch, epochs, fit_seconds, cpu_seconds,
n_params, n_train, picked` (`picked`: the configuration chosen on dev, for the linear arms), plus `date`,
`machine`, `torch`, `threads`. A benchmark, not a test: it exits 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.arms import ARMS, Budget, RunOptions  # noqa: E402
from harness.data import DataError, Split  # noqa: E402
from harness.metrics import classification_metrics  # noqa: E402
from harness.runtime import Runtime  # noqa: E402
from harness.tasks import load_task  # noqa: E402

CNN_PARAMS = {"lr": 3e-3, "batch_size": 64, "weight_decay": 0.01, "dropout": 0.1, "warmup_ratio": 0.06}
CNN_ARMS = ("unet_char", "convnova_char")
LINEAR_CONFIGS = {
    "onehot_logreg": [{"C": c} for c in (0.01, 0.1, 1.0)],
    "kmer_logreg": [{"k": k, "C": c} for k in (4, 6) for c in (0.1, 1.0)],
}
DEFAULT_TASKS = "synthetic/motif_position,prom/prom_core_tata,prom/prom_300_tata"


@dataclass
class Row:
    task: str
    arm: str
    pooling: str
    config: str
    seed: int
    dev_mcc: float
    test_mcc: float
    best_epoch: int
    epochs: int
    fit_seconds: float
    cpu_seconds: float
    n_params: int
    n_train: int
    picked: bool = True


def subsample(task, max_train: int):
    """The task with a fixed random subset of `max_train` train sequences (all if 0 or fewer than that)."""
    if not max_train or len(task.train) <= max_train:
        return task
    keep = np.sort(np.random.default_rng(0).permutation(len(task.train))[:max_train])
    train = Split([task.train.sequences[i] for i in keep], task.train.labels[keep])
    return replace(task, train=train)


def fit_one(task, arm_name: str, params: dict, seed: int, epochs: int, options: RunOptions) -> Row:
    arm = ARMS.get(arm_name)
    cpu, wall = time.process_time(), time.perf_counter()
    fitted = arm.fit(task, params, seed, Budget(epochs if arm.neural else 1, 3), options)
    test = classification_metrics(task.test.labels, fitted.predict("test"))["mcc"]
    config = ", ".join(f"{k}={v}" for k, v in params.items() if k not in CNN_PARAMS and k != "pooling")
    return Row(task.name, arm_name, params.get("pooling", "-"), config, seed, fitted.result.best_dev["mcc"], test,
               fitted.result.best_epoch, len(fitted.result.history), time.perf_counter() - wall,
               time.process_time() - cpu, fitted.n_params, len(task.train))


def run_task(task, seeds: int, epochs: int, convnova_width: int, poolings: list[str],
             options: RunOptions) -> list[Row]:
    rows = []
    for arm_name, configs in LINEAR_CONFIGS.items():
        fits = [fit_one(task, arm_name, params, 0, 1, options) for params in configs]
        best = max(fits, key=lambda r: r.dev_mcc)
        for r in fits:
            r.picked = r is best
        rows += fits
        print(f"  {arm_name:14s} picked {best.config} on dev: dev {best.dev_mcc:.3f} test {best.test_mcc:.3f}",
              flush=True)
    for arm_name in CNN_ARMS:
        for pooling in poolings:
            for seed in range(seeds):
                params = {**CNN_PARAMS, "pooling": pooling, "hidden_dim": convnova_width}
                r = fit_one(task, arm_name, params, seed, epochs, options)
                r.config = f"hidden_dim={convnova_width}" if arm_name.startswith("convnova") else "default widths"
                rows.append(r)
                print(f"  {arm_name:14s} {pooling:10s} seed {seed}: dev {r.dev_mcc:.3f} test {r.test_mcc:.3f} "
                      f"(best epoch {r.best_epoch}/{r.epochs}, {r.cpu_seconds:.0f} CPU s)", flush=True)
    return rows


def summary(rows: list[Row]) -> list[tuple[str, str, str, str]]:
    """(task, arm, pooling, 'mean ± sd (n)') of test MCC over seeds, for the picked configurations."""
    out = []
    keys = dict.fromkeys((r.task, r.arm, r.pooling) for r in rows if r.picked)
    for task, arm, pooling in keys:
        scores = [r.test_mcc for r in rows if (r.task, r.arm, r.pooling) == (task, arm, pooling) and r.picked]
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        out.append((task, arm, pooling, f"{statistics.mean(scores):.3f} ± {sd:.3f} ({len(scores)})"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gue"), help="the GUE root")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated (default {DEFAULT_TASKS})")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-train", type=int, default=1000, help="train sequences per task (0: all)")
    parser.add_argument("--convnova-width", type=int, default=64, help="ConvNova hidden_dim (published: 64, 128)")
    parser.add_argument("--poolings", default="mean,positional", help="CNN poolings (heads.POOLINGS)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    options = RunOptions(Runtime.resolve("cpu", precision="fp32"))
    rows: list[Row] = []
    start = time.process_time()
    for name in args.tasks.split(","):
        try:
            task = subsample(load_task(name, args.data), args.max_train)
        except DataError as err:
            print(f"{name}: skipped ({err})")
            continue
        print(f"{name}: {len(task.train)} train, {len(task.dev)} dev, {len(task.test)} test", flush=True)
        rows += run_task(task, args.seeds, args.epochs, args.convnova_width, args.poolings.split(","), options)

    print(f"\ntest MCC, mean ± sd (seeds); linear arms: the configuration picked on dev. "
          f"{time.process_time() - start:.0f} CPU seconds in all.\n")
    print(f"{'task':24s} {'arm':14s} {'pooling':10s} test MCC")
    for task, arm, pooling, score in summary(rows):
        print(f"{task:24s} {arm:14s} {pooling:10s} {score}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    context = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": args.threads}
    with (out / "pooling.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*Row.__dataclass_fields__, *context])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r.__dict__, **context})
    print(f"\nwrote {out / 'pooling.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
