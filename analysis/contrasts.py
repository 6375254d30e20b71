"""Named contrasts (arm A − arm B) and their evaluation over the tasks where they compare like with like.

The study's questions are asked by default, from the arm variants present. Each contrast varies only the
factors its question is about (schema.FACTORS, recorded on every parent run); on each task every other factor
must be equal, or the task is left out with the factor that differs (exclusions.csv), and a contrast with no
such task is not evaluated:
  pretraining        a variant trained from a checkpoint − a scratch variant of the same model, tokenizer kind
                     and mode (e.g. dnabert2_pretrained − dnabert2_scratch~<sha>, its twin: the checkpoint's
                     architecture and tokenizer from random weights; hf_pretrained@<sha>+probe −
                     hf_scratch~<sha>+probe, both probed). Varies: init.
  probing            a fine-tuned variant − the same variant probed (its name + `+probe`: the backbone frozen, a
                     head trained on its embeddings), e.g. hf_pretrained@<sha> − hf_pretrained@<sha>+probe. Varies:
                     mode, and the architecture digest (the head differs between the modes); the checkpoint,
                     tokenizer, token cap, budget, precision and data are the same.
  bpe                the BPE variant − the single-nucleotide variant of a model, both from scratch and fine-tuned.
                     Varies: the tokenizer and what it forces: the embedding and the token-scaled design
                     (architecture_sha), the token cap (max_length).
  architecture       each transformer − each CNN, both from scratch and fine-tuned, same tokenizer. Varies: model,
                     architecture.
  pretrained_vs_cnn  question 1 as posed: each fine-tuned pretrained transformer − each CNN trained from scratch,
                     the systems as one would use them (their own tokenizers), pretraining cost counted. Varies:
                     model, architecture, init, tokenizer, max_length.
  exploratory        every other pair of arm variants present (no named contrast between them), so that a report
                     for any set of arms compares something. Varies: any factor of the model; the report names
                     the ones that differ, and it is not a one-factor contrast: no difference it shows can be put
                     down to one factor. Holm's adjustment runs over the exploratory pairs apart from the named
                     contrasts, so adding arms never weakens the named questions.
Never varied by any contrast: the budget (n_trials, max_epochs, patience, seeds), the precision and the data.
A run without a mode tag (an older harness) fine-tuned: collect reads it as `finetune`. Only the probing contrast
varies the mode, so a probed variant meets the fine-tuned ones elsewhere only as an exploratory pair.
A one-pass estimator (kmer_logreg: one scikit-learn fit, precision n/a) has one "epoch" by construction, so its
epoch cap and patience say nothing about the budget it had; they are not compared (its trials and seeds are).
A study file adds its own under `analysis: contrasts: [{a: ARM, b: ARM, name: ..., varies: [factor, ...]}]`
(without `varies`, every factor of the model may differ; budget, precision and data may not).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.schema import (
    FACTORS,
    MODEL_FACTORS,
    NOT_APPLICABLE,
    PROBE_SUFFIX,
    Init,
    Mode,
    Tag,
)

from . import stats
from .collect import Results

DIFF_DECIMALS = 10  # float noise must not break ties between equal differences

VARIES = {
    "pretraining": frozenset({Tag.INIT}),
    # The probe's head is not the fine-tuned model's, so the architecture digest may differ with the mode.
    "probing": frozenset({Tag.MODE, Tag.ARCHITECTURE_SHA}),
    "bpe": frozenset({Tag.TOKENIZER_SHA, Tag.ARCHITECTURE_SHA, Tag.MAX_LENGTH}),
    "architecture": frozenset({Tag.MODEL, Tag.ARCHITECTURE_SHA}),
    "pretrained_vs_cnn": frozenset(MODEL_FACTORS),
    "user": frozenset(MODEL_FACTORS),
    "exploratory": frozenset(MODEL_FACTORS),
}
EXPLORATORY = "exploratory"
# The factors of an arm variant in words, for the sentence that says in what an exploratory pair differs.
FACTOR_WORDS = {Tag.MODEL: "model", Tag.ARCHITECTURE_SHA: "architecture", Tag.TOKENIZER_SHA: "tokenizer",
                Tag.MAX_LENGTH: "token cap", Tag.INIT: "initial weights", Tag.MODE: "mode (fine-tune/probe)"}
# Budget factors that count epochs: meaningless for an arm fitted in one pass (see the module docstring).
EPOCH_FACTORS = frozenset({Tag.MAX_EPOCHS, Tag.PATIENCE})


@dataclass(frozen=True)
class Contrast:
    effect: str  # pretraining | probing | bpe | architecture | pretrained_vs_cnn | user | exploratory
    a: str
    b: str
    name: str = ""
    varies: frozenset[str] | None = None  # the factors A and B may differ in; None: VARIES[effect]

    @property
    def label(self) -> str:
        return self.name or f"{self.effect}: {self.a} − {self.b}"

    @property
    def allowed(self) -> frozenset[str]:
        return VARIES[self.effect] if self.varies is None else self.varies

    @property
    def exploratory(self) -> bool:
        return self.effect == EXPLORATORY


def default_contrasts(arms: pd.DataFrame) -> list[Contrast]:
    """The study's questions over the arm variants present (index of `arms`)."""
    mode = modes(arms)
    pretrained = arms[arms[Tag.INIT] != Init.SCRATCH]
    scratch = arms[arms[Tag.INIT] == Init.SCRATCH]
    out = []
    for variant, row in pretrained.iterrows():
        # Its twins learn the task as it does: a probed checkpoint against a probed random init, so that the
        # difference is the weights alone.
        twins = scratch[(scratch[Tag.MODEL] == row[Tag.MODEL]) & (scratch[Tag.TOKENIZER] == row[Tag.TOKENIZER])
                        & (mode[scratch.index] == mode[variant])]
        out += [Contrast("pretraining", variant, twin) for twin in twins.index]
    out += probing_contrasts(arms.index, mode)
    # The other questions are about systems as trained end to end: probed variants do not enter them.
    pretrained, scratch = (frame[mode[frame.index] != Mode.PROBE] for frame in (pretrained, scratch))
    for _, same_model in scratch.groupby(Tag.MODEL):
        for bpe in same_model.index[same_model[Tag.TOKENIZER] == "bpe"]:
            for char in same_model.index[same_model[Tag.TOKENIZER] == "char"]:
                out.append(Contrast("bpe", bpe, char))
    for _, same_tokens in scratch.groupby(Tag.TOKENIZER):
        for transformer in same_tokens.index[same_tokens[Tag.FAMILY] == "transformer"]:
            for cnn in same_tokens.index[same_tokens[Tag.FAMILY] == "cnn"]:
                out.append(Contrast("architecture", transformer, cnn))
    for transformer in pretrained.index[pretrained[Tag.FAMILY] == "transformer"]:
        out += [Contrast("pretrained_vs_cnn", transformer, cnn) for cnn in scratch.index[scratch[Tag.FAMILY] == "cnn"]]
    return out


