"""Shared sequences between splits and tasks: exact duplicates and containment, reverse complements included.

One index serves three jobs: the leakage report over a GUE folder (`python -m harness leakage`), the
per-task overlap counts of `data.count_overlaps`, and the removal of dev/test sequences from pretraining
corpora (`pretrain.Corpus.load`).

How matches are found without comparing all pairs:
  - a *needle* (a sequence that may lie inside another) is indexed under its anchor, its first k-mer, and,
    for reverse complements, under the first k-mer of its reverse complement;
  - every window of k nucleotides of a *haystack* is looked up in that dict; each candidate is verified
    with Python's substring test (`needle in haystack`, or its reverse complement).
  k is the length of the shortest needle, so every needle has an anchor and a window can only hit needles
  whose first k nucleotides it equals. Cost: one dict look-up per haystack position plus one substring test
  per candidate; exact duplicates are hashed (canonical form = min(sequence, reverse complement)).

"Contained" means a proper substring (strictly shorter); a sequence equal to another is an exact match.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import SPLITS, Split, read_split
from .errors import DataError
from .schema import Artifact, Metric, Stage, Tag

log = logging.getLogger(__name__)

_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
COLUMNS = ("task_a", "split_a", "task_b", "split_b", "kind", "count", "same_label", "count_forward",
           "same_label_forward")


def reverse_complement(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


def canonical(seq: str) -> str:
    """One key for a sequence and its reverse complement: the smaller of the two."""
    return min(seq, reverse_complement(seq))


ANCHOR_MIN = 16  # needles shorter than this are matched by their whole length, so they cannot flood the anchors


def substring_matches(needles: Sequence[str], haystacks: Sequence[str], reverse_complements: bool = True,
                      proper: bool = False) -> Iterator[tuple[int, int, bool]]:
    """Every (needle index, haystack index, forward) where the needle, or its reverse complement when
    `reverse_complements`, is a substring of the haystack; `forward` says the needle itself is (so forward-only
    counts can be read off the same scan). `proper`: only needles strictly shorter than the haystack.
    Each pair comes once. Needles and haystacks may be the same list (a sequence never matches itself
    under `proper`; without it, the caller drops i == j).

    Needles are indexed by their first k-mer, k the shortest needle of at least ANCHOR_MIN nt; each shorter
    length is searched on its own with k = that length. One very short needle would otherwise make k tiny and
    every window of every haystack a hit: all pairs compared."""
    if any(len(s) == 0 for s in needles):
        raise ValueError("substring_matches: an empty needle matches everything; drop empty sequences first")
    by_anchor: dict[int, list[int]] = defaultdict(list)
    long = [i for i, s in enumerate(needles) if len(s) >= ANCHOR_MIN]
    if long:
        by_anchor[min(len(needles[i]) for i in long)] = long
    for i, s in enumerate(needles):
        if len(s) < ANCHOR_MIN:
            by_anchor[len(s)].append(i)
    for k, indices in sorted(by_anchor.items()):
        yield from anchored_matches(needles, indices, haystacks, k, reverse_complements, proper)


def anchored_matches(needles: Sequence[str], indices: list[int], haystacks: Sequence[str], k: int,
                     reverse_complements: bool, proper: bool) -> Iterator[tuple[int, int, bool]]:
    """`substring_matches` for the needles `indices`, all at least k long, anchored on their first k-mer."""
    anchors: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        s = needles[i]
        anchors[s[:k]].append(i)
        if reverse_complements:
            rc_anchor = reverse_complement(s)[:k]
            if rc_anchor != s[:k]:
                anchors[rc_anchor].append(i)
    keys = anchors.keys()
    shortest = k + 1 if proper else k
    for j, hay in enumerate(haystacks):
        if len(hay) < shortest:
            continue
        # The set of windows first: a repeated window (poly-A) is looked up once.
        hits = keys & {hay[p:p + k] for p in range(len(hay) - k + 1)}
        if not hits:
            continue
        candidates = {i for window in hits for i in anchors[window]}
        for i in candidates:
            needle = needles[i]
            if proper and len(needle) >= len(hay):
                continue
            if needle in hay:
                yield i, j, True
            elif reverse_complements and reverse_complement(needle) in hay:
                yield i, j, False


# ---------------------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Group:
    """One (task, split) of the report."""

    task: str
    split: str
    data: Split


def find_tasks(root: str | Path) -> list[str]:
    """Every `<family>/<task>` folder under a GUE-layout root that holds a train.csv."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data={root}: no such folder; pass a GUE-layout root (<data>/<family>/<task>/train.csv)")
    tasks = sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/train.csv"))
    if not tasks:
        raise DataError(f"data={root}: no <family>/<task>/train.csv under this folder; it is not in the GUE layout")
    return tasks


