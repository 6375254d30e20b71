"""Passwords never leak: a table of URL forms (a quote, an unencoded or encoded '@', a query parameter, a ':'
in the password, HTTP basic auth, a token as user, MLFLOW_TRACKING_URI with a password) against every place
a URL or a command line is printed, logged or tagged. Each password holds a marker; the marker must appear
nowhere. A naive redactor is run through the same checks to show they catch a leak."""

from __future__ import annotations

import os
import shlex
import socket
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from harness import tracking, workers
from harness.cli import main as harness
from harness.cli import redacted_command
from harness.errors import ParameterError, StorageError
from harness.request import RunRequest
from harness.schema import Tag

REPO = Path(__file__).resolve().parent.parent

# (case, URL, the marker its secret holds, a part that must survive redaction)
URL_FORMS = [
    ("quote", "postgresql+psycopg2://alice:pa'ss-MARKQUOTE@db.example:5432/optuna", "MARKQUOTE", "db.example:5432/optuna"),
    ("double_quote_space", 'postgresql://alice:a "b MARKDQ@db.example/optuna', "MARKDQ", "db.example/optuna"),
    ("at_unencoded", "postgresql://alice:p@MARKAT@db.example/optuna", "MARKAT", "db.example/optuna"),
    ("at_encoded", "postgresql://alice:p%40MARKPCT@db.example/optuna", "MARKPCT", "db.example/optuna"),
    ("encoded_chars", "postgresql://alice:%27MARKENC%2F%3A@db.example/optuna", "MARKENC", "db.example/optuna"),
    ("query_param", "postgresql+psycopg2://alice@db.example/optuna?password=MARKQUERY", "MARKQUERY", "db.example/optuna"),
    ("sslpassword", "postgresql://alice@db.example/optuna?sslpassword=MARKSSL&application_name=harness",
     "MARKSSL", "application_name=harness"),
    ("colon", "postgresql://alice:a:MARKCOLON@db.example/optuna", "MARKCOLON", "db.example/optuna"),
    ("http_basic", "http://alice:MARKHTTP@mlflow.example:5000", "MARKHTTP", "mlflow.example:5000"),
    ("https_token_user", "https://MARKTOKEN@mlflow.example/api", "MARKTOKEN", "mlflow.example/api"),
    ("sqlite_query", "sqlite:///optuna.db?password=MARKSQLITE", "MARKSQLITE", "sqlite:///optuna.db"),
]
IDS = [case for case, *_ in URL_FORMS]


