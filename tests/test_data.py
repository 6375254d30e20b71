"""The GUE loader: what it accepts, how it normalises, and the error for every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path, write_split
from harness.data import DataError, load_gue_task
from harness.synthetic import SPECS, make_synthetic_task
from harness.tasks import load_task


def make_task(root, train=None, dev=None, test=None, raw: dict | None = None):
    """A GUE task folder toy/t with valid defaults; `raw` replaces a split's file text verbatim."""
    good = (["ACGTACGT", "TTTTGGGG", "ACGTTTTT", "GGGGCCCC"], [0, 1, 0, 1])
    for name, split in (("train", train), ("dev", dev), ("test", test)):
        write_split(root / "toy" / "t" / f"{name}.csv", *(split or good))
    for name, text in (raw or {}).items():
        (root / "toy" / "t" / f"{name}.csv").write_text(text)
    return root


def error_for(tmp_path, **kwargs) -> str:
    root = make_task(tmp_path, **kwargs)
    with pytest.raises(DataError) as err:
        load_gue_task(root, "toy/t")
    return str(err.value)


def test_valid_task_loads_and_normalises(tmp_path):
    root = make_task(tmp_path, train=(["acgtRYKM", " TTTTGGGG ", "ACGTNNNN", "ggggcccc"], [0, 1, 0, 1]))
    task = load_gue_task(root, "toy/t")
    assert task.train.sequences == ["ACGTNNNN", "TTTTGGGG", "ACGTNNNN", "GGGGCCCC"]
    assert task.num_classes == 2
    assert task.train.labels.dtype == np.int64 and task.train.labels.tolist() == [0, 1, 0, 1]


def test_missing_column_names_file_and_line_1(tmp_path):
    msg = error_for(tmp_path, raw={"train": "seq,label\nACGT,0\nTTTT,1\n"})
    assert "train.csv, line 1" in msg and "missing column(s) sequence" in msg


def test_missing_header_is_reported(tmp_path):
    msg = error_for(tmp_path, raw={"dev": "ACGTACGT,0\nTTTTGGGG,1\n"})
    assert "dev.csv, line 1" in msg and "'sequence,label'" in msg


def test_non_integer_label_names_line(tmp_path):
    msg = error_for(tmp_path, raw={"train": "sequence,label\nACGT,0\nTTTT,1\nGGGG,yes\n"})
    assert "train.csv, line 4" in msg and "'yes' is not an integer" in msg


def test_negative_label(tmp_path):
    msg = error_for(tmp_path, raw={"train": "sequence,label\nACGT,0\nTTTT,-1\n"})
    assert "line 3" in msg and "negative" in msg


def test_empty_sequence_names_line(tmp_path):
    msg = error_for(tmp_path, raw={"test": "sequence,label\nACGT,0\n  ,1\n"})
    assert "test.csv, line 3: empty sequence" in msg


def test_trailing_blank_lines_are_ignored(tmp_path):
    root = make_task(tmp_path, raw={"dev": "sequence,label\nACGT,0\nTTTT,1\n\n\n"})
    assert len(load_gue_task(root, "toy/t").dev) == 2


def test_blank_line_counts_as_empty_sequence_at_its_line(tmp_path):
    msg = error_for(tmp_path, raw={"test": "sequence,label\nACGT,0\n\nTTTT,1\n"})
    assert "test.csv, line 3" in msg


def test_non_dna_character_names_line_and_character(tmp_path):
    msg = error_for(tmp_path, raw={"dev": "sequence,label\nACGT,0\nACGU,1\n"})
    assert "dev.csv, line 3: character 'U' is not DNA" in msg
    msg = error_for(tmp_path, raw={"dev": "sequence,label\nAC-GT,0\nACGT,1\n"})
    assert "line 2: character '-'" in msg


def test_labels_absent_from_train(tmp_path):
    msg = error_for(tmp_path, raw={"test": "sequence,label\nACGT,0\nTTTT,2\n"})
    assert "test.csv, line 3: label 2 does not occur in" in msg and "train.csv" in msg


def test_train_labels_must_be_contiguous(tmp_path):
    msg = error_for(tmp_path, raw={"train": "sequence,label\nACGT,0\nTTTT,2\nGGGG,0\n"})
    assert "class(es) [1] never occur" in msg


def test_single_class_train(tmp_path):
    msg = error_for(tmp_path, raw={"train": "sequence,label\nACGT,0\nTTTT,0\n", "dev": "sequence,label\nA,0\n",
                                   "test": "sequence,label\nA,0\n"})
    assert "only one class" in msg


def test_empty_split_and_empty_file(tmp_path):
    assert "no rows after the header" in error_for(tmp_path, raw={"dev": "sequence,label\n"})
    assert "the file is empty" in error_for(tmp_path, raw={"dev": ""})


def test_missing_file_and_folder(tmp_path):
    root = make_task(tmp_path)
    (root / "toy" / "t" / "dev.csv").unlink()
    with pytest.raises(DataError, match="dev.csv: file not found"):
        load_gue_task(root, "toy/t")
    with pytest.raises(DataError, match="task folder not found"):
        load_gue_task(root, "toy/absent")


def test_malformed_csv_row(tmp_path):
    msg = error_for(tmp_path, raw={"train": "sequence,label\nACGT,0\nTTTT,1,extra,fields\n"})
    assert "train.csv, line 3 has 4 fields, the header has 2" in msg


