"""A typo or a nonsense value in a study file is an error naming the file, the key path and the fix, before
anything runs; never a silently different protocol (harness/studies.py: STUDY_SCHEMA; harness/hyperparameters.py)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from harness.errors import StudyError
from harness.studies import load_study, parse_study

SMOKE = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())


def smoke(mutate) -> dict:
    raw = copy.deepcopy(SMOKE)
    raw["analysis"] = {"contrasts": [{"a": "unet_char", "b": "unet_bpe"}], "families": {"synthetic/motif_binary": "x"}}
    raw["checkpoint"] = {"source": "some/ckpt", "arms": ["dnabert2_pretrained"]}
    raw["tasks"] = [{"name": "synthetic/motif_binary", "max_length": {"char": 60}}, "synthetic/motif_multiclass"]
    mutate(raw)
    return raw


def put(*keys_and_value):
    """A mutation setting raw[k1][k2]...[kn] = value (list indices allowed)."""
    *keys, last, value = keys_and_value

    def mutate(raw):
        for k in keys:
            raw = raw[k]
        raw[last] = value
    return mutate


def rename(*keys_and_new):
    """A mutation renaming the key at raw[k1]...[kn] to `new`, keeping its value: a typo."""
    *keys, old, new = keys_and_new

    def mutate(raw):
        for k in keys:
            raw = raw[k]
        raw[new] = raw.pop(old)
    return mutate


# (mutation, the key path named, the suggestion or None where nothing is close)
TYPOS = [
    (rename("budget", "patience", "patiance"), "budget.patiance", "patience"),
    (rename("budget", "n_trials", "n_trial"), "budget.n_trial", "n_trials"),
    (rename("tokenizer", "tokenzier"), "tokenzier", "tokenizer"),
    (rename("search_spaces", "serach_spaces"), "serach_spaces", "search_spaces"),
    (rename("analysis", "analysys"), "analysys", "analysis"),
    (rename("checkpoint", "chekpoint"), "chekpoint", "checkpoint"),
    (put("arm", ["kmer_logreg"]), "arm", "arms"),
    (rename("sampler", "seed", "sed"), "sampler.sed", "seed"),
    (rename("pruner", "n_warmup_steps", "n_warmup_step"), "pruner.n_warmup_step", "n_warmup_steps"),
    (rename("tokenizer", "bpe_vocab_size", "bpe_vocabsize"), "tokenizer.bpe_vocabsize", "bpe_vocab_size"),
    (put("tokenizer", "bep", "x.json"), "tokenizer.bep", "bpe"),
    (rename("analysis", "families", "familes"), "analysis.familes", "families"),
    (put("analysis", "contrasts", 0, "vary", ["tokenizer"]), "analysis.contrasts[0].vary", "varies"),
    (rename("tasks", 0, "max_length", "max_lenght"), "tasks[0].max_lenght", "max_length"),
    (rename("tasks", 0, "max_length", "char", "chr"), "tasks[0].max_length.chr", "char"),
    (rename("checkpoint", "source", "sourc"), "checkpoint.sourc", "source"),
    (rename("search_spaces", "cnn", "lr", "high", "hihg"), "search_spaces.cnn.lr.hihg", "high"),
    (rename("search_spaces", "kmer", "k", "low", "lo"), "search_spaces.kmer.k.lo", "low"),
    (put("search_spaces", "kmer", "C", "lg", True), "search_spaces.kmer.C.lg", "log"),
    (rename("search_spaces", "cnn", "pooling", "choices", "choice"), "search_spaces.cnn.pooling.choice", "choices"),
    # keys of another distribution type: nothing close, the allowed keys listed
    (put("search_spaces", "cnn", "lr", "choices", [1e-3]), "search_spaces.cnn.lr.choices", None),
    (put("search_spaces", "cnn", "batch_size", "low", 8), "search_spaces.cnn.batch_size.low", None),
]


@pytest.mark.parametrize("mutate, key_path, suggestion", TYPOS, ids=[t[1] for t in TYPOS])
def test_a_typo_names_the_key_path_and_the_closest_key(mutate, key_path, suggestion):
    with pytest.raises(StudyError) as err:
        parse_study(smoke(mutate), "typo.yaml")
    message = str(err.value)
    assert message.startswith(f"typo.yaml: unknown key {key_path};"), message
    assert "allowed: " in message
    if suggestion:
        assert f"did you mean {suggestion!r}?" in message
    else:
        assert "did you mean" not in message


def test_the_mutations_alone_are_valid():
    """Negative control: the study the typos are made in parses, so each error above is the typo's."""
    spec = parse_study(smoke(lambda raw: None), "typo.yaml")
    assert spec.patience == 2 and spec.max_length("synthetic/motif_binary", "char") == 60


