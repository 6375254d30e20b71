"""`--out` of the analysis and the leakage report: a folder of the user's own files is never deleted, a path
that cannot be written is refused before any work or MLflow run, and non-finite float options are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis import report as report_module
from analysis.cli import main as analyze
from analysis.report import MARKER, Settings, build_report, not_report_files
from conftest import write_split
from harness.cli import main as harness
from harness.errors import ParameterError


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def users_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "thesis.tex").write_text("\\chapter{Results}\n")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def fake_write_report(results, contrasts, folder: Path, settings, notes) -> None:
    """What write_report writes, without an experiment to analyse (the swap is what is under test)."""
    (folder / "report.md").write_text("# new report\n")
    (folder / "runs.csv").write_text("run_id\n")
    (folder / "figures" / "scores_by_task.png").write_bytes(b"\x89PNG")


@pytest.fixture
def fake_report(monkeypatch):
    monkeypatch.setattr(report_module, "write_report", fake_write_report)


# ------------------------------------------------------------------------------------------ python -m analysis


def test_analysis_refuses_a_folder_of_the_users_files_and_leaves_it_intact(workdir, capsys):
    folder = users_folder(workdir / "thesis")
    before = snapshot(folder)
    assert analyze(["--experiment", "e", "--out", str(folder), "--no-log"]) == 2
    err = capsys.readouterr().err
    assert f"--out {folder} holds files that are not a report (e.g. sub/)" in err
    assert "pass a new or empty folder, or a previous report folder" in err and "Traceback" not in err
    assert snapshot(folder) == before
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".thesis")] == []  # nothing staged beside it


def test_analysis_refuses_out_dot_in_a_folder_with_files(workdir, monkeypatch, capsys):
    folder = users_folder(workdir / "home")
    before = snapshot(folder)
    monkeypatch.chdir(folder)
    assert analyze(["--experiment", "e", "--out", ".", "--no-log"]) == 2
    err = capsys.readouterr().err
    assert "--out . holds files that are not a report" in err and "Traceback" not in err
    assert snapshot(folder) == before


def test_analysis_accepts_an_empty_or_new_folder(workdir, capsys):
    # Negative control: the --out check passes, and the command goes on to fail on the missing tracking database.
    (workdir / "empty").mkdir()
    for out in ("empty", "new/report"):
        assert analyze(["--experiment", "e", "--out", out, "--no-log"]) == 2
        err = capsys.readouterr().err
        assert "no MLflow tracking database" in err and "--out" not in err
    assert (workdir / "empty").is_dir()


@pytest.mark.parametrize("option", ["--alpha", "--rope"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_analysis_refuses_non_finite_float_options(workdir, capsys, option, value):
    assert analyze(["--experiment", "e", f"{option}={value}", "--no-log"]) == 2  # = : "-inf" is not an option
    err = capsys.readouterr().err
    assert f"{option} must be a finite number, got {value!r}" in err and "Traceback" not in err


def test_analysis_float_options_keep_their_ranges(workdir, capsys):
    assert analyze(["--experiment", "e", "--alpha", "5", "--no-log"]) == 2
    assert "--alpha must be in" in capsys.readouterr().err
    assert analyze(["--experiment", "e", "--alpha", "x", "--no-log"]) == 2
    assert "--alpha must be a number, got 'x'" in capsys.readouterr().err
    # Negative control: finite values in range pass, and the command reaches the tracking database.
    assert analyze(["--experiment", "e", "--alpha", "0.1", "--rope", "0", "--no-log"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow tracking database" in err and "--alpha" not in err and "--rope" not in err


# ---------------------------------------------------------------------------------------------- build_report


def test_build_report_replaces_a_previous_report_and_an_empty_folder(tmp_path, fake_report):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_report(None, [], empty, Settings()) == empty / "report.md"
    assert (empty / "report.md").read_text() == "# new report\n"
    assert set((empty / MARKER).read_text().split()) == {"report.md", "runs.csv", "figures/scores_by_task.png"}
    # The folder it wrote is a previous report: the next run replaces it, and an old file does not survive.
    (empty / "runs.csv").unlink()
    build_report(None, [], empty, Settings())
    assert (empty / "runs.csv").is_file() and not_report_files(empty) == []
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temporary or old folder left beside it


def test_build_report_replaces_a_report_written_before_the_marker(tmp_path, fake_report):
    legacy = tmp_path / "legacy"
    (legacy / "figures").mkdir(parents=True)
    for name in ("report.md", "runs.csv", "cells.csv", "nemenyi.csv", "figures/critical_difference.png"):
        (legacy / name).write_text("old")
    assert not_report_files(legacy) == []
    build_report(None, [], legacy, Settings())
    assert (legacy / "report.md").read_text() == "# new report\n" and not (legacy / "cells.csv").exists()


def test_build_report_refuses_user_files_even_in_a_previous_report(tmp_path, fake_report):
    out = tmp_path / "report"
    build_report(None, [], out, Settings())
    (out / "notes.md").write_text("mine")
    (out / "figures" / "sketch.svg").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ParameterError, match=r"holds files that are not a report \(e.g. figures/sketch.svg\)"):
        build_report(None, [], out, Settings())
    assert snapshot(out) == before
    assert not_report_files(out) == ["figures/sketch.svg", "notes.md"]


def test_build_report_refuses_a_folder_without_report_md_or_marker(tmp_path, fake_report):
    # runs.csv is a name the report writes, but with no report.md or marker it is the user's file.
    out = tmp_path / "mine"
    out.mkdir()
    (out / "runs.csv").write_text("my runs")
    with pytest.raises(ParameterError, match=r"e.g. runs.csv"):
        build_report(None, [], out, Settings())
    assert (out / "runs.csv").read_text() == "my runs"


def test_build_report_refuses_the_empty_working_folder(tmp_path, monkeypatch, fake_report):
    # Replacing renames the folder away: even empty, the working folder is not replaced.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParameterError, match="is the working folder"):
        build_report(None, [], Path("."), Settings())
    assert list(tmp_path.iterdir()) == []


def test_files_appearing_during_the_analysis_are_not_deleted(tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()

    def user_saves_a_file_meanwhile(results, contrasts, folder, settings, notes):
        fake_write_report(results, contrasts, folder, settings, notes)
        (out / "thesis.tex").write_text("mine")

    monkeypatch.setattr(report_module, "write_report", user_saves_a_file_meanwhile)
    with pytest.raises(ParameterError, match="e.g. thesis.tex"):
        build_report(None, [], out, Settings())
    assert snapshot(out) == {"thesis.tex": b"mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # the staged report is removed


# ----------------------------------------------------------------------------------- python -m harness leakage


def tiny_task(root: Path) -> Path:
    for split in ("train", "dev", "test"):
        write_split(root / "fam" / "t" / f"{split}.csv", ["ACGTACGTAA", "TTGACCAGTA"], [0, 1])
    return root


def leakage_runs() -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("leakage")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.mark.parametrize("out", ["a_file", "a_file/under"])
def test_leakage_refuses_an_unwritable_out_before_any_run(workdir, capsys, out):
    root = tiny_task(workdir / "gue")
    (workdir / "a_file").write_text("mine")
    assert harness(["leakage", "--data", str(root), "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "a_file is a file" in err and "Traceback" not in err
    assert leakage_runs() == []  # no MLflow run was started (let alone left FAILED)
    assert (workdir / "a_file").read_text() == "mine"


def test_leakage_writes_into_an_existing_folder_and_keeps_its_other_files(workdir):
    # Negative control: the leakage report adds its three files to a folder and never clears it.
    root = tiny_task(workdir / "gue")
    folder = users_folder(workdir / "thesis")
    before = snapshot(folder)
    assert harness(["leakage", "--data", str(root), "--out", str(folder)]) == 0
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"leakage.csv", "leakage.md", "leakage.png"}
    (run,) = leakage_runs()
    assert run.info.status == "FINISHED"
