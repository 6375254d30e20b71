"""A report for any set of arms (issue 16): arms that form no named contrast are still compared, as exploratory
pairs with their own Holm family; the file list is the files written; no headerless CSV; a deterministic arm
shows as one seed; labels in words.

The experiment is a real harness run of two arms that no named contrast pairs (dnabert2_char_scratch, a small
transformer trained epoch by epoch, and kmer_logreg, a deterministic one-pass estimator) on six small tasks: six
is the fewest with which the signed-rank test can reach p < 0.05, so a Holm-adjusted p exists."""

from __future__ import annotations

import math
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.cli import main as analyze
from analysis.collect import Results, cell_table
from analysis.contrasts import (
    Contrast,
    adjust,
    comparable_tasks,
    default_contrasts,
    evaluate,
    exploratory_contrasts,
)
from analysis.report import MARKER, score_cell
from conftest import TINY_STUDY, write_split
from harness.cli import main as harness
from harness.schema import FACTORS, NOT_APPLICABLE, Metric, Tag

ARMS = ("dnabert2_char_scratch", "kmer_logreg")
TASKS = [f"toy/part{i}" for i in range(6)]
STUDY = TINY_STUDY.replace("name: tiny", "name: any_arms").replace("tasks: [toy/motif_binary]",
                                                                   f"tasks: [{', '.join(TASKS)}]")


def six_tasks(root: Path) -> Path:
    """Six GUE-layout tasks cut from disjoint slices of the synthetic binary motif task (fast to train on)."""
    from harness.synthetic import make_synthetic_task

    task = make_synthetic_task("synthetic/motif_binary")
    for i, name in enumerate(TASKS):
        for split, n in (("train", 100), ("dev", 30), ("test", 30)):
            data = task.split(split)
            part = slice(i * n, (i + 1) * n)
            write_split(root / name / f"{split}.csv", data.sequences[part], data.labels[part])
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    """The harness run of both arms and `python -m analysis` over it: (report folder, tracking URI)."""
    root = tmp_path_factory.mktemp("any_arms")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        data = six_tasks(root / "gue")
        study = root / "any_arms.yaml"
        study.write_text(STUDY)
        for arm in ARMS:
            assert harness(["run", "--arm", arm, "--study", str(study), "--data", str(data), "--tasks", ",".join(TASKS),
                            "--n-trials", "1", "--seeds", "2"]) == 0
        assert analyze(["--experiment", "any_arms", "--out", "report", "--no-log"]) == 0
    return root / "report", uri


def listed_files(markdown: str) -> list[str]:
    """The files report.md's '## Files' section lists (`- `name`: what`)."""
    section = markdown.split("\n## Files\n", 1)[1]
    return re.findall(r"^- `([^`]+)`", section, flags=re.MULTILINE)


@pytest.mark.slow
def test_arms_without_a_named_contrast_are_compared_as_an_exploratory_pair(report):
    folder, uri = report
    contrasts = pd.read_csv(folder / "contrasts.csv")
    (row,) = contrasts.to_dict("records")
    assert (row["kind"], row["a"], row["b"], row["contrast"]) == (
        "exploratory", "dnabert2_char_scratch", "kmer_logreg", "exploratory: dnabert2_char_scratch − kmer_logreg")
    # Every task enters: the budget and the data are equal, though the k-mer arm is fitted in one pass.
    assert row["n_tasks"] == 6 and pd.isna(row["tasks_left_out"])
    assert math.isfinite(row["p"]) and row["p_holm"] == pytest.approx(row["p"])  # a family of one pair
    assert set(row["differs_in"].split(", ")) >= {"model", "tokenizer", "architecture"}
    text = (folder / "report.md").read_text()
    assert "None of the named contrasts" in text
    assert re.search(r"exploratory, dnabert2_char_scratch − kmer_logreg \(they differ in model, architecture,? "
                     r".*and tokenizer: not a one-factor contrast\)", text)
    assert "Holm p over the exploratory pairs = " in text
    # What the budget check saw: the parents of both arms carry the study's budget; the k-mer arm's precision
    # is n/a (it has none), which marks it as fitted in one pass.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("any_arms").experiment_id
    parents = client.search_runs([exp], "tags.stage = 'study'")
    budget = {(p.data.tags[Tag.ARM], p.data.tags[Tag.MAX_EPOCHS], p.data.tags[Tag.SEEDS]) for p in parents}
    assert budget == {("kmer_logreg", "2", "2"), ("dnabert2_char_scratch", "2", "2")}
    assert {p.data.tags[Tag.PRECISION] for p in parents if p.data.tags[Tag.ARM] == "kmer_logreg"} == {NOT_APPLICABLE}


