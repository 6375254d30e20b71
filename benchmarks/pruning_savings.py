"""Epochs that median pruning saves on the smoke study, and the best dev MCC with and without it.

Runs the smoke study's tuning for one arm and task twice in fresh folders — as the study file says
(median pruning) and with `pruner: none` — with the same sampler seed and trial budget, then reads the
Optuna storage: epochs trained over all trials (early stopping applies to both), the best dev MCC, and
the wall time of tuning.

    python benchmarks/pruning_savings.py                                   # unet_char, motif_binary, 12 trials
    python benchmarks/pruning_savings.py --arm dnabert2_scratch --trials 20

Writes `<out>/pruning_savings.csv` (appended: one row per run configuration).
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

from harness_runs import REPO, append_csv, run_harness, smoke_study


def tune(arm: str, task: str, trials: int, pruning: bool, folder: Path) -> dict[str, float]:
    import optuna

    wall = run_harness(folder, smoke_study() if pruning else smoke_study(pruner="none"), arm, task, trials, seeds=1)
    study = optuna.load_study(study_name=f"smoke/{arm}/{task}", storage=f"sqlite:///{folder}/optuna.db")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    return {"pruning": pruning, "trials": len(finished), "pruned": sum(t.state.name == "PRUNED" for t in finished),
            "epochs": sum(len(t.intermediate_values) for t in finished), "best_dev_mcc": study.best_value,
            "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", default="unet_char")
    p.add_argument("--task", default="synthetic/motif_binary")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    rows = []
    for pruning in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append({"arm": args.arm, "task": args.task, **tune(args.arm, args.task, args.trials, pruning, Path(tmp)),
                         "date": datetime.datetime.now().isoformat(timespec="seconds")})
        r = rows[-1]
        print(f"pruning {'on ' if pruning else 'off'}: {r['trials']} trials ({r['pruned']} pruned), {r['epochs']} "
              f"epochs, best dev MCC {r['best_dev_mcc']:.4f}, {r['wall_s']:.0f} s", flush=True)
    on, off = rows
    print(f"median pruning saved {off['epochs'] - on['epochs']} of {off['epochs']} epochs "
          f"({1 - on['epochs'] / off['epochs']:.0%}); best dev MCC {on['best_dev_mcc']:.4f} with vs "
          f"{off['best_dev_mcc']:.4f} without (difference {on['best_dev_mcc'] - off['best_dev_mcc']:+.4f})")
    append_csv(args.out / "pruning_savings.csv", rows)
    print(f"wrote {args.out / 'pruning_savings.csv'}")


if __name__ == "__main__":
    main()
