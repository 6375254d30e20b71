"""Leakage between splits and tasks: the index, the report (CSV, summary, heat map, MLflow run), its figures on
../shared's GUE tasks, and pretraining corpora kept clear of dev and test sequences."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import shared_path, write_split
from harness.cli import main
from harness.leakage import (
    COLUMNS,
    leakage_table,
    load_groups,
    reverse_complement,
    substring_matches,
)
from harness.pretrain import Corpus, cut_windows, read_corpus


def random_dna(rng: np.random.Generator, n: int, length: int) -> list[str]:
    return ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ the index
def test_substring_matches_both_strands_and_nothing_else():
    hay = ["AAAACCCCGGGGTTTTACGA", "TTTTTTTTTTTTTTTTTTTT"]
    needles = ["CCCCGGGG",  # forward, inside hay 0
               reverse_complement("GGGTTTTACG"),  # only its reverse complement is inside hay 0
               "GATCGATC",  # nowhere
               "TTTTTTTT"]  # inside hay 1 (and hay 0 has only four Ts in a row)
    assert sorted(substring_matches(needles, hay)) == [(0, 0, True), (1, 0, False), (3, 1, True)]
    assert sorted(substring_matches(needles, hay, reverse_complements=False)) == [(0, 0, True), (3, 1, True)]
    # proper: a sequence is never inside itself; without it, equal sequences match
    assert list(substring_matches(hay, hay, proper=True)) == []
    assert sorted(substring_matches(hay, hay)) == [(0, 0, True), (1, 1, True)]


# ------------------------------------------------------------------------------------------------ the report
def write_tasks(root, plant: bool, seed: int = 0):
    """Two tasks of random DNA: fam/long (100 nt) and fam/short (40 nt). With `plant`: 6 test sequences of
    fam/short inside train sequences of fam/long (3 of them reverse-complemented, 4 with the same label), and
    2 train sequences of fam/long copied into fam/short's dev (as 100-nt sequences)."""
    rng = np.random.default_rng(seed)
    long_train, short_test = random_dna(rng, 30, 100), random_dna(rng, 10, 40)
    short_dev = random_dna(rng, 10, 40)
    long_labels, short_labels = [i % 2 for i in range(30)], [i % 2 for i in range(10)]
    if plant:
        for i in range(6):
            piece = short_test[i] if i % 2 == 0 else reverse_complement(short_test[i])
            long_train[i] = long_train[i][:30] + piece + long_train[i][70:]
        # short test i sits in long train i; labels equal for i = 0..3 (both i % 2), differ for i = 4, 5
        long_labels[4], long_labels[5] = 1, 0
        short_dev[:2] = long_train[10:12]
    for task, splits in (("fam/long", {"train": (long_train, long_labels), "dev": (random_dna(rng, 6, 100), [0, 1] * 3),
                                       "test": (random_dna(rng, 6, 100), [0, 1] * 3)}),
                         ("fam/short", {"train": (random_dna(rng, 20, 40), [0, 1] * 10), "dev": (short_dev, short_labels),
                                        "test": (short_test, short_labels)})):
        for split, (seqs, labels) in splits.items():
            write_split(root / task / f"{split}.csv", seqs, labels)
    return root


def test_leakage_report_counts_planted_leaks_and_logs_them(workdir):
    root = write_tasks(workdir / "gue", plant=True)
    assert main(["leakage", "--data", str(root), "--out", "leaks"]) == 0
    table = pd.read_csv(workdir / "leaks" / "leakage.csv")
    assert tuple(table.columns) == COLUMNS
    rows = {(r.task_a, r.split_a, r.task_b, r.split_b, r.kind): r for r in table.itertuples()}
    inside = rows[("fam/short", "test", "fam/long", "train", "contained")]
    assert (inside.count, inside.same_label, inside.count_forward, inside.same_label_forward) == (6, 4, 3, 2)
    copied = rows[("fam/short", "dev", "fam/long", "train", "exact")]
    assert (copied.count, copied.count_forward) == (2, 2)
    assert rows[("fam/long", "train", "fam/short", "dev", "exact")].count == 2  # the same leak, seen from fam/long
    assert len(table) == 3  # random DNA shares nothing else
    summary = (workdir / "leaks" / "leakage.md").read_text()
    assert "6 of the 10 test sequences of fam/short (60.0%) lie inside train sequences of fam/long" in summary
    assert "forward strand only: 3" in summary

    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("leakage").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "leakage"
    assert run.data.metrics["leakage_sequences"] == 30 + 6 + 6 + 20 + 10 + 10
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"leakage.csv", "leakage.md", "leakage.png"}


