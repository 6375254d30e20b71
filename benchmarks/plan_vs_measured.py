"""`harness plan`'s projection against the measured time of the same study on real GUE tasks.

For each arm and task: `harness.plan.project` measures the arm's throughput on a sample of the task and
projects seconds per epoch and the total (fits x max_epochs x seconds per epoch, an upper bound); then the
real `python -m harness run` of the same study, trials and seeds runs in a fresh folder, and the
benchmark reads what its trial runs logged. It reports:

- projected vs measured seconds per epoch (mean over every epoch of the trials and final seeds; dev
  scoring included);
- the measured epochs against the projected maximum (what early stopping and pruning cut);
- projected total (upper bound) vs the measured wall time of the run, and the projection rescaled to the
  epochs actually trained (projected s/epoch x measured epochs + the measured overhead outside epochs).

    python benchmarks/plan_vs_measured.py --data ../shared/data/gue                      # unet_char, kmer_logreg on mouse/2
    python benchmarks/plan_vs_measured.py --data /data/GUE --arms convnova_char --tasks tf/0 --trials 4

Appends to `<out>/plan_vs_measured.csv` and writes `<out>/plan_vs_measured.png`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
from pathlib import Path

import numpy as np

from harness_runs import REPO, logged_runs, machine, run_harness, save


def projected(study: Path, arm: str, task: str, data: str, trials: int, seeds: int, sample: int) -> dict:
    from harness.plan import project
    from harness.request import RunRequest

    request = RunRequest.parse({"study": str(study), "arms": arm, "tasks": task, "data": data, "n_trials": str(trials),
                                "seeds": str(seeds), "device": "cpu"})
    (row,) = project(request, request.load_tasks(), sample)
    return {"projected_s_per_epoch": row.epoch_seconds, "projected_epochs": row.fits * row.epochs,
            "projected_s": row.seconds}


def measured(folder: Path, wall: float) -> dict:
    runs = logged_runs(folder, "gue")
    trial_epochs = [s for _, seconds in runs["trial"] for s in seconds]
    final_epochs = [s for _, seconds in runs["final"] for s in seconds]
    trained_s = sum(trial_epochs) + sum(final_epochs)
    return {"measured_s_per_epoch": float(np.mean(trial_epochs + final_epochs)), "trial_epochs": len(trial_epochs),
            "final_epochs": len(final_epochs), "measured_training_s": trained_s, "measured_wall_s": wall,
            "overhead_s": wall - trained_s}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['arm']}\n{r['task']}" for r in rows]
    x = np.arange(len(rows))
    fig, (ax_epoch, ax_total) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_epoch.bar(x - 0.2, [r["projected_s_per_epoch"] for r in rows], 0.4, label="projected (plan)", color="tab:orange")
    ax_epoch.bar(x + 0.2, [r["measured_s_per_epoch"] for r in rows], 0.4, label="measured (run)", color="tab:blue")
    for i, r in enumerate(rows):
        ax_epoch.text(i, max(r["projected_s_per_epoch"], r["measured_s_per_epoch"]),
                      f"{r['epoch_ratio']:.2f}x", ha="center", va="bottom")
    ax_epoch.set_ylabel("seconds per epoch (label: projected / measured)")
    ax_total.bar(x - 0.27, [r["projected_s"] for r in rows], 0.27, label="projected upper bound", color="tab:orange")
    ax_total.bar(x, [r["rescaled_projection_s"] for r in rows], 0.27, label="projected at the epochs trained",
                 color="moccasin")
    ax_total.bar(x + 0.27, [r["measured_wall_s"] for r in rows], 0.27, label="measured wall", color="tab:blue")
    ax_total.set_ylabel("seconds for the run")
    for ax in (ax_epoch, ax_total):
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(f"harness plan vs a measured run ({rows[0]['machine']}, {rows[0]['date'][:10]}; "
                 f"{rows[0]['trials']} trials + {rows[0]['seeds']} seed(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="GUE-layout root, e.g. ../shared/data/gue")
    p.add_argument("--study", type=Path, default=REPO / "studies" / "gue.yaml")
    p.add_argument("--arms", default="unet_char,kmer_logreg")
    p.add_argument("--tasks", default="mouse/2")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--sample", type=int, default=256, help="sequences plan fits on (its default)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

    rows = []
    for arm in args.arms.split(","):
        for task in args.tasks.split(","):
            plan = projected(args.study, arm, task, args.data, args.trials, args.seeds, args.sample)
            with tempfile.TemporaryDirectory() as tmp:
                wall = run_harness(Path(tmp), args.study.read_text(), arm, task, args.trials, args.seeds,
                                   ("--device", "cpu", "--data", str(Path(args.data).resolve())))
                run = measured(Path(tmp), wall)
            epochs = run["trial_epochs"] + run["final_epochs"]
            row = {"arm": arm, "task": task, "trials": args.trials, "seeds": args.seeds, **plan, **run,
                   "epoch_ratio": plan["projected_s_per_epoch"] / run["measured_s_per_epoch"],
                   "rescaled_projection_s": plan["projected_s_per_epoch"] * epochs + run["overhead_s"],
                   "upper_bound_holds": plan["projected_s"] >= run["measured_training_s"],
                   "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
            rows.append(row)
            print(f"{arm} on {task}: s/epoch projected {row['projected_s_per_epoch']:.2f} vs measured "
                  f"{row['measured_s_per_epoch']:.2f} ({row['epoch_ratio']:.2f}x); epochs {epochs} of at most "
                  f"{row['projected_epochs']}; total projected {row['projected_s']:.0f} s (upper bound "
                  f"{'holds' if row['upper_bound_holds'] else 'EXCEEDED'}), at the epochs trained "
                  f"{row['rescaled_projection_s']:.0f} s, measured wall {wall:.0f} s "
                  f"(training {run['measured_training_s']:.0f} s)", flush=True)
    save(rows, args.out, "plan_vs_measured", plot)


if __name__ == "__main__":
    main()
