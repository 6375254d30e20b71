"""A tiny study end to end on CPU: MLflow schema, resume after an interruption, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness.arms import TorchArm
from harness.cli import main
from harness.errors import (
    CheckpointError,
    DataError,
    DivergedError,
    NoCompletedTrialError,
    StorageError,
    StudyError,
)


def fingerprints(data, task="toy/motif_binary") -> list[str]:
    from harness.tasks import load_task

    loaded = load_task(task, str(data))
    return [loaded.split(name).fingerprint for name in ("train", "dev", "test")]


def run_cli(study, data, arm="unet_char", *extra):
    return main(["run", "--arm", arm, "--study", str(study), "--data", str(data), *extra])


def fail_on_call(monkeypatch, n: int, error: BaseException):
    """Make the n-th fit of a torch arm raise `error`; returns the real fit to restore."""
    real_fit = TorchArm.fit
    calls = {"n": 0}

    def fit(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise error
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(TorchArm, "fit", fit)
    return real_fit


def runs_by_stage(experiment="tiny"):
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out = {}
    for r in runs:
        out.setdefault(r.data.tags.get("stage"), []).append(r)
    return out


@pytest.mark.slow
def test_tiny_study_logs_the_schema(workdir, tiny_gue, tiny_study, caplog):
    caplog.set_level("INFO", logger="harness")
    assert run_cli(tiny_study, tiny_gue) == 0
    runs = runs_by_stage()
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED"
    assert {k: parent.data.tags[k] for k in ("arm", "task", "study", "stage", "tokenizer", "init")} == {
        "arm": "unet_char", "task": "toy/motif_binary", "study": "tiny", "stage": "study",
        "tokenizer": "char", "init": "scratch"}
    assert parent.data.params["n_trials"] == "3" and parent.data.params["max_epochs"] == "2"
    # Readable in the UI: one parameter per tuned range, in words; the space as YAML; the result as description.
    assert {k: v for k, v in parent.data.params.items() if k.startswith("search_space.")} == {
        "search_space.lr": "float in [0.002, 0.005], log", "search_space.dropout": "float in [0, 0.2]",
        "search_space.batch_size": "one of [16]"}
    space = yaml.safe_load(Path(MlflowClient().download_artifacts(parent.info.run_id, "search_space.yaml")).read_text())
    assert space["tuned"]["lr"] == {"type": "float", "low": 0.002, "high": 0.005, "log": True}
    assert space["budget"] == {"n_trials": 3, "max_epochs": 2, "patience": 2, "seeds": 2}
    assert parent.data.tags["mlflow.runName"] == "unet_char | toy/motif_binary"
    assert parent.data.tags["mlflow.source.name"] == "dna-harness run"
    assert set(parent.data.metrics) == {"best_dev_mcc", "test_mcc_mean", "test_mcc_std"}  # results only
    assert "git_commit" in parent.data.tags and parent.data.tags["storage"] == "sqlite:///optuna.db"

    trials, finals = runs["trial"], runs["final"]
    assert sorted(int(r.data.tags["trial_number"]) for r in trials) == [0, 1, 2]
    assert sorted(int(r.data.tags["seed"]) for r in finals) == [0, 1]
    client = MlflowClient()
    for r in trials + finals:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"arm", "task", "study"} <= r.data.tags.keys()
    for r in trials:
        assert {"lr", "dropout", "batch_size"} <= r.data.params.keys()
        history = client.get_metric_history(r.info.run_id, "epoch_dev_mcc")
        assert [m.step for m in history] == [1, 2]
        assert not {"dev_mcc", "train_loss"} & r.data.metrics.keys()  # per epoch is epoch_* everywhere
        assert r.data.tags["mlflow.runName"] == f"unet_char | toy/motif_binary | trial {int(r.data.tags['trial_number']):02d}"
        assert [(i.dataset.name, i.tags[0].value) for i in r.inputs.dataset_inputs] == [
            ("toy/motif_binary", "train"), ("toy/motif_binary", "dev")]  # a trial never sees test
        assert r.data.tags["trial_state"] == "COMPLETE"
    (best,) = [r for r in trials if r.data.tags["trial_number"] == parent.data.tags["best_trial_number"]]
    assert parent.data.metrics["best_dev_mcc"] == max(r.data.metrics["best_dev_mcc"] for r in trials)
    assert parent.data.metrics["best_dev_mcc"] == best.data.metrics["best_dev_mcc"]
    for r in finals:
        m = r.data.metrics
        assert {"test_mcc", "test_f1", "test_accuracy", "test_auroc", "dev_mcc", "n_parameters", "train_seconds",
                "flops"} <= m.keys()
        assert 1_000_000 < m["n_parameters"] < 2_000_000 and m["train_seconds"] > 0
        assert r.data.tags["mlflow.runName"] == f"unet_char | toy/motif_binary | seed {r.data.tags['seed']}"
        splits = {split: parent_split for split, parent_split in zip(("train", "dev", "test"), fingerprints(tiny_gue))}
        assert {i.tags[0].value: (i.dataset.name, i.dataset.digest) for i in r.inputs.dataset_inputs} == {
            split: ("toy/motif_binary", digest) for split, digest in splits.items()}
        assert r.data.params["lr"] == best.data.params["lr"]  # finals retrain the best configuration
        curve = client.get_metric_history(r.info.run_id, "epoch_dev_mcc")
        assert m["dev_mcc"] == pytest.approx(max(p.value for p in curve))  # the selected checkpoint, not the last
        assert m["truncated_test"] == 0 and r.data.tags["git_commit"] == parent.data.tags["git_commit"]
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"confusion_matrix.png", "learning_curve.png", "test_predictions.csv"} <= artifacts
    mean = sum(r.data.metrics["test_mcc"] for r in finals) / 2
    assert parent.data.metrics["test_mcc_mean"] == pytest.approx(mean)
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"test MCC {mean:.3f} ± {parent.data.metrics['test_mcc_std']:.3f} (sd over 2 seeds) · best "
                           f"trial {best.data.tags['trial_number']}: dev MCC {parent.data.metrics['best_dev_mcc']:.3f}")
    assert {"best_params.json", "optuna_history.png", "task_summary.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    # Progress lines: trial, epoch, dev MCC and an ETA.
    assert "trial 0 (1/3) | epoch 1/2" in caplog.text and "ETA" in caplog.text
    # Seeds are named alike in every line; the last lines say where the results are.
    assert "final seed 1 (2/2) | epoch 1/2" in caplog.text and "final seed 1 (2/2) | test_mcc" in caplog.text
    exp_id = MlflowClient().get_experiment_by_name("tiny").experiment_id
    assert (f"then open http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning&searchFilter="
            "tags.%60stage%60%20%3D%20%27study%27%20and%20tags.%60study%60%20%3D%20%27tiny%27") in caplog.text
    assert "python -m analysis --experiment tiny" in caplog.text
    # optuna-dashboard: the objective named, the cell and its MLflow parent as study attributes.
    storage = optuna.storages.RDBStorage("sqlite:///optuna.db")
    tuning = optuna.load_study(study_name="tiny/unet_char/toy/motif_binary", storage=storage)
    final = optuna.load_study(study_name="tiny/unet_char/toy/motif_binary/final", storage=storage)
    assert tuning.metric_names == ["dev_mcc"] and final.metric_names[0].startswith("dev_mcc of one final seed")
    for study in (tuning, final):
        assert {k: study.user_attrs[k] for k in ("arm", "task", "study", "mlflow_parent_run_id")} == {
            "arm": "unet_char", "task": "toy/motif_binary", "study": "tiny", "mlflow_parent_run_id": parent.info.run_id}
    assert final.user_attrs["kind"].startswith("final seeds, not a tuning study")
    assert all(t.params == {} and t.user_attrs["seed"] in (0, 1) for t in final.trials)  # no "importance" of seeds


@pytest.mark.slow
def test_interrupted_study_resumes_without_losing_trials(workdir, tiny_gue, tiny_study, monkeypatch):
    real_fit = fail_on_call(monkeypatch, 2, KeyboardInterrupt())
    assert run_cli(tiny_study, tiny_gue) == 130
    runs = runs_by_stage()
    assert [r.info.status for r in runs["study"]] == ["KILLED"]
    assert sorted(r.info.status for r in runs["trial"]) == ["FINISHED", "KILLED"]
    study = optuna.load_study(study_name="tiny/unet_char/toy/motif_binary", storage="sqlite:///optuna.db")
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE and study.trials[1].state.name == "FAIL"

    monkeypatch.setattr(TorchArm, "fit", real_fit)
    assert run_cli(tiny_study, tiny_gue) == 0
    study = optuna.load_study(study_name="tiny/unet_char/toy/motif_binary", storage="sqlite:///optuna.db")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    assert complete[0].number == 0 and complete[0].params == first.params and complete[0].value == first.value
    runs = runs_by_stage()
    assert len(runs["study"]) == 1 and runs["study"][0].info.status == "FINISHED"  # the same parent, resumed
    assert len(runs["final"]) == 2
    # A third run has nothing left to do: no new trials, no duplicate final runs.
    assert run_cli(tiny_study, tiny_gue) == 0
    runs = runs_by_stage()
    assert len(runs["trial"]) == 4 and len(runs["final"]) == 2


@pytest.mark.slow
def test_same_command_same_test_metrics(tmp_path, tiny_gue, tiny_study, monkeypatch):
    results = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        assert run_cli(tiny_study, tiny_gue, "unet_char", "--tasks", "toy/motif_multiclass") == 0
        finals = sorted(runs_by_stage()["final"], key=lambda r: r.data.tags["seed"])
        results.append([(r.data.metrics["test_mcc"], r.data.metrics["test_f1"], r.data.params["lr"]) for r in finals])
    assert results[0] == results[1]


def test_kmer_arm_through_the_cli(workdir, tiny_gue, tiny_study):
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "1") == 0
    runs = runs_by_stage()
    assert len(runs["trial"]) == 3 and len(runs["final"]) == 1
    assert runs["study"][0].data.tags["family"] == "kmer"
    assert "test_mcc_std" not in runs["study"][0].data.metrics  # one seed: no spread to report


def test_parent_sd_is_the_sample_sd_of_its_final_runs(workdir, tiny_gue, tiny_study):
    """The parent's test_mcc_std is the sd the report gives (n - 1), not numpy's default population sd."""
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "3") == 0
    runs = runs_by_stage()
    for parent in runs["study"]:
        finals = [r.data.metrics["test_mcc"] for r in runs["final"]
                  if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len(finals) == 3
        assert parent.data.metrics["test_mcc_std"] == pytest.approx(float(np.std(finals, ddof=1)))


def registered(name: str) -> list[tuple[int, str]]:
    return sorted((int(v.version), v.run_id) for v in MlflowClient().search_model_versions(f"name = '{name}'"))


def test_save_models_registers_the_best_seed_by_dev_mcc_all_seeds_or_none(workdir, tiny_gue, tiny_study):
    """best: one version, the final run with the best dev MCC (not test); all: one per seed; none: nothing."""
    name = "tiny.kmer_logreg.toy_motif_binary"
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "2") == 0
    finals = runs_by_stage()["final"]
    best = max(finals, key=lambda r: (r.data.metrics["dev_mcc"], -int(r.data.tags["seed"])))
    assert registered(name) == [(1, best.info.run_id)]
    (parent,) = runs_by_stage()["study"]
    assert parent.data.tags["registered_model"] == f"{name}/1"
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "2") == 0  # resumed: registered once only
    assert registered(name) == [(1, best.info.run_id)]

    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "2", "--save-models", "all", "--storage",
                   "sqlite:///all.db", "--experiment", "all") == 0
    by_seed = [r.info.run_id for r in sorted(runs_by_stage("all")["final"], key=lambda r: int(r.data.tags["seed"]))]
    assert [run for _, run in registered(name)] == [best.info.run_id, *by_seed]
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--save-models", "none", "--storage", "sqlite:///none.db",
                   "--experiment", "none") == 0
    assert len(registered(name)) == 3  # none added


def test_a_model_that_cannot_be_logged_keeps_its_seed(workdir, tiny_gue, tiny_study, monkeypatch, caplog):
    """A failing export is reported with its traceback and tagged on the final run; the seed's results count."""
    from harness import serving

    def broken(fitted, input_example):
        raise OSError("No space left on device")

    monkeypatch.setattr(serving, "log_model", broken)
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "2") == 0
    runs = runs_by_stage()
    assert all(r.info.status == "FINISHED" and r.data.tags["model_error"] == "OSError: No space left on device"
               for r in runs["final"])
    assert runs["study"][0].data.metrics["test_mcc_mean"] >= -1 and "registered_model" not in runs["study"][0].data.tags
    assert "Traceback" in caplog.text and "its model could not be logged" in caplog.text
    assert MlflowClient().search_registered_models() == []


