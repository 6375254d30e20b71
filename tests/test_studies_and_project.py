"""Study files, and the MLproject entry point as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, TINY_STUDY
from harness.cli import build_parser
from harness.studies import StudyError, load_study, parse_study


def test_shipped_studies_load_and_declare_every_family():
    from harness.arms import ARMS

    for name in ("smoke", "gue_quick"):
        spec = load_study(name)
        for _, arm in ARMS.items():
            assert spec.space(arm.family)
        assert spec.seeds == 3 and spec.n_trials >= 4
    assert all(t.startswith("synthetic/") for t in load_study("smoke").tasks)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("budget"), "missing key budget"),
    (lambda r: r["budget"].pop("n_trials"), "missing key budget.n_trials"),
    (lambda r: r["budget"].update(max_epochs="ten"), "budget.max_epochs must be int"),
    (lambda r: r["search_spaces"]["cnn"].update(lr={"low": 1}), "search_spaces.cnn.lr: expected a mapping with a 'type'"),
    (lambda r: r["search_spaces"]["cnn"].update(lr={"type": "gaussian"}), "search_spaces.cnn.lr: unknown type 'gaussian'"),
    (lambda r: r["search_spaces"]["cnn"].update(lr={"type": "float", "low": 1}), "search_spaces.cnn.lr: missing key 'high'"),
    (lambda r: r["budget"].update(patience="two"), "budget.patience must be int"),
    (lambda r: r["budget"].update(patience=-1), "budget.patience must be >= 1"),
    (lambda r: r["budget"].update(seeds="three"), "budget.seeds must be int"),
    (lambda r: r["pruner"].update(warmup_steps=2), "unknown key pruner.warmup_steps; did you mean 'n_warmup_steps'"),
    (lambda r: r["search_spaces"].update(cnn=None), "search_spaces.cnn must be a mapping of parameter: distribution"),
    (lambda r: r.update(sampler=[1, 2]), "sampler must be dict"),
])
def test_invalid_study_names_the_key(mutate, message):
    raw = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    mutate(raw)
    with pytest.raises(StudyError, match="smoke-test.yaml: " + message.replace("(", r"\(").replace(")", r"\)")):
        parse_study(raw, "smoke-test.yaml")


def test_invalid_yaml_is_a_study_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: [unclosed\n")
    with pytest.raises(StudyError, match="bad.yaml: not valid YAML"):
        load_study(str(bad))


def test_missing_family_is_reported_before_any_training():
    spec = parse_study({"tasks": ["x"], "budget": {"n_trials": 1, "max_epochs": 1}, "search_spaces": {}}, "s.yaml")
    with pytest.raises(StudyError, match="no 'cnn' family"):
        spec.space("cnn")


def test_unknown_study_lists_known_ones():
    with pytest.raises(StudyError, match="unknown study 'nope'; known: .*smoke"):
        load_study("nope")


def cli_options(command: str) -> set[str]:
    """The options of a command line; those MLproject cannot pass (a tracking URI comes from the environment,
    -P is the MLflow-style spelling of the same options) left out."""
    if command == "analyze":
        from analysis.cli import build_parser as analysis_parser

        parser = analysis_parser()
    else:
        parser = build_parser()._subparsers._group_actions[0].choices[command]
    return {a.dest for a in parser._actions} - {"help", "tracking_uri", "no_log", "mlflow_style"}


@pytest.mark.parametrize("entry,command", [("main", "run"), ("sweep", "sweep"), ("plan", "plan"),
                                           ("pretrain", "pretrain"), ("tokenizer", "tokenizer"),
                                           ("leakage", "leakage"), ("analyze", "analyze")])
def test_mlproject_parameters_match_the_cli(entry, command):
    project = yaml.safe_load((REPO / "MLproject").read_text())
    params = project["entry_points"][entry]["parameters"]
    assert set(params) == cli_options(command)
    for name in params:  # every parameter reaches the command line
        assert f"--{name.replace('_', '-')} {{{name}}}" in project["entry_points"][entry]["command"]
    if entry != "main":
        return
    assert {"arm", "study", "tasks", "data", "n_trials", "seeds", "storage", "experiment", "device"} <= set(params)
    assert params["storage"]["default"] == "sqlite:///optuna.db" and params["study"]["default"] == "smoke"


@pytest.mark.slow
def test_mlflow_run_entry_point(tmp_path, tiny_gue, tiny_study):
    """`mlflow run . -P ... --env-manager local`, as the README says, against a throwaway tracking DB."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # mlflow.set_experiment in earlier in-process tests exported MLFLOW_EXPERIMENT_ID: a new shell has none.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-P", "arm=kmer_logreg",
           "-P", f"study={tiny_study}", "-P", f"data={tiny_gue}", "-P", "seeds=1", "-P",
           f"storage=sqlite:///{tmp_path}/optuna.db"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    (launch,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert launch.data.tags["stage"] == "launch" and launch.data.tags["results_experiment"] == "tiny"
    assert launch.info.status == "FINISHED"
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == ["final", "study", "trial", "trial", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{ci_command}\n```" in readme


def test_redact_removes_passwords():
    from harness.tracking import redact

    assert redact("postgresql+psycopg2://alice:s3cret@db.example:5432/optuna") == \
        "postgresql+psycopg2://alice:***@db.example:5432/optuna"
    assert "s3cret" not in redact("http://bob:s3cret@tracking:5000")
    assert redact("sqlite:///optuna.db") == "sqlite:///optuna.db"


def test_conda_env_pins_match_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip_section == deps
    assert "torch==2.13.0" in deps and "mlflow==3.17.2" in deps


def test_gue_study_covers_the_28_tasks_without_truncating():
    from tokenizers import Tokenizer

    from conftest import shared_path
    from harness.data import load_gue_task
    from harness.tasks import GUE_TASKS

    spec = load_study("gue")
    raw = yaml.safe_load((REPO / "studies" / "gue.yaml").read_text())
    assert {t["name"]: t["classes"] for t in raw["tasks"]} == GUE_TASKS
    assert (spec.n_trials, spec.seeds) == (20, 3) and len(spec.arms) == 9 and "onehot_logreg" in spec.arms
    for t in raw["tasks"]:  # single nucleotides: every base and [CLS]/[SEP]
        assert spec.max_length(t["name"], "char") == t["bp"] + 2
    published = Tokenizer.from_file(str(shared_path("dnabert2", "tokenizer.json")))
    root = shared_path("data", "gue")
    for folder in sorted(root.glob("*/*")):
        name = f"{folder.parent.name}/{folder.name}"
        task = load_gue_task(str(root), name)
        longest = max(len(e.ids) for split in ("train", "dev", "test")
                      for e in published.encode_batch(task.split(split).sequences))
        assert longest <= spec.max_length(name, "bpe"), name


def test_a_task_mapping_sets_its_token_cap(tmp_path):
    raw = yaml.safe_load(TINY_STUDY)
    raw["tasks"] = [{"name": "toy/motif_binary", "max_length": {"char": 20}}, "toy/motif_multiclass"]
    spec = parse_study(raw, "s.yaml")
    assert spec.tasks == ["toy/motif_binary", "toy/motif_multiclass"]
    assert spec.max_length("toy/motif_binary", "char") == 20 and spec.max_length("toy/motif_binary", "bpe") is None
    raw["tasks"] = [{"name": "toy/motif_binary", "max_length": {"char": 0}}]
    with pytest.raises(StudyError, match=r"tasks\[0\] must be a task name or a mapping"):
        parse_study(raw, "s.yaml")


@pytest.mark.slow
def test_the_run_applies_the_studys_per_task_cap(workdir, tiny_gue):
    from harness.cli import main

    raw = yaml.safe_load(TINY_STUDY)
    raw["tasks"] = [{"name": "toy/motif_binary", "max_length": {"char": 40, "bpe": 12}}]
    (workdir / "capped.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", "--arm", "unet_char", "--study", str(workdir / "capped.yaml"), "--data", str(tiny_gue),
                 "--n-trials", "1", "--seeds", "1"]) == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.stage = 'final'")
    assert runs[0].data.metrics["truncated_train"] > 0  # 60-140 bp sequences cut to 40 tokens, and said so
    (parent,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.stage = 'study'")
    assert parent.data.params["max_length"] == "40"


def test_pruning_can_be_switched_off():
    raw = yaml.safe_load(TINY_STUDY)
    raw["pruner"] = "none"
    spec = parse_study(raw, "s.yaml")
    assert spec.pruner is None and spec.protocol("cnn")["pruner"] is None
    raw["pruner"] = {"n_startup_trials": 1}
    assert parse_study(raw, "s.yaml").pruner == {"n_startup_trials": 1}