@pytest.mark.parametrize("mutate, message", [
    (put("arms", ["kmer_logrge"]), r"arms\[0\] 'kmer_logrge' is not an arm; did you mean 'kmer_logreg'\?"),
    (put("tasks", [1]), r"tasks\[0\] must be a task name or a mapping"),
    (put("tasks", [["tf/0"]]), r"tasks\[0\] must be a task name or a mapping"),
])
def test_arms_and_tasks_must_be_what_they_name(mutate, message):
    with pytest.raises(StudyError, match="s.yaml: " + message):
        parse_study(smoke(mutate), "s.yaml")


def space(family: str, name: str, dist):
    return put("search_spaces", family, name, dist)


# Refused by parse_study whatever the arm: (mutation, message)
SHAPES = [
    (space("cnn", "lr", {"type": "float", "low": 1e-2, "high": 1e-3}), r"search_spaces.cnn.lr: low \(0.01\) > high"),
    (space("cnn", "lr", {"type": "float", "low": 0, "high": 1e-3, "log": True}),
     "search_spaces.cnn.lr: log: true needs low > 0"),
    (space("cnn", "lr", {"type": "float", "low": 1e-4, "high": 1e-3, "log": "yes"}),
     "search_spaces.cnn.lr.log must be true or false"),
    (space("cnn", "lr", {"type": "float", "low": "small", "high": 1e-3}), "search_spaces.cnn.lr.low must be a number"),
    (space("kmer", "k", {"type": "int", "low": 2.5, "high": 6}), "search_spaces.kmer.k.low must be an integer"),
    (space("kmer", "k", {"type": "int", "low": 3, "high": 6, "step": 0}), "search_spaces.kmer.k.step must be > 0"),
    (space("cnn", "batch_size", {"type": "categorical", "choices": [32, "64"]}),
     "search_spaces.cnn.batch_size.choices mix numbers and strings"),
    (space("cnn", "batch_size", {"type": "categorical", "choices": []}),
     "search_spaces.cnn.batch_size.choices must be a non-empty list"),
    (space("cnn", "pooling", {"type": "categorical", "choices": [["mean"]]}),
     "search_spaces.cnn.pooling.choices must be numbers, strings or booleans"),
]


@pytest.mark.parametrize("mutate, message", SHAPES, ids=[m for _, m in SHAPES])
def test_a_distribution_no_parameter_could_take_is_refused_on_parsing(mutate, message):
    with pytest.raises(StudyError, match="s.yaml: " + message):
        parse_study(smoke(mutate), "s.yaml")


def validate(raw: dict, arm_name: str, tmp_path) -> None:
    """What `run --arm ARM --study FILE` checks before anything runs: RunRequest.parse and .validate."""
    from harness.request import RunRequest

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    RunRequest.parse({"study": str(path), "arm": arm_name, "checkpoint": ""}).validate()


