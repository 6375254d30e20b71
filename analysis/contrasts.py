"""Named contrasts (arm A − arm B) and their evaluation over the tasks both arms completed.

The three questions of the study are asked by default, from the arms present:
  pretraining   dnabert2_pretrained − dnabert2_scratch, and every arm fine-tuned from a harness
                checkpoint (variant `arm@<sha>`) − its scratch twin `arm`;
  bpe           the BPE arm − the single-nucleotide arm of the same model, both from scratch;
  architecture  each transformer arm − each CNN arm with the same tokenizer, both from scratch.
A study file adds its own under `analysis: contrasts: [{a: ARM, b: ARM, name: ...}]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.schema import Init, Tag

from . import stats
from .collect import Results

DIFF_DECIMALS = 10  # float noise must not break ties between equal differences


@dataclass(frozen=True)
class Contrast:
    effect: str  # pretraining | bpe | architecture | user
    a: str
    b: str
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.effect}: {self.a} − {self.b}"


def default_contrasts(arms: pd.DataFrame) -> list[Contrast]:
    """The study's three questions over the arm variants present (index of `arms`)."""
    present = set(arms.index)
    scratch = arms[arms[Tag.INIT] != Init.PRETRAINED]
    out = []
    if {"dnabert2_pretrained", "dnabert2_scratch"} <= present:
        out.append(Contrast("pretraining", "dnabert2_pretrained", "dnabert2_scratch"))
    for variant, row in arms.iterrows():
        if variant != row[Tag.ARM] and row[Tag.ARM] in scratch.index:  # arm@<sha>: fine-tuned from a checkpoint
            out.append(Contrast("pretraining", variant, row[Tag.ARM]))
    for _, same_model in scratch.groupby(Tag.MODEL):
        for bpe in same_model.index[same_model[Tag.TOKENIZER] == "bpe"]:
            for char in same_model.index[same_model[Tag.TOKENIZER] == "char"]:
                out.append(Contrast("bpe", bpe, char))
    for _, same_tokens in scratch.groupby(Tag.TOKENIZER):
        for transformer in same_tokens.index[same_tokens[Tag.FAMILY] == "transformer"]:
            for cnn in same_tokens.index[same_tokens[Tag.FAMILY] == "cnn"]:
                out.append(Contrast("architecture", transformer, cnn))
    return out


def user_contrasts(declared: list[dict[str, str]]) -> list[Contrast]:
    return [Contrast("user", c["a"], c["b"], c.get("name", "")) for c in declared]


@dataclass
class Evaluation:
    contrast: Contrast
    row: dict  # one line of contrasts.csv
    diffs: pd.Series  # per task: mean(a) − mean(b)
    per_task: pd.DataFrame  # per task: the paired test over seeds


def evaluate(c: Contrast, results: Results, alpha: float, rope: float, seed: int = 0) -> Evaluation:
    cells = results.cells.set_index(["arm", "task"])
    tasks_a = set(results.cells.loc[results.cells["arm"] == c.a, "task"])
    tasks_b = set(results.cells.loc[results.cells["arm"] == c.b, "task"])
    common = sorted(tasks_a & tasks_b)
    left_out = [f"{t} (no {c.b})" for t in sorted(tasks_a - tasks_b)] + [f"{t} (no {c.a})" for t in sorted(tasks_b - tasks_a)]
    a = np.array([cells.loc[(c.a, t), "score_mean"] for t in common], dtype=float)
    b = np.array([cells.loc[(c.b, t), "score_mean"] for t in common], dtype=float)
    d = np.round(a - b, DIFF_DECIMALS)
    test = stats.signed_rank(d, alpha)
    lo, hi = stats.median_ci(d, seed=seed)
    p_a, p_equal, p_b = stats.bayesian_signed_rank(a, b, rope, seed) if len(d) >= 2 else (math.nan,) * 3
    row = {
        "contrast": c.label, "effect": c.effect, "a": c.a, "b": c.b, "metric": results.metric,
        "n_tasks": len(d), "tasks_left_out": "; ".join(left_out),
        "wins": int(np.sum(d > 0)), "ties": int(np.sum(d == 0)), "losses": int(np.sum(d < 0)),
        "median_difference": float(np.median(d)) if len(d) else math.nan, "ci_low": lo, "ci_high": hi,
        "mean_difference": float(np.mean(d)) if len(d) else math.nan,
        "wilcoxon_T": test.statistic, "r_plus": test.r_plus, "r_minus": test.r_minus, "n_zero": test.n_zero,
        "p": test.p, "p_holm": math.nan, "p_method": test.method, "note": test.note,
        "p_a_better": p_a, "p_equivalent": p_equal, "p_b_better": p_b, "rope": rope,
        **cost_columns(results.cells, c, common),
    }
    return Evaluation(c, row, pd.Series(d, index=common, name=c.label), per_task_tests(c, results, common, alpha))


