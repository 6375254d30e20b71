"""Every figure the harness draws (PNG): a run's confusion matrix, learning curve and tuning history, and
a report's critical-difference diagram, scores per task, paired differences and cost, and the leakage report's
task x task heat map.

Each function draws one figure, saves it, closes it and returns the path, so a report can build many figures
without holding them in memory. Arms keep one colour across a report's figures: `arm_colors` hands out the
default colour cycle in sorted-name order. Axes and titles say what they show in words (`metric_label`: test_mcc
-> "Test MCC"), which the report's tables use too.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # reports are built headless (CI, remote machines): never ask for a display

# pyplot must be imported after the backend is chosen; the other imports join it here.
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 150
MAX_WIDTH_IN = 30.0  # wider PNGs are unreadable in a report and huge on disk
# Sign colours of the paired-differences plot; kept apart from the arm colours on purpose, since a
# difference belongs to a pair of arms, not to one.
POSITIVE, NEGATIVE, ZERO = "tab:blue", "tab:red", "tab:gray"


def arm_colors(arms: Iterable[str]) -> dict[str, str]:
    """One colour per arm from the default cycle, handed out in sorted-name order (stable across figures)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {arm: cycle[i % len(cycle)] for i, arm in enumerate(sorted(set(arms)))}


@contextmanager
def _new_figure(figsize: tuple[float, float]) -> Iterator[tuple[Figure, Axes]]:
    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield fig, ax
    finally:
        plt.close(fig)  # also on errors, so a failing report does not leak figures


def _finish(fig: Figure, ax: Axes, path: Path, title: str, footnote: str) -> Path:
    """Title, a small note under the x label (what the plot leaves out), then save."""
    if footnote:
        ax.annotate(footnote, xy=(0.5, 0), xycoords=ax.xaxis.label, xytext=(0, -6), textcoords="offset points",
                    ha="center", va="top", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(frame.columns)}")


# ------------------------------------------------------------------------------------ words, not names
# What a reader sees instead of a metric's or a column's name: the one place such labels are made (figures and
# report.md tables). A name without an entry is shown as it is rather than guessed at.
LABELS = {
    "test_mcc": "Test MCC", "test_f1": "Test F1", "test_accuracy": "Test accuracy", "test_auroc": "Test AUROC",
    "dev_mcc": "Dev MCC", "best_dev_mcc": "Best dev MCC", "mcc": "MCC", "train_loss": "Training loss",
    "train_seconds": "Training time (s)", "compute_seconds": "Compute time (s)", "flops": "FLOPs",
    "compute_flops": "FLOPs", "params": "Parameters", "n_parameters": "Parameters", "epoch": "Epoch",
}


def metric_label(name: str) -> str:
    """`test_mcc` -> 'Test MCC', `train_seconds` -> 'Training time (s)'; an unknown name is returned unchanged."""
    return LABELS.get(name, name)


# ------------------------------------------------------------------------------------ one run's figures
def confusion_matrix(cm: np.ndarray, path: Path, title: str) -> Path:
    """Counts of (true, predicted) class on test; `title` names the arm, the task and the seed."""
    size = max(3.6, 0.6 * len(cm) + 1.8)
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(cm, cmap="Blues")
        for (i, j), n in np.ndenumerate(cm):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black")
        ax.set(xlabel="Predicted class", ylabel="True class", xticks=range(len(cm)), yticks=range(len(cm)))
        ax.set_title(title, fontsize=9)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
    return path