def modes(arms: pd.DataFrame) -> pd.Series:
    """Each variant's mode; fine-tuned where none is recorded (a run of an older harness, or a table without
    the column): only the probe mode is new."""
    recorded = arms[Tag.MODE] if Tag.MODE in arms else pd.Series("", index=arms.index, dtype=object)
    return recorded.fillna("").replace("", Mode.FINETUNE)


def probing_contrasts(variants: Iterable[str], mode: pd.Series) -> list[Contrast]:
    """Each fine-tuned variant − its probed namesake (`<variant>+probe`): the same checkpoint or twin, learnt
    two ways. The factor check then holds everything but the mode and the head equal, task by task."""
    present = set(variants)
    return [Contrast("probing", v, v + PROBE_SUFFIX) for v in sorted(present)
            if mode[v] != Mode.PROBE and v + PROBE_SUFFIX in present]


def exploratory_contrasts(variants: Iterable[str], named: list[Contrast]) -> list[Contrast]:
    """Every pair of `variants` (A − B in name order) that no named contrast already asks about, either way
    round: a named pair left out for a factor that differs is not let back in as an exploratory one."""
    asked = {frozenset((c.a, c.b)) for c in named}
    return [Contrast(EXPLORATORY, a, b) for a, b in itertools.combinations(sorted(set(variants)), 2)
            if frozenset((a, b)) not in asked]


def one_pass(cell: pd.Series) -> bool:
    """A cell of an arm fitted in one pass, not epoch by epoch: the harness records its precision as n/a
    (request.factors), as it does for no epoch-trained arm."""
    return str(cell.get(Tag.PRECISION, "")) == NOT_APPLICABLE


def factor_value(cell: pd.Series, factor: str) -> str:
    return str(cell[factor]) if pd.notna(cell[factor]) else ""


def cell_of(cells: pd.DataFrame, arm: str, task: str) -> pd.Series:
    return cells[(cells["arm"] == arm) & (cells["task"] == task)].iloc[0]


