"""Hostile inputs: study files, parameters, task names, labels, special files and corpora that used to be read
silently wrong, hang, or end in a traceback. Each is refused with the right error type (exit 2 through the
command line) and a message naming the file, key or parameter; each table has valid neighbours as negative
controls, so that a check that refuses everything (or nothing) fails here."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from harness.data import read_split
from harness.errors import DataError, ParameterError, StudyError
from harness.parameters import names, number
from harness.studies import MAX_SAMPLER_SEED, load_study

STUDY = """\
name: {name}
tasks: [synthetic/motif_binary]
budget: {{n_trials: 2, max_epochs: 1}}
sampler: {{seed: {seed}}}
search_spaces:
  kmer:
    k: {k}
    C: {C}
"""
VALID = {"name": "hostile", "seed": "0", "k": "{type: int, low: 3, high: 6}",
         "C": "{type: float, low: 0.01, high: 100.0, log: true}"}


def study_file(tmp_path: Path, text: str | None = None, **values: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(text if text is not None else STUDY.format(**{**VALID, **values}))
    return path


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Run the command line in this process: (exit code, the last stderr line), with no traceback."""
    from harness.cli import main

    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, (err.strip().splitlines() or [""])[-1]


# ------------------------------------------------------------------------------------------------ study files
DUPLICATES = [
    ("budget_n_trials", STUDY.format(**VALID).replace("{n_trials: 2,", "{n_trials: 4, n_trials: 2,"),
     ("'n_trials' appears twice", "lines 3 and 3")),
    ("top_level_name", STUDY.format(**VALID) + "name: other\n", ("'name' appears twice", "lines 1 and 9")),
    ("search_space_parameter", STUDY.format(**VALID) + "    k: {type: int, low: 2, high: 4}\n",
     ("'k' appears twice", "lines 7 and 9")),
]


@pytest.mark.parametrize("text, expect", [c[1:] for c in DUPLICATES], ids=[c[0] for c in DUPLICATES])
def test_a_duplicate_key_in_a_study_file_is_refused_naming_key_and_lines(tmp_path, text, expect):
    path = study_file(tmp_path, text)
    with pytest.raises(StudyError) as err:
        load_study(str(path))
    assert str(path) in str(err.value)
    for fragment in expect:
        assert fragment in str(err.value)


def test_the_same_key_in_different_mappings_is_not_a_duplicate(tmp_path):
    # low/high/type occur in both k and C, and `seed` is a key of sampler only: the negative control.
    spec = load_study(str(study_file(tmp_path)))
    assert spec.name == "hostile" and spec.n_trials == 2


BAD_STUDIES = [
    ("name_without_value", {"name": ""}, ("name must be a non-empty string", "None")),
    ("name_empty_string", {"name": "''"}, ("name must be a non-empty string",)),
    ("name_too_long", {"name": "x" * 201}, ("name is 201 characters long",)),
    ("name_with_slash", {"name": "a/b"}, ("name 'a/b' contains '/'",)),
    ("name_with_backslash", {"name": "'a\\b'"}, ("contains '\\\\'",)),
    ("name_not_a_string", {"name": "[a]"}, ("name must be a non-empty string",)),
    ("seed_negative", {"seed": "-5"}, ("sampler.seed must be in 0..2**31-1", "got -5")),
    ("seed_huge", {"seed": "99999999999999999999"}, ("sampler.seed must be in 0..2**31-1",)),
    ("seed_just_too_big", {"seed": str(2**31)}, ("sampler.seed", str(2**31))),
    ("int_step_not_dividing", {"k": "{type: int, low: 3, high: 6, step: 2}"},
     ("search_spaces.kmer.k.step (2) does not divide high - low", "make high 5 or 7")),
    ("float_step_not_dividing", {"C": "{type: float, low: 0.0, high: 1.0, step: 0.3}"},
     ("search_spaces.kmer.C.step (0.3) does not divide",)),
]


@pytest.mark.parametrize("values, expect", [c[1:] for c in BAD_STUDIES], ids=[c[0] for c in BAD_STUDIES])
def test_a_bad_study_value_is_a_study_error_naming_file_and_key(tmp_path, values, expect):
    path = study_file(tmp_path, **values)
    with pytest.raises(StudyError) as err:
        load_study(str(path))
    assert str(err.value).startswith(f"{path}: ")
    for fragment in expect:
        assert fragment in str(err.value)


