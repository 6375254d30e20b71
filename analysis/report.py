"""Build the report folder: tidy CSVs, the tests, the figures and `report.md`.

The folder is written beside its destination and moved into place at the end, so a failure never
leaves a half-written report.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import figures
from harness.outputs import check_replaceable, check_writable

from . import stats
from .collect import Results, overlap_notes
from .contrasts import Contrast, Evaluation, adjust, duration, evaluate, exploratory_contrasts, sentence


@dataclass(frozen=True)
class Settings:
    alpha: float = 0.05
    rope: float = 0.01
    seed: int = 0  # bootstrap and posterior sampling


# Written into every report folder, listing the files the report wrote: only such a folder (or an empty one)
# is ever replaced, so `--out` naming a folder of the user's own files cannot delete them.
MARKER = ".harness-report"
# What reports written before the marker held (recognised by their report.md), besides figures/*.png.
LEGACY_FILES = {"report.md", "runs.csv", "cells.csv", "arms.csv", "contrasts.csv", "per_task_tests.csv", "cost.csv",
                "families.csv", "exclusions.csv", "tuning_adequacy.csv", "ranks.csv", "friedman.csv", "nemenyi.csv"}


def not_report_files(folder: Path) -> list[str]:
    """What in `folder` (paths relative to it) a report did not write; [] for an empty or a report folder.
    Only the top level and figures/ are listed (all a report writes), so `--out ~` is not walked."""
    marker = folder / MARKER
    if marker.is_file():
        written = set(marker.read_text().splitlines())
    elif (folder / "report.md").is_file():
        written = LEGACY_FILES | {f"figures/{p.name}" for p in (folder / "figures").glob("*.png")}
    else:
        written = set()  # no report here: every file is the user's
    looks_like_a_report, written = bool(written), written | {MARKER}
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name == "figures" and looks_like_a_report and entry.is_dir() and not entry.is_symlink():
            found += [f"figures/{p.name}" for p in sorted(entry.iterdir())]
        else:
            found.append(entry.name + ("/" if entry.is_dir() else ""))
    return [name for name in found if name not in written]


def check_report_folder(out: Path) -> None:
    """Refuse an `--out` that cannot be written, or that holds files a report did not write (ParameterError)."""
    check_writable(out, "--out", "report folder")
    check_replaceable(out, not_report_files, "--out", "report")


def build_report(results: Results, contrasts: list[Contrast], out: Path, settings: Settings,
                 notes: list[str] = ()) -> Path:
    """Evaluate `contrasts` on `results` and write the report folder `out`; returns report.md. An existing `out`
    is replaced only when it is empty or a previous report (else ParameterError, before any work)."""
    out = Path(os.path.abspath(out))  # `--out .` has no name to stage a folder beside
    check_report_folder(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "figures").mkdir(parents=True)
    try:
        write_report(results, contrasts, tmp, settings, list(notes))
        write_marker(tmp)
        check_replaceable(out, not_report_files, "--out", "report")  # again: files may have appeared meanwhile
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.md"


def write_marker(folder: Path) -> None:
    """List every file of the finished report in its marker, so a later run knows what it may replace."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (folder / MARKER).write_text("\n".join(files) + "\n")


# What each table of the report folder holds, in the order report.md lists them.
TABLES = {
    "runs.csv": "one row per arm, task and seed: the final runs' test metrics and cost",
    "cells.csv": "one row per arm and task: mean and sd over seeds, seeds, compute (tuning, final seeds and a "
                 "probed arm's embedding pass, once), and the factors each contrast checks",
    "arms.csv": "one row per arm variant: model, tokenizer, initial weights, mode (fine-tune or probe)",
    "families.csv": "per task family and arm: tasks and the mean of the per-task means",
    "contrasts.csv": "one row per evaluated contrast, named or exploratory: every statistic of the contrast table",
    "per_task_tests.csv": "per contrast and task: the paired bootstrap on the same test sequences",
    "ranks.csv": "average rank of each arm in the Friedman test",
    "friedman.csv": "the Friedman test and its approximations",
    "nemenyi.csv": "every pair of arms: Nemenyi rank difference and p",
    "cost.csv": "per arm: score over the common tasks and the compute one task costs",
    "tuning_adequacy.csv": "per arm: best trials at a bound of the search space or at the epoch cap",
    "exclusions.csv": "what was left out, and why",
}