def naive_redact(url: str) -> str:
    """The redaction the harness had: SQLAlchemy's render (no query parameters, '@' split at the first)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def naive_command(storage: str, argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv).replace(storage, naive_redact(storage))


@pytest.mark.parametrize("case,url,marker,kept", URL_FORMS, ids=IDS)
def test_redact_masks_every_form(case, url, marker, kept):
    assert marker in url
    out = tracking.redact(url)
    assert marker not in out and kept in out and "***" in out
    assert tracking.redact(out) == out  # idempotent: a redacted URL is shown as is


@pytest.mark.parametrize("case,url,marker,kept", URL_FORMS, ids=IDS)
def test_redacted_command_masks_every_argument_form(case, url, marker, kept, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for argv in (["harness", "run", "--storage", url], ["harness", "run", f"--storage={url}"],
                 ["mlflow", "run", ".", "-P", f"storage={url}"]):
        line = redacted_command(url, argv)
        assert marker not in line, (argv, line)
        assert kept.split("?")[0] in line
        assert shlex.split(line)[:2] == argv[:2]  # still a command line


def test_redacted_command_masks_the_tracking_uri_too(monkeypatch):
    uri = "postgresql://mlflow:trk'MARKTRK@db.example/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    line = redacted_command("sqlite:///optuna.db", ["harness", "run", "--storage", "sqlite:///optuna.db",
                                                    "--tracking", uri, "trk'MARKTRK"])
    assert "MARKTRK" not in line and "sqlite:///optuna.db" in line


def test_the_checks_catch_a_naive_redactor():
    """Negative control: the former `" ".join(quoted argv).replace(url, ...)` and SQLAlchemy's render leak
    where the checks above say the harness does not."""
    quote = {case: (url, marker) for case, url, marker, _ in URL_FORMS}
    url, marker = quote["quote"]
    assert marker in naive_command(url, ["harness", "run", "--storage", url])  # shlex quoting changed the URL
    url, marker = quote["query_param"]
    assert marker in naive_redact(url)
    url, marker = quote["at_unencoded"]
    assert marker in naive_redact(url)  # SQLAlchemy reads the password as "p", the rest as the host


@pytest.mark.parametrize("case,url,marker,kept", URL_FORMS, ids=IDS)
def test_error_messages_that_echo_the_url_are_redacted(case, url, marker, kept):
    userinfo = url.split("://", 1)[1].rpartition("@")[0]
    password = userinfo.partition(":")[2] or userinfo or url.rpartition("=")[2]
    if case == "sslpassword":
        password = "MARKSSL"
    echo = f'could not connect to {url} (password "{password}", decoded "{urllib.parse.unquote(password)}")'
    assert marker in echo
    assert marker not in tracking.redact_urls(echo, url)


@pytest.mark.parametrize("case,url,marker,kept", [f for f in URL_FORMS if f[1].startswith("postgresql")],
                         ids=[f[0] for f in URL_FORMS if f[1].startswith("postgresql")])
def test_storage_retries_never_print_the_password(case, url, marker, kept, monkeypatch, caplog):
    monkeypatch.setattr(workers, "STORAGE_BACKOFF_S", 0.001)

    def echoing_the_url():  # a driver error that quotes the connection string
        raise sqlalchemy.exc.OperationalError(f"connect {url}", {}, Exception(f"bad dsn {url}"))

    with pytest.raises(StorageError) as err:
        workers.with_storage_retries(echoing_the_url, "counting trials", url)
    assert marker not in str(err.value) and marker not in caplog.text
    assert "run the same command again" in str(err.value)


@pytest.mark.parametrize("case,url,marker,kept", URL_FORMS, ids=IDS)
def test_request_parameters_and_provenance_hide_the_password(case, url, marker, kept):
    request = RunRequest.parse({"arm": "kmer_logreg", "study": "smoke", "storage": url},
                               redacted_command(url, ["harness", "run", "--storage", url]))
    assert marker not in str(request.parameters()) and marker not in str(request.provenance())
    assert request.provenance()[Tag.STORAGE] == tracking.redact(url)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql"])
def test_storage_error_on_a_closed_port_hides_the_password(driver, workdir, capsys):
    port = closed_port()
    url = f"{driver}://harness:it's-MARKPG@127.0.0.1:{port}/studies?password=MARKPGQ"
    assert harness(["sweep", "--study", "smoke", "--storage", url, "--action", "status"]) == 2
    captured = capsys.readouterr()
    assert "MARKPG" not in captured.out + captured.err and "Traceback" not in captured.err
    assert f"cannot open Optuna storage {driver}://harness:***@127.0.0.1:{port}/studies?password=***" in captured.err


def test_tracking_server_down_is_a_clear_error_without_the_password(workdir, monkeypatch):
    uri = f"postgresql+psycopg2://mlflow:pw'MARKTRK@127.0.0.1:{closed_port()}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ParameterError) as err:  # at once, not after MLflow's minutes of retries
        tracking.setup("anything")
    assert "MARKTRK" not in str(err.value) and "cannot open the MLflow tracking store" in str(err.value)


def test_mlflow_errors_quoting_the_tracking_uri_are_redacted(workdir, monkeypatch, capsys):
    """MLflow rejects an unknown scheme by quoting the URI, password included."""
    from analysis.cli import main as analyze

    uri = "foo://mlflow:pw'MARKSCHEME@tracking.example/x"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert harness(["run", "--arm", "kmer_logreg", "--study", "smoke", "--tasks", "synthetic/motif_binary",
                    "--n-trials", "1", "--seeds", "1"]) == 1
    assert analyze(["--experiment", "smoke"]) == 1
    captured = capsys.readouterr()
    assert "MARKSCHEME" not in captured.out + captured.err and "foo://mlflow:***@tracking.example" in captured.err
    assert "Traceback" not in captured.err


PRINTED_FORMS = [f for f in URL_FORMS if f[0] in ("quote", "at_unencoded", "query_param", "http_basic")]


@pytest.mark.parametrize("case,url,marker,kept", PRINTED_FORMS, ids=[f[0] for f in PRINTED_FORMS])
def test_sweep_print_hides_the_password(case, url, marker, kept, workdir, capsys):
    assert harness(["sweep", "--study", "smoke", "--storage", url, "--action", "print"]) == 0
    captured = capsys.readouterr()
    assert "mlflow run" in captured.out and "-P storage=" in captured.out
    assert marker not in captured.out + captured.err


def every_logged_string(tracking_db: Path) -> str:
    """Every tag, param, run name and experiment name in the MLflow database, and the file's raw bytes."""
    client = MlflowClient(f"sqlite:///{tracking_db}")
    texts = []
    for exp in client.search_experiments():
        texts.append(exp.name)
        for run in client.search_runs([exp.experiment_id]):
            texts += [run.info.run_name or "", *run.data.tags.keys(), *run.data.tags.values(),
                      *run.data.params.keys(), *run.data.params.values()]
    texts.append(tracking_db.read_bytes().decode("latin-1"))
    return "\n".join(texts)


@pytest.mark.slow
def test_a_real_run_logs_and_prints_no_password(tmp_path):
    """sqlite ignores unknown query parameters, so a real run can carry a password in its storage URL."""
    marker = "MARKRUN"
    url = f"sqlite:///{tmp_path}/optuna.db?password=it's-{marker}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-m", "harness", "run", "--arm", "kmer_logreg", "--study", "smoke",
                           "--tasks", "synthetic/motif_binary", "--n-trials", "1", "--seeds", "1",
                           f"--storage={url}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker not in done.stdout + done.stderr
    logged = every_logged_string(tmp_path / "mlflow.db")
    assert marker not in logged
    assert "sqlite:///" in logged and "password=***" in logged  # the storage is recorded, masked
    with sqlite3.connect(tmp_path / "optuna.db") as db:  # and the run did use that storage
        assert db.execute("select count(*) from trials").fetchone()[0] >= 2