@pytest.mark.parametrize("csv, expected", [
    ("seq,label\nACGT,0\n", "train.csv, line 1: missing column(s) sequence"),
    ("sequence,label\nACGT,0\nACXT,1\n", "train.csv, line 3: character 'X' is not DNA"),
    ("sequence,label\nACGT,zero\n", "train.csv, line 2: label 'zero' is not an integer"),
])
def test_bad_data_gives_clear_error_and_no_run(workdir, tiny_gue, tiny_study, capsys, csv, expected):
    (tiny_gue / "toy" / "motif_binary" / "train.csv").write_text(csv)
    assert run_cli(tiny_study, tiny_gue) == 2
    assert expected in capsys.readouterr().err
    exp = MlflowClient().get_experiment_by_name("tiny")
    assert exp is None or not MlflowClient().search_runs([exp.experiment_id])


@pytest.mark.parametrize("error, code", [
    (DataError("train.csv, line 3: bad"), 2), (StudyError("s.yaml: bad key"), 2), (CheckpointError("does not fit"), 2),
    (StorageError("lost the Optuna storage"), 1), (NoCompletedTrialError("none of the 3 trials completed"), 1),
])
def test_user_errors_exit_with_their_code(monkeypatch, capsys, error, code):
    def tune(request):
        raise error

    monkeypatch.setattr("harness.tuning.tune", tune)
    assert main(["run", "--arm", "unet_char"]) == code
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug"), FileNotFoundError(2, "No such file", "x")])
def test_a_bug_keeps_its_traceback(monkeypatch, bug):
    """Only HarnessErrors (and a full or read-only disk) become `error: ...`; a ValueError, KeyError or a
    missing file inside the harness is a bug: it propagates with its traceback."""
    def tune(request):
        raise bug

    monkeypatch.setattr("harness.tuning.tune", tune)
    with pytest.raises(type(bug)):
        main(["run", "--arm", "unet_char"])