def write_report(results: Results, contrasts: list[Contrast], folder: Path, s: Settings, notes: list[str]) -> None:
    notes = notes + overlap_notes(results.cells)
    exclusions = results.exclusions.copy()
    present = set(results.cells["arm"])
    # Pairs no named contrast asks about are compared too, as exploratory: a report for any set of arms.
    contrasts = list(contrasts) + exploratory_contrasts(present, list(contrasts))
    evaluations: list[Evaluation] = []
    for c in contrasts:
        missing = [arm for arm in (c.a, c.b) if arm not in present]
        if missing:
            exclusions.loc[len(exclusions)] = [f"contrast {c.label}", f"no results for {', '.join(missing)} in "
                                               "this experiment"]
            continue
        e = evaluate(c, results, s.alpha, s.rope, s.seed)
        for task, factors in e.unlike.items():
            exclusions.loc[len(exclusions)] = [f"contrast {c.label} | {task}", "; ".join(factors)
                                               + f" (this contrast may vary only {', '.join(sorted(c.allowed))})"]
        if e.row["n_tasks"]:
            evaluations.append(e)
        elif e.unlike:
            exclusions.loc[len(exclusions)] = [f"contrast {c.label}", "not evaluated: on no task do its arms differ "
                                               f"only in {', '.join(sorted(c.allowed))} (see the rows above)"]
        else:
            exclusions.loc[len(exclusions)] = [f"contrast {c.label}", "not evaluated: no task completed by both arms "
                                               f"({e.row['tasks_left_out']})"]
    adjust(evaluations)
    contrast_table = pd.DataFrame([e.row for e in evaluations])
    per_task = pd.concat([e.per_task for e in evaluations], ignore_index=True) if evaluations else pd.DataFrame()
    rank_block, friedman, block_note = friedman_block(results, s.alpha)
    if block_note:
        exclusions.loc[len(exclusions)] = ["Friedman / Nemenyi",
                                           block_note if friedman is not None else f"not computed: {block_note}"]
    cost = cost_table(results, rank_block)
    families = family_table(results)
    adequacy = tuning_adequacy(results.cells)

    draw_figures(results, evaluations, friedman, folder / "figures", s)
    tables = {"runs.csv": results.runs, "cells.csv": results.cells.drop(columns=["score_mean", "score_sd"]),
              "arms.csv": results.arms.reset_index(), "families.csv": families, "contrasts.csv": contrast_table,
              "per_task_tests.csv": per_task, "cost.csv": cost, "tuning_adequacy.csv": adequacy,
              "exclusions.csv": exclusions}
    if friedman is not None:
        tables["ranks.csv"] = friedman.avg_ranks.rename("average_rank").rename_axis("arm").reset_index()
        tables["friedman.csv"] = pd.DataFrame([friedman_row(friedman)])
        tables["nemenyi.csv"] = stats.nemenyi_pairs(friedman)
    for name, frame in tables.items():
        if len(frame) and len(frame.columns):  # an empty table is left out and the report says why
            frame.to_csv(folder / name, index=False)
    omitted = omitted_tables(tables, friedman)
    text = markdown(results, evaluations, per_task, friedman, cost, exclusions, adequacy, s, notes, families,
                    block_note=block_note)
    (folder / "report.md").write_text(text + files_section(folder, omitted))


def draw_figures(results: Results, evaluations: list[Evaluation], friedman: stats.Friedman | None, fig: Path,
                 s: Settings) -> None:
    label = figures.metric_label(results.metric)
    figures.scores_by_task(results.runs, results.metric, fig / "scores_by_task.png",
                           f"{label} per task (dots: seeds; bars: mean ± sd over seeds)")
    figures.cost_benefit(cost_points(results), results.metric, "Compute per task, incl. pretraining (s)",
                         fig / "cost_benefit.png", f"{label} against compute (points: tasks; diamonds: medians)")
    for e in evaluations:
        figures.paired_differences(e.diffs, e.contrast.a, e.contrast.b, results.metric, e.row["median_difference"],
                                   (e.row["ci_low"], e.row["ci_high"]), s.rope, fig / difference_png(e.contrast),
                                   e.contrast.label)
    if friedman is not None:
        figures.critical_difference_diagram(friedman.avg_ranks.to_dict(), friedman.cd, fig / "critical_difference.png",
                                            f"Nemenyi, alpha = {s.alpha:g}, {friedman.n} tasks")