def test_leakage_report_without_leaks_is_empty(workdir):
    root = write_tasks(workdir / "gue", plant=False)
    assert main(["leakage", "--data", str(root), "--out", "leaks", "--tasks", "fam/long,fam/short"]) == 0
    assert pd.read_csv(workdir / "leaks" / "leakage.csv").empty
    assert "## Dev and test sequences found in another task's training data\n\n- none" in \
        (workdir / "leaks" / "leakage.md").read_text()


def test_leakage_names_a_missing_folder(workdir, capsys):
    assert main(["leakage", "--data", str(workdir / "nowhere")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    root = write_tasks(workdir / "gue", plant=False)
    assert main(["leakage", "--data", str(root), "--tasks", "fam/absent"]) == 2
    assert "tasks=fam/absent" in capsys.readouterr().err


def test_real_gue_leaks_match_the_issue():
    """Issue 14's figures on ../shared, forward strand (the report's *_forward columns), and a brute-force check."""
    root = shared_path("data", "gue")
    tasks = ["prom/prom_core_tata", "prom/prom_300_tata", "prom/prom_core_all", "prom/prom_core_notata", "tf/0", "tf/1"]
    groups = load_groups(root, tasks)
    table, _ = leakage_table(groups)
    row = table.set_index(["task_a", "split_a", "task_b", "split_b", "kind"])
    split = {(g.task, g.split): g.data for g in groups}

    core = row.loc[("prom/prom_core_tata", "test", "prom/prom_300_tata", "train", "contained")]
    assert core.count_forward == 492 and core["count"] == 492
    # brute force: every pair compared with `in`, no index
    test, train = split[("prom/prom_core_tata", "test")], split[("prom/prom_300_tata", "train")]
    assert sum(any(s in t for t in train.sequences) for s in test.sequences) == 492
    # The issue's 485 takes the label of the first container in file order; the report counts a sequence with a
    # same-label container anywhere (490): between "every container agrees" and "some container agrees".
    first = {}
    for i, j, forward in sorted(substring_matches(test.sequences, train.sequences, reverse_complements=False)):
        first.setdefault(i, test.labels[i] == train.labels[j])
    assert sum(first.values()) == 485 and core.same_label_forward == 490

    dev = split[("prom/prom_core_all", "dev")]
    in_train = set(split[("prom/prom_core_notata", "train")].sequences) | set(split[("prom/prom_core_tata", "train")].sequences)
    assert len(dev) == 5920 and sum(s in in_train for s in dev.sequences) == 5242
    notata = row.loc[("prom/prom_core_all", "dev", "prom/prom_core_notata", "train", "exact")].count_forward
    tata = row.loc[("prom/prom_core_all", "dev", "prom/prom_core_tata", "train", "exact")].count_forward
    assert notata + tata == 5242  # the two training sets are disjoint, so the rows add up

    assert row.loc[("tf/0", "test", "tf/1", "train", "exact")].count_forward == 9
    assert ("mouse/0", "test", "tf/1", "train", "exact") not in row.index  # negative control: not loaded, not there


# ------------------------------------------------------------------------------------ clean pretraining corpora
def corpus_folder(root, plant: bool, seed: int = 1):
    """A GUE folder: fam/a's train (12 x 120 nt) and fam/b's dev/test (8 x 60 nt each). With `plant`, 3 of fam/a's
    training sequences contain a dev or test sequence of fam/b (one reverse-complemented) at position 2, so the
    first 64-nt window of each contains it."""
    rng = np.random.default_rng(seed)
    train = random_dna(rng, 12, 120)
    held = {"dev": random_dna(rng, 8, 60), "test": random_dna(rng, 8, 60)}
    if plant:
        for i, piece in enumerate([held["dev"][0], held["test"][1], reverse_complement(held["test"][2])]):
            train[i] = train[i][:2] + piece + train[i][62:]
    write_split(root / "fam" / "a" / "train.csv", train, [0, 1] * 6)
    for split, seqs in held.items():
        write_split(root / "fam" / "a" / f"{split}.csv", random_dna(rng, 4, 120), [0, 1] * 2)
        write_split(root / "fam" / "b" / f"{split}.csv", seqs, [0, 1] * 4)
    write_split(root / "fam" / "b" / "train.csv", random_dna(rng, 6, 60), [0, 1] * 3)
    return root, [s for seqs in held.values() for s in seqs]


def overlaps_any(window: str, evaluation: list[str]) -> bool:
    """Brute force: the window equals, contains or lies inside an evaluation sequence, either strand."""
    rc = reverse_complement(window)
    return any(e in window or reverse_complement(e) in window or window in e or rc in e for e in evaluation)


@pytest.mark.parametrize("plant", [True, False])
def test_corpus_drops_windows_that_overlap_dev_or_test(plant, tmp_path):
    root, evaluation = corpus_folder(tmp_path / "gue", plant)
    raw = cut_windows(read_corpus(root), 64)  # what the corpus would be without the exclusion
    assert sum(overlaps_any(w, evaluation) for w in raw) == (3 if plant else 0)  # the brute force sees the plants
    corpus = Corpus.load(str(root), 64)
    used = corpus.train.sequences + corpus.held_out.sequences
    # each planted 120-nt training sequence goes whole: its two windows (64 + 56 nt)
    assert corpus.excluded == (6 if plant else 0) and len(used) == len(raw) - corpus.excluded
    assert not any(overlaps_any(w, evaluation) for w in used)


@pytest.mark.slow
@pytest.mark.parametrize("plant", [True, False])
def test_pretraining_never_sees_a_dev_or_test_sequence(plant, workdir, tiny_study):
    root, evaluation = corpus_folder(workdir / "gue", plant)
    raw = cut_windows(read_corpus(root), 64)
    assert main(["pretrain", "--arm", "convnova_char", "--corpus", str(root), "--study", str(tiny_study),
                 "--window", "64", "--steps", "2", "--batch-size", "4"]) == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    assert run.data.metrics["excluded_eval_overlap"] == (6 if plant else 0)
    corpus = Corpus.load(str(root), 64)  # the run's windows: same fingerprint
    assert corpus.fingerprint == run.data.tags["corpus_fingerprint"]
    used = corpus.train.sequences + corpus.held_out.sequences
    assert len(used) == len(raw) - (6 if plant else 0)
    assert not any(overlaps_any(w, evaluation) for w in used)


@pytest.mark.parametrize("exclude", [True, False])
def test_tokenizer_checks_a_fasta_corpus_against_exclude_eval(exclude, workdir):
    root, evaluation = corpus_folder(workdir / "gue", plant=False)
    rng = np.random.default_rng(2)
    records = random_dna(rng, 4, 400)
    records[1] = records[1][:110] + reverse_complement(evaluation[5]) + records[1][170:]  # inside window 100-199
    with gzip.open(workdir / "corpus.fa.gz", "wt") as f:
        f.write("".join(f">r{i}\n{r}\n" for i, r in enumerate(records)))
    args = ["tokenizer", "--corpus", str(workdir / "corpus.fa.gz"), "--vocab-size", "64", "--window", "100"]
    assert main(args + (["--exclude-eval", str(root)] if exclude else [])) == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("tokenizers").experiment_id])
    assert run.data.metrics["excluded_eval_overlap"] == (1 if exclude else 0)


