"""What probing a cell costs against fine-tuning it: the same cell run twice through `python -m harness run`.

For each task, one arm with one checkpoint (default: DNABERT-2's architecture at fixture size, the tiny
checkpoint in ../shared with the published tokenizer) is run as a whole cell (tuning trials + final seeds) with
`--mode finetune` and with `--mode probe`, each in a fresh folder with its own sqlite stores and its own
HARNESS_CACHE_DIR (so the probed cell computes its embeddings itself, and neither cell finds the other's
tokenized splits). The study is written here with one budget for both (trials, epoch cap, patience, seeds; no
pruning), a `transformer` space for the fine-tuned cell and a `probe` space for the probed one. It reports:

- the wall seconds of each `harness run` process (tuning + finals, startup included) and their ratio;
- from MLflow: the fits' `train_seconds` summed over trial and final runs, and the probed cell's embedding pass
  (`embed_seconds`, once per cell: train, dev, test), and the cost ratio fine-tuned / (probe fits + embedding);
- test MCC of each cell (mean over the final seeds);
- the cache: each probed trial's run time with its `embeddings` tag (the first trial computes train and dev, the
  later ones read them cached) and the final runs' (the first computes test).

    python benchmarks/probe_vs_finetune.py                                   # mouse/2 + prom/prom_core_tata, train cut to 2000; ~5 min on 2 idle cores
    python benchmarks/probe_vs_finetune.py --tasks tf/0 --max-train 3000     # a big task, train subsampled
    python benchmarks/probe_vs_finetune.py --arm hf_pretrained --checkpoint <a transformers folder> --tokenizer ''

Unlike the other benchmarks it exits non-zero when a harness run fails or logs fewer runs than asked for.
Appends one row per (task, mode) to `<out>/probe_vs_finetune.csv` and writes this run's table to
`<out>/probe_vs_finetune.md`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from harness_runs import REPO, append_csv, machine, run_harness

SHARED = REPO.parent / "shared"

STUDY = """\
# Written by benchmarks/probe_vs_finetune.py: one budget for the fine-tuned and the probed cell.
name: probe_vs_finetune
description: the same cell fine-tuned and probed
tasks: [{tasks}]
budget: {{n_trials: {trials}, max_epochs: {epochs}, patience: {patience}, seeds: {seeds}}}
sampler: {{seed: 0, n_startup_trials: 2}}
pruner: none
tokenizer: {{bpe_vocab_size: 4096}}
search_spaces:
  transformer:   # fine-tuning a fixture-sized network (smoke.yaml's ranges); a checkpoint brings its architecture
    lr: {{type: float, low: 3.0e-4, high: 3.0e-3, log: true}}
    weight_decay: {{type: float, low: 1.0e-4, high: 0.1, log: true}}
    batch_size: {{type: categorical, choices: [32, 64]}}
  hf:
    lr: {{type: float, low: 3.0e-4, high: 3.0e-3, log: true}}
    weight_decay: {{type: float, low: 1.0e-4, high: 0.1, log: true}}
    batch_size: {{type: categorical, choices: [32, 64]}}
    pooling: {{type: categorical, choices: [mean, first]}}
  probe:         # smoke.yaml's probe space
    lr: {{type: float, low: 1.0e-3, high: 3.0e-2, log: true}}
    weight_decay: {{type: float, low: 1.0e-4, high: 0.1, log: true}}
    batch_size: {{type: categorical, choices: [32, 64]}}
    head: {{type: categorical, choices: [linear, mlp]}}
    pooling: {{type: categorical, choices: [mean, first]}}
    layer: {{type: categorical, choices: [-1, -2]}}
    fixed: {{head_hidden: 128}}
"""


def data_root(source: Path, tasks: list[str], max_train: int, folder: Path) -> tuple[Path, dict[str, str]]:
    """A GUE-layout copy of `tasks` under `folder`: train cut to `max_train` sequences (a fixed random subset, seed
    0, in file order) where larger, dev and test whole. Returns the root and, per task, what was used."""
    used = {}
    for task in tasks:
        target = folder / task
        target.mkdir(parents=True)
        train = pd.read_csv(source / task / "train.csv")
        n_dev, n_test = (len(pd.read_csv(source / task / f"{s}.csv")) for s in ("dev", "test"))
        if max_train and len(train) > max_train:
            train = train.sample(n=max_train, random_state=0).sort_index()
            used[task] = f"train {max_train} of {len(pd.read_csv(source / task / 'train.csv'))} (subsampled, seed 0)"
        else:
            used[task] = f"train {len(train)} (whole)"
        used[task] += f", dev {n_dev}, test {n_test}"
        train.to_csv(target / "train.csv", index=False)
        for split in ("dev", "test"):
            (target / f"{split}.csv").symlink_to((source / task / f"{split}.csv").resolve())
    return folder, used


def logged(folder: Path) -> dict[str, list]:
    """The cell's trial and final runs (one cell per folder), in start order."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=5000, order_by=["attributes.start_time ASC"])
    return {stage: [r for r in runs if r.data.tags.get("stage") == stage] for stage in ("study", "trial", "final")}