def differing_factors(c: Contrast, cells: pd.DataFrame, task: str) -> list[str]:
    """The factors (other than those `c` varies) in which A and B differ on `task`, e.g. 'tokenizer_sha
    (a: bpe-1a2b…, b: char)'. A factor an arm does not have (n/a) differs from nothing, nor do the epoch cap
    and patience of a one-pass arm; one a run did not record (a run of an older harness) is unknown, so it
    cannot be shown equal."""
    a, b = cell_of(cells, c.a, task), cell_of(cells, c.b, task)
    skip = c.allowed | (EPOCH_FACTORS if one_pass(a) or one_pass(b) else frozenset())
    out = []
    for factor in FACTORS:
        if factor in skip or factor not in cells.columns:
            continue
        x, y = factor_value(a, factor), factor_value(b, factor)
        if NOT_APPLICABLE in (x, y):
            continue
        if not x or not y:
            out.append(f"{factor} not recorded ({c.a if not x else c.b}: a run of an older harness?)")
        elif x != y:
            out.append(f"{factor} differs ({c.a}: {x}, {c.b}: {y})")
    return out


def varied_factors(c: Contrast, cells: pd.DataFrame, tasks: list[str]) -> list[str]:
    """The factors `c` may vary in which A and B do differ on some of `tasks`, in words ('model', 'tokenizer'),
    in schema order: what an exploratory pair's difference mixes together."""
    out = []
    for factor in FACTORS:
        if factor not in c.allowed or factor not in cells.columns:
            continue
        values = {(factor_value(cell_of(cells, c.a, t), factor), factor_value(cell_of(cells, c.b, t), factor))
                  for t in tasks}
        if any(x != y and NOT_APPLICABLE not in (x, y) for x, y in values):
            out.append(FACTOR_WORDS.get(factor, factor))
    return out


def user_contrasts(declared: list[dict]) -> list[Contrast]:
    return [Contrast("user", c["a"], c["b"], c.get("name", ""),
                     frozenset(c["varies"]) if "varies" in c else None) for c in declared]


@dataclass
class Evaluation:
    contrast: Contrast
    row: dict  # one line of contrasts.csv
    diffs: pd.Series  # per task: mean(a) − mean(b)
    per_task: pd.DataFrame  # per task: the paired bootstrap over test sequences
    unlike: dict[str, list[str]] = field(default_factory=dict)  # task -> factors that differ (left out)