def test_exclude_eval_names_a_folder_without_eval_data(workdir, capsys):
    (workdir / "empty").mkdir()
    with gzip.open(workdir / "corpus.fa.gz", "wt") as f:
        f.write(">r\n" + "ACGT" * 100 + "\n")
    assert main(["tokenizer", "--corpus", str(workdir / "corpus.fa.gz"), "--exclude-eval", str(workdir / "empty")]) == 2
    assert "exclude_eval=" in capsys.readouterr().err


def test_the_report_notes_tasks_whose_splits_share_sequences():
    import pandas as pd

    from analysis.collect import overlap_notes

    cells = pd.DataFrame({"arm": ["a", "b", "a"], "task": ["t1", "t1", "t2"],
                          "overlap_train_test": [3.0, 3.0, 0.0], "overlap_dev_test_contained": [0.0, 1.0, 0.0]})
    assert overlap_notes(cells) == ["t1: its splits share sequences (train_test 3, dev_test_contained 1; reverse "
                                    "complements count): reported, not removed"]
    assert overlap_notes(cells.assign(overlap_train_test=0.0, overlap_dev_test_contained=0.0)) == []  # control


def test_a_held_out_sequence_across_a_window_boundary_is_excluded(tmp_path):
    """A FASTA record with a test sequence straddling two windows: both windows go (neither contains it whole)."""
    from harness.pretrain import exclude_eval_overlap

    rng = np.random.default_rng(3)
    record = "".join(rng.choice(list("ACGT"), 5000))
    held = record[400:700]  # crosses the boundary at 512 with window 512
    root = tmp_path / "gue"
    write_split(root / "fam" / "t" / "train.csv", ["".join(rng.choice(list("ACGT"), 300))], [0])
    write_split(root / "fam" / "t" / "dev.csv", ["".join(rng.choice(list("ACGT"), 300))], [0])
    write_split(root / "fam" / "t" / "test.csv", [held], [0])
    windows, excluded = exclude_eval_overlap([record], 512, "genome.fa", str(root))
    assert excluded == 2 and record[0:512] not in windows and record[512:1024] not in windows
    assert record[1024:1536] in windows  # its context starts at 725, after the held-out sequence ends (700)
    clean, none = exclude_eval_overlap([record[1500:]], 512, "genome.fa", str(root))  # control: far from it
    assert none == 0 and len(clean) == len(cut_windows([record[1500:]], 512))


