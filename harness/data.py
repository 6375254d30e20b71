"""Task data: the GUE folder layout, its validation, and the in-memory form every arm reads.

GUE layout: ``<root>/<family>/<task>/{train,dev,test}.csv`` with the header ``sequence,label``.

Normalisation rule (applied to every sequence, the same for every arm):
  1. surrounding whitespace is stripped and letters are upper-cased;
  2. IUPAC ambiguity codes (R Y S W K M B D H V) become N;
  3. anything else outside A C G T N (U, gaps, digits, spaces inside the sequence...) is an error.
Labels must be non-negative integers 0..C-1, every class present in train, and dev/test may not use a
label that train lacks. Violations raise `DataError` naming the file, the line and what to do.

File rules (every split is checked before any run starts):
  - plain UTF-8 text (a UTF-8 byte-order mark and CRLF line ends are fine); a gzip/zip/bzip2/xz file, a
    UTF-16 file or bytes that are not UTF-8 are refused with the line and byte, and "save as UTF-8";
  - the header names `sequence` and `label` once each; other columns are ignored (logged); every line has
    the header's number of fields (a trailing comma on every row is refused: pandas would silently read the
    first column as the index); blank lines are allowed only at the end;
  - a label far above the number of rows is refused (a class index >= train's row count cannot have every
    class present), so that nothing built while checking grows with the largest label;
  - one class only in dev or in test is refused: MCC is 0 for every model on a one-class split, so tuning
    on such a dev split would choose blindly, and such a test split would report 0 as a result.
"""

from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import io
import logging
import re
import stat
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
_INTEGER = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits only: `\\d` and int() also read Arabic-Indic or fullwidth ones
MAX_LABEL_DIGITS = 18  # int64 holds every 18-digit integer
MAX_LABEL_CHARS = 20  # longer label text (leading zeros included) is refused before any int conversion
MAX_LISTED = 10  # values a message lists before "and N more"
# What a compressed file starts with; a task file must be a plain CSV.
COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip"), b"PK\x03\x04": ("zip", "unzip"), b"BZh": ("bzip2", "bunzip2"),
              b"\xfd7zXZ\x00": ("xz", "unxz")}


@dataclass(frozen=True)
class Split:
    """One split of a task: normalised sequences and integer labels."""

    sequences: list[str]
    labels: np.ndarray
    lines: np.ndarray | None = None  # the file line of each row, where read from a file (for messages)

    def __len__(self) -> int:
        return len(self.sequences)

    def line(self, row: int) -> int:
        """The 1-based file line of row `row` (header = line 1; a file without blank lines when not read)."""
        return int(self.lines[row]) if self.lines is not None else _line(row)

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
    """Apply the module's normalisation rule; raise DataError at the first offending line. `raw` is indexed
    by the line of the file each value comes from."""
    seqs = raw.str.strip().str.upper().str.translate(IUPAC_TO_N)
    empty = seqs.str.len() == 0
    if empty.any():
        raise DataError(
            f"{path}, line {empty.idxmax()}: empty sequence "
            f"({int(empty.sum())} empty in this file). Remove these rows."
        )
    bad = seqs.str.contains(_NOT_DNA)
    if bad.any():
        line = bad.idxmax()
        char = _NOT_DNA.search(seqs[line]).group()
        raise DataError(
            f"{path}, line {line}: character {char!r} is not DNA "
            f"({int(bad.sum())} sequences in this file). Allowed: A C G T N in any case; "
            "IUPAC ambiguity codes R Y S W K M B D H V are read as N; anything else must be removed."
        )
    return seqs.tolist()


def parse_labels(raw: pd.Series, path: Path) -> np.ndarray:
    """Integer labels from text (indexed by line, as `normalise_sequences`); a value that is not a
    non-negative integer, or one too large for int64, is a DataError naming its line."""
    text = raw.str.strip()
    not_int = ~text.str.match(_INTEGER)
    if not_int.any():
        line = not_int.idxmax()
        raise DataError(
            f"{path}, line {line}: label {shortened(raw[line])!r} is not an integer (digits 0-9). "
            "Labels must be class indices 0..C-1."
        )
    # More than 18 digits could overflow int64, and Python refuses to convert more than 4300 digits (zeros
    # included): refuse by length before converting (no class index is that big).
    huge = (text.str.len() > MAX_LABEL_CHARS) | (text.str.lstrip("+-").str.lstrip("0").str.len() > MAX_LABEL_DIGITS)
    if huge.any():
        line = huge.idxmax()
        raise DataError(f"{path}, line {line}: label {shortened(text[line])} is far out of range; labels must be "
                        "class indices 0..C-1.")
    labels = text.astype(np.int64).to_numpy()
    if (labels < 0).any():
        line = raw.index[int(np.argmax(labels < 0))]
        raise DataError(f"{path}, line {line}: label {text[line]} is negative; use 0..C-1.")
    return labels