def seconds(run) -> float:
    return (run.info.end_time - run.info.start_time) / 1000


def fail(message: str) -> None:
    print(f"probe_vs_finetune: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def measure(folder: Path, wall: float, mode: str, trials: int, seeds: int) -> dict:
    runs = logged(folder)
    done = [r for stage in ("trial", "final") for r in runs[stage] if r.info.status == "FINISHED"]
    if len(runs["trial"]) != trials or len(runs["final"]) != seeds or len(done) != trials + seeds:
        fail(f"{folder}: expected {trials} trial and {seeds} final runs FINISHED, found "
             f"{[(r.data.tags.get('stage'), r.info.status) for s in ('trial', 'final') for r in runs[s]]}")
    modes = {r.data.tags.get("mode") for r in done}
    if modes != {mode}:
        fail(f"{folder}: runs tagged mode {modes}, expected {mode}")
    train_s = sum(r.data.metrics.get("train_seconds", 0.0) for r in done)
    embed_s = max((r.data.metrics.get("embed_seconds", 0.0) for r in runs["final"]), default=0.0)
    embed_flops = max((r.data.metrics.get("embed_flops", 0.0) for r in runs["final"]), default=0.0)
    if mode == "probe" and not embed_s:
        fail(f"{folder}: the probed cell's final runs logged no embed_seconds")
    test = [r.data.metrics["test_mcc"] for r in runs["final"]]
    fits = [{"stage": r.data.tags["stage"], "run_s": seconds(r), "train_s": r.data.metrics.get("train_seconds", 0.0),
             "embeddings": r.data.tags.get("embeddings", "")} for r in done]
    return {"wall_s": wall, "fits_run_s": sum(f["run_s"] for f in fits), "train_s": train_s,
            "embed_s": embed_s, "embed_flops": embed_flops,
            "flops": sum(r.data.metrics.get("flops", 0.0) for r in done),
            "params_trained": done[0].data.metrics.get("n_parameters", float("nan")),
            "test_mcc_mean": float(np.mean(test)), "test_mcc_sd": float(np.std(test, ddof=1)) if len(test) > 1 else 0.0,
            "variant": runs["study"][0].data.tags.get("variant", "") if runs["study"] else "", "fits": fits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "data" / "gue", help="GUE-layout root (default ../shared/data/gue)")
    p.add_argument("--tasks", default="mouse/2,prom/prom_core_tata")
    p.add_argument("--arm", default="dnabert2_pretrained")
    p.add_argument("--checkpoint", default=str(SHARED / "fixtures" / "dnabert2_tiny" / "mlm"))
    p.add_argument("--tokenizer", default=str(SHARED / "dnabert2" / "tokenizer.json"),
                   help="tokenizer.json ('' for a checkpoint that has its own)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="max_epochs of every trial and final run")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--max-train", type=int, default=2000,
                   help="cut larger train splits to this many sequences (fixed random subset; 0: all)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of the harness runs (1: steady timings on a CPU shared with other jobs; "
                        "0: leave as is)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the harness runs inherit it (torch's thread count)
    tasks = args.tasks.split(",")
    for path in (args.data, Path(args.checkpoint), *([Path(args.tokenizer)] if args.tokenizer else [])):
        if not path.exists():
            fail(f"{path} does not exist (../shared holds the GUE tasks, the tokenizer and the fixture)")

    rows, cache_lines = [], []
    with tempfile.TemporaryDirectory(prefix="probe_vs_finetune.") as tmp:
        root, used = data_root(args.data, tasks, args.max_train, Path(tmp) / "data")
        print(f"{args.arm}, checkpoint {args.checkpoint}; budget: {args.trials} trials + {args.seeds} seeds, "
              f"max_epochs {args.epochs}, patience {args.patience}, no pruning; cpu, {machine()}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        for task in tasks:
            print(f"  {task}: {used[task]}")
        study = STUDY.format(tasks=", ".join(tasks), trials=args.trials, epochs=args.epochs, patience=args.patience,
                             seeds=args.seeds)
        for task in tasks:
            measured = {}
            for mode in ("finetune", "probe"):
                folder = Path(tmp) / f"{task.replace('/', '_')}_{mode}"
                folder.mkdir()
                os.environ["HARNESS_CACHE_DIR"] = str(folder / "cache")  # each cell starts with an empty cache
                extra = ("--data", str(root), "--device", "cpu", "--save-models", "none", "--mode", mode,
                         "--checkpoint", args.checkpoint, *(("--tokenizer", args.tokenizer) if args.tokenizer else ()))
                try:
                    wall = run_harness(folder, study, args.arm, task, args.trials, args.seeds, extra)
                except RuntimeError as err:
                    fail(f"{task}, mode {mode}: {err}")
                measured[mode] = measure(folder, wall, mode, args.trials, args.seeds)
                print(f"  {task} {mode}: {wall:.1f} s wall", flush=True)
            ft, pr = measured["finetune"], measured["probe"]
            for mode, m in measured.items():
                rows.append({"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                             "task": task, "data": used[task], "arm": args.arm, "variant": m["variant"],
                             "checkpoint": args.checkpoint, "mode": mode, "trials": args.trials, "seeds": args.seeds,
                             "max_epochs": args.epochs, "threads": os.environ.get("OMP_NUM_THREADS", ""), **{k: v for k, v in m.items() if k not in ("fits", "variant")},
                             "wall_ratio_finetune_over_probe": ft["wall_s"] / pr["wall_s"],
                             "cost_ratio_finetune_over_probe": ft["train_s"] / (pr["train_s"] + pr["embed_s"])})
            trials = [f for f in pr["fits"] if f["stage"] == "trial"]
            finals = [f for f in pr["fits"] if f["stage"] == "final"]
            later = trials[1:]
            cache_lines.append(
                f"{task}: first probed trial {trials[0]['run_s']:.2f} s ({trials[0]['embeddings']}; head training "
                f"{trials[0]['train_s']:.2f} s), later trials {np.mean([f['run_s'] for f in later]):.2f} s on average "
                f"({'; '.join(sorted({f['embeddings'] for f in later}))}; head training "
                f"{np.mean([f['train_s'] for f in later]):.2f} s); finals: "
                + ", ".join(f"{f['run_s']:.2f} s ({f['embeddings']})" for f in finals))

    table = ["| task | data | mode | cell wall s | fits' runs s | fits' train s | embedding pass s | trained params "
             "| test MCC (mean ± sd) | fine-tuned / probed wall | fine-tuned / probed cost |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        probed = r["mode"] == "probe"
        table.append(f"| {r['task']} | {r['data']} | {r['mode']} | {r['wall_s']:.1f} | {r['fits_run_s']:.1f} | "
                     f"{r['train_s']:.1f} | {r['embed_s']:.2f} | {r['params_trained']:,.0f} | {r['test_mcc_mean']:.3f} ± "
                     f"{r['test_mcc_sd']:.3f} | {r['wall_ratio_finetune_over_probe']:.2f}x | "
                     f"{r['cost_ratio_finetune_over_probe']:.1f}x |" if probed else
                     f"| {r['task']} | {r['data']} | {r['mode']} | {r['wall_s']:.1f} | {r['fits_run_s']:.1f} | "
                     f"{r['train_s']:.1f} | – | {r['params_trained']:,.0f} | {r['test_mcc_mean']:.3f} ± "
                     f"{r['test_mcc_sd']:.3f} | | |")
    notes = ["cell wall s: the `python -m harness run` process (tuning + finals; startup, tokenizer, MLflow and "
             "figures included); fits' runs s: the trial and final MLflow runs' durations summed (fit, scoring, "
             "logging); fits' train s: their train_seconds summed; embedding pass: embed_seconds (train, dev and test, "
             "once per cell); cost = fits' train s (+ the embedding pass for the probe), as the analysis counts it.",
             "Embedding cache (probed cell; the tag lists train and dev: test is embedded when the first final run "
             "scores it):", *(f"- {line}" for line in cache_lines)]
    text = "\n".join(table + [""] + notes)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    append_csv(args.out / "probe_vs_finetune.csv", rows)
    header = (f"# probe_vs_finetune ({rows[0]['date'][:10]}, {machine()}, cpu; {args.arm}, {args.checkpoint}; "
              f"{args.trials} trials + {args.seeds} seeds, max_epochs {args.epochs})\n\n")
    (args.out / "probe_vs_finetune.md").write_text(header + text + "\n")
    print(f"\nwrote {args.out / 'probe_vs_finetune.csv'} (appended) and {args.out / 'probe_vs_finetune.md'}")


if __name__ == "__main__":
    main()