def comparable_tasks(c: Contrast, results: Results) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(tasks where A and B differ only in what `c` varies, tasks one of them lacks, task -> differing factors)."""
    cells = results.cells
    tasks_a, tasks_b = (set(cells.loc[cells["arm"] == arm, "task"]) for arm in (c.a, c.b))
    missing = [f"{t} (no {c.b})" for t in sorted(tasks_a - tasks_b)] + [f"{t} (no {c.a})" for t in sorted(tasks_b - tasks_a)]
    unlike = {t: d for t in sorted(tasks_a & tasks_b) if (d := differing_factors(c, cells, t))}
    return [t for t in sorted(tasks_a & tasks_b) if t not in unlike], missing, unlike


def evaluate(c: Contrast, results: Results, alpha: float, rope: float, seed: int = 0,
             n_resamples: int = 9999) -> Evaluation:
    cells = results.cells.set_index(["arm", "task"])
    common, left_out, unlike = comparable_tasks(c, results)
    left_out += [f"{t} ({'; '.join(d)})" for t, d in unlike.items()]
    a = np.array([cells.loc[(c.a, t), "score_mean"] for t in common], dtype=float)
    b = np.array([cells.loc[(c.b, t), "score_mean"] for t in common], dtype=float)
    d = np.round(a - b, DIFF_DECIMALS)
    test = stats.signed_rank(d, alpha)
    lo, hi = stats.median_ci(d, n_resamples=n_resamples, seed=seed)
    families = [results.family(t) for t in common]
    cluster_lo, cluster_hi = stats.cluster_median_ci(d, families, n_resamples=n_resamples, seed=seed)
    hl, hl_lo, hl_hi, hl_method = stats.hodges_lehmann(d)
    p_a, p_equal, p_b = stats.bayesian_signed_rank(a, b, rope, seed) if len(d) >= 2 else (math.nan,) * 3
    row = {
        "contrast": c.label, "effect": c.effect, "kind": EXPLORATORY if c.exploratory else "named",
        "a": c.a, "b": c.b, "varies": ",".join(sorted(c.allowed)),
        "differs_in": ", ".join(varied_factors(c, results.cells, common)),
        "metric": results.metric,
        "n_tasks": len(d), "tasks_left_out": "; ".join(left_out),
        "wins": int(np.sum(d > 0)), "ties": int(np.sum(d == 0)), "losses": int(np.sum(d < 0)),
        "median_difference": float(np.median(d)) if len(d) else math.nan, "ci_low": lo, "ci_high": hi,
        "n_families": len(set(families)), "cluster_ci_low": cluster_lo, "cluster_ci_high": cluster_hi,
        "hl_estimate": hl, "hl_ci_low": hl_lo, "hl_ci_high": hl_hi, "hl_method": hl_method,
        "mean_difference": float(np.mean(d)) if len(d) else math.nan,
        "wilcoxon_T": test.statistic, "r_plus": test.r_plus, "r_minus": test.r_minus, "n_zero": test.n_zero,
        "p": test.p, "p_holm": math.nan, "p_method": test.method, "note": test.note,
        "p_a_better": p_a, "p_equivalent": p_equal, "p_b_better": p_b, "rope": rope,
        **cost_columns(results.cells, c, common),
    }
    return Evaluation(c, row, pd.Series(d, index=common, name=c.label),
                      per_task_tests(c, results, common, alpha, seed, n_resamples), unlike)


def cost_columns(cells: pd.DataFrame, c: Contrast, tasks: list[str]) -> dict[str, float | str]:
    """The compute behind each side over the same tasks: mean per task in seconds, device-hours and FLOPs
    (tuning trials, final seeds and a probed arm's embedding pass, once per task), and the pretraining its
    weights inherit (seconds, FLOPs and GPU-hours, where recorded or declared), counted once."""
    out: dict[str, float | str] = {}
    for side, arm in (("a", c.a), ("b", c.b)):
        mine = cells[(cells["arm"] == arm) & cells["task"].isin(tasks)]
        out[f"{side}_compute_seconds"] = float(mine["compute_seconds"].mean()) if len(mine) else math.nan
        out[f"{side}_compute_hours"] = out[f"{side}_compute_seconds"] / 3600
        out[f"{side}_compute_flops"] = float(mine["compute_flops"].mean()) if len(mine) else math.nan
        out[f"{side}_device"] = ", ".join(sorted(set(mine["device"].dropna().astype(str)) - {""})) \
            if "device" in mine else ""
        for kind in ("seconds", "flops", "gpu_hours"):
            pre = mine[f"pretrain_{kind}"].dropna() if f"pretrain_{kind}" in mine else pd.Series(dtype=float)
            out[f"{side}_pretrain_{kind}"] = float(pre.iloc[0]) if len(pre) else math.nan
    out["compute_ratio"] = ratio(out["a_compute_seconds"], out["b_compute_seconds"])
    out["flops_ratio"] = ratio(out["a_compute_flops"], out["b_compute_flops"])
    return out


def ratio(x: float, y: float) -> float:
    return x / y if y and math.isfinite(x) and math.isfinite(y) and y > 0 and x > 0 else math.nan


PER_TASK_COLUMNS = ["contrast", "task", "n_test", "n_seeds_a", "n_seeds_b", "mcc_a", "mcc_b", "mcc_difference",
                    "ci_low", "ci_high", "p", "note"]


def seed_averaged(results: Results, arm: str, task: str) -> tuple[pd.DataFrame | None, int, str]:
    """(label and class probabilities averaged over the arm's final seeds on `task`, seeds used, why not):
    the arm's prediction is the argmax of the mean probability, an ensemble of its seeds. Identical
    replicates count as one seed."""
    runs = results.runs[(results.runs["arm"] == arm) & (results.runs["task"] == task)]
    ids = runs["run_id"] if "run_id" in runs else []  # Results built by hand may carry no run ids
    frames = [results.predictions[r] for r in ids if r in results.predictions]
    if not frames:
        return None, 0, f"no {arm} seed logged test predictions"
    rows, labels = frames[0]["row"].to_numpy(), frames[0]["label"].to_numpy()
    if any(len(f) != len(rows) or (f["row"].to_numpy() != rows).any() or (f["label"].to_numpy() != labels).any()
           for f in frames[1:]):
        return None, 0, f"{arm}'s seeds were scored on different test sequences"
    columns = sorted((c for c in frames[0].columns if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
    mean = sum(f[columns].to_numpy(float) for f in frames) / len(frames)
    cell = results.cells[(results.cells["arm"] == arm) & (results.cells["task"] == task)]
    n_seeds = int(cell["n_seeds"].iloc[0]) if "n_seeds" in cell and len(cell) else len(frames)
    return pd.DataFrame({"row": rows, "label": labels}).join(pd.DataFrame(mean, columns=columns)), \
        min(n_seeds, len(frames)), ""


def per_task_tests(c: Contrast, results: Results, tasks: list[str], alpha: float, seed: int = 0,
                   n_resamples: int = 9999) -> pd.DataFrame:
    """Within each task, A and B on the same test sequences: a paired bootstrap over the sequences of the MCC
    difference, each arm's predictions from its seed-averaged probabilities (stats.paired_bootstrap_mcc);
    Holm-adjusted over the tasks of the contrast. The two arms' seeds share no randomness, so pairing by
    seed would pair nothing; the test sequences are what both arms share."""
    rows = []
    for task in tasks:
        row = {"contrast": c.label, "task": task, "n_test": 0, "n_seeds_a": 0, "n_seeds_b": 0, "mcc_a": math.nan,
               "mcc_b": math.nan, "mcc_difference": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "p": math.nan, "note": ""}
        (pa, row["n_seeds_a"], why_a), (pb, row["n_seeds_b"], why_b) = (seed_averaged(results, arm, task)
                                                                        for arm in (c.a, c.b))
        if pa is None or pb is None:
            row["note"] = "; ".join(w for w in (why_a, why_b) if w)
        elif len(pa) != len(pb) or (pa["row"].to_numpy() != pb["row"].to_numpy()).any() \
                or (pa["label"].to_numpy() != pb["label"].to_numpy()).any():
            row["note"] = "the arms were scored on different test sequences: no paired test"
        else:
            probs = [p.filter(like="prob_").to_numpy(float) for p in (pa, pb)]
            test = stats.paired_bootstrap_mcc(pa["label"].to_numpy(), *probs, n_resamples=n_resamples,
                                              seed=seed)
            row.update(n_test=test.n, mcc_a=test.mcc_a, mcc_b=test.mcc_b, mcc_difference=test.difference,
                       ci_low=test.ci_low, ci_high=test.ci_high, p=test.p)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=PER_TASK_COLUMNS)
    frame["p_holm"] = stats.holm(frame["p"].to_numpy()) if len(frame) else []
    frame["significant"] = frame["p_holm"] < alpha
    return frame


def adjust(evaluations: list[Evaluation]) -> None:
    """Holm within each family of one report: the named contrasts that have a p-value are one family, the
    exploratory pairs another (their many pairs must not dilute the questions the study asks)."""
    for exploratory in (False, True):
        family = [e for e in evaluations if e.contrast.exploratory == exploratory]
        for e, p in zip(family, stats.holm([e.row["p"] for e in family])):
            e.row["p_holm"] = float(p)


PHRASES = {"pretraining": "pretraining", "probing": "fine-tuning (vs probing the frozen backbone)",
           "bpe": "BPE tokens (vs single nucleotides)",
           "architecture": "the transformer (vs the CNN)",
           "pretrained_vs_cnn": "the pretrained transformer (vs the CNN trained from scratch)", "user": "{name}"}


def sentence(row: dict, alpha: float) -> str:
    """One plain sentence per contrast, e.g. 'pretraining improved MCC on 9 of 12 tasks, median
    +0.031 [0.012, 0.050], Holm p = 0.004'."""
    metric = row["metric"].removeprefix("test_").upper()
    if row["n_tasks"] == 0:
        return f"{row['a']} vs {row['b']}: no task completed by both arms."
    n, med = row["n_tasks"], row["median_difference"]
    ci = (f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]" if math.isfinite(row["ci_low"]) else
          " (too few tasks for a confidence interval)")
    if row["effect"] == EXPLORATORY:
        text = f"{exploratory_subject(row)}: {exploratory_result(row, metric)}, median {med:+.3f}{ci}"
    else:
        what = PHRASES[row["effect"]].format(name=row["contrast"])
        if med > 0:
            result = f"improved {metric} on {row['wins']} of {n} tasks"
        elif med < 0:
            result = f"lowered {metric} on {row['losses']} of {n} tasks"
        else:
            result = f"left the median {metric} unchanged ({row['wins']} better, {row['losses']} worse of {n} tasks)"
        text = f"{what} ({row['a']} vs {row['b']}) {result}, median {med:+.3f}{ci}"
    text += family_clause(row)
    if math.isfinite(row["p_holm"]):
        verdict = "significant" if row["p_holm"] < alpha else "not significant"
        over = " over the exploratory pairs" if row["effect"] == EXPLORATORY else ""
        text += f", Holm p{over} = {row['p_holm']:.3g} ({verdict} at {alpha:g})"
    else:
        text += f"; no p-value: {row['note']}"
    if math.isfinite(row["p_a_better"]):
        text += (f"; P({row['a']} better) = {row['p_a_better']:.2f}, P(equivalent within ±{row['rope']:g}) = "
                 f"{row['p_equivalent']:.2f}, P({row['b']} better) = {row['p_b_better']:.2f}")
    if math.isfinite(row["flops_ratio"]) or math.isfinite(row["compute_ratio"]):
        # per task: tuning, final seeds and a probed arm's embedding pass, so not "fine-tuning" FLOPs
        text += (f"; {row['a']} costs {row['flops_ratio']:.2g}x the FLOPs per task of {row['b']}"
                 if math.isfinite(row["flops_ratio"]) else
                 f"; {row['a']} costs {row['compute_ratio']:.2g}x the compute time per task of {row['b']}")
        text += pretraining_clause(row)
    return text + "."


def pretraining_clause(row: dict) -> str:
    """' plus <A's pretraining> of pretraining'; where B inherits the very same (a fine-tuned checkpoint against
    its probed self), that pretraining is no difference between them, and the sentence says so instead."""
    mine = pretraining_phrase(row, "a")
    if not mine:
        return ""
    if mine == pretraining_phrase(row, "b"):
        return f", both on the same pretraining ({mine})"
    return f" plus {mine} of pretraining"


def exploratory_subject(row: dict) -> str:
    """'exploratory, kmer_logreg − dnabert2_scratch (they differ in model, architecture and tokenizer: not a
    one-factor contrast)'."""
    factors = [f for f in str(row.get("differs_in", "")).split(", ") if f]
    differ = (" and ".join([", ".join(factors[:-1]), factors[-1]]) if len(factors) > 1 else "".join(factors))
    why = (f"they differ in {differ}: not a one-factor contrast" if len(factors) > 1 else
           f"they differ in {differ} alone, but no named contrast asks about it" if factors else
           "they differ in no recorded factor of the model")
    return f"exploratory, {row['a']} − {row['b']} ({why})"


def exploratory_result(row: dict, metric: str) -> str:
    a, n, med = row["a"], row["n_tasks"], row["median_difference"]
    if med > 0:
        return f"{a} had the higher {metric} on {row['wins']} of {n} tasks"
    if med < 0:
        return f"{a} had the lower {metric} on {row['losses']} of {n} tasks"
    return f"the median {metric} difference is 0 ({row['wins']} higher, {row['losses']} lower of {n} tasks)"


def excludes_zero(low: float, high: float) -> bool:
    return math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0)