def shortened(text: str, most: int = 40) -> str:
    """`text`, cut to `most` characters with how long it was: a message stays short whatever the data."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def unreadable(path: Path, err: OSError) -> DataError:
    """Why an existing `path` cannot be read, and what to do."""
    if err.errno == errno.ELOOP:
        return DataError(f"cannot read {path}: it is a symbolic link loop; point it at the real file.")
    return DataError(f"cannot read {path}: {err.strerror or err}; make it readable (e.g. chmod u+r) and run the "
                     "same command again.")


def check_not_special(path: Path) -> None:
    """Refuse a path that exists but is neither a regular file nor a folder: reading a named pipe waits for a
    writer forever, and a device or a socket holds no data. A missing path is left to the caller's message."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as err:  # a symbolic link loop, a forbidden folder on the way...
        raise unreadable(path, err) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f"{path}: not a regular file (a named pipe, device or socket); give the path of a file "
                        "saved on disk.")


def read_text(path: Path) -> str:
    """A task file's text, or a DataError that says why it cannot be read (missing, a folder, a named pipe or
    device, forbidden, a link loop, compressed, not UTF-8) and what to do. A UTF-8 byte-order mark is dropped."""
    check_not_special(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found. A GUE task folder holds train.csv, dev.csv, test.csv.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file. A GUE task folder holds the files train.csv, dev.csv, "
                        "test.csv.") from None
    except OSError as err:  # permission denied, I/O error...: the file exists but this user cannot read it
        raise unreadable(path, err) from None
    for magic, (kind, tool) in COMPRESSED.items():
        if data.startswith(magic):
            raise DataError(f"{path}: this is a {kind} file (it starts with bytes {magic.hex(' ')}); {tool} it to a "
                            f"plain CSV named {path.name}. Compressed task files are not read.")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8.")
    if b"\0" in data:  # valid UTF-8, but no CSV holds NUL: UTF-16 without its mark, or a binary file
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise DataError(f"{path}, line {line}: NUL byte; this is UTF-16 or a binary file, not a CSV. Save it as "
                        "UTF-8 text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8 (the file is probably "
                        "Latin-1 or Windows-1252); save it as UTF-8.") from None


