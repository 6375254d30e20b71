"""Every kind of broken task folder, run through the command line as a user would: a user error exits 2 with a
message naming the file (and line) or parameter and no traceback, before any MLflow run starts; the accepted
variants (CRLF, a UTF-8 byte-order mark, extra columns, ...) are the negative controls and exit 0.

One task folder per case under one data root; `harness run --arm kmer_logreg` (the cheapest arm) on each, through
the command line's own entry point in this process (a bug would raise here, with its traceback), and a few of them
again as `python -m harness` processes, whose stderr must hold no traceback."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO

ROWS = {"train": 40, "dev": 20, "test": 20}


def good_rows(split: str) -> list[tuple[str, int]]:
    """Valid rows: random 24-bp sequences, labels 0 and 1 alternating (every split holds both classes)."""
    rng = np.random.default_rng(list(ROWS).index(split))
    return [("".join(rng.choice(list("ACGT"), 24)), i % 2) for i in range(ROWS[split])]


def csv_text(rows, header: str = "sequence,label", end: str = "\n") -> str:
    return "".join(f"{line}{end}" for line in [header, *(f"{s},{y}" for s, y in rows)])


def good(split: str) -> str:
    return csv_text(good_rows(split))


def with_row(split: str, line: int, text: str) -> str:
    """`split`'s valid file with its line `line` (1-based, header = 1) replaced by `text`."""
    lines = good(split).splitlines()
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


def relabel(split: str, labels) -> str:
    return csv_text([(s, y) for (s, _), y in zip(good_rows(split), labels)])


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, str | bytes | None] = field(default_factory=dict)  # split -> content; None: absent; "/": folder
    expect: tuple[str, ...] = ()  # fragments of stderr; "{task}" is the case's task folder
    exit_code: int = 2
    args: tuple[str, ...] = ()
    arm: str = "kmer_logreg"


# A note column with "café" in Latin-1 on line 7 (the header is line 1).
LATIN1 = ("sequence,label,note\n" + "".join(f"{s},{y},ok\n" for s, y in good_rows("train")[:5])
          + "ACGTACGTACGT,0,caf\u00e9\n"
          + "".join(f"{s},{y},ok\n" for s, y in good_rows("train")[5:])).encode("latin-1")