def test_unknown_arm_and_bad_parameters(workdir, tiny_study, capsys):
    assert main(["run", "--arm", "gpt5", "--study", str(tiny_study)]) == 2
    assert "unknown arm 'gpt5'; registered: convnova_bpe, convnova_char, dnabert2_char_scratch, dnabert2_pretrained, dnabert2_scratch, hf_pretrained, hf_scratch, kmer_logreg, onehot_logreg, unet_bpe, unet_char" in capsys.readouterr().err
    assert main(["run", "--arm", "unet_char", "--study", str(tiny_study), "--n-trials", "two"]) == 2
    assert "n_trials must be an integer" in capsys.readouterr().err
    for arms in ("", "unet_char,kmer_logreg"):  # run takes exactly one arm (an empty -P arm= is not "all")
        assert main(["run", "--arm", arms, "--study", str(tiny_study)]) == 2
        assert f"arm={arms}: unknown arm {arms!r}" in capsys.readouterr().err
    assert not (workdir / "optuna.db").exists()  # refused before anything was opened


def test_an_unknown_name_the_harness_looks_up_itself_is_a_bug():
    from harness.errors import ParameterError
    from harness.models import MODELS
    from harness.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown model 'resnet'; registered: convnova, dnabert2, unet"):
        MODELS.get("resnet")
    with pytest.raises(ParameterError, match="model=resnet: unknown model"):
        MODELS.get("resnet", parameter="model")