def cost_points(results: Results) -> pd.DataFrame:
    """One point per (arm, task) for the cost figure: its mean score over seeds and its compute (tuning, final
    seeds and a probed arm's embedding pass, seconds), plus the pretraining its weights inherit."""
    cells = results.cells
    pretrain = cells["pretrain_seconds"].fillna(0.0) if "pretrain_seconds" in cells else 0.0
    return pd.DataFrame({"arm": cells["arm"], "task": cells["task"], "score": cells["score_mean"],
                         "cost": cells["compute_seconds"] + pretrain})


def omitted_tables(tables: dict[str, pd.DataFrame], friedman: stats.Friedman | None) -> dict[str, str]:
    """Table name -> why it was not written (one sentence's clause)."""
    why = {"contrasts.csv": "no contrast could be evaluated", "per_task_tests.csv": "no contrast could be evaluated",
           "tuning_adequacy.csv": "no arm's best trial sat at a bound of its search space or at the epoch cap",
           "exclusions.csv": "nothing was excluded"}
    out = {name: why.get(name, "it would be empty") for name, frame in tables.items()
           if not (len(frame) and len(frame.columns))}
    if friedman is None:
        out.update(dict.fromkeys(("ranks.csv", "friedman.csv", "nemenyi.csv"),
                                 "the Friedman test was not computed (see its section)"))
    return out