CASES = [
    # Accepted variants: the negative controls.
    Case("crlf", {s: csv_text(good_rows(s), end="\r\n") for s in ROWS}, exit_code=0),
    Case("utf8_bom", {"train": codecs.BOM_UTF8 + good("train").encode()}, exit_code=0),
    Case("extra_columns", {"train": "id,sequence,label,note\n" + "".join(
        f"{i},{s},{y},x\n" for i, (s, y) in enumerate(good_rows("train")))}, exit_code=0),
    # A real column named label.1 is not a duplicated label (pandas would name a second `label` so).
    Case("column_named_label_1", {"train": "sequence,label,label.1\n" + "".join(
        f"{s},{y},7\n" for s, y in good_rows("train"))}, exit_code=0),
    Case("trailing_blank_lines", {"dev": good("dev") + "\n\n"}, exit_code=0),
    Case("lowercase_and_iupac", {"test": with_row("test", 3, "acgtacgtacgtRYacgtacgtac,1")}, exit_code=0),
    Case("exactly_the_kmer_minimum", {"dev": with_row("dev", 5, "ACGTAC,0")}, exit_code=0),  # k up to 6
    Case("quoted_fields", {"dev": csv_text([(f'"{s}"', f'"{y}"') for s, y in good_rows("dev")])}, exit_code=0),
    # Splits that cannot be tuned on or reported.
    Case("one_class_dev", {"dev": relabel("dev", [1] * 20)},
         ("{task}/dev.csv", "label 1", "0: 20, 1: 20", "MCC", "choose blindly")),
    Case("one_class_test", {"test": relabel("test", [0] * 20)}, ("{task}/test.csv", "label 0", "MCC")),
    # Columns.
    Case("duplicated_label", {"train": "sequence,label,label\n" + "".join(
        f"{s},{y},{y}\n" for s, y in good_rows("train"))}, ("{task}/train.csv, line 1", "'label' appears 2 times")),
    Case("duplicated_sequence", {"dev": "sequence,sequence,label\n" + "".join(
        f"{s},{s},{y}\n" for s, y in good_rows("dev"))}, ("{task}/dev.csv, line 1", "'sequence' appears 2 times")),
    Case("missing_column", {"train": good("train").replace("sequence,label", "seq,label", 1)},
         ("{task}/train.csv, line 1", "missing column(s) sequence")),
    Case("trailing_comma", {"train": good("train").replace("\n", ",\n").replace("sequence,label,", "sequence,label")},
         ("{task}/train.csv, line 2 has 3 fields, the header has 2: remove the trailing comma",)),
    Case("missing_field", {"dev": with_row("dev", 4, "ACGTACGTACGT")},
         ("{task}/dev.csv, line 4 has 1 fields, the header has 2: a field is missing",)),
    # Labels.
    Case("label_overflows_int64", {"train": with_row("train", 5, "ACGTACGTACGT,100000000000000000000")},
         ("{task}/train.csv, line 5", "100000000000000000000", "far out of range")),
    Case("label_near_int64_max", {"train": with_row("train", 3, "ACGTACGTACGT,9000000000000000000")},
         ("{task}/train.csv, line 3", "9000000000000000000 is far out of range")),
    Case("label_million", {"train": with_row("train", 2, "ACGTACGTACGT,1000000")},
         ("{task}/train.csv", "labels must be class indices 0..C-1; line 2 has 1000000 but train has only 40 rows")),
    Case("many_classes_missing", {"train": relabel("train", [0, 30] * 20)},
         ("{task}/train.csv", "never occur", "and 19 more")),
    Case("label_not_integer", {"train": with_row("train", 6, "ACGTACGTACGT,a")},
         ("{task}/train.csv, line 6: label 'a' is not an integer",)),
    Case("label_float", {"dev": with_row("dev", 2, "ACGTACGTACGT,1.0")}, ("{task}/dev.csv, line 2: label '1.0'",)),
    Case("label_negative", {"test": with_row("test", 7, "ACGTACGTACGT,-1")}, ("{task}/test.csv, line 7: label -1",)),
    Case("class_missing_in_train", {"train": relabel("train", [0, 2] * 20)}, ("{task}/train.csv", "[1] never occur")),
    Case("dev_label_not_in_train", {"dev": with_row("dev", 9, "ACGTACGTACGT,2")},
         ("{task}/dev.csv, line 9: label 2 does not occur in",)),
    # Sequences.
    Case("non_dna_character", {"train": with_row("train", 4, "ACGUACGTACGT,1")},
         ("{task}/train.csv, line 4: character 'U' is not DNA",)),
    Case("blank_line_inside", {"test": with_row("test", 3, "")}, ("{task}/test.csv, line 3: empty sequence",)),
    Case("too_short_for_kmers", {"dev": with_row("dev", 5, "ACG,0")},
         ("{task}/dev.csv, line 5: a sequence of 3 bp", "kmer_logreg needs at least 6 bp")),
    # Files.
    Case("empty_file", {"dev": ""}, ("{task}/dev.csv: the file is empty",)),
    Case("header_only", {"test": "sequence,label\n"}, ("{task}/test.csv: no rows after the header",)),
    Case("missing_file", {"dev": None}, ("{task}/dev.csv: file not found",)),
    Case("folder_named_train_csv", {"train": "/"}, ("{task}/train.csv: is a folder, not a file",)),
    Case("gzip", {"train": gzip.compress(good("train").encode())},
         ("{task}/train.csv: this is a gzip file", "1f 8b", "gunzip it")),
    Case("utf16_bom", {"train": good("train").encode("utf-16")}, ("{task}/train.csv", "UTF-16", "save it as UTF-8")),
    Case("utf16_without_bom", {"dev": good("dev").encode("utf-16-le")}, ("{task}/dev.csv, line 1: NUL byte",)),
    Case("latin1", {"train": LATIN1}, ("{task}/train.csv, line 7: byte 0xe9 is not UTF-8", "save it as UTF-8")),
    # Parameters that no arm of the request takes.
    Case("max_length_for_kmer", args=("--max-length", "128"), expect=("max_length=128 applies to torch arms",)),
    Case("precision_for_kmer", args=("--precision", "bf16"), expect=("precision=bf16 applies to torch arms",)),
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One task folder `bad/<case>` per case: the valid splits, with the case's files written over them."""
    root = tmp_path_factory.mktemp("bad_input")
    for case in CASES:
        folder = root / "bad" / case.name
        folder.mkdir(parents=True)
        for split in ROWS:
            content = case.files.get(split, good(split))
            path = folder / f"{split}.csv"
            if content == "/":
                path.mkdir()
            elif isinstance(content, bytes):
                path.write_bytes(content)
            elif content is not None:
                path.write_text(content, newline="")  # as written: CRLF stays CRLF
    return root


def run_cli(args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "harness", "run", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def running_runs(workdir: Path) -> list[str]:
    """MLflow runs still RUNNING, over every experiment of the case's tracking database (none if it was never
    created)."""
    if not (workdir / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_name for r in client.search_runs(ids, max_results=1000) if r.info.status == "RUNNING"]


def case_args(case: Case, data_root: Path, workdir: Path) -> list[str]:
    return ["--arm", case.arm, "--data", str(data_root), "--tasks", f"bad/{case.name}", "--n-trials", "1",
            "--seeds", "1", "--storage", f"sqlite:///{workdir}/optuna.db", *case.args]


def check_outcome(case: Case, data_root: Path, workdir: Path, exit_code: int, stderr: str) -> None:
    """The case's exit code; for a refusal, one last `error:` line (short) holding every expected fragment; no
    traceback; no MLflow run left RUNNING."""
    assert "Traceback" not in stderr, stderr
    assert exit_code == case.exit_code, stderr[-3000:]
    if case.exit_code:
        message = stderr.strip().splitlines()[-1]
        assert message.startswith("error: ") and len(message) < 1200, message
        for fragment in case.expect:
            assert fragment.format(task=str(data_root / f"bad/{case.name}")) in message, message
    assert running_runs(workdir) == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_before_any_run_with_a_message(case: Case, data_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, capsys):
    import mlflow

    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exit_code = main(["run", *case_args(case, data_root, tmp_path)])
    check_outcome(case, data_root, tmp_path, exit_code, capsys.readouterr().err)


# One accepted variant and refusals from each stage (reading, labels, columns, parameters), as separate processes.
IN_A_PROCESS = ("crlf", "latin1", "label_overflows_int64", "duplicated_label", "one_class_dev", "precision_for_kmer")


@pytest.mark.parametrize("case", [c for c in CASES if c.name in IN_A_PROCESS], ids=lambda c: c.name)
def test_bad_input_in_a_process_prints_no_traceback(case: Case, data_root: Path, tmp_path: Path):
    proc = run_cli(case_args(case, data_root, tmp_path), tmp_path)
    check_outcome(case, data_root, tmp_path, proc.returncode, proc.stderr)


def test_a_garbage_checkpoint_manifest_names_the_file_the_line_and_the_layout(data_root: Path, tmp_path: Path):
    for name, manifest, problem in (("not_json", "garbage\n", "is not valid JSON (line 1, column 1"),
                                    ("no_model", '{"architecture": {}, "tokenizer": "char"}', "lacks key(s) 'model'")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "harness.json").write_text(manifest)
        proc = run_cli(["--arm", "convnova_char", "--init", str(folder), "--data", str(data_root), "--tasks",
                        "bad/crlf", "--n-trials", "1", "--seeds", "1", "--storage", f"sqlite:///{tmp_path}/o.db"],
                       tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{folder / 'harness.json'} {problem}" in proc.stderr and "a checkpoint folder holds" in proc.stderr
        assert running_runs(tmp_path) == []


def test_torch_only_parameters_are_refused_only_where_no_arm_takes_them():
    from harness.arms import ARMS
    from harness.errors import ParameterError
    from harness.request import RunRequest

    def check(**params: str) -> None:
        request = RunRequest.parse(params)
        request.check_torch_only_parameters([ARMS.get(a) for a in request.arms])

    check(arms="kmer_logreg,unet_char", max_length="64", precision="fp32")  # a mixed sweep: some arms take them
    check(arm="kmer_logreg", precision="auto")  # the default is no choice
    check(arm="unet_char", max_length="64", precision="bf16")
    with pytest.raises(ParameterError, match=r"max_length=64 applies to torch arms \(a token cap\); kmer_logreg, "
                                             "onehot_logreg"):
        check(arms="kmer_logreg,onehot_logreg", max_length="64")
    with pytest.raises(ParameterError, match="precision=fp32 applies to torch arms"):
        check(arm="onehot_logreg", precision="fp32")


def test_minimum_sequence_length_of_every_arm():
    """Measured with `run --arm <each> --tasks <1-bp task>`: every torch arm and the one-hot baseline run on 1 bp;
    k-mer counts need k bp (a train split shorter than k fails with "empty vocabulary")."""
    from harness.arms import ARMS, RunOptions
    from harness.request import min_sequence_length
    from harness.studies import load_study

    study = load_study("smoke")
    for name, arm in ARMS.items():
        least, why = min_sequence_length(arm, study, RunOptions())
        assert (least, bool(why)) == ((6, True) if name == "kmer_logreg" else (1, False)), name


@pytest.mark.parametrize("config, problem", [
    ({"foo": 1}, "lacks key(s) 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size'"),
    ({"hidden_size": 0}, "0 is not a valid hidden_size (the transformer's width): it must be an integer >= 1"),
    ({"hidden_size": "x"}, "'x' is not a valid hidden_size"),
    ({"num_attention_heads": 5}, "num_attention_heads=5 does not divide hidden_size=96"),
])
def test_a_checkpoint_architecture_that_cannot_be_built_is_refused_when_opened(config, problem, tmp_path):
    """A published-layout config.json with a size missing (the model's default would be taken silently and the
    weights would not fit, found only in trial 0) or invalid (a traceback from torch) names the file."""
    from harness.checkpoints import open_checkpoint
    from harness.errors import CheckpointError

    valid = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 192}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"")  # opening reads the manifest, not the weights
    (folder / "config.json").write_text(json.dumps(config if "foo" in config else {**valid, **config}))
    open_checkpoint.cache_clear()
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(str(folder))
    assert str(err.value).startswith(f"checkpoint file {folder / 'config.json'}") and problem in str(err.value)
    # Negative control: the valid sizes open.
    (folder / "config.json").write_text(json.dumps(valid))
    open_checkpoint.cache_clear()
    assert open_checkpoint(str(folder)).architecture == valid
