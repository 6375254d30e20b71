"""Task data: the GUE folder layout, its validation, and the in-memory form every arm reads.

GUE layout: ``<root>/<family>/<task>/{train,dev,test}.csv`` with the header ``sequence,label``.

Normalisation rule (applied to every sequence, the same for every arm):
  1. surrounding whitespace is stripped and letters are upper-cased;
  2. IUPAC ambiguity codes (R Y S W K M B D H V) become N;
  3. anything else outside A C G T N (U, gaps, digits, spaces inside the sequence...) is an error.
Labels must be non-negative integers 0..C-1, every class present in train, and dev/test may not use a
label that train lacks. Violations raise `DataError` naming the file, the line and what to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .schema import OVERLAP_PAIRS, overlap_metric, overlap_pair

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
COLUMNS = ("sequence", "label")
IUPAC_TO_N = str.maketrans({c: "N" for c in "RYSWKMBDHV"})
_NOT_DNA = re.compile(r"[^ACGTN]")
_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Split:
    """One split of a task: normalised sequences and integer labels."""

    sequences: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.sequences)

    @cached_property  # hashed once per split, not on every tokenize() call
    def fingerprint(self) -> str:
        """Content hash: equal data gives an equal fingerprint, whatever its origin."""
        h = hashlib.sha256()
        for s in self.sequences:
            h.update(s.encode())
            h.update(b"\n")
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class TaskData:
    name: str
    train: Split
    dev: Split
    test: Split
    num_classes: int
    source: str
    overlaps: dict[str, int] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]

    def summary(self) -> dict[str, object]:
        lengths = [len(s) for s in self.train.sequences]
        return {
            "task": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            **{f"n_{s}": len(self.split(s)) for s in SPLITS},
            "train_length_min": int(min(lengths)),
            "train_length_median": float(np.median(lengths)),
            "train_length_max": int(max(lengths)),
            "train_class_counts": np.bincount(self.train.labels, minlength=self.num_classes).tolist(),
            **{overlap_metric(k): v for k, v in self.overlaps.items()},
        }


def normalise_sequences(raw: pd.Series, path: Path) -> list[str]:
    """Apply the module's normalisation rule; raise DataError at the first offending line."""
    seqs = raw.str.strip().str.upper().str.translate(IUPAC_TO_N)
    empty = seqs.str.len() == 0
    if empty.any():
        raise DataError(
            f"{path}, line {_line(empty.idxmax())}: empty sequence "
            f"({int(empty.sum())} empty in this file). Remove these rows."
        )
    bad = seqs.str.contains(_NOT_DNA)
    if bad.any():
        row = bad.idxmax()
        char = _NOT_DNA.search(seqs[row]).group()
        raise DataError(
            f"{path}, line {_line(row)}: character {char!r} is not DNA "
            f"({int(bad.sum())} sequences in this file). Allowed: A C G T N in any case; "
            "IUPAC ambiguity codes R Y S W K M B D H V are read as N; anything else must be removed."
        )
    return seqs.tolist()


def parse_labels(raw: pd.Series, path: Path) -> np.ndarray:
    text = raw.str.strip()
    not_int = ~text.str.match(_INTEGER)
    if not_int.any():
        row = not_int.idxmax()
        raise DataError(
            f"{path}, line {_line(row)}: label {raw[row]!r} is not an integer. "
            "Labels must be class indices 0..C-1."
        )
    labels = text.astype(np.int64).to_numpy()
    if (labels < 0).any():
        row = int(np.argmax(labels < 0))
        raise DataError(f"{path}, line {_line(row)}: label {labels[row]} is negative; use 0..C-1.")
    return labels


def read_split(path: Path) -> Split:
    """Read and validate one ``sequence,label`` CSV."""
    if not path.is_file():
        raise DataError(f"{path}: file not found. A GUE task folder holds train.csv, dev.csv, test.csv.")
    try:
        # Everything as text, blank lines kept, so that row i is line i + 2 of the file.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected the header 'sequence,label'.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err}).") from None
    while len(frame) and (frame.iloc[-1] == "").all():  # blank lines at the end of a file are harmless
        frame = frame.iloc[:-1]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}, line 1: missing column(s) {', '.join(missing)}; the header is "
            f"{','.join(map(str, frame.columns))!r}. The first line must be 'sequence,label'."
        )
    if frame.empty:
        raise DataError(f"{path}: no rows after the header; every split needs data.")
    return Split(normalise_sequences(frame["sequence"], path), parse_labels(frame["label"], path))


def check_labels(splits: dict[str, Split], paths: dict[str, Path]) -> int:
    """Labels must be 0..C-1, all present in train; dev/test may not add classes. Returns C."""
    train = set(np.unique(splits["train"].labels).tolist())
    num_classes = max(train) + 1
    absent = sorted(set(range(num_classes)) - train)
    if absent:
        raise DataError(
            f"{paths['train']}: labels run to {num_classes - 1} but class(es) {absent} never occur; "
            "labels must be contiguous class indices 0..C-1."
        )
    if num_classes < 2:
        raise DataError(f"{paths['train']}: only one class ({sorted(train)}); a task needs two or more.")
    for name in ("dev", "test"):
        labels = splits[name].labels
        extra = ~np.isin(labels, list(train))
        if extra.any():
            row = int(np.argmax(extra))
            raise DataError(
                f"{paths[name]}, line {_line(row)}: label {labels[row]} does not occur in "
                f"{paths['train']} (train classes: {sorted(train)}). Every split must share train's classes."
            )
    return num_classes


def count_overlaps(splits: dict[str, Split]) -> dict[str, int]:
    """Sequences one split shares with an earlier one, keyed by `schema.overlap_pair`, reverse complements
    counted as matches (the index is `leakage.py`'s):

      train_dev, train_test, dev_test: sequences of the second split equal to a sequence of the first;
      train_dev_contained, ...: sequences of the second split that lie inside, or contain, a sequence of the
        first (a proper substring either way; an equal one is counted above).
    """
    # Imported here: leakage.py reads its splits with this module.
    from .leakage import canonical, overlapping

    out = {}
    for first, second in OVERLAP_PAIRS:
        a, b = splits[first].sequences, splits[second].sequences
        seen = {canonical(s) for s in a}
        out[overlap_pair(first, second)] = sum(canonical(s) in seen for s in b)
        out[overlap_pair(first, second, "contained")] = int(overlapping(b, a, proper=True).sum())
    return out


def load_gue_task(root: str | Path, task: str) -> TaskData:
    """Load ``<root>/<task>/{train,dev,test}.csv`` (task like ``tf/0``), validated."""
    folder = Path(root) / task
    if not folder.is_dir():
        raise DataError(
            f"{folder}: task folder not found. Expected the GUE layout "
            f"<data>/<family>/<task>/{{train,dev,test}}.csv under data={root}."
        )
    paths = {name: folder / f"{name}.csv" for name in SPLITS}
    splits = {name: read_split(path) for name, path in paths.items()}
    num_classes = check_labels(splits, paths)
    overlaps = count_overlaps(splits)
    for first, second in OVERLAP_PAIRS:
        n, contained = overlaps[overlap_pair(first, second)], overlaps[overlap_pair(first, second, "contained")]
        if n or contained:
            log.warning("%s: %d %s sequences also occur in %s, %d lie inside or contain one of its sequences "
                        "(either strand; reported, not removed)", task, n, second, first, contained)
    return TaskData(task, splits["train"], splits["dev"], splits["test"], num_classes, str(folder), overlaps)


def _line(row: int) -> int:
    """Row index of the data frame -> 1-based line of the file (the header is line 1)."""
    return int(row) + 2