def report_files(folder: Path) -> list[str]:
    """Every file of the report folder, relative to it, report.md included (it is written last)."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} | {"report.md"}
    return sorted(found - {MARKER}, key=lambda name: (name.startswith("figures/"), name != "report.md", name))


def files_section(folder: Path, omitted: dict[str, str]) -> str:
    """The '## Files' list: exactly the files in `folder` (plus report.md), then the tables left out and why."""
    lines = ["", "## Files", ""]
    for name in report_files(folder):
        what = "this report" if name == "report.md" else TABLES.get(name) or figure_description(name)
        lines.append(f"- `{name}`: {what}")
    lines += [f"- `{MARKER}` (hidden): the list of these files, so that `--out` replaces only a report", ""]
    reasons: dict[str, list[str]] = {}
    for name, why in omitted.items():
        reasons.setdefault(why, []).append(name)
    for why, names in reasons.items():
        lines += [f"Not written: {words_list(names)}, because {why}.", ""]
    return "\n".join(lines)


def figure_description(name: str) -> str:
    stem = Path(name).stem
    if stem.startswith("difference_"):
        return "a contrast's difference on each task, with its median, interval and ROPE"
    return {"scores_by_task": "every seed's score on each task, with each arm's mean ± sd over seeds",
            "cost_benefit": "score against compute, one point per arm and task, and each arm's median",
            "critical_difference": "Nemenyi critical-difference diagram of the average ranks"}.get(stem, "figure")


def words_list(items: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# A variant's marks in words, so that `arm@sha`, `arm~sha` and `arm@sha+probe` get files of their own.
VARIANT_MARKS = {"@": "_at_", "~": "_twin_of_", "+": "_plus_"}


def difference_png(c: Contrast) -> str:
    name = f"{c.a}_vs_{c.b}"
    for mark, words in VARIANT_MARKS.items():
        name = name.replace(mark, words)
    return "difference_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".png"


def friedman_block(results: Results, alpha: float) -> tuple[pd.DataFrame, stats.Friedman | None, str]:
    """Tasks × arms, complete (the Friedman test ranks every arm on every task). An arm that lacks tasks
    is left out when that keeps more tasks; otherwise the tasks it lacks are. Both are stated."""
    table = results.cells.pivot(index="task", columns="arm", values="score_mean")
    arms, dropped = list(table.columns), []
    while len(arms) > 3:
        missing = {a: int(table[a].isna().sum()) for a in arms if table[a].isna().any()}
        if not missing:
            break
        worst = max(missing, key=missing.get)
        keep = [a for a in arms if a != worst]
        if len(table[keep].dropna()) <= len(table[arms].dropna()):
            break
        arms, dropped = keep, dropped + [worst]
    complete = table[arms].dropna()
    notes = [f"{a} left out of the ranking: it lacks {', '.join(table.index[table[a].isna()])}" for a in dropped]
    if len(complete) < len(table):
        notes += [f"{a} lacks {', '.join(table.index[table[a].isna()])}, so the ranking leaves those tasks out"
                  for a in arms if table[a].isna().any()]
    if complete.shape[1] < 3 or len(complete) < 2:
        notes.append(f"the test needs at least 3 arms on at least 2 common tasks; there are {complete.shape[1]} "
                     f"arms on {len(complete)} common tasks")
        return complete, None, "; ".join(notes)
    return complete, stats.friedman(complete, alpha), "; ".join(notes)


def family_table(results: Results) -> pd.DataFrame:
    """Per task family and arm: the number of tasks and the mean of the arm's per-task means (each task
    weighs the same within its family)."""
    cells = results.cells.assign(family=[results.family(t) for t in results.cells["task"]])
    out = cells.groupby(["family", "arm"], as_index=False).agg(n_tasks=("task", "size"),
                                                                 mean=("score_mean", "mean"))
    return out[["family", "arm", "n_tasks", "mean"]]


def friedman_row(f: stats.Friedman) -> dict:
    return {"n_tasks": f.n, "k_arms": f.k, "chi2": f.chi2, "chi2_p": f.chi2_p,
            "chi2_tie_corrected": f.chi2_tie_corrected, "chi2_tie_corrected_p": f.chi2_tie_corrected_p,
            "iman_davenport_f": f.f, "f_df1": f.f_df[0], "f_df2": f.f_df[1], "f_p": f.f_p,
            "permutation_p": f.permutation_p, "permutation_exact": f.permutation_exact,
            "alpha": f.alpha, "nemenyi_q": f.q_alpha, "critical_difference": f.cd}


def cost_table(results: Results, block: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean score over the common tasks (all its tasks where there is no common block) and the
    compute one task costs (tuning, final seeds and a probed arm's embedding pass, once per task), that embedding
    pass also on its own, and pretraining where it was recorded."""
    rows = []
    for arm, cells in results.cells.groupby("arm"):
        common = cells[cells["task"].isin(block.index)] if arm in block.columns and len(block) else cells
        pre_s, pre_f = cells["pretrain_seconds"].dropna(), cells["pretrain_flops"].dropna()
        pre_h = cells["pretrain_gpu_hours"].dropna() if "pretrain_gpu_hours" in cells else pd.Series(dtype=float)
        pretrain_s = float(pre_s.iloc[0]) if len(pre_s) else 0.0
        devices = sorted(set(cells["device"].dropna().astype(str)) - {""}) if "device" in cells else []
        rows.append({"arm": arm, "n_tasks": len(common), "score_mean": common["score_mean"].mean(),
                     "score_sd": common["score_mean"].std() if len(common) > 1 else math.nan,
                     "compute_seconds_per_task": common["compute_seconds"].mean(),
                     "compute_hours_per_task": common["compute_seconds"].mean() / 3600,
                     "compute_flops_per_task": common["compute_flops"].mean(),
                     **embedding_per_task(common), "device": ", ".join(devices),
                     "pretrain_seconds": pretrain_s, "pretrain_flops": float(pre_f.iloc[0]) if len(pre_f) else 0.0,
                     "pretrain_gpu_hours": float(pre_h.iloc[0]) if len(pre_h) else 0.0,
                     "cost_seconds": common["compute_seconds"].mean() + pretrain_s,
                     "params": cells["params"].iloc[0]})
    return pd.DataFrame(rows)


def embedding_per_task(cells: pd.DataFrame) -> dict[str, float]:
    """The part of the compute per task that a probed arm spent embedding the splits with its frozen backbone
    (0 for a fine-tuned arm): where probing is cheap, this is most of it."""
    return {f"embed_{kind}_per_task": float(cells[f"embed_{kind}"].mean()) if f"embed_{kind}" in cells else 0.0
            for kind in ("seconds", "flops")}