def family_clause(row: dict) -> str:
    """Where the task-level and the family-level (cluster bootstrap) intervals of the median disagree on
    whether 0 is plausible, say so: tasks of one family are not independent evidence."""
    if row.get("n_families", 0) < 2 or not math.isfinite(row.get("cluster_ci_low", math.nan)):
        return ""
    task_level, family_level = (excludes_zero(row[f"{p}_low"], row[f"{p}_high"]) for p in ("ci", "cluster_ci"))
    span = f"[{row['cluster_ci_low']:+.3f}, {row['cluster_ci_high']:+.3f}]"
    if task_level and not family_level:
        return (f" (but resampling its {row['n_families']} task families as well, the interval {span} includes 0:"
                " the effect rests on few families)")
    if family_level and not task_level:
        return f" (resampling its {row['n_families']} task families as well, the interval {span} excludes 0)"
    return ""


def pretraining_phrase(row: dict, side: str) -> str:
    """'2.7e+03 GPU-hours, 1.1e+21 FLOPs' (whatever is known) of a side's inherited pretraining."""
    parts = []
    if math.isfinite(row[f"{side}_pretrain_gpu_hours"]):
        parts.append(f"{row[f'{side}_pretrain_gpu_hours']:.3g} GPU-hours")
    elif math.isfinite(row[f"{side}_pretrain_seconds"]):
        parts.append(duration(row[f"{side}_pretrain_seconds"]))
    if math.isfinite(row[f"{side}_pretrain_flops"]):
        parts.append(f"{row[f'{side}_pretrain_flops']:.2g} FLOPs")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
