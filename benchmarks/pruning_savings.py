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
import csv
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tune(arm: str, task: str, trials: int, pruning: bool, folder: Path) -> dict[str, float]:
    import optuna

    spec = (REPO / "studies" / "smoke.yaml").read_text()
    if not pruning:
        spec = "\n".join("pruner: none" if line.startswith("pruner:") else line for line in spec.splitlines())
    (folder / "study.yaml").write_text(spec)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db", MLFLOW_DISABLE_TELEMETRY="true")
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "harness", "run", "--arm", arm, "--tasks", task, "--study",
                    str(folder / "study.yaml"), "--n-trials", str(trials), "--seeds", "1",
                    "--storage", f"sqlite:///{folder}/optuna.db"], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
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
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "pruning_savings.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