def tuning_adequacy(cells: pd.DataFrame) -> pd.DataFrame:
    """Per arm: on how many of its tasks the best trial's parameters sat at a bound of their range (each
    parameter and side), and on how many the best trial was still improving at the epoch cap, with what to do."""
    rows = []
    for arm, mine in cells.groupby("arm"):
        n = len(mine)
        sides = [side for value in mine.get("tuning_boundary_sides", pd.Series(dtype=str)).fillna("")
                 for side in str(value).split(",") if side]
        for item, count in pd.Series(sides).value_counts().sort_index().items():
            name, _, side = item.partition(":")
            rows.append({"arm": arm, "finding": f"{name} at its {side} bound", "tasks": int(count), "of": n,
                         "advice": f"widen the {name} range {'upwards' if side == 'upper' else 'downwards'}"})
        at_cap = mine.get("best_epoch_at_cap", pd.Series(dtype=float)).fillna(0)
        if at_cap.sum():
            rows.append({"arm": arm, "finding": "best epoch at the epoch cap (still improving)",
                         "tasks": int(at_cap.sum()), "of": n, "advice": "raise max_epochs"})
    return pd.DataFrame(rows, columns=["arm", "finding", "tasks", "of", "advice"])


# -------------------------------------------------------------------------------------------- Markdown
def pretrain_cell(row) -> str:
    parts = [f"{row.pretrain_gpu_hours:.3g} GPU-h" if row.pretrain_gpu_hours else
             (duration(row.pretrain_seconds) if row.pretrain_seconds else ""),
             f"{row.pretrain_flops:.2g} FLOPs" if row.pretrain_flops else ""]
    return ", ".join(p for p in parts if p) or "–"