def test_failure_mid_study_marks_runs_failed(workdir, tiny_gue, tiny_study, monkeypatch):
    fail_on_call(monkeypatch, 1, RuntimeError("simulated crash"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(tiny_study, tiny_gue)
    runs = runs_by_stage()
    assert [r.info.status for r in runs["study"]] == ["FAILED"]
    assert [r.info.status for r in runs["trial"]] == ["FAILED"]
    assert mlflow.active_run() is None


# A trial out of memory is first rerun with gradient accumulation, and pruned with its reason only when a
# micro-batch of one sequence does not fit either: tests/test_memory_fallback.py.
@pytest.mark.parametrize("error, reason", [
    (DivergedError("training loss is nan in epoch 1 (lr=10)"), "diverged: training loss is nan"),
])
def test_diverged_trial_is_pruned_with_reason_and_study_goes_on(workdir, tiny_gue, tiny_study, monkeypatch,
                                                                error, reason):
    fail_on_call(monkeypatch, 1, error)
    assert run_cli(tiny_study, tiny_gue, "unet_char", "--seeds", "1") == 0
    study = optuna.load_study(study_name="tiny/unet_char/toy/motif_binary", storage="sqlite:///optuna.db")
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs["fail_reason"].startswith(reason)
    trial0 = [r for r in runs_by_stage()["trial"] if r.data.tags["trial_number"] == "0"][0]
    assert trial0.data.tags["trial_state"] == "PRUNED" and trial0.data.tags["fail_reason"].startswith(reason)
    assert trial0.info.status == "FINISHED"


def test_unavailable_device_is_refused_early(workdir, tiny_gue, tiny_study, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run_cli(tiny_study, tiny_gue, "unet_char", "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (workdir / "optuna.db").exists()  # refused before anything was opened


def change_search_space(study, data):
    study.write_text(study.read_text().replace("high: 5}", "high: 7}"))
    return []


def change_data(study, data):
    path = data / "toy" / "motif_binary" / "dev.csv"
    path.write_text(path.read_text().replace(",1\n", ",0\n", 1))
    return []


@pytest.mark.parametrize("change, args, message", [
    (change_search_space, [], "different configuration (changed: search_space"),
    (None, ["--n-trials", "4"], "different configuration (changed: n_trials"),
    # A token cap means nothing to a k-mer model: refused as such, before the configuration is compared.
    (None, ["--max-length", "50"], "max_length=50 applies to torch arms"),
    (change_data, [], "different configuration (changed: data_fingerprint"),
])
def test_changed_configuration_is_refused_on_resume(workdir, tiny_gue, tiny_study, capsys, change, args, message):
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "1") == 0
    if change:
        change(tiny_study, tiny_gue)
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "1", *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert [r.info.status for r in runs_by_stage()["study"]] == ["FINISHED"]  # the finished parent is untouched


def test_new_storage_starts_a_new_parent_run(workdir, tiny_gue, tiny_study):
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "1") == 0
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "1", "--storage", "sqlite:///other.db") == 0
    parents = runs_by_stage()["study"]
    assert len(parents) == 2 and len({p.data.tags["study_uid"] for p in parents}) == 2
    assert all(len(tracking_children(p)) == 3 for p in parents)


def tracking_children(parent):
    from harness.tracking import child_runs

    return child_runs(parent.info.experiment_id, parent.info.run_id, "trial")


def test_run_of_a_killed_trial_is_closed_on_resume(workdir, tiny_gue, tiny_study):
    """SIGKILL leaves a trial's MLflow run RUNNING; once Optuna has failed the trial, resume closes it."""
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "1") == 0
    parent = runs_by_stage()["study"][0]
    client = MlflowClient()
    study = optuna.load_study(study_name="tiny/kmer_logreg/toy/motif_binary", storage="sqlite:///optuna.db")
    dead = study.ask()  # a trial whose worker "died": RUNNING in Optuna, then failed by the heartbeat
    orphan = client.create_run(parent.info.experiment_id, tags={
        "mlflow.parentRunId": parent.info.run_id, "stage": "trial", "trial_number": str(dead.number)})
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    assert run_cli(tiny_study, tiny_gue, "kmer_logreg", "--seeds", "1") == 0
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"