# Nonsense values for a hyperparameter, refused by the arm's check: (arm, mutation, key path, what it names)
NONSENSE = [
    ("kmer_logreg", space("kmer", "C", {"type": "float", "low": 0.0, "high": 1.0}), "search_spaces.kmer.C",
     "low=0.0 is not a valid C .* must be a number > 0"),
    ("onehot_logreg", space("onehot", "C", {"type": "categorical", "choices": [1.0, -1.0]}), "search_spaces.onehot.C",
     "choice -1.0 is not a valid C"),
    ("kmer_logreg", space("kmer", "k", {"type": "int", "low": 0, "high": 4}), "search_spaces.kmer.k",
     "low=0 is not a valid k .* an integer >= 1"),
    ("unet_char", space("cnn", "lr", {"type": "float", "low": 0, "high": 1e-3}), "search_spaces.cnn.lr",
     "low=0.0 is not a valid lr .* a number > 0"),
    ("unet_char", space("cnn", "dropout", {"type": "float", "low": 0.0, "high": 1.0}), "search_spaces.cnn.dropout",
     r"high=1.0 is not a valid dropout .* a number in \[0, 1\)"),
    ("unet_char", space("cnn", "dropout", {"type": "float", "low": -0.1, "high": 0.5}), "search_spaces.cnn.dropout",
     "low=-0.1 is not a valid dropout"),
    ("convnova_char", space("cnn", "batch_size", {"type": "categorical", "choices": [0, 32]}),
     "search_spaces.cnn.batch_size", "choice 0 is not a valid batch_size"),
    ("convnova_char", space("cnn", "batch_size", {"type": "float", "low": 16, "high": 64}),
     "search_spaces.cnn.batch_size", "a float range for an integer"),
    ("convnova_char", space("cnn", "weight_decay", {"type": "float", "low": -0.01, "high": 0.1}),
     "search_spaces.cnn.weight_decay", r"low=-0.01 is not a valid weight_decay .* a number >= 0"),
    ("dnabert2_char_scratch", space("transformer", "warmup_ratio", {"type": "float", "low": 0.0, "high": 1.0}),
     "search_spaces.transformer.warmup_ratio", r"high=1.0 is not a valid warmup_ratio .* in \[0, 1\)"),
    ("convnova_char", space("cnn", "pooling", {"type": "categorical", "choices": ["mean", "meen"]}),
     "search_spaces.cnn.pooling", "choice 'meen' is not a valid pooling .* one of attention, max, mean, positional"),
    ("dnabert2_char_scratch", put("search_spaces", "transformer", "fixed", "hidden_size", "big"),
     "search_spaces.transformer.fixed.hidden_size", "'big' is not a valid hidden_size .* an integer >= 1"),
    ("dnabert2_char_scratch", put("search_spaces", "transformer", "fixed", "num_hidden_layers", 0),
     "search_spaces.transformer.fixed.num_hidden_layers", "0 is not a valid num_hidden_layers"),
    ("dnabert2_char_scratch", put("search_spaces", "transformer", "fixed", "num_attention_heads", 5),
     "search_spaces.transformer.fixed", "num_attention_heads=5 does not divide hidden_size=64"),
    ("unet_char", put("search_spaces", "cnn", "fixed", {"kernel_size": 8}), "search_spaces.cnn.fixed.kernel_size",
     "8 is not a valid kernel_size .* an odd integer >= 1"),
    ("unet_char", put("search_spaces", "cnn", "fixed", {"widths": [32, 0]}), "search_spaces.cnn.fixed.widths",
     r"\[32, 0\] is not a valid widths .* a non-empty list, each an integer >= 1"),
    ("unet_char", put("search_spaces", "cnn", "lrr", {"type": "float", "low": 1e-3, "high": 1e-2}),
     "search space 'cnn' does not fit arm unet_char", r"unused \['lrr'\]; did you mean 'lr' for 'lrr'\?"),
]


