"""The fast path against the plain reference loop on the smoke study: the same best dev MCC, in less time.

For each arm and task, runs the smoke study's tuning and final seeds twice in fresh folders with the same
sampler seed and budget — with the fast path (length-bucketed batches padded to their own longest
sequence, fused AdamW, no host sync per step; bf16 and compile only where asked) and with the plain
reference loop of `plain_loop.py` (shuffled batches padded to the split's longest sequence, for-loop AdamW,
a host sync per step, fp32). It then reads the Optuna storage and MLflow:

- best dev MCC of the tuning (Optuna's best trial), per mode;
- seed noise: the standard deviation of dev MCC over the final seeds (the best configuration retrained),
  per mode; the difference in best dev MCC counts as "within seed noise" when it is at most twice the
  standard deviation of a difference of two such values, 2 * sqrt(sd_fast^2 + sd_plain^2);
- the loops alone: the fast study's best configuration retrained with `--seeds` seeds by each loop (dev MCC
  of the selected epoch, difference of the means with a 95% CI, Welch's t-test), since the two studies'
  final seeds retrain different configurations once their tunings diverge;
- test MCC of the final seeds (mean, sd), and cost: wall seconds of the whole command, training epochs,
  and seconds per training epoch over all trials (from the trial runs' `epoch_seconds`).

    python benchmarks/fast_path_parity.py                                   # unet_char, dnabert2_scratch; both smoke tasks; 8 trials, 5 seeds
    python benchmarks/fast_path_parity.py --arms convnova_char --tasks synthetic/motif_binary --trials 8

Appends to `<out>/fast_path_parity.csv` (one row per arm, task and mode) and writes `<out>/fast_path_parity.png`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from harness_runs import HARNESS, PLAIN_LOOP, REPO, logged_runs, machine, run_harness, save, smoke_study
from plain_loop import plain_loop


def read_results(folder: Path, arm: str, task: str) -> dict[str, float]:
    import optuna

    study = optuna.load_study(study_name=f"smoke/{arm}/{task}", storage=f"sqlite:///{folder}/optuna.db")
    runs = logged_runs(folder, "smoke")
    finals = [r for r, _ in runs["final"]]
    epoch_seconds = [s for _, seconds in runs["trial"] for s in seconds]
    dev = [r.data.metrics["dev_mcc"] for r in finals]
    test = [r.data.metrics["test_mcc"] for r in finals]
    return {"best_dev_mcc": study.best_value, "final_dev_mcc_mean": float(np.mean(dev)),
            "final_dev_mcc_sd": float(np.std(dev, ddof=1)), "test_mcc_mean": float(np.mean(test)),
            "test_mcc_sd": float(np.std(test, ddof=1)), "seeds": len(finals), "trial_epochs": len(epoch_seconds),
            "seconds_per_epoch": float(np.mean(epoch_seconds)),
            "best_batch_size": study.best_params.get("batch_size"), "best_params": json.dumps(study.best_params)}


def same_configuration(arm_name: str, task_name: str, params: dict, seeds: int) -> dict[str, float]:
    """The loops alone: one configuration (the fast study's best), `seeds` seeds each way, dev MCC of the
    selected epoch; Welch's t-test and a 95% CI for the difference of the means."""
    from scipy import stats

    from harness.arms import ARMS, RunOptions
    from harness.runtime import CPU
    from harness.studies import load_study
    from harness.tasks import load_task

    spec, task, arm = load_study("smoke"), load_task(task_name), ARMS.get(arm_name)
    full, options = {**spec.fixed.get(spec.space_name(arm.family, "scratch"), {}), **params}, RunOptions(CPU, bpe_vocab_size=spec.bpe_vocab_size)

    def dev_mcc(seed: int) -> float:
        return arm.fit(task, full, seed, arm.budget(spec), options).result.best_dev["mcc"]

    dev = {"fast": [dev_mcc(seed) for seed in range(seeds)]}
    with plain_loop():
        dev["plain"] = [dev_mcc(seed) for seed in range(seeds)]
    fast, plain = np.array(dev["fast"]), np.array(dev["plain"])
    test = stats.ttest_ind(fast, plain, equal_var=False)
    low, high = test.confidence_interval(0.95)
    return {"same_config_dev_mcc_fast": float(fast.mean()), "same_config_dev_mcc_plain": float(plain.mean()),
            "same_config_difference": float(fast.mean() - plain.mean()), "same_config_ci_low": float(low),
            "same_config_ci_high": float(high), "same_config_p": float(test.pvalue)}


def compare(fast: dict, plain: dict) -> dict[str, float]:
    difference = fast["best_dev_mcc"] - plain["best_dev_mcc"]
    noise = math.sqrt(fast["final_dev_mcc_sd"] ** 2 + plain["final_dev_mcc_sd"] ** 2)
    return {"best_dev_mcc_difference": difference, "seed_noise_sd": noise,
            "within_seed_noise": abs(difference) <= 2 * noise,
            "epoch_speedup": plain["seconds_per_epoch"] / fast["seconds_per_epoch"],
            "wall_ratio": fast["wall_s"] / plain["wall_s"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({(r["arm"], r["task"]) for r in rows}, key=lambda c: [(r["arm"], r["task"]) for r in rows].index(c))
    fig, (ax_mcc, ax_speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(len(cells))
    for offset, mode, color in ((-0.2, "fast", "tab:blue"), (0.2, "plain", "tab:gray")):
        picked = [next(r for r in rows if (r["arm"], r["task"]) == c and r["mode"] == mode) for c in cells]
        ax_mcc.bar(x + offset, [r["best_dev_mcc"] for r in picked], 0.4, color=color, label=f"{mode} path",
                   yerr=[2 * r["final_dev_mcc_sd"] for r in picked], capsize=3)
    ax_mcc.set_ylabel("best dev MCC of tuning (±2 sd over seeds)")
    speed = [next(r for r in rows if (r["arm"], r["task"]) == c and r["mode"] == "fast")["epoch_speedup"] for c in cells]
    ax_speed.bar(x, speed, 0.5, color="tab:green")
    ax_speed.axhline(1.0, color="black", lw=0.8)
    for i, s in enumerate(speed):
        ax_speed.text(i, s, f"{s:.2f}x", ha="center", va="bottom")
    ax_speed.set_ylabel("seconds per epoch: plain / fast")
    labels = [f"{a}\n{t.split('/')[-1]}" for a, t in cells]
    for ax in (ax_mcc, ax_speed):
        ax.set_xticks(x, labels, fontsize=8)
    ax_mcc.legend(loc="lower right")
    fig.suptitle(f"Fast path vs plain loop on the smoke study ({rows[0]['machine']}, {rows[0]['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", default="unet_char,dnabert2_scratch")
    p.add_argument("--tasks", default="synthetic/motif_binary,synthetic/motif_multiclass")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    rows = []
    for arm in args.arms.split(","):
        for task in args.tasks.split(","):
            cell = {}
            for mode in ("fast", "plain"):
                with tempfile.TemporaryDirectory() as tmp:
                    wall = run_harness(Path(tmp), smoke_study(), arm, task, args.trials, args.seeds,
                                       ("--device", "cpu", "--precision", "fp32"),
                                       HARNESS if mode == "fast" else PLAIN_LOOP)
                    cell[mode] = {"arm": arm, "task": task, "mode": mode, "trials": args.trials, "wall_s": wall,
                                  **read_results(Path(tmp), arm, task), "machine": machine(),
                                  "date": datetime.datetime.now().isoformat(timespec="seconds")}
            verdict = compare(cell["fast"], cell["plain"])
            verdict.update(same_configuration(arm, task, json.loads(cell["fast"]["best_params"]), args.seeds))
            cell["fast"].update(verdict)
            cell["plain"].update({k: "" for k in verdict})
            rows += [cell["fast"], cell["plain"]]
            f, q = cell["fast"], cell["plain"]
            print(f"{arm} {task}: best dev MCC fast {f['best_dev_mcc']:.4f} vs plain {q['best_dev_mcc']:.4f} "
                  f"(difference {verdict['best_dev_mcc_difference']:+.4f}, seed noise sd {verdict['seed_noise_sd']:.4f}: "
                  f"{'within' if verdict['within_seed_noise'] else 'OUTSIDE'} seed noise); test MCC "
                  f"{f['test_mcc_mean']:.3f}±{f['test_mcc_sd']:.3f} vs {q['test_mcc_mean']:.3f}±{q['test_mcc_sd']:.3f}; "
                  f"s/epoch {f['seconds_per_epoch']:.3f} vs {q['seconds_per_epoch']:.3f} "
                  f"({verdict['epoch_speedup']:.2f}x); wall {f['wall_s']:.0f} s vs {q['wall_s']:.0f} s; same "
                  f"configuration, {args.seeds} seeds each: dev MCC {verdict['same_config_dev_mcc_fast']:.4f} vs "
                  f"{verdict['same_config_dev_mcc_plain']:.4f} (difference {verdict['same_config_difference']:+.4f}, "
                  f"95% CI {verdict['same_config_ci_low']:+.4f} to {verdict['same_config_ci_high']:+.4f}, Welch p "
                  f"{verdict['same_config_p']:.2f})", flush=True)
    save(rows, args.out, "fast_path_parity", plot)


if __name__ == "__main__":
    main()