def test_one_very_short_sequence_does_not_make_the_search_compare_all_pairs():
    import time

    from harness.leakage import substring_matches

    rng = np.random.default_rng(0)
    long = ["".join(rng.choice(list("ACGT"), 300)) for _ in range(3000)]
    start = time.perf_counter()
    found = list(substring_matches(["ACGTA", long[7][100:170]], long))
    assert time.perf_counter() - start < 5
    assert (1, 7, True) in found and sum(i == 0 for i, _, _ in found) > 100  # the 5-mer is everywhere


@pytest.mark.slow
def test_pretraining_on_the_shared_gue_folder_excludes_its_eval_sequences(workdir, tiny_study):
    """../shared's 8 real tasks as a corpus: windows overlapping their dev/test sequences are excluded and
    counted; no window left contains, or lies inside, one of them (checked with the index, either strand)."""
    from harness.leakage import eval_sequences, overlapping

    root = shared_path("data", "gue")
    assert main(["pretrain", "--arm", "convnova_char", "--corpus", str(root), "--study", str(tiny_study),
                 "--window", "128", "--steps", "1", "--batch-size", "4"]) == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    corpus = Corpus.load(str(root), 128)
    assert corpus.fingerprint == run.data.tags["corpus_fingerprint"]
    assert run.data.metrics["excluded_eval_overlap"] == corpus.excluded > 10_000
    used = corpus.train.sequences + corpus.held_out.sequences
    assert not overlapping(used, eval_sequences(str(root))).any()
    raw = cut_windows(read_corpus(root), 128)
    assert overlapping(raw, eval_sequences(str(root))).sum() > 0  # control: the raw corpus does overlap