def md_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def fmt_p(p: float) -> str:
    return "–" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def markdown(results: Results, evaluations: list[Evaluation], per_task: pd.DataFrame,
             friedman: stats.Friedman | None, cost: pd.DataFrame, exclusions: pd.DataFrame,
             adequacy: pd.DataFrame, s: Settings, notes: list[str], families: pd.DataFrame | None = None,
             block_note: str = "") -> str:
    m = results.metric
    label = figures.metric_label(m)
    lines = [f"# Analysis of experiment `{results.experiment}`", "",
             f"Tracking URI `{results.tracking_uri}`; study {', '.join(results.studies)}; metric: {label} "
             f"(`{m}`); "
             f"alpha = {s.alpha:g}; region of practical equivalence ±{s.rope:g}; "
             f"{len(results.runs)} final runs of {results.runs['arm'].nunique()} arms on "
             f"{results.runs['task'].nunique()} tasks; harness commit(s) {', '.join(c[:10] for c in results.commits) or 'not recorded'}; "
             f"built {datetime.datetime.now().isoformat(timespec='seconds')}.", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])

    table = results.cells.assign(value=[score_cell(row) for _, row in results.cells.iterrows()])
    wide = table.pivot(index="task", columns="arm", values="value").fillna("–").reset_index()
    lines += ["## Results", "", f"{label}: mean ± sample standard deviation (n − 1) over the final seeds (number of "
              "seeds). Where every seed gave the same score, the score is shown once with the number of seeds: "
              "one observation, not a standard deviation of 0.", "",
              md_table(wide.rename(columns={"task": "Task"})), ""]
    for arm in results.identical_replicate_arms():
        mine = results.cells[results.cells["arm"] == arm]
        lines += [f"- {arm}: its seeds gave identical test metrics on {int(mine['identical_replicates'].sum())} of "
                  f"{len(mine)} tasks, and the same predicted probabilities where they were logged (the solver "
                  "ignores the seed), so each of those counts as one seed: no standard deviation."]
    if results.identical_replicate_arms():
        lines += [""]
    lines += ["![scores by task](figures/scores_by_task.png)", ""]
    if families is not None and len(families):
        fam = families.assign(value=[f"{mu:.3f} ({n})" for mu, n in zip(families["mean"], families["n_tasks"])])
        lines += ["### By task family", "",
                  f"Mean of the per-task means of {label} within each family (number of tasks). A family is the first "
                  "part of a task's name unless the study's `analysis: families:` says otherwise.", "",
                  md_table(fam.pivot(index="family", columns="arm", values="value").fillna("–").reset_index()
                          .rename(columns={"family": "Family"})), ""]

    lines += ["## Contrasts", ""] + contrast_sentences(results, evaluations, s)
    if evaluations:
        rows = pd.DataFrame([{
            "Contrast": e.row["contrast"], "n": e.row["n_tasks"], "T": e.row["wilcoxon_T"],
            "R+": e.row["r_plus"], "R−": e.row["r_minus"], "p": fmt_p(e.row["p"]), "Holm p": fmt_p(e.row["p_holm"]),
            "median [95% CI]": (f"{e.row['median_difference']:+.3f} [{e.row['ci_low']:+.3f}, {e.row['ci_high']:+.3f}]"
                                if math.isfinite(e.row["ci_low"]) else f"{e.row['median_difference']:+.3f}"),
            "families: CI": (f"{e.row['n_families']}: [{e.row['cluster_ci_low']:+.3f}, {e.row['cluster_ci_high']:+.3f}]"
                             if math.isfinite(e.row["cluster_ci_low"]) else f"{e.row['n_families']}: –"),
            "HL [95% CI]": (f"{e.row['hl_estimate']:+.3f} [{e.row['hl_ci_low']:+.3f}, {e.row['hl_ci_high']:+.3f}]"
                            if math.isfinite(e.row["hl_ci_low"]) else f"{e.row['hl_estimate']:+.3f}"),
            "W/T/L": f"{e.row['wins']}/{e.row['ties']}/{e.row['losses']}",
            "P(A) / P(=) / P(B)": (f"{e.row['p_a_better']:.2f} / {e.row['p_equivalent']:.2f} / {e.row['p_b_better']:.2f}"
                                   if math.isfinite(e.row["p_a_better"]) else "–"),
            "compute A/B": e.row["compute_ratio"], "p method": e.row["p_method"]} for e in evaluations])
        lines += [md_table(rows, ".2f"), "",
                  f"Each contrast is A − B over the tasks both arms completed, on per-task means of {label} over "
                  "seeds. Wilcoxon signed-rank test, two-sided: zero differences are split evenly between R+ and "
                  "R− (Demšar 2006), equal |differences| share their average rank, T = min(R+, R−). The p-value is "
                  "exact when there are no ties or zeros (n ≤ 50), an exact permutation over all 2^n sign "
                  f"assignments when there are (n ≤ {stats.EXACT_PERMUTATION_MAX_N}), else the normal approximation "
                  f"with tie correction. With fewer than {stats.tasks_needed(s.alpha)} tasks no p below {s.alpha:g} is "
                  "possible, so none is printed. The median's 95% interval is a percentile bootstrap over tasks "
                  f"(9,999 resamples, seed {s.seed}); \"families: CI\" is the same for the median but resamples task "
                  "families "
                  "first, then tasks within each drawn family (two-stage cluster bootstrap), because tasks of one "
                  "family are not independent; with one family it is the task interval. HL: the Hodges–Lehmann "
                  "estimate (median of the Walsh averages (d_i + d_j)/2) with the interval that inverts the "
                  "signed-rank test (Hollander & Wolfe 1999; exact critical values up to 50 tasks, normal "
                  "approximation above; none below 6 tasks): the estimate and interval that match the p-value. "
                  "Holm's adjustment runs over the named contrasts that have a p-value, and separately over the "
                  "exploratory pairs that have one. "
                  "P(A) / P(=) / P(B): Bayesian signed-rank test (Benavoli et al. 2017; Dirichlet process, prior "
                  f"strength 0.5 at zero, 50,000 samples), equivalence within ±{s.rope:g}. compute A/B: mean "
                  "compute per task (tuning trials, final seeds and a probed arm's embedding pass, seconds), "
                  "pretraining apart.", ""]
        lines += [f"![{e.contrast.label}](figures/{difference_png(e.contrast)})" for e in evaluations] + [""]
        lines += ["### Per task, on the same test sequences", "",
                  "Each arm's prediction is the argmax of its class probabilities averaged over its final seeds; "
                  "the two arms' MCC difference is bootstrapped over the test sequences both were scored on "
                  f"(paired: one draw of sequences scores both arms; 9,999 resamples, seed {s.seed}). CI: the 2.5 "
                  "and 97.5 percentiles; p: twice the share of resampled differences on the other side of 0; Holm "
                  "over the tasks of a contrast. This asks whether these two trained systems differ on this test "
                  "set, not whether another training run would: the across-task test answers that.", "",
                  md_table(per_task.assign(p=per_task["p"].map(fmt_p), p_holm=per_task["p_holm"].map(fmt_p),
                                           significant=per_task["significant"].map({True: "yes", False: "no"}))
                           .rename(columns=PER_TASK_HEADERS)), ""]

    lines += ["## All arms: Friedman test and Nemenyi critical difference", ""]
    if friedman is None:
        lines += [f"Not computed: {block_note}.", ""]
    else:
        ranks = friedman.avg_ranks.rename("Average rank (1 = best)").rename_axis("Arm").reset_index()
        lines += [md_table(ranks), "",
                  f"Friedman χ²_F = {friedman.chi2:.3f} (k = {friedman.k} arms, N = {friedman.n} tasks): permutation "
                  f"p = {fmt_p(friedman.permutation_p)} ("
                  + ("exact, all within-task orders of the arms" if friedman.permutation_exact else
                     f"{stats.PERMUTATIONS:,} random within-task permutations of the arms") + "). "
                  f"Approximations, for comparison with published tables: χ² with {friedman.k - 1} df p = "
                  f"{fmt_p(friedman.chi2_p)} (with tie correction χ² = {friedman.chi2_tie_corrected:.3f}, p = "
                  f"{fmt_p(friedman.chi2_tie_corrected_p)}); Iman–Davenport "
                  + (f"F_F = {friedman.f:.3f} (df {friedman.f_df[0]}, {friedman.f_df[1]}), p = {fmt_p(friedman.f_p)}. "
                     if math.isfinite(friedman.f) else "F_F undefined (the arms are ranked alike on every task). ")
                  + f"Nemenyi: q_{friedman.alpha:g} = {friedman.q_alpha:.3f}, critical difference CD = "
                  f"{friedman.cd:.3f}; arms joined by a bar in the diagram are not significantly different.",
                  "", "![critical difference](figures/critical_difference.png)", ""]
        pairs = stats.nemenyi_pairs(friedman)
        sig = pairs[pairs["significant"]]
        lines += [("Significantly different pairs: " + "; ".join(
            f"{r.arm_a} vs {r.arm_b} (rank difference {r.rank_difference:.2f}, p = {fmt_p(r.nemenyi_p)})"
            for r in sig.itertuples()) if len(sig) else "No pair of arms differs by more than the critical difference.")
                  + " All pairs: nemenyi.csv.", ""]

    lines += ["## Cost", "",
              f"Mean {label} over the tasks in the rank block (all of an arm's tasks where there is none), and "
              "the compute one task costs (all tuning trials and final seeds) in FLOPs (counted by torch on the "
              "first step, scaled by the tokens trained on) and in hours of the device it ran on; a probed arm's "
              "compute includes its frozen backbone's pass over the task's splits, counted once per task however "
              "many trials and seeds reuse it; pretraining is "
              "what a checkpoint's run recorded or its authors declared (pretrain_cost.json or pretrain_cost=), "
              "counted once, in GPU-hours and FLOPs.", "",
              md_table(cost.assign(pretrain=[pretrain_cell(r) for r in cost.itertuples()])[cost_md_columns(cost)]
                       .rename(columns=cost_headers(m)), ".3g"),
              "", f"The sd is across tasks (how much the arm's {label} varies from task to task), not an uncertainty.",
              "", "![cost-benefit](figures/cost_benefit.png)", ""]

    lines += ["## Tuning adequacy", "",
              "Where the best trial's continuous parameters lie in the outer 5% of their range (in log space for "
              "log ranges), the optimum may lie outside it; where its best epoch is the epoch cap, the arm was "
              "still improving. An arm that is not tuned well enough loses for that reason, not on its merits.", ""]
    if len(adequacy):
        lines += [f"- {r.arm}: {r.finding} on {r.tasks} of {r.of} tasks: {r.advice}." for r in adequacy.itertuples()]
    else:
        lines += ["No arm's best trial sat at a bound of its search space or at the epoch cap."]
    lines += [""]

    lines += ["## Exclusions", ""]
    lines += [md_table(exclusions.rename(columns={"what": "What", "reason": "Reason"})) if len(exclusions)
              else "Nothing was excluded.", ""]
    return "\n".join(lines)