def test_train_test_overlap_is_reported(tmp_path, caplog):
    root = make_task(tmp_path, test=(["ACGTACGT", "AAAAAAAA"], [0, 1]))
    task = load_gue_task(root, "toy/t")
    assert task.overlaps == {"train_dev": 4, "train_test": 1, "dev_test": 1, "train_dev_contained": 0,
                             "train_test_contained": 0, "dev_test_contained": 0}
    assert "1 test sequences also occur in train" in caplog.text
    assert task.summary()["overlap_train_test"] == 1 and task.summary()["overlap_dev_test_contained"] == 0


def test_overlaps_count_reverse_complements_and_containment_both_ways(tmp_path):
    # train (= dev here): ACGTACGT TTTTGGGG ACGTTTTT GGGGCCCC
    test = ["ACGTACGT",  # equal to a train sequence
            "CCCCAAAA",  # the reverse complement of TTTTGGGG
            "GGACGTTTTTCC",  # contains ACGTTTTT
            "TTGGGG",  # inside TTTTGGGG
            "CCCAAA",  # inside TTTTGGGG's reverse complement
            "AAAAAAAA"]  # nowhere
    task = load_gue_task(make_task(tmp_path, test=(test, [0, 1, 0, 1, 0, 1])), "toy/t")
    assert task.overlaps == {"train_dev": 4, "train_test": 2, "dev_test": 2, "train_dev_contained": 0,
                             "train_test_contained": 3, "dev_test_contained": 3}


def test_disjoint_splits_have_no_overlap(tmp_path):
    dev, test = (["AAAACCCC", "CACACACA"], [0, 1]), (["GAGAGAGA", "TCTCAAAC"], [0, 1])
    assert set(load_gue_task(make_task(tmp_path, dev=dev, test=test), "toy/t").overlaps.values()) == {0}


def test_non_synthetic_task_without_data_root_says_what_to_pass():
    with pytest.raises(DataError, match="-P data="):
        load_task("tf/0", None)


def test_synthetic_suite_is_deterministic_and_gue_shaped():
    for name, spec in SPECS.items():
        a, b = make_synthetic_task(name), make_synthetic_task(name)
        assert a.train.sequences == b.train.sequences and np.array_equal(a.test.labels, b.test.labels)
        assert a.num_classes == spec.num_classes
        assert set(np.unique(a.train.labels)) == set(range(spec.num_classes))
        lengths = [len(s) for s in a.train.sequences]
        assert spec.length[0] <= min(lengths) < max(lengths) <= spec.length[1]
        assert set("".join(a.train.sequences)) <= set("ACGT")
    assert any(s.num_classes > 2 for s in SPECS.values())


def test_real_gue_task_loads():
    root = shared_path("data", "gue")
    task = load_task("tf/0", str(root))
    assert task.num_classes == 2 and len(task.train) > 30_000 and len(task.dev) == len(task.test) == 1000
    assert {len(s) for s in task.test.sequences} == {101}


def test_unreadable_file_says_cannot_read_and_what_to_do(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    root = make_task(tmp_path)
    forbidden = root / "toy" / "t" / "dev.csv"
    real = Path.read_bytes

    def read_bytes(path):  # chmod 000 cannot forbid root, who runs some CI: raise what the OS would
        if path == forbidden:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match=f"cannot read {forbidden}: Permission denied; make it readable"):
        load_gue_task(root, "toy/t")


def test_an_os_error_is_reported_neutrally_read_or_write():
    import errno

    from harness.errors import reported

    message, code = reported(PermissionError(errno.EACCES, "Permission denied", "/data/train.csv"))
    assert code == 1 and message.startswith("/data/train.csv: Permission denied.")
    assert "write" not in message and "FAILED" not in message and "run the same command again" in message


def test_label_checks_stay_small_whatever_the_largest_label(tmp_path):
    """A label of 10**6 in a 300-row train split is refused by the row count (no set of a million classes);
    a missing-class list is cut at 10."""
    seqs = ["ACGTACGT"] * 300
    msg = error_for(tmp_path, train=(seqs, [0, 1] * 149 + [1, 1_000_000]))
    assert "line 301 has 1000000 but train has only 300 rows" in msg and len(msg) < 400
    msg = error_for(tmp_path, train=(seqs, [0, 60] * 150))
    assert "class(es) [1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 49 more] never occur" in msg


def test_extra_columns_are_ignored_and_logged(tmp_path, caplog):
    import logging

    root = make_task(tmp_path, raw={"train": "id,sequence,label\n1,ACGT,0\n2,TTTT,1\n"})
    with caplog.at_level(logging.INFO, logger="harness.data"):
        task = load_gue_task(root, "toy/t")
    assert task.train.sequences == ["ACGT", "TTTT"] and "['id'] ignored" in caplog.text


def test_lines_are_file_lines_after_a_quoted_multiline_field(tmp_path):
    msg = error_for(tmp_path, raw={"dev": 'sequence,label\nACGT,"0\n"\nACGU,1\n'})
    assert "dev.csv, line 4: character 'U'" in msg
    msg = error_for(tmp_path, raw={"dev": 'sequence,label\n"AC\nGT",0\nACGT,1\n'})
    assert "dev.csv, line 2: character '\\n' is not DNA" in msg