def load_groups(root: str | Path, tasks: Sequence[str] | None = None) -> list[Group]:
    """Every (task, split) of the tasks (default: all under root), read and normalised by `data.read_split`."""
    names = list(dict.fromkeys(tasks)) if tasks else find_tasks(root)  # a task named twice is read once
    groups = []
    for task in names:
        folder = Path(root) / task
        if not folder.is_dir():
            raise DataError(f"tasks={task}: {folder} is not a folder; tasks are <family>/<task> folders under data={root}")
        groups += [Group(task, split, read_split(folder / f"{split}.csv")) for split in SPLITS]
    return groups


def _flatten(groups: Sequence[Group]) -> pd.DataFrame:
    """One row per sequence: its group (index into groups), label and text."""
    return pd.DataFrame({
        "group": np.repeat(np.arange(len(groups)), [len(g.data) for g in groups]),
        "label": np.concatenate([np.asarray(g.data.labels) for g in groups]),
        "sequence": [s for g in groups for s in g.data.sequences],
    })


def _exact_pairs(seqs: pd.DataFrame) -> pd.DataFrame:
    """Rows (a, b, forward) of sequences a, b (global row numbers, a != b) equal up to reverse complement."""
    keyed = pd.DataFrame({"row": np.arange(len(seqs)), "key": [canonical(s) for s in seqs["sequence"]]})
    # Only keys that occur more than once can pair: this keeps the self-merge small.
    keyed = keyed[keyed["key"].duplicated(keep=False)]
    pairs = keyed.merge(keyed, on="key", suffixes=("_a", "_b"))
    pairs = pairs[pairs["row_a"] != pairs["row_b"]]
    a, b = pairs["row_a"].to_numpy(), pairs["row_b"].to_numpy()
    sequence = seqs["sequence"].to_numpy()
    return pd.DataFrame({"a": a, "b": b, "forward": sequence[a] == sequence[b]})


def _contained_pairs(seqs: pd.DataFrame) -> pd.DataFrame:
    """Rows (a, b, forward): sequence a is a proper substring of sequence b (or of its reverse complement)."""
    sequences = seqs["sequence"].tolist()
    rows = list(substring_matches(sequences, sequences, proper=True))
    return pd.DataFrame(rows or np.empty((0, 3)), columns=["a", "b", "forward"]).astype(
        {"a": np.int64, "b": np.int64, "forward": bool})