PER_TASK_HEADERS = {"contrast": "Contrast", "task": "Task", "n_test": "Test sequences", "n_seeds_a": "Seeds A",
                    "n_seeds_b": "Seeds B", "mcc_a": "MCC A", "mcc_b": "MCC B", "mcc_difference": "MCC A − B",
                    "ci_low": "CI low", "ci_high": "CI high", "p": "p", "note": "Note", "p_holm": "Holm p",
                    "significant": "Significant"}


def cost_md_columns(cost: pd.DataFrame) -> list[str]:
    """The cost table's columns in report.md; the embedding pass's only where some arm was probed."""
    embedded = "embed_flops_per_task" in cost and bool((cost["embed_flops_per_task"] > 0).any())
    return ["arm", "n_tasks", "score_mean", "score_sd", "compute_flops_per_task",
            *(["embed_flops_per_task"] if embedded else []), "compute_hours_per_task", "device", "pretrain", "params"]


def cost_headers(metric: str) -> dict[str, str]:
    label = figures.metric_label(metric)
    return {"arm": "Arm", "n_tasks": "Tasks", "score_mean": f"{label} (mean over tasks)",
            "score_sd": "sd across tasks", "compute_flops_per_task": f"{figures.metric_label('flops')} per task",
            "embed_flops_per_task": "of which embedding pass",
            "compute_hours_per_task": "Device-hours per task", "device": "Device", "pretrain": "Pretraining",
            "params": figures.metric_label("params")}