@pytest.mark.slow
def test_the_file_list_is_the_files_written_and_every_csv_has_a_header(report):
    folder, _ = report
    listed = listed_files((folder / "report.md").read_text())
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    marker = sorted((folder / MARKER).read_text().split())
    assert sorted(listed) == on_disk and marker == sorted(set(listed) - {MARKER})  # every file, the marker too
    assert len(listed) == len(set(listed))
    # Two arms: no Friedman test, so none of its tables, and the report says why rather than listing them.
    assert not {"ranks.csv", "friedman.csv", "nemenyi.csv"} & set(listed)
    assert "Not written: ranks.csv, friedman.csv and nemenyi.csv, because the Friedman test was not computed" in \
        (folder / "report.md").read_text()
    for csv in folder.glob("*.csv"):
        frame = pd.read_csv(csv)  # pandas raises on a file with no header at all
        assert len(frame.columns) and len(frame), csv.name
        assert csv.stat().st_size > 10
    assert "Not computed: not computed" not in (folder / "report.md").read_text()


@pytest.mark.slow
def test_the_deterministic_arm_shows_as_one_seed(report):
    folder, _ = report
    text = (folder / "report.md").read_text()
    results = text.split("## Results", 1)[1].split("##", 1)[0]
    rows = [line for line in results.splitlines() if line.startswith("| toy/")]
    assert len(rows) == 6
    for line in rows:
        _, neural, kmer = (cell.strip() for cell in line.strip("|").split("|"))
        assert re.fullmatch(r"-?\d\.\d{3} \(1 distinct of 2 seeds: deterministic\)", kmer), kmer
        # Negative control: the transformer's seeds are not identical replicates. They differ in score (± sd), or,
        # where every seed collapsed to one class (MCC 0 on so little data), in their predictions only.
        assert re.fullmatch(r"-?\d\.\d{3} ± \d\.\d{3} \(2 seeds\)", neural) or \
            neural == "0.000 (1 distinct of 2 seeds: same score, different predictions)", neural
    assert "± 0.000" not in text
    cells = pd.read_csv(folder / "cells.csv").set_index("arm")
    assert cells.loc["kmer_logreg", "test_mcc_sd"].isna().all()  # no sd of 0 in the table either


@pytest.mark.slow
def test_labels_are_words(report):
    folder, _ = report
    text = (folder / "report.md").read_text()
    assert "metric: Test MCC (`test_mcc`)" in text
    assert "| Arm | Tasks | Test MCC (mean over tasks) | sd across tasks | FLOPs per task |" in text
    assert "| Contrast | Task | Test sequences |" in text
    for header in ("score_mean", "compute_flops_per_task", "mcc_difference", "| what | reason |"):
        assert header not in text


# ------------------------------------------------------------------------------ without training
def hand_results(max_epochs: dict[str, str], precision: dict[str, str], tasks: int = 6) -> Results:
    """Arms on `tasks` tasks with every factor equal except the model's; per arm its recorded epoch cap and
    precision. Arm 'one_pass' scores 0.6 on every seed (deterministic); the others vary by seed."""
    rng = np.random.default_rng(0)
    runs = []
    for arm in max_epochs:
        for t in range(tasks):
            for seed in range(3):
                score = 0.6 if arm == "one_pass" else 0.5 + 0.05 * t + rng.normal(0, 0.01)
                runs.append({"arm": arm, "task": f"f/t{t}", "seed": seed, "test_mcc": score, "test_f1": score,
                             "test_accuracy": score, "test_auroc": score, "train_seconds": 1.0, "flops": 1.0,
                             Metric.PARAMS: 10, "pretrain_seconds": math.nan, "pretrain_flops": math.nan,
                             "pretrain_gpu_hours": math.nan, "run_id": f"{arm}-{t}-{seed}"})
    runs = pd.DataFrame(runs)
    cells = cell_table(runs, "test_mcc", pd.DataFrame(columns=["arm", "task", "trials_run", "tuning_seconds",
                                                               "tuning_flops"]))
    for factor in FACTORS:
        cells[factor] = "same"
    cells[Tag.MODEL] = cells["arm"]
    cells[Tag.MAX_EPOCHS] = cells["arm"].map(max_epochs)
    cells[Tag.PRECISION] = cells["arm"].map(precision)
    cells["device"] = "cpu"
    arms = pd.DataFrame({Tag.INIT: "scratch", Tag.MODEL: list(max_epochs), Tag.TOKENIZER: "char",
                         Tag.FAMILY: ["kmer" if a == "one_pass" else "other" for a in max_epochs]},
                        index=list(max_epochs))
    return Results("e", "sqlite://", "test_mcc", runs, cells, arms)


