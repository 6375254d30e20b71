"""The CNNs' BPE variants before and after their BPE designs, against their single-nucleotide twins.

`unet_bpe` and `convnova_bpe` used to reuse the nucleotide-scaled designs: a U-Net with 4 halvings (a
101 bp sequence of ~22 BPE tokens is 2 positions at its bottleneck) and ConvNova's dilations
[1, 1, 1, 4, 16] (193 tokens of receptive field, ~950 nt). Their defaults now depend on the tokenizer
(harness/models/unet.py and convnova.py explain the designs). On real GUE tasks, with the published
DNABERT-2 tokenizer, this trains

    unet_char     (32, 64, 96, 128, 192)      convnova_char   dilation base 4       the twins (unchanged)
    unet_bpe      before: the char design     convnova_bpe    before: base 4
                  after:  (96, 128, 192)                      after:  base 2 (the default)

through the arms' own `fit` (the harness's one training loop: length-bucketed batches, AdamW, linear
warm-up and decay, best-dev-MCC checkpoint, early stopping) with one fixed configuration for all:
lr 3e-3, batch 64, weight decay 0.01, dropout 0.1, warm-up 6%, and scores the test split once per seed.
Every arm gets the same epochs, patience and training sequences.

    python benchmarks/bpe_variants.py      # mouse/2 and prom/prom_300_tata: ~17 min on one CPU thread
    python benchmarks/bpe_variants.py --tasks prom/prom_core_tata --seeds 3 --epochs 8 --patience 3

Prints a table (test MCC mean ± sd over seeds, the difference to the char twin, parameters, seconds of
training per seed, epochs) and appends one row per (task, arm, design, seed) to `<out>/bpe_variants.csv`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gue"
DEFAULT_TOKENIZER = REPO.parent / "shared" / "dnabert2" / "tokenizer.json"

# One configuration for every run (no tuning: the designs are compared, not the search).
FIXED = {"lr": 3e-3, "batch_size": 64, "weight_decay": 0.01, "dropout": 0.1, "warmup_ratio": 0.06}

# (arm, design, the architecture keys that select it); "default" is the arm's default for its tokenizer.
VARIANTS = [
    ("unet_char", "char", {}),
    ("unet_bpe", "before", {"widths": [32, 64, 96, 128, 192]}),
    ("unet_bpe", "after", {}),
    ("convnova_char", "char", {}),
    ("convnova_bpe", "before", {"dilation_base": 4}),
    ("convnova_bpe", "after", {}),
]


def subsample(task, n: int | None, seed: int = 0):
    """`task` with at most `n` training sequences (the same random ones for every arm); dev and test whole."""
    from harness.data import Split

    if n is None or n >= len(task.train):
        return task
    idx = np.sort(np.random.default_rng(seed).choice(len(task.train), n, replace=False))
    train = Split([task.train.sequences[i] for i in idx], task.train.labels[idx])
    return replace(task, train=train)


def describe(architecture: dict) -> str:
    if "widths" in architecture:
        return "widths " + "/".join(map(str, architecture["widths"]))
    from harness.models.convnova import ConvNovaConfig, dilation_schedule

    known = {k: v for k, v in architecture.items() if k in ConvNovaConfig.__dataclass_fields__}
    return f"h{architecture['hidden_dim']} dil {dilation_schedule(ConvNovaConfig(**known))}"


def run(task, arm_name: str, extra: dict, seed: int, args) -> dict:
    from harness.arms import ARMS, Budget, RunOptions
    from harness.metrics import classification_metrics
    from harness.runtime import Runtime

    arm = ARMS.get(arm_name)
    options = RunOptions(Runtime(torch.device("cpu"), "fp32"),
                         tokenizer_path=str(args.tokenizer) if arm.tokenizer == "bpe" else None)
    params = {**FIXED, "hidden_dim": args.convnova_hidden_dim, **extra}
    fitted = arm.fit(task, params, seed, Budget(args.epochs, args.patience), options)
    test = classification_metrics(task.test.labels, fitted.predict("test"))
    return {"test_mcc": test["mcc"], "dev_mcc": fitted.result.best_dev["mcc"], "params": fitted.n_params,
            "train_seconds": fitted.result.train_seconds, "epochs": len(fitted.result.history),
            "best_epoch": fitted.result.best_epoch, "architecture": json.dumps(fitted.architecture),
            "design_summary": describe(fitted.architecture)}


def table(rows: list[dict]) -> list[str]:
    """Mean ± sd over seeds per (task, arm, design), and the difference to the arm's char twin."""
    import pandas as pd

    df = pd.DataFrame(rows)
    keys = ["task", "arm", "design"]
    g = df.groupby(keys, sort=False).agg(mcc=("test_mcc", "mean"), sd=("test_mcc", "std"), n=("seed", "size"),
                                          params=("params", "first"), seconds=("train_seconds", "mean"),
                                          epochs=("epochs", "mean"), summary=("design_summary", "first")).reset_index()
    lines = [f"| task | arm | design | architecture | params | test MCC (mean ± sd, n) | vs char twin | s/seed | epochs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in g.itertuples():
        twin = g[(g.task == r.task) & (g.arm == r.arm.replace("_bpe", "_char")) & (g.design == "char")]
        delta = f"{r.mcc - twin.mcc.iloc[0]:+.3f}" if r.design != "char" and len(twin) else ""
        sd = f"{r.sd:.3f}" if r.n > 1 else "-"
        lines.append(f"| {r.task} | {r.arm} | {r.design} | {r.summary} | {r.params / 1e6:.2f}M | "
                     f"{r.mcc:.3f} ± {sd} ({r.n}) | {delta} | {r.seconds:.0f} | {r.epochs:.1f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GUE root (<family>/<task>/{train,dev,test}.csv)")
    p.add_argument("--tasks", default="mouse/2,prom/prom_300_tata", help="comma-separated GUE task names")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4, help="epoch cap (every arm alike)")
    p.add_argument("--patience", type=int, default=2, help="early stopping on dev MCC")
    p.add_argument("--max-train", type=int, default=1500,
                   help="training sequences per task, a fixed random subset (0: all); dev and test are whole")
    p.add_argument("--convnova-hidden-dim", type=int, default=64,
                   help="ConvNova's width for both twins (64: the published ~0.45M size; 128: ~1.7M)")
    p.add_argument("--arms", default=",".join(dict.fromkeys(a for a, _, _ in VARIANTS)))
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="the BPE arms' tokenizer.json")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the CPU may be shared)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    from harness.data import load_gue_task
    from harness_runs import append_csv

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # data overlap notices go to the summary, not between rows
    arms = args.arms.split(",")
    print(f"fixed: {FIXED}; epochs {args.epochs}, patience {args.patience}, seeds {args.seeds}, "
          f"max train {args.max_train or 'all'}, ConvNova hidden {args.convnova_hidden_dim}, "
          f"{args.threads} thread(s); tokenizer {args.tokenizer}", flush=True)
    rows, start = [], time.perf_counter()
    for name in args.tasks.split(","):
        task = subsample(load_gue_task(str(args.data), name), args.max_train or None)
        print(f"{name}: {len(task.train)} train / {len(task.dev)} dev / {len(task.test)} test", flush=True)
        for arm, design, extra in VARIANTS:
            if arm not in arms:
                continue
            for seed in range(args.seeds):
                row = {"task": name, "arm": arm, "design": design, "seed": seed, **run(task, arm, extra, seed, args)}
                rows.append(row)
                print(f"  {arm:14s} {design:6s} seed {seed}: test MCC {row['test_mcc']:.3f} (dev {row['dev_mcc']:.3f}, "
                      f"{row['epochs']} epochs, {row['train_seconds']:.0f} s)  [{time.perf_counter() - start:.0f} s]",
                      flush=True)
    print("\n".join(["", *table(rows)]))
    context = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
               "torch": torch.__version__, "max_train": args.max_train, "max_epochs": args.epochs,
               "patience": args.patience, "convnova_hidden_dim": args.convnova_hidden_dim, **FIXED}
    append_csv(args.out / "bpe_variants.csv", [{**row, **context} for row in rows])
    print(f"\n{time.perf_counter() - start:.0f} s in all; wrote {args.out / 'bpe_variants.csv'}")


if __name__ == "__main__":
    main()