def test_arm_and_search_space_must_fit(workdir, tiny_gue, tiny_study, capsys):
    good = tiny_study.read_text()
    tiny_study.write_text(good.replace("    lr:", "    learning_rate:"))
    assert run_cli(tiny_study, tiny_gue) == 2
    err = capsys.readouterr().err
    assert "does not fit arm unet_char: missing ['lr']; unused ['learning_rate']" in err
    tiny_study.write_text(good)
    assert run_cli(tiny_study, tiny_gue, "unet_char", "--tokenizer", "tok.json") == 2
    assert "applies to BPE arms" in capsys.readouterr().err
    assert run_cli(tiny_study, tiny_gue, "unet_bpe", "--tokenizer", "missing.json") == 2
    assert "missing.json not found" in capsys.readouterr().err
    exp = MlflowClient().get_experiment_by_name("tiny")
    assert exp is None or not MlflowClient().search_runs([exp.experiment_id])


def test_cli_lists_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("unet_char", "unet_bpe", "kmer_logreg", "synthetic/motif_multiclass", "tf/0", "smoke"):
        assert name in out


def test_runtime_options_reach_every_fit(workdir, tiny_gue, tiny_study, monkeypatch, capsys):
    """compile=true compiles the model of every fit, and the runs say so; the precision is part of the study's
    configuration, so resuming an fp32 study in bf16 is refused."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or model)
    assert run_cli(tiny_study, tiny_gue, "unet_char", "--seeds", "1", "--compile", "true", "--precision", "fp32") == 0
    runs = runs_by_stage()
    fits = runs["trial"] + runs["final"]
    assert len(compiled) == len(fits) == 3 + 1
    assert {r.data.tags["compile"] for r in fits} == {"true"}
    assert runs["study"][0].data.params["precision"] == "fp32"
    assert run_cli(tiny_study, tiny_gue, "unet_char", "--seeds", "1", "--precision", "bf16") == 2
    assert "changed: precision" in capsys.readouterr().err
