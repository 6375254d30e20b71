"""Storage URLs that point at the wrong database, a PostgreSQL URL without a driver, names with quotes in
MLflow filter strings, and the analysis command's checks of its tracking URI and report folder."""

from __future__ import annotations

import socket
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from conftest import TINY_STUDY, write_split
from mlflow.tracking import MlflowClient

from harness import tracking, workers
from harness.cli import main as harness
from harness.errors import ParameterError
from harness.schema import Stage, Tag, query, quoted


def tables(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def mlflow_database(path: Path) -> str:
    """A real MLflow tracking database with one experiment."""
    uri = f"sqlite:///{path}"
    MlflowClient(uri).create_experiment("some_study")
    return uri


def optuna_database(path: Path) -> str:
    url = f"sqlite:///{path}"
    optuna.create_study(study_name="s", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return url


# ------------------------------------------------------------------- storage= at MLflow's database
def test_storage_at_mlflows_database_is_refused_and_left_untouched(tmp_path):
    uri = mlflow_database(tmp_path / "mlflow.db")
    before = tables(uri)
    with pytest.raises(ParameterError) as err:
        workers.open_storage(uri)
    message = str(err.value)
    assert f"storage={uri}" in message and "MLflow's database" in message and "sqlite:///optuna.db" in message
    assert tables(uri) == before and "studies" not in before  # Optuna created nothing in it


def test_storage_at_mlflows_database_from_the_command_line(tmp_path, workdir, capsys):
    uri = mlflow_database(workdir / "mlflow.db")
    code = harness(["run", "--arm", "kmer_logreg", "--study", "smoke", "--tasks", "synthetic/motif_binary",
                    "--n-trials", "1", "--seeds", "1", "--storage", uri])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "is not an Optuna storage" in err
    assert "studies" not in tables(uri)


def test_storage_at_another_applications_database_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/app.db"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as db:
        db.execute(sqlalchemy.text("create table users (id integer primary key)"))
    engine.dispose()
    with pytest.raises(ParameterError, match="another application's database .tables: users"):
        workers.open_storage(url)


def test_new_and_existing_optuna_storages_still_open(tmp_path):
    """Negative control: the check lets a new file (and a new folder-less path) and Optuna's own database through."""
    new = f"sqlite:///{tmp_path}/new.db"
    assert not (tmp_path / "new.db").exists()
    workers.open_storage(new)
    assert "studies" in tables(new)
    existing = optuna_database(tmp_path / "optuna.db")
    assert [s.study_name for s in optuna.get_all_study_summaries(workers.open_storage(existing))] == ["s"]


# ------------------------------------------------------- MLFLOW_TRACKING_URI at Optuna's database
def test_tracking_uri_at_the_optuna_database_is_refused(tmp_path, monkeypatch):
    """MLflow itself would add its tables to Optuna's database, then fail with alembic's "Can't locate
    revision" traceback."""
    url = optuna_database(tmp_path / "optuna.db")
    before = tables(url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(ParameterError, match="is an Optuna storage.*MLFLOW_TRACKING_URI"):
        tracking.setup("some_study")
    assert tables(url) == before and "experiments" not in before


def test_tracking_uri_at_a_new_or_mlflow_database_is_accepted(tmp_path, monkeypatch):
    for uri in (f"sqlite:///{tmp_path}/fresh.db", mlflow_database(tmp_path / "mlflow.db")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.setup("some_study")
        assert mlflow.get_experiment_by_name("some_study") is not None


# ------------------------------------------------------------------ postgresql:// without a driver
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgresql_without_a_driver_names_the_missing_and_the_installed_driver():
    pytest.importorskip("psycopg2")
    try:
        import psycopg  # noqa: F401
        pytest.skip("psycopg (3) is installed: SQLAlchemy's default driver loads")
    except ImportError:
        pass
    url = f"postgresql://harness:pw@127.0.0.1:{closed_port()}/studies"
    with pytest.raises(ParameterError) as err:
        workers.open_storage(url)
    message = str(err.value)
    assert "default driver for postgresql:// is psycopg, which is not installed" in message
    assert "postgresql+psycopg2://harness:***@127.0.0.1" in message and "appropriate" not in message


@pytest.mark.slow
def test_postgresql_urls_against_a_real_server(postgres):
    """The same message with a server up; with the driver named, the storage opens; and an MLflow
    database on that server is refused as storage."""
    url = postgres.database("checks")
    no_driver = url.replace("postgresql+psycopg2://", "postgresql://")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        with pytest.raises(ParameterError, match="postgresql\\+psycopg2://harness:\\*\\*\\*@"):
            workers.open_storage(no_driver)
    workers.open_storage(url).get_all_studies()
    tracked = postgres.database("tracked")
    MlflowClient(tracked).create_experiment("some_study")
    with pytest.raises(ParameterError, match="MLflow's database"):
        workers.open_storage(tracked)
    assert "studies" not in tables(tracked)


# -------------------------------------------------------------------- quotes in MLflow filter strings
@pytest.mark.parametrize("value", ["plain", "it's", 'say "hi"', "a''b", "back\\'slash"])
def test_query_matches_names_with_quotes_exactly(value, workdir):
    client = MlflowClient()
    exp = client.create_experiment(f"exp {value}")
    wanted = client.create_run(exp, tags={Tag.TASK: value, Tag.STAGE: Stage.STUDY}).info.run_id
    client.create_run(exp, tags={Tag.TASK: value + "x", Tag.STAGE: Stage.STUDY})
    found = client.search_runs([exp], query({Tag.TASK: value, Tag.STAGE: Stage.STUDY}))
    assert [r.info.run_id for r in found] == [wanted]


def test_the_former_unquoted_filter_breaks_on_an_apostrophe(workdir):
    """Negative control: the f-string the harness used (tags.x = '{value}') cannot search for "it's"."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    exp = client.create_experiment("former")
    client.create_run(exp, tags={Tag.TASK: "it's"})
    with pytest.raises(MlflowException):
        client.search_runs([exp], f"tags.{Tag.TASK} = 'it's'")
    assert len(client.search_runs([exp], query({Tag.TASK: "it's"}))) == 1


def test_a_name_with_both_quote_characters_is_refused_not_matched_loosely():
    with pytest.raises(ParameterError, match="both ' and \""):
        quoted("it's \"x\"")


@pytest.mark.slow
def test_a_task_and_experiment_with_an_apostrophe_run_resume_and_analyse(tmp_path, workdir, capsys):
    """End to end: a task folder and an experiment named with quotes; rerunning resumes the same parent."""
    from harness.synthetic import make_synthetic_task

    task = make_synthetic_task("synthetic/motif_binary")
    for split, n in (("train", 160), ("dev", 60), ("test", 60)):
        data = task.split(split)
        write_split(tmp_path / "gue" / "toy" / "o'brien" / f"{split}.csv", data.sequences[:n], data.labels[:n])
    study = tmp_path / "quotes.yaml"
    study.write_text(TINY_STUDY.replace("name: tiny", "name: quotes"))
    experiment = 'it\'s "quoted"'
    args = ["run", "--arm", "kmer_logreg", "--study", str(study), "--data", str(tmp_path / "gue"),
            "--tasks", "toy/o'brien", "--n-trials", "1", "--seeds", "1", "--experiment", experiment]
    assert harness(args) == 0
    assert harness(args) == 0  # resumes: finds its parent run by the task's name
    capsys.readouterr()
    exp = MlflowClient().get_experiment_by_name(experiment)
    parents = MlflowClient().search_runs([exp.experiment_id], query({Tag.STAGE: Stage.STUDY}))
    assert len(parents) == 1 and parents[0].data.tags[Tag.TASK] == "toy/o'brien"
    from analysis.cli import main as analyze

    assert analyze(["--experiment", experiment, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()


# ---------------------------------------------------------------------------------------- analysis
def test_analysis_of_a_missing_database_creates_none(tmp_path, monkeypatch, capsys):
    from analysis.cli import main as analyze

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert analyze(["--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow tracking database at sqlite:///mlflow.db" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no reports/ left behind
    other = tmp_path / "elsewhere.db"
    assert analyze(["--experiment", "nope", "--tracking-uri", f"sqlite:///{other}"]) == 2
    assert str(other) in capsys.readouterr().err and not other.exists()


def test_analysis_at_the_optuna_database_is_refused(tmp_path, capsys):
    from analysis.cli import main as analyze

    url = optuna_database(tmp_path / "optuna.db")
    assert analyze(["--experiment", "s", "--tracking-uri", url]) == 2
    assert "is an Optuna storage" in capsys.readouterr().err and "experiments" not in tables(url)


@pytest.mark.parametrize("out", ["a_file/report", "a_file", "/proc/report"])
def test_analysis_to_an_unwritable_folder_is_one_clear_error(out, tmp_path, workdir, capsys):
    from analysis.cli import main as analyze

    mlflow_database(workdir / "mlflow.db")
    (workdir / "a_file").write_text("not a folder")
    assert analyze(["--experiment", "some_study", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and f"--out {out}" in err


# ------------------------------------------------------------------- tracking URIs checked at start
@pytest.mark.parametrize("uri", ["mlruns", "./some/folder", "file:///tmp/harness-mlruns"])
def test_a_folder_as_tracking_uri_is_refused_and_creates_nothing(uri, tmp_path, monkeypatch, capsys):
    """MLflow 3 keeps its file store only in maintenance: it would create the folder, then fail."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert harness(["run", "--arm", "kmer_logreg", "--n-trials", "1", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"error: MLFLOW_TRACKING_URI={uri} is a folder (MLflow's file store)" in err and "sqlite:///" in err
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "some").exists()


def test_a_tracking_server_that_does_not_answer_at_start_is_refused_at_once(tmp_path, monkeypatch, capsys):
    """Not waited for with MLflow's minutes of retries: a wrong URI or a server not started is a setting."""
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:MARKHTTP@127.0.0.1:{port}")
    started = time.monotonic()
    assert harness(["run", "--arm", "kmer_logreg", "--n-trials", "1", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - started < 30
    assert f"error: cannot reach the MLflow tracking server http://bob:***@127.0.0.1:{port}" in err
    assert "MARKHTTP" not in err and "Traceback" not in err


def test_mlflow_run_launcher_parameters_with_a_password_are_warned_of(workdir, monkeypatch, caplog):
    """`mlflow run` logs -P values before the harness starts; it cannot mask them, so it says so."""
    launcher = MlflowClient().create_run(MlflowClient().create_experiment("launch")).info.run_id
    MlflowClient().log_param(launcher, "storage", "postgresql+psycopg2://u:MARKLAUNCH@db/optuna")
    MlflowClient().log_param(launcher, "data", "/gue")
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    with caplog.at_level("WARNING"):
        tracking.setup("results")
    assert "recorded the parameter(s) storage with a password on its launcher run" in caplog.text
    assert "PGPASSWORD" in caplog.text and "MARKLAUNCH" not in caplog.text
    # Negative control: no warning for a launcher whose parameters hold no password.
    caplog.clear()
    clean = MlflowClient().create_run(MlflowClient().get_experiment_by_name("launch").experiment_id).info.run_id
    MlflowClient().log_param(clean, "storage", "postgresql+psycopg2://u@db/optuna")
    monkeypatch.setenv("MLFLOW_RUN_ID", clean)
    with caplog.at_level("WARNING"):
        tracking.setup("results")
    assert "launcher run" not in caplog.text


@pytest.mark.parametrize("url, problem", [
    ("sqlite:///", "names no database file"),
    ("sqlite:///:memory:", "names no database file"),
    ("postgresql+psycopg2://bob:Se@cretMARK@127.0.0.1:1/db", "holds an unencoded '@'"),
    ("postgresql+psycopg2://bob:Pw'\"@:/?#%&+= é☃\\xMARK@127.0.0.1:1/db", "is not a valid database URL"),
])
def test_storage_urls_that_cannot_serve_are_refused_without_the_password(url, problem, tmp_path):
    """An in-memory study is lost when the process ends (nothing to resume or share); a password with unencoded
    characters is cut by SQLAlchemy, whose driver then quotes the rest as a host name."""
    with pytest.raises(ParameterError) as err:
        workers.open_storage(url)
    assert problem in str(err.value) and "MARK" not in str(err.value) and "storage=" in str(err.value)


def test_a_driver_message_quoting_part_of_a_password_is_redacted():
    """SQLAlchemy reads u:se@cretMARK@host as password `se`, host `cretMARK@host`: the piece is a secret too."""
    url = "postgresql+psycopg2://bob:Se@cretMARK@127.0.0.1:1/db"
    message = 'could not translate host name "cretMARK@127.0.0.1" to address'
    assert tracking.redact_urls(message, url) == 'could not translate host name "***@127.0.0.1" to address'
    assert tracking.redact(url) == "postgresql+psycopg2://bob:***@127.0.0.1:1/db"


def test_a_new_mlflow_store_beside_a_used_optuna_storage_is_refused(tmp_path, monkeypatch, capsys):
    """Finished trials in the storage but no run of them in MLflow: resuming would report trials and seeds with
    no runs behind them (test MCC NaN over 0 seeds). The two stores do not belong together: say so."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    args = ["run", "--arm", "kmer_logreg", "--tasks", "synthetic/motif_binary", "--n-trials", "1", "--seeds", "1",
            "--storage", f"sqlite:///{first}/optuna.db"]
    for folder in (first, second):
        monkeypatch.chdir(folder)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        code = harness(args)
    assert code == 2
    err = capsys.readouterr().err
    assert f"has 1 finished trial(s) of this cell, but the MLflow store sqlite:///{second}/mlflow.db has no run" in err
    runs = MlflowClient(f"sqlite:///{second}/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{second}/mlflow.db").search_experiments()])
    assert runs == []  # nothing was reported from the other store's results
