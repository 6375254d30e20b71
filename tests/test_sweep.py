"""The sweep entry point: a study's (arm, task) grid printed for a scheduler, run here, and its status."""

from __future__ import annotations

import shlex

import pytest

from conftest import TINY_STUDY, shared_path
from harness.cli import main as harness

STUDY = TINY_STUDY.replace("tasks: [toy/motif_binary]", "tasks: [toy/motif_binary, toy/motif_multiclass]") + \
    "arms: [kmer_logreg, unet_char]\n"


def test_print_gives_one_command_per_cell_without_password(tmp_path, capsys):
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    url = "postgresql+psycopg2://alice:s3cret@db:5432/optuna"
    assert harness(["sweep", "--study", str(study), "--action", "print", "--storage", url, "--data", "/gue",
                    "--precision", "bf16", "--compile", "true"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * 2
    cells = set()
    for line in lines:
        words = shlex.split(line)
        assert words[:5] == ["mlflow", "run", ".", "--env-manager", "local"]
        params = dict(w.split("=", 1) for w in words[6::2])
        cells.add((params["arm"], params["tasks"]))
        assert params["storage"] == "postgresql+psycopg2://alice:***@db:5432/optuna" and params["data"] == "/gue"
        # Passed on to the torch arm's cells; a k-mer cell's run would refuse them (it has no precision or model).
        torch_only = {params.get("precision"), params.get("compile")}
        assert torch_only == ({"bf16", "true"} if params["arm"] == "unet_char" else {None}), line
    assert cells == {(a, t) for a in ("kmer_logreg", "unet_char") for t in ("toy/motif_binary", "toy/motif_multiclass")}
    assert "s3cret" not in "\n".join(lines)


def test_run_then_status(workdir, tiny_gue, capsys):
    study = workdir / "tiny.yaml"
    study.write_text(STUDY)
    common = ["--study", str(study), "--data", str(tiny_gue), "--n-trials", "2", "--seeds", "1"]
    assert harness(["sweep", "--action", "status", *common]) == 0
    assert "0 done, 0 running, 0 partial, 4 missing of 4 cells" in capsys.readouterr().out
    assert harness(["sweep", "--action", "run", "--arms", "kmer_logreg", *common]) == 0
    capsys.readouterr()
    assert harness(["sweep", "--action", "status", *common]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]) for line in out.splitlines()[1:-1]}
    assert rows == {("kmer_logreg", "toy/motif_binary", "done"), ("kmer_logreg", "toy/motif_multiclass", "done"),
                    ("unet_char", "toy/motif_binary", "missing"), ("unet_char", "toy/motif_multiclass", "missing")}
    assert "2 done, 0 running, 0 partial, 2 missing of 4 cells" in out


def test_unknown_arm_in_a_sweep_is_a_clear_error(capsys):
    assert harness(["sweep", "--action", "print", "--arms", "nope"]) == 2
    assert "nope" in capsys.readouterr().err



def test_a_checkpoint_goes_only_to_the_arms_it_concerns(tmp_path):
    from harness.request import RunRequest
    from harness.sweep import cell_requests, command

    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    ckpt = str(shared_path("fixtures", "dnabert2_tiny", "mlm"))
    request = RunRequest.parse({"study": str(study), "arms": "kmer_logreg,dnabert2_pretrained", "checkpoint": ckpt,
                                "n_trials": "3"})
    cells = {(c.arms, c.tasks): c for c in cell_requests(request)}
    assert len(cells) == 4
    assert {c.checkpoint for (arms, _), c in cells.items() if arms == ("dnabert2_pretrained",)} == {ckpt}
    assert {c.checkpoint for (arms, _), c in cells.items() if arms == ("kmer_logreg",)} == {None}
    assert "-P checkpoint" not in command(cells[(("kmer_logreg",), ("toy/motif_binary",))])
    line = command(cells[(("dnabert2_pretrained",), ("toy/motif_binary",))])
    # The budget given stays in the job line even where it equals the study's now (3): the study file may change.
    assert f"-P checkpoint={ckpt}" in line and "-P n_trials=3" in line and "-P seeds" not in line


def test_a_failed_cell_does_not_stop_the_others_but_a_bug_does(tmp_path, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    ran = []

    def tune(one):
        ran.append((one.arms, one.tasks))
        if len(ran) == 1:
            raise MlflowException("tracking server unreachable")

    monkeypatch.setattr("harness.tuning.tune", tune)
    assert harness(["sweep", "--action", "run", "--study", str(study)]) == 1
    assert len(ran) == 4  # every cell was tried
    assert "failed cells" in capsys.readouterr().err

    def buggy(one):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("harness.tuning.tune", buggy)
    with pytest.raises(ZeroDivisionError):
        harness(["sweep", "--action", "run", "--study", str(study)])
