"""The report's figures: Demšar's cliques, and what each plotting function draws and writes."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from harness import figures

# Demšar (2006), section 3.2.2: four C4.5 variants over 14 data sets, Nemenyi CD = 1.25 at alpha 0.05.
DEMSAR = {"C4.5": 3.143, "C4.5+m": 2.000, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:4] == b"\x89PNG"
    image = mpimg.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the module closes, kept so that a test can look at what was drawn."""
    seen = []
    close = plt.close

    def keep(fig=None):
        seen.append(fig)
        close(fig)

    monkeypatch.setattr(figures.plt, "close", keep)
    return seen


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# -------------------------------------------------------------------------------------------- cliques
def test_cliques_demsar_example():
    # Rank order: m+cf 1.964, m 2.000, cf 2.893, C4.5 3.143; the widest spread 3.143 - 1.964 = 1.179 is
    # below CD = 1.25, so all four form one group (Demšar: no pair differs at alpha 0.05).
    assert figures.cliques(DEMSAR, 1.25) == [["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]]
    # At alpha 0.10 (CD = 1.12) C4.5 splits from the best two: 1.179 and 1.143 exceed 1.12, while
    # m+cf..cf spans 0.929 and cf..C4.5 spans 0.250.
    assert figures.cliques(DEMSAR, 1.12) == [["C4.5+m+cf", "C4.5+m", "C4.5+cf"], ["C4.5+cf", "C4.5"]]


def test_cliques_zero_cd_gives_none_and_huge_cd_gives_all():
    assert figures.cliques(DEMSAR, 0.0) == []
    assert figures.cliques({"a": 1.0, "b": 1.0}, 0.0) == []  # spread 0 is not < 0
    assert figures.cliques(DEMSAR, 100.0) == [["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]]


def test_cliques_not_finite_cd_gives_none():
    assert figures.cliques(DEMSAR, math.nan) == []
    assert figures.cliques(DEMSAR, math.inf) == []


def test_clique_contained_in_another_is_dropped():
    # From a: a, b, c (spread 1.0 < 1.5); from b: b, c, which lies inside the first; from c: c alone.
    ranks = {"c": 2.0, "a": 1.0, "b": 1.5, "d": 4.0}
    assert figures.cliques(ranks, 1.5) == [["a", "b", "c"]]


def test_cliques_boundary_is_strict():
    assert figures.cliques({"a": 1.0, "b": 2.0}, 1.0) == []
    assert figures.cliques({"a": 1.0, "b": 2.0}, 1.0001) == [["a", "b"]]


# ----------------------------------------------------------------------------------------- colours
def test_arm_colors_follow_sorted_names_and_default_cycle():
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    assert figures.arm_colors(["b", "c", "a"]) == {"a": cycle[0], "b": cycle[1], "c": cycle[2]}
    assert figures.arm_colors(["c", "a", "b", "a"]) == figures.arm_colors(["a", "b", "c"])


# -------------------------------------------------------------------------------------- CD diagram
def test_cd_diagram(tmp_path: Path, drawn: list):
    path = figures.critical_difference_diagram(DEMSAR, 1.25, tmp_path / "sub" / "cd.png", title="Demšar")
    assert path == tmp_path / "sub" / "cd.png"
    assert_png(path)
    (fig,) = drawn
    words = texts(fig)
    assert "CD = 1.25" in words
    assert "average rank (1 = best)" in words
    assert fig.axes[0].get_title() == "Demšar"
    assert sum(w.startswith("C4.5") for w in words) == 4
    assert sum(line.get_linewidth() == 4 for line in fig.axes[0].get_lines()) == 1  # one clique bar
    assert plt.get_fignums() == []


def test_cd_diagram_without_cd(tmp_path: Path, drawn: list):
    assert_png(figures.critical_difference_diagram(DEMSAR, math.nan, tmp_path / "cd.png", title="ranks"))
    (fig,) = drawn
    assert "CD not available" in fig.axes[0].get_title()
    assert not any(w.startswith("CD =") for w in texts(fig))
    assert not any(line.get_linewidth() == 4 for line in fig.axes[0].get_lines())


def test_cd_diagram_single_arm(tmp_path: Path):
    assert_png(figures.critical_difference_diagram({"only": 1.0}, 0.5, tmp_path / "cd.png"))


# ----------------------------------------------------------------------------------- scores by task
def finals(n_tasks: int, seeds: int, arms=("b", "a")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"arm": arm, "task": f"t{t}", "seed": s, "mcc": rng.uniform(0, 1)}
                         for arm in arms for t in range(n_tasks) for s in range(seeds)])


def test_scores_by_task(tmp_path: Path, drawn: list):
    assert_png(figures.scores_by_task(finals(6, 3), "mcc", tmp_path / "scores.png", title="s"))
    (fig,) = drawn
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"t{i}" for i in range(6)]
    assert ax.get_xticklabels()[0].get_rotation() == 45
    assert ax.get_ylabel() == "MCC"  # in words (figures.metric_label), not the column name
    assert legend_labels(ax) == ["a", "b"]
    assert len(ax.containers) == 2  # one set of ±SD bars per arm
    bars = np.concatenate([c.lines[2][0].get_segments() for c in ax.containers])
    assert len(bars) == 12
    data = finals(6, 3)
    sd = data[(data.arm == "a") & (data.task == "t0")]["mcc"].std(ddof=1)
    lengths = sorted(round(float(seg[1, 1] - seg[0, 1]) / 2, 9) for seg in bars)
    assert round(sd, 9) in lengths


def test_scores_by_task_single_seed_has_no_error_bars(tmp_path: Path, drawn: list):
    assert_png(figures.scores_by_task(finals(3, 1), "mcc", tmp_path / "scores.png"))
    ax = drawn[0].axes[0]
    assert ax.containers == []
    assert ax.get_xticklabels()[0].get_rotation() == 0  # few tasks: labels stay level


def test_scores_by_task_draws_no_bar_for_seeds_that_agree(tmp_path: Path, drawn: list):
    """A deterministic arm's seeds give one score: a zero-length bar would read as certainty, so none is drawn."""
    data = finals(2, 3).rename(columns={"mcc": "test_mcc"})
    data.loc[data["arm"] == "a", "test_mcc"] = 0.7
    figures.scores_by_task(data, "test_mcc", tmp_path / "scores.png")
    ax = drawn[0].axes[0]
    assert ax.get_ylabel() == "Test MCC"
    assert len(ax.containers) == 1  # b's bars only
    assert len(ax.containers[0].lines[2][0].get_segments()) == 2  # b's two tasks


def test_scores_by_task_width_is_capped(tmp_path: Path, drawn: list):
    figures.scores_by_task(finals(60, 1, arms=list("abcdefgh")), "mcc", tmp_path / "wide.png")
    assert drawn[0].get_size_inches()[0] == pytest.approx(30)


def test_scores_by_task_needs_the_metric(tmp_path: Path):
    with pytest.raises(ValueError, match="auc"):
        figures.scores_by_task(finals(2, 2), "auc", tmp_path / "x.png")


# ----------------------------------------------------------------------------- paired differences
DIFFS = pd.Series({"t1": 0.03, "t2": -0.02, "t3": 0.0, "t4": 0.01})


def test_paired_differences(tmp_path: Path, drawn: list):
    path = figures.paired_differences(DIFFS, "bpe", "kmer", "mcc", 0.005, (-0.01, 0.02), 0.01,
                                      tmp_path / "pd.png", title="pd")
    assert_png(path)
    ax = drawn[0].axes[0]
    assert ax.get_xlabel() == "MCC difference: bpe − kmer"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["t2", "t3", "t4", "t1"]  # sorted by difference
    labels = legend_labels(ax)
    assert {"ROPE ±0.01", "CI of median", "bpe higher", "kmer higher", "tie"} <= set(labels)
    assert any(label.startswith("median") for label in labels)


def test_paired_differences_nan_ci_and_no_rope(tmp_path: Path, drawn: list):
    path = figures.paired_differences(DIFFS[DIFFS > 0], "a", "b", "mcc", 0.02, (math.nan, 0.03), 0.0,
                                      tmp_path / "pd.png")
    assert_png(path)
    ax = drawn[0].axes[0]
    labels = legend_labels(ax)
    assert "CI of median" not in labels and not any(label.startswith("ROPE") for label in labels)
    assert "b higher" not in labels and "tie" not in labels  # only signs that occur
    assert len(ax.patches) == 0


# ---------------------------------------------------------------------------------- cost / benefit
def cost_points() -> pd.DataFrame:
    return pd.DataFrame({"arm": ["cnn"] * 3 + ["bpe"] * 2 + ["kmer"] * 2 + ["free"],
                         "task": ["t0", "t1", "t2", "t0", "t1", "t0", "t1", "t0"],
                         "score": [0.5, 0.6, 0.9, 0.6, 0.7, 0.4, 0.4, 0.3],
                         "cost": [1e3, 2e3, 4e3, 3e4, 5e4, 50.0, 60.0, 0.0]})


def test_cost_benefit_shows_tasks_as_points_and_each_arms_median(tmp_path: Path, drawn: list):
    points = cost_points()
    assert_png(figures.cost_benefit(points, "test_mcc", "Training time (s)", tmp_path / "cost.png", title="c"))
    fig = drawn[0]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "Training time (s)" and ax.get_ylabel() == "Test MCC"
    words = texts(fig)
    assert "no cost recorded: free" in words
    assert {"cnn", "bpe", "kmer"} <= set(words) and "free" not in words
    colors = figures.arm_colors(points["arm"])
    # One point per task, in the arm's colour: 3 + 2 + 2 placeable tasks.
    scatter = {c.get_label().split(":")[0]: c for c in ax.collections}
    assert {arm: len(c.get_offsets()) for arm, c in scatter.items()} == {"cnn": 3, "bpe": 2, "kmer": 2}
    for arm, c in scatter.items():
        assert matplotlib_color(c.get_facecolor()[0]) == matplotlib_color(colors[arm])
    # The median marker of each arm sits at its median cost and score.
    medians = {line.get_label().split(":")[0]: (line.get_xdata()[0], line.get_ydata()[0])
               for line in ax.get_lines() if line.get_marker() == "D"}
    assert medians == {"cnn": (2e3, 0.6), "bpe": (4e4, pytest.approx(0.65)), "kmer": (55.0, 0.4)}
    # Negative control: no error bars (an sd across tasks is not an uncertainty).
    assert ax.containers == []


def matplotlib_color(c) -> tuple:
    from matplotlib.colors import to_rgb

    return tuple(round(x, 3) for x in to_rgb(c))


def test_cost_benefit_without_any_cost(tmp_path: Path, drawn: list):
    points = pd.DataFrame({"arm": ["x", "y"], "task": ["t", "t"], "score": [0.5, 0.6], "cost": [math.nan, -1.0]})
    assert_png(figures.cost_benefit(points, "test_mcc", "FLOPs", tmp_path / "cost.png"))
    assert "no cost recorded: x, y" in texts(drawn[0])


# ------------------------------------------------------------------------------------- one run's figures
def test_metric_labels_are_words():
    assert [figures.metric_label(m) for m in ("test_mcc", "dev_mcc", "train_seconds", "flops")] == \
        ["Test MCC", "Dev MCC", "Training time (s)", "FLOPs"]
    assert figures.metric_label("something_new") == "something_new"  # not guessed at


def history(n: int) -> list:
    from harness.train import EpochResult

    return [EpochResult(e, 1.0 / e, {"mcc": 0.1 * e if e <= 3 else 0.2}, 1.0) for e in range(1, n + 1)]


def test_learning_curve_marks_the_selected_epoch(tmp_path: Path, drawn: list):
    assert_png(figures.learning_curve(history(5), tmp_path / "lc.png", "unet_char | toy/motif_binary | seed 0",
                                      selected_epoch=3))
    fig = drawn[0]
    ax, dev = fig.axes
    assert ax.get_title() == "unet_char | toy/motif_binary | seed 0"
    assert (ax.get_xlabel(), ax.get_ylabel(), dev.get_ylabel()) == ("Epoch", "Training loss", "Dev MCC")
    (marker,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(marker.get_xdata()) == [3, 3]
    assert "selected epoch 3 (best dev MCC)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_learning_curve_keeps_its_old_call(tmp_path: Path, drawn: list):
    """tuning.py's call without a selected epoch still works, and then marks nothing."""
    assert_png(figures.learning_curve(history(2), tmp_path / "lc.png", "t, seed 0"))
    ax = drawn[0].axes[0]
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert not any(t.get_text().startswith("selected") for t in drawn[0].legends[0].get_texts())


def test_confusion_matrix_labels_in_words(tmp_path: Path, drawn: list):
    assert_png(figures.confusion_matrix(np.array([[5, 1], [2, 7]]), tmp_path / "cm.png", "kmer_logreg | t | seed 0"))
    ax = drawn[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("Predicted class", "True class",
                                                                  "kmer_logreg | t | seed 0")


def test_optuna_history_names_its_axes_and_takes_a_title(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="smoke/unet_char/toy")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    seen = []
    monkeypatch.setattr(figures.plt, "close", lambda fig=None: seen.append(fig))
    assert_png(figures.optuna_history(study, tmp_path / "h.png", "unet_char | toy: tuning"))
    ax = seen[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("Trial", "Dev MCC", "unet_char | toy: tuning")
    assert_png(figures.optuna_history(study, tmp_path / "old.png"))  # the old two-argument call
    assert seen[1].axes[0].get_title().startswith("smoke/unet_char/toy")
    plt.close("all")