@pytest.mark.parametrize("arm, mutate, key_path, names", NONSENSE, ids=[f"{n[0]}:{n[2]}" for n in NONSENSE])
def test_a_nonsense_value_is_refused_before_anything_runs(arm, mutate, key_path, names, tmp_path):
    with pytest.raises(StudyError) as err:
        validate(smoke(mutate), arm, tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: {key_path}"), message
    assert re.search(names, message), message


@pytest.mark.parametrize("arm, mutate", [
    ("unet_char", space("cnn", "dropout", {"type": "float", "low": 0.0, "high": 0.5})),  # no dropout is valid
    ("kmer_logreg", space("kmer", "C", {"type": "float", "low": 1e-8, "high": 1.0, "log": True})),  # C tiny
    ("convnova_char", space("cnn", "weight_decay", {"type": "categorical", "choices": [0.0, 0.01]})),
    ("dnabert2_char_scratch", space("transformer", "warmup_ratio", {"type": "float", "low": 0.0, "high": 0.5})),
    ("convnova_char", space("cnn", "pooling", {"type": "categorical", "choices": ["max", "attention"]})),
    ("unet_char", put("search_spaces", "cnn", "fixed", {"kernel_size": 1, "widths": [8, 16]})),
    ("dnabert2_char_scratch", space("transformer", "lr", {"type": "int", "low": 1, "high": 2})),  # ints are numbers
])
def test_the_rules_are_not_stricter_than_the_models(arm, mutate, tmp_path):
    """Negative control: values at the edge of what the code runs with pass the same check."""
    validate(smoke(mutate), arm, tmp_path)


def test_every_declared_hyperparameter_has_a_rule():
    """A name without a rule would pass any value unchecked."""
    from harness.arms import ARMS
    from harness.hyperparameters import RULES
    from harness.models import MODELS

    declared = {n for _, arm in ARMS.items() for group in arm.hyperparameters for n in group}
    declared |= {k for _, model in MODELS.items() for k in model.architecture_keys}
    assert declared - set(RULES) == set()


@pytest.mark.parametrize("study", ["smoke", "gue", "gue_quick"])
def test_the_shipped_studies_validate_for_every_arm_they_cover(study):
    """Negative control: the shipped studies pass the schema and every arm's value check (a pretrained arm is
    given a checkpoint name, which the search space check does not open)."""
    from harness.arms import ARMS, RunOptions
    from harness.runtime import Runtime

    spec = load_study(study)
    runtime = Runtime.resolve()
    arms = spec.arms or [name for name, _ in ARMS.items()]
    for name in arms:
        arm = ARMS.get(name)
        options = RunOptions(runtime, init="ckpt" if arm.requires_checkpoint else None)
        arm.check_search_space(spec, options)
    assert len(arms) == (9 if study == "gue" else 11)  # gue lists its arms; the others take every arm


# Through the command line: exit 2, one `error:` line, no traceback, and no database: nothing ran.
CLI_CASES = [
    ("kmer_logreg", rename("budget", "patience", "patiance"), "unknown key budget.patiance; did you mean 'patience'?"),
    ("kmer_logreg", space("kmer", "C", {"type": "float", "low": -1.0, "high": 1.0}),
     "search_spaces.kmer.C: low=-1.0 is not a valid C"),
    ("convnova_char", space("cnn", "batch_size", {"type": "categorical", "choices": [32, "64"]}),
     "search_spaces.cnn.batch_size.choices mix numbers and strings"),
]


def run_cli(tmp_path, arm: str, raw: dict, *extra: str) -> subprocess.CompletedProcess:
    """`python -m harness run --arm ARM --study bad.yaml` in `tmp_path`, MLflow and Optuna databases there."""
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "harness", "run", "--arm", arm, "--study", "bad.yaml", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("arm, mutate, message", CLI_CASES, ids=[c[2][:40] for c in CLI_CASES])
def test_the_command_line_refuses_the_study_before_running(arm, mutate, message, tmp_path):
    proc = run_cli(tmp_path, arm, smoke(mutate))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert any(line.startswith(f"error: bad.yaml: {message}") for line in proc.stderr.splitlines()), proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_the_same_command_on_a_valid_study_runs_and_writes_the_databases(tmp_path):
    """Negative control for the test above: its "no database" would hold if the run wrote elsewhere."""
    proc = run_cli(tmp_path, "kmer_logreg", smoke(lambda raw: None), "--n-trials", "1", "--seeds", "1",
                   "--tasks", "synthetic/motif_binary")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("text, message", [
    ("name: x\n\tbudget: 1\n", "found character '\\t' that cannot start any token at line 2, column 1 (YAML indents "
                               "with spaces, never tabs)"),
    ("name: x\nbudget: {n_trials: 2\n", "expected ',' or '}', but got '<stream end>' at line 3, column 1"),
])
def test_invalid_yaml_is_one_line_naming_the_line_and_column(text, message, tmp_path):
    from harness.errors import StudyError
    from harness.studies import load_study

    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(StudyError) as err:
        load_study(str(path))
    assert str(err.value) == f"{path}: not valid YAML: {message}"


def test_a_study_file_that_is_not_utf8_says_so(tmp_path):
    from harness.errors import StudyError
    from harness.studies import load_study

    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(StudyError, match=r"latin1.yaml: byte 9 is not UTF-8; save the study file as UTF-8"):
        load_study(str(path))