def cost_columns(cells: pd.DataFrame, c: Contrast, tasks: list[str]) -> dict[str, float]:
    """The compute behind each side over the same tasks: mean per task, and pretraining where recorded."""
    out: dict[str, float] = {}
    for side, arm in (("a", c.a), ("b", c.b)):
        mine = cells[(cells["arm"] == arm) & cells["task"].isin(tasks)]
        out[f"{side}_compute_seconds"] = float(mine["compute_seconds"].mean()) if len(mine) else math.nan
        out[f"{side}_compute_flops"] = float(mine["compute_flops"].mean()) if len(mine) else math.nan
        pre = mine["pretrain_seconds"].dropna()
        out[f"{side}_pretrain_seconds"] = float(pre.iloc[0]) if len(pre) else math.nan
    out["compute_ratio"] = ratio(out["a_compute_seconds"], out["b_compute_seconds"])
    out["flops_ratio"] = ratio(out["a_compute_flops"], out["b_compute_flops"])
    return out


def ratio(x: float, y: float) -> float:
    return x / y if y and math.isfinite(x) and math.isfinite(y) and y > 0 and x > 0 else math.nan


def per_task_tests(c: Contrast, results: Results, tasks: list[str], alpha: float) -> pd.DataFrame:
    """Within each task: a paired t-test over the final seeds (paired by seed), Holm-adjusted over tasks."""
    runs = results.runs.set_index("seed")
    rows = []
    for task in tasks:
        mine = runs[runs["task"] == task]
        n, diff, t, p, note = stats.paired_t_over_seeds(mine.loc[mine["arm"] == c.a, results.metric],
                                                        mine.loc[mine["arm"] == c.b, results.metric])
        rows.append({"contrast": c.label, "task": task, "n_seeds": n, "mean_difference": diff, "t": t, "p": p,
                     "note": note})
    frame = pd.DataFrame(rows, columns=["contrast", "task", "n_seeds", "mean_difference", "t", "p", "note"])
    frame["p_holm"] = stats.holm(frame["p"].to_numpy()) if len(frame) else []
    frame["significant"] = frame["p_holm"] < alpha
    return frame


def adjust(evaluations: list[Evaluation]) -> None:
    """Holm across the contrasts of one report: the family is every contrast that has a p-value."""
    adjusted = stats.holm([e.row["p"] for e in evaluations])
    for e, p in zip(evaluations, adjusted):
        e.row["p_holm"] = float(p)


PHRASES = {"pretraining": "pretraining", "bpe": "BPE tokens (vs single nucleotides)",
           "architecture": "the transformer (vs the CNN)", "user": "{name}"}


def sentence(row: dict, alpha: float) -> str:
    """One plain sentence per contrast, e.g. 'pretraining improved MCC on 9 of 12 tasks, median
    +0.031 [0.012, 0.050], Holm p = 0.004'."""
    what = PHRASES[row["effect"]].format(name=row["contrast"])
    metric = row["metric"].removeprefix("test_").upper()
    if row["n_tasks"] == 0:
        return f"{row['a']} vs {row['b']}: no task completed by both arms."
    n, med = row["n_tasks"], row["median_difference"]
    if med > 0:
        result = f"improved {metric} on {row['wins']} of {n} tasks"
    elif med < 0:
        result = f"lowered {metric} on {row['losses']} of {n} tasks"
    else:
        result = f"left the median {metric} unchanged ({row['wins']} better, {row['losses']} worse of {n} tasks)"
    ci = (f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]" if math.isfinite(row["ci_low"]) else
          " (too few tasks for a confidence interval)")
    text = f"{what} ({row['a']} vs {row['b']}) {result}, median {med:+.3f}{ci}"
    if math.isfinite(row["p_holm"]):
        verdict = "significant" if row["p_holm"] < alpha else "not significant"
        text += f", Holm p = {row['p_holm']:.3g} ({verdict} at {alpha:g})"
    else:
        text += f"; no p-value: {row['note']}"
    if math.isfinite(row["p_a_better"]):
        text += (f"; P({row['a']} better) = {row['p_a_better']:.2f}, P(equivalent within ±{row['rope']:g}) = "
                 f"{row['p_equivalent']:.2f}, P({row['b']} better) = {row['p_b_better']:.2f}")
    if math.isfinite(row["compute_ratio"]):
        text += f"; it costs {row['compute_ratio']:.2g}x the fine-tuning compute"
        if math.isfinite(row["a_pretrain_seconds"]):
            text += f" plus {duration(row['a_pretrain_seconds'])} of pretraining"
    return text + "."


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
