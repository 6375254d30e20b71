"""Trials per hour with 1 and with N workers sharing one study, and the tracking overhead per trial.

For each worker count, in a fresh folder: N processes run the same `python -m harness run` command on
one (arm, task) of the smoke study against one Optuna storage (sqlite by default, `--storage` for a
PostgreSQL URL) and one MLflow sqlite store. Measured from the storage afterwards:

  - trials per hour: finished trials / (last trial's end − first trial's start), so process start-up and
    the final seeds do not count;
  - overhead per trial: a trial's wall time (Optuna's start and end) minus the seconds its training loop
    reported (`train_seconds`): MLflow run, params and per-epoch metrics, Optuna bookkeeping, data set-up.

And, apart from any training, the cost of the MLflow calls one trial makes (a nested run, its params,
`--epochs` rounds of per-epoch metrics, tags, end) against a fresh sqlite store, median of 20.

    python benchmarks/workers_scaling.py                       # 1 vs 3 workers, 12 trials, unet_char
    python benchmarks/workers_scaling.py --workers 1,2,4 --storage postgresql+psycopg2://user@host/db

Appends to `<out>/workers_scaling.csv` and writes `<out>/workers_scaling_<workers>w_<threads>t.png`. On a machine with fewer cores than workers the ratio
measures contention, not the harness: the output says how many cores there were. Each worker gets
OMP_NUM_THREADS = cores // workers, as several workers on one machine should.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_workers(n: int, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    import optuna
    from mlflow.tracking import MlflowClient

    storage = args.storage or f"sqlite:///{folder}/optuna.db"
    tracking = f"sqlite:///{folder}/mlflow.db"
    optuna.storages.RDBStorage(storage)  # create the schemas before the workers race to
    MlflowClient(tracking).search_experiments()
    study_name = f"{args.study_prefix}{n}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    # Workers on one machine share its cores: each gets its share of threads, as users should do too
    # (torch's default, one thread per core in every process, thrashes).
    threads = str(args.threads_per_worker or max(1, (os.cpu_count() or 1) // n))
    env.update(MLFLOW_TRACKING_URI=tracking, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS=threads)
    spec = (REPO / "studies" / "smoke.yaml").read_text().replace("name: smoke", f"name: {study_name}")
    (folder / "study.yaml").write_text(spec)
    cmd = [sys.executable, "-m", "harness", "run", "--arm", args.arm, "--tasks", args.task, "--study",
           str(folder / "study.yaml"), "--n-trials", str(args.trials), "--seeds", "1", "--storage", storage]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, cwd=folder, env=env, stdout=open(folder / f"w{i}.log", "w"),
                              stderr=subprocess.STDOUT) for i in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - start
    if any(codes):
        raise SystemExit(f"a worker failed: see {folder}/w*.log")
    study = optuna.load_study(study_name=f"{study_name}/{args.arm}/{args.task}", storage=storage)
    trials = [t for t in study.trials if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    client = MlflowClient(tracking)
    runs = {r.info.run_id: r for r in client.search_runs(
        [client.get_experiment_by_name(study_name).experiment_id], "tags.stage = 'trial'", max_results=1000)}
    overheads = [(t.datetime_complete - t.datetime_start).total_seconds()
                 - runs[t.user_attrs["mlflow_run_id"]].data.metrics["train_seconds"]
                 for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("mlflow_run_id") in runs]
    return {"workers": n, "trials": len(trials), "span_s": span, "wall_s": wall,
            "trials_per_hour": 3600 * len(trials) / span,
            "overhead_per_trial_s": statistics.median(overheads) if overheads else float("nan"),
            "workers_seen": len({t.user_attrs.get("worker") for t in study.trials})}


def mlflow_calls_per_trial(epochs: int, repeats: int = 20) -> float:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/m.db")
        mlflow.set_experiment("overhead")
        times = []
        with mlflow.start_run():
            for _ in range(repeats):
                t0 = time.perf_counter()
                with mlflow.start_run(nested=True, tags={"stage": "trial", "trial_number": "0"}):
                    mlflow.log_params({"lr": 1e-3, "weight_decay": 0.01, "dropout": 0.1, "batch_size": 32})
                    for e in range(1, epochs + 1):
                        mlflow.log_metrics({"train_loss": 0.5, "epoch_seconds": 1.0, "dev_mcc": 0.5, "dev_f1": 0.5,
                                            "dev_accuracy": 0.5, "dev_auroc": 0.5}, step=e)
                    mlflow.log_metrics({"best_dev_mcc": 0.5, "best_epoch": 3, "params": 1e6, "train_seconds": 9.0,
                                        "flops": 1e12})
                    mlflow.set_tags({"trial_state": "COMPLETE"})
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,3")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--arm", default="unet_char")
    p.add_argument("--task", default="synthetic/motif_binary")
    p.add_argument("--storage", default="", help="an Optuna storage URL (default: a fresh sqlite file per run)")
    p.add_argument("--study-prefix", default="scaling", help="study name prefix (distinct per run on a shared DB)")
    p.add_argument("--epochs", type=int, default=5, help="per-epoch metric rounds in the MLflow-only measurement")
    p.add_argument("--threads-per-worker", type=int, default=0,
                   help="OMP_NUM_THREADS of each worker (default: cores // workers); 1 with as many workers as "
                        "cores measures how the harness scales when each worker has a core of its own")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    rows = []
    for n in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_workers(n, args, Path(tmp))
        rows.append(row)
        print(f"{n} worker(s): {row['trials']} trials in {row['span_s']:.1f} s = {row['trials_per_hour']:.0f} "
              f"trials/h (wall {row['wall_s']:.1f} s incl. start-up and the final seed); overhead per trial "
              f"{row['overhead_per_trial_s']:.2f} s; {row['workers_seen']} worker(s) ran trials", flush=True)
    mlflow_s = mlflow_calls_per_trial(args.epochs)
    base = rows[0]["trials_per_hour"]
    for row in rows:
        row.update(scaling_vs_first=row["trials_per_hour"] / base, mlflow_calls_per_trial_s=mlflow_s,
                   threads_per_worker=args.threads_per_worker or max(1, (os.cpu_count() or 1) // row["workers"]),
                   cores=os.cpu_count(), arm=args.arm, task=args.task,
                   storage="sqlite" if not args.storage else args.storage.split(":")[0],
                   date=datetime.datetime.now().isoformat(timespec="seconds"))
        print(f"{row['workers']} worker(s): {row['scaling_vs_first']:.2f}x the trials per hour of "
              f"{rows[0]['workers']} worker(s)")
    print(f"MLflow calls of one trial ({args.epochs} epochs), nothing else: {mlflow_s * 1000:.0f} ms "
          f"(median of 20); {os.cpu_count()} CPU cores")

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "workers_scaling.csv", "a", newline="") as f:  # one file, every configuration
        new = f.tell() == 0
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([str(r["workers"]) for r in rows], [r["trials_per_hour"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['scaling_vs_first']:.2f}x", (i, r["trials_per_hour"]), ha="center", va="bottom")
    ax.set_xlabel(f"workers on one study ({os.cpu_count()} CPU cores)")
    ax.set_ylabel("finished trials per hour")
    ax.set_title(f"{args.arm} on {args.task}, smoke study")
    tag = f"{'-'.join(str(r['workers']) for r in rows)}w_{args.threads_per_worker or 'share'}t"
    fig.savefig(args.out / f"workers_scaling_{tag}.png", dpi=150, bbox_inches="tight")
    print(f"wrote {args.out / 'workers_scaling.csv'} (appended) and {args.out / f'workers_scaling_{tag}.png'}")


if __name__ == "__main__":
    main()