GOOD_STUDIES = [
    ("seed_zero", {"seed": "0"}),
    ("seed_largest", {"seed": str(MAX_SAMPLER_SEED)}),
    ("name_200_characters", {"name": "x" * 200}),
    ("name_with_spaces_and_dots", {"name": "gue v2.1 (rerun)"}),
    ("int_step_dividing", {"k": "{type: int, low: 2, high: 6, step: 2}"}),
    ("float_step_dividing_with_rounding", {"C": "{type: float, low: 0.1, high: 0.5, step: 0.1}"}),
]


@pytest.mark.parametrize("values", [c[1] for c in GOOD_STUDIES], ids=[c[0] for c in GOOD_STUDIES])
def test_valid_neighbours_of_bad_study_values_load(tmp_path, values):
    spec = load_study(str(study_file(tmp_path, **values)))
    assert spec.name == values.get("name", "hostile")


def test_the_study_name_defaults_to_the_file_name_when_the_key_is_absent(tmp_path):
    text = STUDY.format(**VALID).replace("name: hostile\n", "")
    assert load_study(str(study_file(tmp_path, text))).name == "hostile"


# ------------------------------------------------------------------------------------------------- task names
BAD_TASK_NAMES = ["fam/ok/", "fam/../fam/ok", "/abs/path/fam/ok", "fam//ok", "./fam/ok", "..", "fam\\ok", "fam/."]


@pytest.mark.parametrize("task", BAD_TASK_NAMES)
def test_a_task_name_that_is_not_a_plain_relative_path_is_refused_everywhere(task, tmp_path, tiny_gue):
    from harness.request import RunRequest
    from harness.tasks import load_task

    with pytest.raises(ParameterError, match=re.escape(f"tasks: {task!r}")):
        RunRequest.parse({"arm": "kmer_logreg", "tasks": task, "data": str(tiny_gue)})
    with pytest.raises(DataError) as err:
        load_task(task, str(tiny_gue))
    assert repr(task) in str(err.value)
    text = STUDY.format(**VALID).replace("[synthetic/motif_binary]", f"[{task!r}]".replace("\\\\", "\\"))
    with pytest.raises(StudyError, match=r"tasks\[0\]"):
        load_study(str(study_file(tmp_path, text)))


def test_plain_task_names_are_accepted(tiny_gue):
    from harness.request import RunRequest
    from harness.tasks import load_task

    request = RunRequest.parse({"arm": "kmer_logreg", "tasks": "toy/motif_binary, toy/motif_multiclass",
                                "data": str(tiny_gue)})
    assert request.tasks == ("toy/motif_binary", "toy/motif_multiclass")
    assert load_task("toy/motif_binary", str(tiny_gue)).num_classes == 2


# ------------------------------------------------------------------------------------------- list parameters
@pytest.mark.parametrize("value", [",,,", " , ", ","])
def test_a_list_parameter_that_names_nothing_is_refused(value):
    with pytest.raises(ParameterError, match=re.escape(f"tasks={value!r} names no task")):
        names(value, "tasks")


@pytest.mark.parametrize("value, expected", [
    ("", ()), (None, ()),  # unset: the caller's default
    ("a,b", ("a", "b")), (" a , b ,", ("a", "b")),
    ("kmer_logreg,kmer_logreg", ("kmer_logreg",)), ("b,a,b,a", ("b", "a")),  # repeats dropped, first order kept
])
def test_list_parameters_keep_order_and_drop_repeats(value, expected):
    assert names(value, "arms") == expected


@pytest.mark.parametrize("args, expect", [
    (["sweep", "--action", "print", "--arms", ",,"], "arms=',,' names no arm"),
    (["sweep", "--action", "print", "--tasks", ",,,"], "tasks=',,,' names no task"),
    (["sweep", "--action", "print", "--tasks", "synthetic/motif_binary/"], "'synthetic/motif_binary/' has an empty"),
    (["run", "--arm", "kmer_logreg", "--experiment", "e" * 501], "experiment is 501 characters long"),
    (["leakage", "--data", ".", "--tasks", ",,,"], "tasks=',,,' names no task"),
    (["leakage", "--data", ".", "--tasks", "../x"], "'../x' has a '.' or '..' part"),
])
def test_the_command_lines_refuse_hostile_parameters_with_exit_2(args, expect, workdir, capsys):
    code, message = cli(args, capsys)
    assert code == 2 and message.startswith("error: ") and expect in message, message


def test_repeated_arms_run_once(workdir):
    from harness.request import RunRequest

    assert RunRequest.parse({"arms": "kmer_logreg,kmer_logreg,onehot_logreg"}).arms == ("kmer_logreg", "onehot_logreg")
    assert RunRequest.parse({"arms": "kmer_logreg", "experiment": "e" * 500}).experiment == "e" * 500  # the limit


# ---------------------------------------------------------------------------------------- numeric parameters
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "infinity"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ParameterError, match=re.escape(f"lr must be a finite number, got {value!r}")):
        number(value, "lr", float)