def _count(pairs: pd.DataFrame, seqs: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per (group a, group b): how many sequences of a match some sequence of b (count), how many match one
    with their own label (same_label), and the same two for forward matches only."""
    group, label = seqs["group"].to_numpy(), seqs["label"].to_numpy()
    frame = pd.DataFrame({"a": pairs["a"].to_numpy(), "group_a": group[pairs["a"]], "group_b": group[pairs["b"]],
                          "same": label[pairs["a"]] == label[pairs["b"]], "forward": pairs["forward"].to_numpy()})
    frame["same_forward"] = frame["same"] & frame["forward"]
    # One row per (sequence of a, group b): did it match at all / with its label / forward / forward with its label.
    per_sequence = frame.groupby(["group_a", "group_b", "a"])[["same", "forward", "same_forward"]].any()
    counts = per_sequence.groupby(level=["group_a", "group_b"]).agg(
        count=("same", "size"), same_label=("same", "sum"), count_forward=("forward", "sum"),
        same_label_forward=("same_forward", "sum")).reset_index()
    counts["kind"] = kind
    return counts


def leakage_table(groups: Sequence[Group]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report's table, one row per (task_a, split_a, task_b, split_b, kind) with a non-zero count, and its
    task x task matrix.

    count: sequences of (task_a, split_a) that equal (kind `exact`) or are a proper substring of (kind
    `contained`) at least one sequence of (task_b, split_b), reverse complements counted as matches; within one
    (task, split), another sequence of it (a duplicate). same_label: how many of those match at least one
    such sequence with the same integer label (labels of different tasks may mean different things).
    count_forward, same_label_forward: the same without reverse complements. A sequence may count in both
    kinds (equal to one sequence and inside a longer one). Containment the other way round is the row with
    a and b swapped.

    The matrix: per (task a, task b), how many of task a's sequences (all splits) equal or lie inside a
    sequence of task b (any split, either strand); on the diagonal, another sequence of the same task."""
    seqs = _flatten(groups)
    exact, contained = _exact_pairs(seqs), _contained_pairs(seqs)
    table = pd.concat([_count(exact, seqs, "exact"), _count(contained, seqs, "contained")])
    table["task_a"] = [groups[g].task for g in table["group_a"]]
    table["split_a"] = [groups[g].split for g in table["group_a"]]
    table["task_b"] = [groups[g].task for g in table["group_b"]]
    table["split_b"] = [groups[g].split for g in table["group_b"]]
    table = table[list(COLUMNS)].astype({c: np.int64 for c in COLUMNS[5:]})
    table = table.sort_values(["task_a", "split_a", "task_b", "split_b", "kind"]).reset_index(drop=True)

    tasks = list(dict.fromkeys(g.task for g in groups))
    task_of = np.array([tasks.index(g.task) for g in groups])[seqs["group"].to_numpy()]
    pairs = pd.concat([exact, contained])
    hits = pd.DataFrame({"a": pairs["a"].to_numpy(), "task_b": task_of[pairs["b"].to_numpy()]}).drop_duplicates()
    found = np.zeros((len(tasks), len(tasks)), dtype=np.int64)
    np.add.at(found, (task_of[hits["a"].to_numpy()], hits["task_b"].to_numpy()), 1)
    return table, pd.DataFrame(found, index=tasks, columns=tasks)


def summary_markdown(table: pd.DataFrame, groups: Sequence[Group], seconds: float, top: int = 10) -> str:
    """leakage.md: the largest cross-task and within-task leaks, in words."""
    sizes = {(g.task, g.split): len(g.data) for g in groups}
    n = sum(sizes.values())

    def line(r) -> str:
        size = sizes[(r.task_a, r.split_a)]
        relation = "equal" if r.kind == "exact" else "lie inside"
        where = ("other sequences of the same split" if (r.task_a, r.split_a) == (r.task_b, r.split_b)
                 else f"{r.split_b} sequences of {r.task_b}")
        text = (f"- {r.count:,} of the {size:,} {r.split_a} sequences of {r.task_a} ({r.count / size:.1%}) {relation} "
                f"{where} ({r.same_label:,} with the same label)")
        if r.count_forward != r.count:
            text += f"; forward strand only: {r.count_forward:,} ({r.same_label_forward:,} same label)"
        return text + "."

    def largest(rows: pd.DataFrame) -> list[str]:
        return [line(r) for r in rows.sort_values("count", ascending=False).head(top).itertuples()] or ["- none"]

    cross = table["task_a"] != table["task_b"]
    evaluated = table["split_a"].isin(["dev", "test"]) & (table["split_b"] == "train")
    between_splits = (table["task_a"] == table["task_b"]) & (table["split_a"] != table["split_b"])
    duplicates = (table["task_a"] == table["task_b"]) & (table["split_a"] == table["split_b"])
    out = [
        "# Sequence leakage", "",
        (f"{len(sizes)} (task, split) sets, {n:,} sequences, {len({g.task for g in groups})} tasks; "
         f"matches found in {seconds:.1f} s."), "",
        ("A match counts the reverse complement too (DNA is read on both strands); forward-only figures are "
         "given where they differ. *Equal*: the same sequence; *lie inside*: a proper substring of a longer "
         "sequence. Each line counts sequences of the first (task, split) with at least one match in the second, "
         "and how many of them match one with the same label (for two tasks, the same class index, whatever it "
         "means there). Every (task, split) pair and kind is in leakage.csv."), "",
        "## Dev and test sequences found in another task's training data", "",
        *largest(table[cross & evaluated]), "",
        "## Largest leaks across tasks, any splits", "",
        *largest(table[cross]), "",
        "## Within a task: between its splits", "",
        *largest(table[between_splits]), "",
        "## Within a task: duplicates inside one split", "",
        *largest(table[duplicates]), "",
    ]
    return "\n".join(out)


@dataclass(frozen=True)
class LeakageReport:
    table: pd.DataFrame  # leakage_table's
    paths: dict[str, Path]  # csv, md, png
    seconds: float  # the search, without reading the files
    n_sequences: int


def leakage_report(groups: Sequence[Group], out: str | Path) -> LeakageReport:
    """Find the leaks among `load_groups`'s sets; write leakage.csv, leakage.md and leakage.png into `out`."""
    from .figures import leakage_heatmap

    start = time.perf_counter()
    table, matrix = leakage_table(groups)
    seconds = time.perf_counter() - start
    log.info("leakage: %d sequences of %d (task, split) sets compared in %.1f s", sum(len(g.data) for g in groups),
             len(groups), seconds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / Artifact.LEAKAGE_TABLE, "md": out / Artifact.LEAKAGE_SUMMARY,
             "png": out / Artifact.LEAKAGE_HEATMAP}
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(summary_markdown(table, groups, seconds))
    sizes = pd.Series({t: sum(len(g.data) for g in groups if g.task == t) for t in matrix.index})
    leakage_heatmap(matrix, sizes, paths["png"])
    return LeakageReport(table, paths, seconds, sum(len(g.data) for g in groups))


def log_leakage_report(root: str | Path, tasks: Sequence[str] | None, out: str | Path,
                       experiment: str = "leakage") -> str:
    """`leakage_report` of the tasks (default: every task under root), logged as one MLflow run (stage=leakage)
    with its three files; returns the run id. Bad data is reported before any run starts."""
    import mlflow  # only the report logs: data.count_overlaps and the corpora use this module without MLflow

    from . import tracking
    from .outputs import check_writable

    # Before any run: a --out that is a file or cannot be written would otherwise fail the run after the search.
    # The folder is not cleared (only leakage.csv/.md/.png are written into it), so any folder will do.
    check_writable(Path(out), "--out", "leakage report folder")
    groups = load_groups(root, tasks)
    tracking.setup(experiment)
    tags = {Tag.STAGE: Stage.LEAKAGE, Tag.DATA: str(root), Tag.GIT_COMMIT: tracking.git_commit()}
    with tracking.run("leakage", tags) as run:
        tracking.log_params({"data": str(root), "tasks": ",".join(tasks) if tasks else "all",
                             "reverse_complements": True, "out": str(out)})
        report = leakage_report(groups, out)
        tracking.log_metrics({Metric.LEAKAGE_SECONDS: report.seconds, Metric.LEAKAGE_SEQUENCES: report.n_sequences})
        for path in report.paths.values():
            mlflow.log_artifact(str(path))
        log.info("leakage report in %s (summary: %s), MLflow run %s", out, report.paths["md"], run.info.run_id)
        return run.info.run_id


# ------------------------------------------------------------------------------- exclusion from corpora
def eval_sequences(root: str | Path, required: bool = True) -> list[str]:
    """Every dev and test sequence of every task under a GUE-layout folder; a folder without any is an error
    when `required` (a folder named by exclude_eval=), else nothing to exclude (a corpus folder of train.csv)."""
    root = Path(root)
    files = sorted(p for split in ("dev", "test") for p in root.rglob(f"{split}.csv")) if root.is_dir() else []
    if not files and not required:
        return []
    if not files:
        raise DataError(f"exclude_eval={root}: no dev.csv or test.csv under this folder; pass a GUE-layout root "
                        "(<root>/<family>/<task>/{dev,test}.csv)")
    return [s for f in files for s in read_split(f).sequences]


def overlapping(sequences: Sequence[str], others: Sequence[str], proper: bool = False) -> np.ndarray:
    """Mask of `sequences` that equal, contain or lie inside any of `others` (reverse complements too);
    `proper`: contain or lie inside only (a proper substring either way, an equal sequence not counted)."""
    mask = np.zeros(len(sequences), dtype=bool)
    for _, j, _ in substring_matches(others, sequences, proper=proper):  # one of `others` inside one of ours
        mask[j] = True
    for i, _, _ in substring_matches(sequences, others, proper=proper):  # one of ours inside one of `others`
        mask[i] = True
    return mask


def straddled(windows: list[tuple[str, str, int, int]], held: Sequence[str]) -> np.ndarray:
    """Mask of windows (window, context, start, end: the window is context[start:end]) that share at least one
    base with an occurrence of a held-out sequence (either strand) found in their context."""
    bad = np.zeros(len(windows), dtype=bool)
    for i, j, _ in substring_matches(held, [context for _, context, _, _ in windows]):
        _, context, start, end = windows[j]
        for needle in {held[i], reverse_complement(held[i])}:
            pos = context.find(needle)
            while pos != -1 and not bad[j]:
                bad[j] = pos < end and pos + len(needle) > start
                pos = context.find(needle, pos + 1)
    return bad