def read_records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(the header's fields, [(line, fields)] of every record after it), blank lines at the end dropped.
    Read with the csv module rather than pandas, which handles a row with more fields than the header
    silently: one more on every row (a trailing comma) makes the first column the index, and with
    index_col=False the extra fields are dropped. `line` is where the record starts (a quoted field may span
    lines)."""
    text = read_text(path)
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # the default 128 KiB would cut long sequences
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []
    try:
        header = next(reader, None)
        start = reader.line_num + 1
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num + 1}: not a readable CSV ({err}).") from None
    if header is None:
        raise DataError(f"{path}: the file is empty; expected the header 'sequence,label'.")
    while records and not any(f.strip() for f in records[-1][1]):  # blank lines at the end are harmless
        records.pop()
    return [name.strip() for name in header], records


def column_positions(header: list[str], path: Path) -> dict[str, int]:
    """Where `sequence` and `label` are in the header; a missing or repeated one is a DataError. Other
    columns are ignored (logged)."""
    shown = ",".join(header)
    repeated = [name for name in COLUMNS if header.count(name) > 1]
    if repeated:
        raise DataError(f"{path}, line 1: column {repeated[0]!r} appears {header.count(repeated[0])} times in the "
                        f"header {shown!r}; keep one (which one holds the data is ambiguous).")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path}, line 1: missing column(s) {', '.join(missing)}; the header is "
            f"{shown!r}. The first line must be 'sequence,label'."
        )
    ignored = [name for name in header if name not in COLUMNS]
    if ignored:
        log.info("%s: column(s) %s ignored; only sequence and label are read", path, ignored)
    return {name: header.index(name) for name in COLUMNS}


def check_field_counts(header: list[str], records: list[tuple[int, list[str]]], path: Path) -> None:
    """Every record has the header's number of fields (a blank line is left to the empty-sequence check)."""
    wrong = [(line, fields) for line, fields in records if fields and len(fields) != len(header)]
    if not wrong:
        return
    line, fields = wrong[0]
    if len(fields) == len(header) + 1 and fields[-1] == "":
        fix = "remove the trailing comma"
    elif len(fields) > len(header):
        fix = "quote a field that holds a comma, or name the extra column in the header"
    elif any("\n" in f for f in fields):
        fix = "a quote (\") opened on this line is never closed"
    else:
        fix = "a field is missing"
    raise DataError(f"{path}, line {line} has {len(fields)} fields, the header has {len(header)}: {fix} "
                    f"({len(wrong)} line(s) in this file).")


def read_split(path: Path) -> Split:
    """Read and validate one ``sequence,label`` CSV."""
    header, records = read_records(path)
    columns = column_positions(header, path)
    check_field_counts(header, records, path)
    if not records:
        raise DataError(f"{path}: no rows after the header; every split needs data.")
    lines = [line for line, _ in records]
    # A blank line inside the file has no fields: it reads as an empty sequence, reported at its line.
    column = {name: pd.Series([fields[i] if fields else "" for _, fields in records], index=lines, dtype=str)
              for name, i in columns.items()}
    return Split(normalise_sequences(column["sequence"], path), parse_labels(column["label"], path),
                 np.asarray(lines))


def listed(values: list[int], most: int = MAX_LISTED) -> str:
    """At most `most` values, then how many more: a message stays short whatever the data."""
    shown = ", ".join(map(str, values[:most]))
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")


def class_counts(labels: np.ndarray) -> str:
    values, counts = np.unique(labels, return_counts=True)
    return listed([f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist())])


def check_labels(splits: dict[str, Split], paths: dict[str, Path]) -> int:
    """Labels must be 0..C-1, all present in train; dev/test may not add classes, and must hold two classes
    or more. Returns C. Nothing built here grows with the largest label (it is bounded by train's rows)."""
    train = splits["train"]
    if train.labels.max() >= len(train):  # then some class below it cannot occur: no C rows for C classes
        row = int(np.argmax(train.labels >= len(train)))
        raise DataError(f"{paths['train']}: labels must be class indices 0..C-1; line {train.line(row)} has "
                        f"{train.labels[row]} but train has only {len(train)} rows.")
    present = np.unique(train.labels)
    num_classes = int(present[-1]) + 1
    absent = np.setdiff1d(np.arange(num_classes), present).tolist()
    if absent:
        raise DataError(
            f"{paths['train']}: labels run to {num_classes - 1} but class(es) [{listed(absent)}] never occur; "
            "labels must be contiguous class indices 0..C-1."
        )
    if num_classes < 2:
        raise DataError(f"{paths['train']}: only one class ({present.tolist()}); a task needs two or more.")
    for name in ("dev", "test"):
        split = splits[name]
        extra = ~np.isin(split.labels, present)
        if extra.any():
            row = int(np.argmax(extra))
            raise DataError(
                f"{paths[name]}, line {split.line(row)}: label {split.labels[row]} does not occur in "
                f"{paths['train']} (train classes: 0..{num_classes - 1}). Every split must share train's classes."
            )
        check_two_classes(name, split, paths[name], train)
    return num_classes


def check_two_classes(name: str, split: Split, path: Path, train: Split) -> None:
    """MCC on a split of one class is 0 for every model: tuning on such a dev split chooses blindly, and on
    such a test split the reported score says nothing. Both are refused."""
    if len(np.unique(split.labels)) > 1:
        return
    use = "tuning would choose blindly" if name == "dev" else "a test score of 0 would be reported as a result"
    raise DataError(f"{path}: every one of its {len(split)} rows has label {split.labels[0]} (train's class "
                    f"counts: {class_counts(train.labels)}); MCC on one class is 0 for every model, so {use}. "
                    f"Give {path.name} rows of every class, e.g. a stratified split of the labelled data.")


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
    """Row index -> 1-based line of a file without blank lines (the header is line 1)."""
    return int(row) + 2