@pytest.mark.parametrize("value, expected", [("5e-4", 5e-4), ("1", 1.0), ("1e300", 1e300)])
def test_finite_numbers_are_accepted(value, expected):
    assert number(value, "lr", float) == expected


def test_pretrain_with_lr_nan_is_refused_before_any_run(workdir, tiny_gue, capsys):
    code, message = cli(["pretrain", "--arm", "cnn_scratch", "--corpus", str(tiny_gue), "--lr", "nan"], capsys)
    assert code == 2 and "lr must be a finite number, got 'nan'" in message
    assert not (workdir / "mlruns").exists() and not any(workdir.glob("mlflow.db"))  # no run was started


# ------------------------------------------------------------------------------------------------------ labels
def split_file(tmp_path: Path, label: str) -> Path:
    path = tmp_path / "train.csv"
    path.write_text(f"sequence,label\nACGTACGT,0\nACGTACGT,{label}\nACGTACGT,1\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("label, expect", [
    ("0" * 5000, "far out of range"),
    ("0" * 21, "far out of range"),
    ("1" * 19, "far out of range"),
    ("\u0661", "is not an integer (digits 0-9)"),  # Arabic-Indic one
    ("\uff11", "is not an integer (digits 0-9)"),  # fullwidth one
    ("1\u0660", "is not an integer (digits 0-9)"),
])
def test_hostile_labels_are_refused_naming_the_line(tmp_path, label, expect):
    path = split_file(tmp_path, label)
    with pytest.raises(DataError) as err:
        read_split(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line 3: label ") and expect in message
    assert len(message) < 300  # a 5000-digit label is not copied into the message


@pytest.mark.parametrize("label, expected", [("1", 1), ("0" * 19 + "1", 1), ("+1", 1), (" 1 ", 1)])
def test_ascii_labels_up_to_twenty_characters_are_read(tmp_path, label, expected):
    assert read_split(split_file(tmp_path, label)).labels.tolist() == [0, expected, 1]


# ----------------------------------------------------------------------------------------------- special files
def special(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        path.symlink_to(path.name)  # points at itself
    return path


@pytest.mark.parametrize("kind, expect", [
    ("fifo", "not a regular file (a named pipe, device or socket)"),
    ("loop", "a symbolic link loop; point it at the real file"),
])
def test_a_special_task_file_is_refused_without_hanging(tmp_path, kind, expect):
    path = special(kind, tmp_path / "train.csv")
    with pytest.raises(DataError) as err:
        read_split(path)
    assert str(path) in str(err.value) and expect in str(err.value) and "chmod" not in str(err.value)


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    target = split_file(tmp_path, "1")
    (tmp_path / "link.csv").symlink_to(target)
    assert len(read_split(tmp_path / "link.csv")) == 3


# ------------------------------------------------------------------------------------------------------ corpora
FASTA = ">r1\nACGTACGTAC\nGGCCAATT\n>r2\nTTTTACGA\n"


@pytest.mark.parametrize("name, content, expect", [
    ("plain.fa.gz", FASTA.encode(), ("plain.fa.gz: not a readable gzip file", "rename")),
    ("cut.fa.gz", gzip.compress(FASTA.encode())[:20], ("cut.fa.gz: not a readable gzip file",)),
    ("cp1252.fa", b">r1\nACGT\n>r2 caf\xe9\nACGT\n", ("cp1252.fa, line 3: byte 0xe9", "save it as UTF-8")),
    ("gzipped.fa", gzip.compress(FASTA.encode()), ("gzipped.fa: this is a gzip file", "gunzip")),
    ("headerless.fa", b"ACGTACGT\nACGT\n", ("headerless.fa, line 1: sequence before any '>' header",)),
    ("late_header.fasta", b"\nACGT\n>r1\nACGT\n", ("late_header.fasta, line 2: sequence before any '>'",)),
    ("empty.fa", b"", ("empty.fa: no FASTA records",)),
    ("header_only.fa", b">r1\n", ("header_only.fa: no FASTA records",)),
])
def test_a_hostile_corpus_is_a_data_error_naming_the_file(tmp_path, name, content, expect):
    from harness.pretrain import read_corpus

    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as err:
        read_corpus(tmp_path / name)
    for fragment in expect:
        assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize("kind, expect", [("fifo", "not a regular file (a named pipe"),
                                          ("loop", "symbolic link loop")])
def test_a_special_corpus_file_is_refused_as_such(tmp_path, kind, expect):
    from harness.pretrain import read_corpus

    path = special(kind, tmp_path / "corpus.fa")
    with pytest.raises(DataError, match=re.escape(expect)) as err:
        read_corpus(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name, content", [("ok.fa", FASTA.encode()), ("ok.fa.gz", gzip.compress(FASTA.encode())),
                                           ("crlf.fasta", FASTA.replace("\n", "\r\n").encode())])
def test_valid_fasta_corpora_are_read(tmp_path, name, content):
    from harness.pretrain import read_corpus

    (tmp_path / name).write_bytes(content)
    assert read_corpus(tmp_path / name) == ["ACGTACGTACGGCCAATT", "TTTTACGA"]


def test_a_missing_corpus_still_says_no_such_file(tmp_path):
    from harness.pretrain import read_corpus

    with pytest.raises(DataError, match="no such file or folder"):
        read_corpus(tmp_path / "absent.fa")


def test_numpy_is_the_label_type(tmp_path):
    # Labels read through the ASCII-only path are still int64, as every arm expects.
    assert read_split(split_file(tmp_path, "1")).labels.dtype == np.int64


# ------------------------------------------------------------------------------- second hostile pass
MERGE_STUDY = """name: merged
tasks: [synthetic/motif_binary]
budget: {n_trials: 1, max_epochs: 2, patience: 1, seeds: 1}
x-common: &c
  C: {type: float, low: 0.1, high: 1}
search_spaces:
  kmer:
    <<: *c
    k: {type: int, low: 3, high: 4}
  onehot:
    <<: *c
    C: {type: float, low: 0.5, high: 2}
"""


def test_yaml_merge_keys_and_anchor_blocks_are_accepted(tmp_path):
    """`<<: *anchor` may be overridden by an explicit key (not a duplicate); `x-` blocks only hold anchors."""
    from harness.studies import load_study

    path = tmp_path / "merged.yaml"
    path.write_text(MERGE_STUDY)
    spec = load_study(str(path))
    assert set(spec.search_spaces["kmer"]) == {"C", "k"} and spec.search_spaces["onehot"]["C"].low == 0.5
    path.write_text(MERGE_STUDY.replace("x-common", "common").replace("*c", "*c"))
    with pytest.raises(StudyError, match=r"unknown key common; \(a block that only holds YAML anchors is named x-"):
        load_study(str(path))


@pytest.mark.parametrize("text, message", [
    ("name: a\nn_trials: 3\n", "unknown key n_trials; it belongs under budget (budget.n_trials)"),
    ("name: a\nbudget: {n_trials: 1, max_epochs: 1}\ntasks: [synthetic/motif_binary]\nsearch_spaces:\n"
     "  kmer: {C: {type: float, low: 0.1, high: 1}, k: {type: int, low: 3, high: 4}, fixed: {C: 50.0}}\n",
     "search_spaces.kmer: C both searched and fixed"),
])
def test_misplaced_and_conflicting_study_keys_say_where_they_belong(text, message, tmp_path):
    from harness.studies import load_study

    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(str(path))


@pytest.mark.parametrize("variable, value, message", [
    ("HARNESS_FORCE_EXIT_S", "x", "HARNESS_FORCE_EXIT_S must be a number, got 'x'"),
    ("HARNESS_HEARTBEAT_S", "0.5", "HARNESS_HEARTBEAT_S must be an integer, got '0.5'"),
    ("HARNESS_STORAGE_RETRIES", "-1", "HARNESS_STORAGE_RETRIES must be in [0, inf)"),
    ("HARNESS_POLL_S", "0", "HARNESS_POLL_S must be > 0"),
])
def test_environment_knobs_are_checked_like_parameters(variable, value, message, tmp_path):
    """Read when the harness starts: a bad value was a ValueError traceback at import (or Optuna's, later)."""
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, variable: value, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "harness", "run", "--arm", "kmer_logreg", "--n-trials", "1", "--seeds",
                           "1", "--storage", f"sqlite:///{tmp_path}/optuna.db"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"error: environment variable {message}" in done.stderr


def test_a_storage_url_without_its_scheme_hides_the_password():
    from harness.tracking import redact, secrets_of

    assert redact("bob:s3cr3t@127.0.0.1/db") == "bob:***@127.0.0.1/db" and secrets_of("bob:s3cr3t@db") == ["s3cr3t"]
    assert redact("/tmp/a@b/optuna.db") == "/tmp/a@b/optuna.db"  # negative control: a path is left as it is


def test_pretrain_never_writes_into_a_folder_that_holds_files(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"weights a study was tuned from")
    assert main(["pretrain", "--arm", "convnova_char", "--corpus", "nowhere.fa", "--output", "ckpt"]) == 2
    assert "output=ckpt is not empty (model.safetensors, ...)" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == b"weights a study was tuned from"