def learning_curve(history: list, path: Path, title: str, selected_epoch: int | None = None) -> Path:
    """Training loss and dev MCC per epoch of one fit (`train.EpochResult`s); `title` names the arm, the task
    and the seed. `selected_epoch` (FitResult.best_epoch: the checkpoint kept, chosen on dev MCC) is marked by
    a vertical line, so a reader sees which epoch the test score comes from."""
    epochs = [r.epoch for r in history]
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(epochs, [r.train_loss for r in history], "o-", color="tab:red", label="training loss")
        ax.set(xlabel="Epoch", ylabel="Training loss", title=title)
        ax.title.set_fontsize(9)
        ax2 = ax.twinx()
        ax2.plot(epochs, [r.dev["mcc"] for r in history], "s-", color="tab:blue", label="dev MCC")
        ax2.set_ylabel("Dev MCC")
        if selected_epoch:  # 0 or None: nothing was selected (a fit without epochs)
            ax.axvline(selected_epoch, color="black", ls="--", lw=1,
                       label=f"selected epoch {selected_epoch} (best dev MCC)")
        fig.legend(loc="lower center", ncol=3, fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return path


def optuna_history(study, path: Path, title: str = "") -> Path:
    """Optuna's optimisation history of a cell's tuning: every trial's dev MCC and the best so far. `title`
    should name the arm and the task; by default the Optuna study's name (study/arm variant/task)."""
    import warnings

    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    # Optuna's plots switch matplotlib to its own style; the context restores ours afterwards.
    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(study, target_name="Dev MCC")
        ax.set_xlabel("Trial")
        ax.set_ylabel("Dev MCC")
        ax.set_title(title or f"{study.study_name}: tuning history (dev MCC per trial)", fontsize=9)
        ax.figure.set_size_inches(7, 3.5)
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
    return path

# ------------------------------------------------------------------------ critical-difference diagram
def _rank_order(avg_ranks: dict[str, float]) -> list[tuple[str, float]]:
    ranks = [(str(arm), float(r)) for arm, r in avg_ranks.items()]
    bad = [arm for arm, r in ranks if not math.isfinite(r)]
    if bad:
        raise ValueError(f"average ranks must be finite; not so for {bad}")
    # Name breaks ties so that the drawing does not depend on the dict's order.
    return sorted(ranks, key=lambda item: (item[1], item[0]))


def cliques(avg_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Groups of arms whose average ranks lie within `cd` of each other (Demšar 2006), best rank first.

    A clique is a maximal run of consecutive arms in rank order with max - min rank < cd; single arms
    and runs contained in another clique are left out. A NaN or infinite `cd` gives no cliques.
    """
    if not math.isfinite(cd):
        return []
    order = _rank_order(avg_ranks)
    runs: list[list[str]] = []
    for i, (_, start) in enumerate(order):
        j = i
        while j + 1 < len(order) and order[j + 1][1] - start < cd:
            j += 1
        runs.append([arm for arm, _ in order[i:j + 1]])
    # Runs are contiguous in rank order, so containment is a subset test on their members.
    found: list[list[str]] = []
    for run in runs:
        if len(run) < 2 or run in found:
            continue
        if any(set(run) < set(other) for other in runs):
            continue
        found.append(run)
    return found


def _stack_rows(spans: list[tuple[float, float]], gap: float) -> list[int]:
    """Row of each span such that spans sharing a row do not overlap (greedy, in the given order)."""
    row_ends: list[float] = []
    rows = []
    for lo, hi in spans:
        for row, end in enumerate(row_ends):
            if lo > end + gap:
                row_ends[row] = hi
                rows.append(row)
                break
        else:
            row_ends.append(hi)
            rows.append(len(row_ends) - 1)
    return rows


def critical_difference_diagram(avg_ranks: dict[str, float], cd: float, path: Path, title: str = "") -> Path:
    """Demšar's CD diagram: arms on an average-rank axis (rank 1, the best, on the left), the critical
    difference as a bar above the axis and thick lines joining arms that are not significantly different.
    """
    order = _rank_order(avg_ranks)
    if not order:
        raise ValueError("no arms to draw")
    k = len(order)
    has_cd = math.isfinite(cd)
    groups = cliques(avg_ranks, cd) if has_cd else []
    rank_of = dict(order)
    colors = arm_colors(rank_of)

    lo, hi = 1.0, float(max(k, 2))  # a single arm still gets an axis to sit on
    lo, hi = min(lo, order[0][1]), max(hi, order[-1][1])
    span = hi - lo
    # Vertical layout in data units; one unit is drawn as `unit_in` inches, so rows of text keep
    # their spacing whatever k is.
    unit_in = 0.5
    clique_step, name_step = 0.18, 0.45
    pad = 0.015 * span
    clique_rows = _stack_rows([(rank_of[g[0]] - pad, rank_of[g[-1]] + pad) for g in groups], gap=2 * pad)
    clique_depth = 0.25 + clique_step * (max(clique_rows) if clique_rows else -1)
    first_name = -(clique_depth + 0.35)
    n_left = math.ceil(k / 2)  # the better half is named on the left, where its ranks are
    bottom = first_name - name_step * (max(n_left, k - n_left) - 1) - 0.3
    top = 1.75 if has_cd else 1.0
    width = min(MAX_WIDTH_IN, max(6.0, 0.9 * k + 3))

    with _new_figure((width, (top - bottom) * unit_in)) as (fig, ax):
        ax.set_axis_off()
        x_left, x_right = lo - 0.08 * span - 0.1, hi + 0.08 * span + 0.1
        ax.set_xlim(x_left, x_right)
        ax.set_ylim(bottom, top)

        ax.plot([lo, hi], [0, 0], color="black", lw=1.2, clip_on=False)
        for t in np.arange(lo, hi + 1e-9, 0.5):
            whole = float(t).is_integer()
            ax.plot([t, t], [0, 0.1 if whole else 0.05], color="black", lw=1, clip_on=False)
            if whole:
                ax.text(t, 0.15, f"{int(t)}", ha="center", va="bottom", fontsize=10)
        ax.text((lo + hi) / 2, 0.6, "average rank (1 = best)", ha="center", va="bottom", fontsize=10)

        if has_cd:
            y_cd = 1.2
            ax.plot([lo, lo + cd], [y_cd, y_cd], color="black", lw=1.5, clip_on=False)
            for end in (lo, lo + cd):
                ax.plot([end, end], [y_cd - 0.07, y_cd + 0.07], color="black", lw=1.5, clip_on=False)
            ax.text(lo + cd / 2, y_cd + 0.12, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=10)

        for i, (arm, r) in enumerate(order):
            # Left names: the best arm drops least; right names: the worst drops least. Either way no
            # horizontal leader crosses another arm's vertical line.
            if i < n_left:
                y, x_end, ha = first_name - name_step * i, x_left, "right"
            else:
                y, x_end, ha = first_name - name_step * (k - 1 - i), x_right, "left"
            ax.plot([r, r, x_end], [0, y, y], color=colors[arm], lw=1.2, clip_on=False)
            ax.text(x_end + (-0.02 if ha == "right" else 0.02) * span, y, f"{arm} ({r:.2f})",
                    ha=ha, va="center", fontsize=10, color=colors[arm])

        for group, row in zip(groups, clique_rows):
            y = -(0.25 + clique_step * row)
            ax.plot([rank_of[group[0]] - pad, rank_of[group[-1]] + pad], [y, y], color="black", lw=4,
                    solid_capstyle="round", clip_on=False)

        if not has_cd:
            title = f"{title} (CD not available)" if title else "CD not available"
        return _finish(fig, ax, path, title, "")


# ------------------------------------------------------------------------------------ scores per task
def scores_by_task(finals: pd.DataFrame, metric: str, path: Path, title: str = "") -> Path:
    """Every seed's score (small dots) and the mean ± 1 SD (ddof=1) of each arm, task by task."""
    _require(finals, ["arm", "task", "seed", metric], "finals")
    data = finals[["arm", "task", "seed", metric]].copy()
    data[metric] = pd.to_numeric(data[metric], errors="coerce")
    data = data[np.isfinite(data[metric])]
    if data.empty:
        raise ValueError(f"no finite {metric} values to plot")
    tasks = sorted(data["task"].astype(str).unique())
    arms = sorted(data["arm"].astype(str).unique())
    data["task"], data["arm"] = data["task"].astype(str), data["arm"].astype(str)
    colors = arm_colors(arms)
    n_tasks, n_arms = len(tasks), len(arms)
    width = min(MAX_WIDTH_IN, max(6.0, 0.9 * n_tasks * max(1.0, n_arms / 4)))
    slot = 0.8 / n_arms  # the arms of one task share 80% of the gap between tasks
    x_of_task = {t: i for i, t in enumerate(tasks)}

    with _new_figure((width, 4.5)) as (fig, ax):
        for j, arm in enumerate(arms):
            offset = (j - (n_arms - 1) / 2) * slot
            rows = data[data["arm"] == arm]
            ax.scatter(rows["task"].map(x_of_task) + offset, rows[metric], s=12, alpha=0.35,
                       color=colors[arm], linewidths=0, zorder=2)
            per_task = rows.groupby("task")[metric].agg(["mean", "std", "count"])
            per_task["distinct"] = rows.groupby("task")[metric].agg(lambda v: v.round(12).nunique())
            x = per_task.index.map(x_of_task).to_numpy(float) + offset
            ax.plot(x, per_task["mean"], "o", ms=7, color=colors[arm], label=arm, zorder=3)
            # A single seed, or seeds that all gave the same score (a deterministic solver), has no spread:
            # a zero-length (or NaN) bar would read as certainty.
            spread = per_task["std"].notna().to_numpy() & (per_task["distinct"] > 1).to_numpy()
            if spread.any():
                ax.errorbar(x[spread], per_task["mean"][spread], yerr=per_task["std"][spread], fmt="none",
                            ecolor=colors[arm], elinewidth=1.2, capsize=3, zorder=3)
        ax.set_xticks(range(n_tasks))
        if n_tasks > 4:
            ax.set_xticklabels(tasks, rotation=45, ha="right")
        else:
            ax.set_xticklabels(tasks)
        ax.set_xlim(-0.6, n_tasks - 0.4)
        ax.set_ylabel(metric_label(metric))
        ax.grid(axis="y", alpha=0.3)
        # Outside the axes: with many tasks any inside spot would hide some points.
        ax.legend(title="arm", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        return _finish(fig, ax, path, title, "")


# ------------------------------------------------------------------------------- paired differences
def paired_differences(diffs: pd.Series, a: str, b: str, metric: str, median: float,
                       ci: tuple[float, float], rope: float, path: Path, title: str = "") -> Path:
    """Per-task difference a − b (tasks sorted by it), with zero, the ROPE, the median and its CI."""
    d = pd.to_numeric(pd.Series(diffs), errors="coerce")
    d.index = d.index.astype(str)
    missing = sorted(d.index[d.isna()])
    d = d.dropna().sort_values(kind="stable")
    height = min(MAX_WIDTH_IN, max(3.0, 0.3 * len(d) + 1.5))

    with _new_figure((7.0, height)) as (fig, ax):
        if rope > 0:
            ax.axvspan(-rope, rope, color="0.85", alpha=0.6, lw=0, label=f"ROPE ±{rope:g}", zorder=0)
        lo, hi = ci
        if math.isfinite(median) and math.isfinite(lo) and math.isfinite(hi):
            ax.axvspan(lo, hi, color="tab:orange", alpha=0.2, lw=0, label="CI of median", zorder=1)
        ax.axvline(0, color="black", lw=1, zorder=1)
        if math.isfinite(median):
            ax.axvline(median, color="tab:orange", lw=1.5, ls="--", label=f"median {median:+.3g}", zorder=2)

        y = np.arange(len(d))
        values = d.to_numpy(float)
        for mask, color, label in ((values > 0, POSITIVE, f"{a} higher"), (values < 0, NEGATIVE, f"{b} higher"),
                                   (values == 0, ZERO, "tie")):
            if mask.any():
                ax.scatter(values[mask], y[mask], color=color, s=30, label=label, zorder=3)
        ax.set_yticks(y)
        ax.set_yticklabels(d.index)
        ax.set_ylim(-0.7, max(len(d), 1) - 0.3)
        ax.set_xlabel(f"{metric_label(metric)} difference: {a} − {b}")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=9)
        return _finish(fig, ax, path, title, f"no difference recorded: {', '.join(missing)}" if missing else "")


# ------------------------------------------------------------------------------------- cost/benefit
def cost_benefit(points: pd.DataFrame, metric: str, cost_label: str, path: Path, title: str = "") -> Path:
    """Score against cost (log axis), one small point per (arm, task) in the arm's colour and a large marker
    at the arm's median over its tasks, named. `points` has columns arm, task, score, cost. The spread of the
    points is how tasks differ, not uncertainty, so it is shown as the points themselves rather than as a bar."""
    _require(points, ["arm", "task", "score", "cost"], "points")
    data = points.copy()
    data["arm"] = data["arm"].astype(str)
    for column in ("score", "cost"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    colors = arm_colors(data["arm"])  # every arm, so colours match the figures that do show the others
    placeable = np.isfinite(data["cost"]) & (data["cost"] > 0) & np.isfinite(data["score"])  # log axis
    shown = data[placeable]
    left_out = sorted(set(data["arm"]) - set(shown["arm"]))

    with _new_figure((6.5, 4.5)) as (fig, ax):
        for arm, mine in shown.groupby("arm", sort=True):
            ax.scatter(mine["cost"], mine["score"], s=18, alpha=0.5, color=colors[arm], linewidths=0,
                       label=f"{arm}: one point per task", zorder=2)
            median_cost, median_score = float(mine["cost"].median()), float(mine["score"].median())
            ax.plot([median_cost], [median_score], "D", ms=9, color=colors[arm], markeredgecolor="black",
                    label=f"{arm}: median over {len(mine)} tasks", zorder=3)
            ax.annotate(arm, (median_cost, median_score), xytext=(6, 6), textcoords="offset points",
                        fontsize=9, color=colors[arm])
        ax.set_xscale("log")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(metric_label(metric))
        ax.grid(alpha=0.3, which="both")
        if len(shown):
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
        return _finish(fig, ax, path, title, f"no cost recorded: {', '.join(left_out)}" if left_out else "")


# ------------------------------------------------------------------------------------------- leakage
def leakage_heatmap(counts: pd.DataFrame, sizes: pd.Series, path: Path,
                    title: str = "Sequences of a task found in another (exact or inside, either strand)") -> Path:
    """Task x task: the share of the row task's sequences (all splits) that equal or lie inside a sequence of
    the column task, coloured by that share and annotated with the count (`leakage.leakage_table`)."""
    share = counts.div(sizes.reindex(counts.index), axis=0).to_numpy(dtype=float)
    n = len(counts)
    with _new_figure((max(5.0, 0.9 * n + 2.5), max(4.0, 0.8 * n + 1.5))) as (fig, ax):
        image = ax.imshow(share, cmap="Reds", vmin=0, vmax=max(share.max(), 1e-9))
        for (i, j), value in np.ndenumerate(counts.to_numpy()):
            if value:  # an empty cell says "none" more plainly than a 0
                ax.text(j, i, f"{value:,}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 * share.max() else "black")
        ax.set_xticks(range(n), counts.columns, rotation=45, ha="right")
        ax.set_yticks(range(n), counts.index)
        ax.set_xlabel("found in (task b, any split)")
        ax.set_ylabel("sequences of (task a, all splits)")
        fig.colorbar(image, ax=ax, label="share of task a's sequences")
        return _finish(fig, ax, path, title, "diagonal: another sequence of the same task (duplicates across "
                       "or within splits)")