def score_cell(cell: pd.Series) -> str:
    """'0.812 ± 0.031 (3 seeds)'; '0.812 (1 distinct of 3 seeds: deterministic)' where every seed gave the
    same score (a standard deviation of 0 would read as certainty); '0.812 (1 seed)'."""
    mu, n_runs = cell["score_mean"], int(cell.get("n_runs", cell["n_seeds"]))
    distinct = int(cell.get("n_distinct_scores", cell["n_seeds"]))
    if n_runs == 1:
        return f"{mu:.3f} (1 seed)"
    if distinct == 1:
        why = "deterministic" if bool(cell.get("identical_replicates", False)) else "same score, different predictions"
        return f"{mu:.3f} (1 distinct of {n_runs} seeds: {why})"
    return f"{mu:.3f} ± {cell['score_sd']:.3f} ({n_runs} seeds)"


def contrast_sentences(results: Results, evaluations: list[Evaluation], s: Settings) -> list[str]:
    """The contrasts in words: the named ones, then the exploratory pairs with what makes them exploratory."""
    named = [e for e in evaluations if not e.contrast.exploratory]
    exploratory = [e for e in evaluations if e.contrast.exploratory]
    lines = []
    if results.cells["arm"].nunique() < 2:
        return ["Only one arm has results: there is nothing to compare.", ""]
    if named:
        lines += [f"- {sentence(e.row, s.alpha)}" for e in named] + [""]
    else:
        lines += ["None of the named contrasts (pretraining, fine-tuning vs probing, BPE, architecture, pretrained "
                  "transformer vs CNN, or "
                  "one the study declares) could be evaluated on these arms.", ""]
    if exploratory:
        lines += ["Exploratory pairs: arms that no named contrast compares. Each sentence names the factors of the "
                  "model in which the pair differs; where there are several, the difference cannot be put down to "
                  "any one of them. Only the budget, the precision and the data are held equal: a task enters a "
                  "pair only where they are. Holm's adjustment runs over these pairs alone.", ""]
        lines += [f"- {sentence(e.row, s.alpha)}" for e in exploratory] + [""]
    if not evaluations:
        lines += ["No pair of arms could be compared: see the exclusions for why each was left out.", ""]
    return lines
