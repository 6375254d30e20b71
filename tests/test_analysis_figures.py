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
    assert ax.get_ylabel() == "mcc"
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
    assert ax.get_xlabel() == "mcc: bpe − kmer"
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
def test_cost_benefit(tmp_path: Path, drawn: list):
    summary = pd.DataFrame({"arm": ["cnn", "bpe", "kmer", "free"], "score_mean": [0.5, 0.6, 0.4, 0.3],
                            "score_sd": [0.02, math.nan, 0.01, 0.1], "cost": [1e3, 3e4, 50.0, 0.0]})
    assert_png(figures.cost_benefit(summary, "mcc", "GPU seconds", tmp_path / "cost.png", title="c"))
    fig = drawn[0]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "GPU seconds" and ax.get_ylabel() == "mcc"
    words = texts(fig)
    assert "no cost recorded: free" in words
    assert {"cnn", "bpe", "kmer"} <= set(words) and "free" not in words
    colors = figures.arm_colors(summary["arm"])
    point_colors = {line.get_color() for line in ax.get_lines() if line.get_marker() == "o"}
    assert point_colors == {colors["cnn"], colors["bpe"], colors["kmer"]}


def test_cost_benefit_without_any_cost(tmp_path: Path, drawn: list):
    summary = pd.DataFrame({"arm": ["x", "y"], "score_mean": [0.5, 0.6], "score_sd": [0.1, 0.1],
                            "cost": [math.nan, -1.0]})
    assert_png(figures.cost_benefit(summary, "mcc", "FLOPs", tmp_path / "cost.png"))
    assert "no cost recorded: x, y" in texts(drawn[0])