def test_a_one_pass_arm_is_comparable_on_budget_whatever_epoch_cap_it_recorded():
    results = hand_results({"one_pass": "1", "net": "5"}, {"one_pass": NOT_APPLICABLE, "net": "fp32"})
    assert default_contrasts(results.arms) == []
    (pair,) = exploratory_contrasts(results.arms.index, [])
    common, missing, unlike = comparable_tasks(pair, results)
    assert len(common) == 6 and not missing and not unlike
    # Negative control: two epoch-trained arms with different epoch caps did not get the same budget.
    nets = hand_results({"net_a": "1", "net_b": "5"}, {"net_a": "fp32", "net_b": "fp32"})
    (pair,) = exploratory_contrasts(nets.arms.index, [])
    common, _, unlike = comparable_tasks(pair, nets)
    assert common == [] and all("max_epochs differs (net_a: 1, net_b: 5)" in d[0] for d in unlike.values())
    # ...nor, with a one-pass arm, do two different numbers of seeds (the rest of the budget is still checked).
    seeds = hand_results({"one_pass": "1", "net": "5"}, {"one_pass": NOT_APPLICABLE, "net": "fp32"})
    seeds.cells.loc[seeds.cells["arm"] == "net", Tag.SEEDS] = "5"
    assert comparable_tasks(Contrast("exploratory", "net", "one_pass"), seeds)[0] == []


def test_exploratory_pairs_skip_named_pairs_and_have_their_own_holm_family():
    named = [Contrast("user", "b", "a")]
    pairs = exploratory_contrasts(["c", "a", "b", "a"], named)
    assert [(c.a, c.b) for c in pairs] == [("a", "c"), ("b", "c")]  # (a, b) is asked by name, either way round
    assert all(c.exploratory and c.label == f"exploratory: {c.a} − {c.b}" for c in pairs)

    results = hand_results({"net": "5", "one_pass": "1", "wide": "5"},
                           {"net": "fp32", "one_pass": NOT_APPLICABLE, "wide": "fp32"})
    named = [Contrast("user", "net", "wide")]
    evaluations = [evaluate(c, results, 0.05, 0.01, n_resamples=200)
                   for c in named + exploratory_contrasts(results.arms.index, named)]
    adjust(evaluations)
    p = {e.contrast.label: (e.row["p"], e.row["p_holm"]) for e in evaluations}
    # The named contrast is a family of one: Holm leaves its p alone, however many exploratory pairs there are.
    raw, holm = p["user: net − wide"]
    assert math.isfinite(raw) and holm == raw
    explored = [v for k, v in p.items() if k.startswith("exploratory")]
    assert len(explored) == 2 and all(math.isfinite(raw) for raw, _ in explored)
    smallest = min(explored)
    assert smallest[1] == pytest.approx(min(1.0, 2 * smallest[0]))  # Holm over the two exploratory pairs
    assert {e.row["kind"] for e in evaluations} == {"named", "exploratory"}


def test_a_score_is_shown_once_when_every_seed_gave_it():
    results = hand_results({"one_pass": "1", "net": "5"}, {"one_pass": NOT_APPLICABLE, "net": "fp32"})
    cells = results.cells.set_index(["arm", "task"])
    assert score_cell(cells.loc[("one_pass", "f/t0")]) == "0.600 (1 distinct of 3 seeds: deterministic)"
    assert re.fullmatch(r"0\.\d{3} ± 0\.0\d\d \(3 seeds\)", score_cell(cells.loc[("net", "f/t0")]))
    one = cells.loc[("net", "f/t0")].copy()
    one[["n_runs", "n_seeds", "n_distinct_scores"]] = 1
    assert score_cell(one) == f"{one['score_mean']:.3f} (1 seed)"
    # Same score but different predictions (a model that collapsed to one class on every seed): one value, and
    # the report does not call it deterministic.
    collapsed = cells.loc[("one_pass", "f/t0")].copy()
    collapsed["identical_replicates"] = False
    assert score_cell(collapsed) == "0.600 (1 distinct of 3 seeds: same score, different predictions)"
