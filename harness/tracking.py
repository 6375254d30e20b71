"""MLflow I/O: where runs go, how they start and always end, logging, and finding runs again.

What is logged under which name is `schema.py`. A run always ends FINISHED, FAILED or KILLED (Ctrl-C /
SIGTERM), never left RUNNING; nothing secret (a password inside a storage URL) is logged.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import sqlalchemy
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from . import shutdown
from .errors import ParameterError
from .schema import Metric, Stage, Tag, query

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARAM_LIMIT = 6000  # MLflow's limit on a param value


MASK = "***"
MIN_SECRET_PIECE = 4
# Query parameters of a URL that carry a credential (psycopg2's password/sslpassword, tokens, keys).
SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


DATABASE_BACKENDS = {"sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb"}


def is_database_url(url: str) -> bool:
    """A SQLAlchemy database URL (dialect[+driver]://...), as opposed to a web URL or a path."""
    return url.partition("://")[0].split("+")[0].lower() in DATABASE_BACKENDS


def _userinfo_split(url: str) -> tuple[str, str, str] | None:
    """(scheme://, userinfo, @host...) of a URL with credentials, splitting at the LAST '@' before the path:
    a password with an unencoded '@' (u:p@ss@host) stays whole, where SQLAlchemy would cut it at the first."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a URL whose scheme was forgotten (user:password@host/db) still carries its password
        scheme, rest = "", url
        if ":" not in url.rpartition("@")[0]:
            return None
    netloc_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if ":" in rest[:netloc_end] or "@" in rest[:netloc_end]:
        # user:... starts credentials: a password may hold an unencoded / ? # too, so they end at the last '@'.
        # (A '@' in a path or query after real credentials then masks a little more than needed, never less.)
        netloc_end = len(rest)
    userinfo, at, host = rest[:netloc_end].rpartition("@")
    return (scheme + sep, userinfo, at + host + rest[netloc_end:]) if at else None


def secrets_of(url: str) -> list[str]:
    """Every form in which `url`'s secrets may appear in a text: its password and its credential query values,
    as written (percent-encoded) and decoded. Longest first, so that a shorter one never leaves part of a longer."""
    found: set[str] = set()
    split = _userinfo_split(url)
    password = split[1].split(":", 1)[1] if split and ":" in split[1] else (split[1] if split else "")
    if password and (":" in split[1] or not is_database_url(url)):  # a bare user of a web URL may be a token
        found.add(password)
    query = urllib.parse.urlsplit(url).query if "://" in url else url.partition("?")[2]
    found.update(value for key, value in urllib.parse.parse_qsl(query, keep_blank_values=False)
                 if SECRET_QUERY_KEY.search(key))
    found.update(pair.split("=", 1)[1] for pair in query.split("&")
                 if "=" in pair and SECRET_QUERY_KEY.search(pair.split("=", 1)[0]))
    with contextlib.suppress(sqlalchemy.exc.ArgumentError, ValueError):  # not a database URL: covered above
        parsed = make_url(url)
        if not (password and parsed.password and parsed.password in password):  # u:p@ss@h: SQLAlchemy reads "p"
            found.add(parsed.password or "")
        found.update(str(v) for k, v in parsed.query.items() if SECRET_QUERY_KEY.search(k))
    found |= {urllib.parse.unquote(s) for s in found} | {urllib.parse.quote(s, safe="") for s in found}
    # A driver that cuts a password at its first '@' quotes the rest as a host name ("cret@db" of "se@cret"):
    # the pieces between a password's '@' and ':' are secrets too, when long enough not to mask ordinary words.
    found |= {piece for s in found for piece in re.split(r"[@:]", s) if len(piece) >= MIN_SECRET_PIECE}
    return sorted((s for s in found if s and s != MASK), key=len, reverse=True)


def _mask_query(query: str) -> str:
    return "&".join(f"{pair.split('=', 1)[0]}={MASK}" if "=" in pair and SECRET_QUERY_KEY.search(pair.split("=", 1)[0])
                    else pair for pair in query.split("&"))


def redact(url: str) -> str:
    """A storage/tracking URL (or a path) without its password or credential query values, safe for logs,
    params and tags. Database or not, written well or not: when in doubt a part is masked, never shown."""
    split = _userinfo_split(url)
    if split:  # user:password@ -> user:***@; a database user alone is kept, a web URL's may be a token
        scheme, userinfo, rest = split
        if ":" in userinfo:
            url = f"{scheme}{userinfo.split(':', 1)[0]}:{MASK}{rest}"
        elif not is_database_url(url):
            url = f"{scheme}{MASK}{rest}"
    base, sep, query = url.partition("?")
    url = base + sep + _mask_query(query)
    return redact_text(url, secrets_of(url))  # a secret that is also written elsewhere in the URL


def redact_text(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """`text` (a command line, an error message that may echo a URL) with every secret replaced by ***."""
    for secret in sorted({s for s in secrets if s and s != MASK}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_urls(text: str, *urls: str | None) -> str:
    """`text` without the secrets of these URLs, in any form: for messages that may quote them."""
    for url in filter(None, urls):
        text = text.replace(url, redact(url))
        text = redact_text(text, secrets_of(url))
    return text


def tracking_uri() -> str:
    """The MLflow tracking URI the harness uses: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# Optuna's RDB storage tables (alembic_version too: Optuna migrates its schema with alembic) and the tables
# that tell an MLflow tracking database.
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_user_attributes", "trial_system_attributes",
    "trial_heartbeats", "version_info", "alembic_version"})
MLFLOW_TABLES = frozenset({"experiments", "runs"})
# The drivers SQLAlchemy can use per backend, in its order of preference (its default first may be absent).
DRIVERS = {"postgresql": ("psycopg2", "psycopg", "pg8000", "asyncpg"), "mysql": ("pymysql", "MySQLdb", "mysql.connector")}
PIP_NAMES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
             "mysql": "mysql-connector-python"}


def parsed_database_url(url: str, what: str) -> sqlalchemy.engine.URL:
    """`url` parsed, or a ParameterError naming `what` (storage=, MLFLOW_TRACKING_URI=): a URL SQLAlchemy cannot
    parse (a password with an unencoded / ? # or :), or a sqlite URL without a file (in memory: gone when the
    process ends, so nothing could be resumed or shared)."""
    try:
        parsed = make_url(url)
        if "@" in (parsed.host or ""):  # SQLAlchemy cut the password at its first '@' and took the rest as host
            raise ValueError("the user or password holds an unencoded '@'")
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        reason = redact_urls(str(err).splitlines()[0] if str(err) else type(err).__name__, url)
        raise ParameterError(f"{what}={redact(url)} is not a valid database URL ({reason}); percent-encode special "
                             "characters of the user and password, e.g. python -c \"import urllib.parse; "
                             "print(urllib.parse.quote('pa/ss@word', safe=''))\"") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ParameterError(f"{what}={redact(url)} names no database file: an in-memory database is lost when the "
                             "process ends, so nothing could be resumed or shared; name a file, e.g. "
                             "sqlite:///optuna.db (relative) or sqlite:////abs/path/optuna.db")
    return parsed


def database_tables(url: str) -> set[str]:
    """The tables of the database at `url`, without creating anything: a sqlite file that does not exist
    is not created (empty set). Raises SQLAlchemy's error when the server cannot be reached."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or ":memory:").is_file():
        return set()
    engine = sqlalchemy.create_engine(parsed)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def database_owner(tables: set[str]) -> str | None:
    """Which application's database these tables look like: Optuna, MLflow, another application, or None
    (no tables: a new database)."""
    if not tables:
        return None
    if tables <= OPTUNA_TABLES:
        return "Optuna"
    return "MLflow" if MLFLOW_TABLES <= tables else "another application"


def missing_driver(url: str, err: ImportError) -> str:
    """Why SQLAlchemy could not load `url`'s database driver and how to fix it: `postgresql://` means
    SQLAlchemy's default driver (psycopg 3 since SQLAlchemy 2.1), not whichever one is installed."""
    parsed = make_url(url)
    backend, missing = parsed.get_backend_name(), err.name or str(err)
    pip = PIP_NAMES.get(missing.split(".")[0], missing)
    installed = [d for d in DRIVERS.get(backend, ()) if d != missing and importlib.util.find_spec(d.split(".")[0])]
    default = "SQLAlchemy's default driver for" if "+" not in parsed.drivername else "the driver named in"
    fix = (f"name an installed one in the URL, e.g. {redact(str(parsed.set(drivername=f'{backend}+{installed[0]}')))}"
           f" (installed: {', '.join(installed)}), or pip install {pip}") if installed else f"pip install {pip}"
    return f"{default} {parsed.drivername}:// is {missing}, which is not installed: {fix}"


def check_tracking_store(uri: str) -> None:
    """Refuse a tracking URI that is an Optuna storage (MLflow would fail on, or migrate, its tables), a
    database or tracking server that cannot be reached (MLflow would retry for minutes, then print a
    traceback), or a folder (MLflow 3's file store is frozen and fails)."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("", "file"):
        raise ParameterError(f"MLFLOW_TRACKING_URI={uri} is a folder (MLflow's file store), which MLflow 3 no longer "
                             f"supports: use a database, e.g. {DEFAULT_TRACKING_URI}, or a tracking server "
                             "(http://host:5000)")
    if scheme in ("http", "https"):
        check_server_reachable(uri)
    if not is_database_url(uri):
        return
    parsed_database_url(uri, "MLFLOW_TRACKING_URI")
    try:
        owner = database_owner(database_tables(uri))
    except ImportError as err:
        raise ParameterError(f"cannot open the MLflow tracking store {redact(uri)}: {missing_driver(uri, err)}") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = redact_urls(str(err).splitlines()[0], uri)
        raise ParameterError(f"cannot open the MLflow tracking store {redact(uri)}: {type(err).__name__}: {reason}. "
                             "Check the URL and that the database server is running") from None
    if owner == "Optuna":
        raise ParameterError(f"the MLflow tracking URI {redact(uri)} is an Optuna storage (it has Optuna's tables and "
                             "no MLflow ones): point MLFLOW_TRACKING_URI at another database, e.g. "
                             f"{DEFAULT_TRACKING_URI}, and keep --storage for Optuna")


def check_server_reachable(uri: str, timeout_s: float = 10) -> None:
    """A tracking server that does not answer when a command starts is a setting to check, not an outage to
    wait out (once runs have started, MLflow's client retries: see below)."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
    except requests.RequestException as err:
        reason = redact_urls(str(err).splitlines()[0] if str(err) else type(err).__name__, uri)
        raise ParameterError(f"cannot reach the MLflow tracking server {redact(uri)} ({type(err).__name__}: "
                             f"{reason[:300]}): start it (mlflow server ...) or check MLFLOW_TRACKING_URI") from None


# A tracking server that goes away (a restart, a network blip) is waited for by MLflow's own HTTP client: urllib3
# retries every request on a refused or dropped connection, a timeout and a 429/5xx answer, with exponential
# backoff. Its bounds, set here unless the user set them: MLflow's defaults for the retries (7, backoff factor 2 s,
# jitter up to 1 s: waits of 0, 4, 8, 16, 32, 64 and 120 s, about 4 minutes), and 60 s rather than 120 s for one
# request to answer, so that a server that does not answer at all is given up after 4 + 8 x 1 = 12 minutes.
# MLflow also reads every run back from a server as it ends, only to print its URL (the harness logs its own
# progress): one request per run end fewer, and one fewer that can fail.
HTTP_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
                        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# What an MLflow REST call was doing, by its endpoint (after /api/2.0/mlflow/), for the error message.
ENDPOINT_ACTIONS = {"runs/log-batch": "logging metrics, params or tags", "runs/log-metric": "logging a metric",
                    "runs/log-parameter": "logging a param", "runs/set-tag": "tagging a run",
                    "runs/create": "starting a run", "runs/update": "ending a run", "runs/get": "reading a run",
                    "runs/search": "searching runs", "runs/delete": "deleting a run",
                    "experiments/get-by-name": "opening the experiment", "experiments/create": "creating the experiment",
                    "experiments/get": "opening the experiment", "mlflow-artifacts": "storing an artifact"}


def configure_http_client() -> None:
    """Bound MLflow's HTTP retries (HTTP_CLIENT_DEFAULTS) where the user has not set them: the time a worker
    waits for a tracking server that went away is then known (http_retry_wait_s). And retry a response cut off
    mid-body (retry_broken_responses)."""
    for name, value in HTTP_CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    retry_broken_responses()


BROKEN_RESPONSE_RETRIES = 5  # waits of 1, 2, 4, 8, 16 s
# Requests that make something new: sent again after a lost answer, they might make it twice (a second run left
# RUNNING). Every other call the harness makes sets a value and may be repeated.
CREATING_ENDPOINTS = ("/runs/create", "/experiments/create", "/registered-models/create", "/model-versions/create")


def broken_response(err: BaseException) -> bool:
    """An MLflow REST error whose cause is an answer cut off mid-body (a server restarting: IncompleteRead)."""
    import requests
    import urllib3

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_broken_responses() -> None:
    """urllib3 retries a request that fails before its answer arrives (MLflow's bounded retries); an answer cut
    off mid-body, as when the server restarts under the request, reaches the caller as an error. Such calls are
    retried too, with backoff, except those that create something (CREATING_ENDPOINTS)."""
    import time

    from mlflow.exceptions import MlflowException
    from mlflow.utils import rest_utils

    if getattr(rest_utils.http_request, "retries_broken_responses", False):
        return
    original = rest_utils.http_request

    @functools.wraps(original)
    def http_request(host_creds: Any, endpoint: str, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(BROKEN_RESPONSE_RETRIES + 1):
            try:
                return original(host_creds, endpoint, *args, **kwargs)
            except MlflowException as err:
                if attempt == BROKEN_RESPONSE_RETRIES or not broken_response(err) \
                        or str(endpoint).endswith(CREATING_ENDPOINTS):
                    raise
                log.warning("MLflow %s: the answer was cut off (%s); retry %d/%d in %d s", endpoint,
                            str(err).splitlines()[0][:200], attempt + 1, BROKEN_RESPONSE_RETRIES, 2 ** attempt)
                time.sleep(2 ** attempt)
        raise AssertionError("unreachable")

    http_request.retries_broken_responses = True
    rest_utils.http_request = http_request  # call_endpoint, which most REST calls go through, looks it up here
    from mlflow.store.tracking import rest_store

    rest_store.http_request = http_request  # the tracking store's own direct calls


def http_retry_wait_s() -> float:
    """How long MLflow's client waits in backoff for an unreachable server before it gives up on a request,
    jitter and request timeouts not counted. urllib3 retries the first failure at once, then waits
    factor * 2**(n - 1) s after the n-th failure, at most Retry.DEFAULT_BACKOFF_MAX (120 s)."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES
    from urllib3.util import Retry

    factor, retries = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    return float(sum(min(Retry.DEFAULT_BACKOFF_MAX, factor * 2 ** (n - 1)) for n in range(2, retries + 1)))


def lost_server_message(err: BaseException) -> str | None:
    """The message for an MLflow call that gave up on an unreachable tracking server after its retries (a refused
    or dropped connection, no answer, or 429/5xx answers throughout), naming the tracking URI without its
    password and what the call was doing; None for any other error."""
    import requests
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
    from mlflow.exceptions import MlflowException

    # MLflow's http_request wraps the requests error in "API request to <url> failed with ..." (as its cause or,
    # raised inside its except clause, its context); redacted_errors may wrap that MlflowException once more.
    cause = err
    while isinstance(cause, MlflowException):
        cause = cause.__cause__ or cause.__context__
    if not isinstance(err, MlflowException) or not isinstance(
            cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)):
        return None
    url = re.search(r"API request to (\S+?) failed", err.message)
    endpoint = urllib.parse.urlsplit(url.group(1)).path if url else ""
    endpoint = re.sub(r"^.*?/api/2\.0/(mlflow/)?", "", endpoint)
    action = next((what for prefix, what in ENDPOINT_ACTIONS.items() if endpoint.startswith(prefix)),
                  f"calling {endpoint}" if endpoint else "calling it")
    if isinstance(cause, requests.exceptions.Timeout) and not isinstance(cause, requests.exceptions.ConnectionError):
        reason = f"no answer within {MLFLOW_HTTP_REQUEST_TIMEOUT.get()} s"
    else:
        found = re.search(r"\[Errno -?\d+\] ([^'\")]+)|(too many \d+ error responses)|(Connection reset by peer)",
                          str(cause))
        reason = next((g for g in found.groups() if g), "") if found else type(cause).__name__
    retries = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    return (f"lost the MLflow tracking server {redact(mlflow.get_tracking_uri())} while {action} ({reason}; gave up "
            f"after {retries} {'retry' if retries == 1 else 'retries'} over {http_retry_wait_s():.0f} s); completed "
            "trials and final runs are kept: run the same command again when it is back")


@contextlib.contextmanager
def redacted_errors(*urls: str) -> Iterator[None]:
    """Re-raise an MLflow error without the secrets of `urls`: MLflow quotes the tracking URI it rejects."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        message = redact_urls(err.message, *urls)
        if message == err.message:
            raise
        raise MlflowException(message, error_code=err.error_code) from None


@contextlib.contextmanager
def single_http_attempt() -> Iterator[None]:
    """MLflow requests made meanwhile are tried once (MLflow reads its retry bound at every request)."""
    before = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = before


def end_run(status: str, error: BaseException | None = None) -> None:
    """mlflow.end_run(status), for a run that `error` (if any) is ending. A tracking server that `error` says is
    gone is tried once more, not waited for again at every level of nested runs; and a server lost while ending
    the run never hides `error` (a bug keeps its traceback). Such a run stays RUNNING until the same command is
    run again: its trial or seed is failed in Optuna, and the resume closes its run as FAILED (the parent run is
    resumed and ended)."""
    from mlflow.exceptions import MlflowException

    if error is None:
        mlflow.end_run(status)
        return
    active = mlflow.active_run()  # MLflow's own stack: no request
    with single_http_attempt() if lost_server_message(error) else contextlib.nullcontext():
        try:
            mlflow.end_run(status)  # pops the run off MLflow's stack before it calls the server
        except MlflowException as failed:
            if lost_server_message(failed) is None:
                raise
            log.warning("could not record the end (%s) of MLflow run %s: the tracking server is unreachable; the "
                        "same command closes it when run again", status, active.info.run_id if active else "?")


def setup(experiment: str, uri: str | None = None) -> str:
    """Point MLflow at the tracking store (`uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db) and the
    study's experiment; refuse a tracking URI that is an Optuna storage or cannot be reached.

    Under `mlflow run`, MLflow has already opened a launcher run (MLFLOW_RUN_ID). The harness's runs
    go to the study's experiment instead, so the launcher run is tagged with a pointer to them and
    detached from this process.
    """
    configure_http_client()
    uri = uri or tracking_uri()
    check_tracking_store(uri)
    mlflow.set_tracking_uri(uri)
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    # The first call that reaches the store creates a new database's tables (seconds, for sqlite): a signal then
    # would leave a half-made schema that MLflow cannot open again, so it waits until they are made.
    with shutdown.deferred(), redacted_errors(uri), unusable_database(uri):
        exp = mlflow.set_experiment(experiment)
    # When another worker created the experiment a moment before, MLflow returns it without making it the
    # active one, and nested runs would land in "Default": make it active explicitly.
    mlflow.set_experiment(experiment_id=exp.experiment_id)
    if launcher:
        LAUNCHER.update(run_id=launcher, parent_pid=os.getppid())
        MlflowClient().set_tag(launcher, Tag.STAGE, Stage.LAUNCH)
        MlflowClient().set_tag(launcher, Tag.RESULTS_EXPERIMENT, experiment)
        warn_of_launcher_secrets(launcher)
    return exp.experiment_id


LAUNCHER: dict[str, Any] = {}  # the `mlflow run` launcher run of this process, and the pid of that process


def end_orphaned_launcher() -> None:
    """After an interrupt: when `mlflow run` itself was killed (its process is no longer this one's parent), its
    launcher run would stay RUNNING, as MLflow ends it only when it lives to see this process end."""
    if LAUNCHER and os.getppid() != LAUNCHER["parent_pid"]:
        with contextlib.suppress(Exception):  # best effort: the command is stopping either way
            MlflowClient().set_terminated(LAUNCHER["run_id"], "KILLED")


@contextlib.contextmanager
def unusable_database(uri: str) -> Iterator[None]:
    """A tracking database MLflow cannot open or migrate (a schema left half made by a process killed while it
    created it, another MLflow version's) is reported with what to do, not as a traceback."""
    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = redact_urls(str(err.orig if getattr(err, "orig", None) else err).splitlines()[0], uri)
        raise ParameterError(f"MLflow cannot open its tracking database {redact(uri)} ({type(err).__name__}: {reason}): "
                             "its creation was probably interrupted, or another MLflow version made it. If it holds no "
                             "runs you need, delete it and run the same command again; otherwise point "
                             "MLFLOW_TRACKING_URI at another database") from None


def warn_of_launcher_secrets(launcher: str) -> None:
    """`mlflow run` logs its -P parameters on the launcher run as given, before the harness starts, and MLflow
    params cannot be changed: a password in -P storage= is there for good. Say so, and how to avoid it."""
    params = MlflowClient().get_run(launcher).data.params
    exposed = sorted(k for k, v in params.items() if "://" in v and secrets_of(v))
    if exposed:
        log.warning("`mlflow run` recorded the parameter(s) %s with a password on its launcher run %s (MLflow logs "
                    "-P values as given; the harness cannot change them): delete that run (mlflow gc) and change the "
                    "password; next time leave it out of the URL and set PGPASSWORD or ~/.pgpass instead",
                    ", ".join(exposed), launcher)


@contextlib.contextmanager
def run(name: str, tags: dict[str, Any], nested: bool = False, run_id: str | None = None,
        finished_on: tuple[type[BaseException], ...] = (), **kwargs: Any) -> Iterator[Run]:
    """Start (or resume) a run and always end it: FINISHED on success or on `finished_on`
    exceptions (e.g. a pruned trial), KILLED on Ctrl-C/SIGTERM, FAILED on any other error.

    Starting and ending the run are never cut short by a signal (shutdown.py): one that arrives while the
    run starts is raised once it has started, so it ends KILLED; one that arrives while it ends is raised
    after it has ended."""
    active, status, error = None, "FAILED", None
    if nested:  # MLflow's system metrics (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING) belong to the parent only
        kwargs.setdefault("log_system_metrics", False)
    try:
        with shutdown.deferred():
            active = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested,
                                      tags={k: str(v) for k, v in tags.items()}, **kwargs)
        yield active
        status = "FINISHED"
    except finished_on:
        status = "FINISHED"
        raise
    except KeyboardInterrupt as err:
        shutdown.note_interrupt()  # from here on, further signals wait until every run has ended
        status, error = "KILLED", err
        raise
    except BaseException as err:
        error = err
        raise
    finally:
        with shutdown.deferred():
            if active is not None:
                end_run(status, error)  # a lost server is not waited for again, nor hides `error`


@shutdown.uninterrupted
def log_params(params: dict[str, Any]) -> None:
    """Nested settings as one parameter each (`sampler.seed`, `search_space.lr`), so that the UI shows values,
    not JSON inside JSON."""
    flat = {k: str(v)[:PARAM_LIMIT] for k, v in flat_params(params).items()}
    retry_lost_race(lambda: mlflow.log_params(flat))


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return flat


@shutdown.uninterrupted
def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


@shutdown.uninterrupted
def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=step)


def split_datasets(task: Any) -> dict[str, Any]:
    """A task's splits as MLflow datasets (name = task, digest = the split's fingerprint, source = its file), so
    that the UI's Dataset column and dataset filter show what each run trained and was scored on. Built once per
    cell: MLflow profiles the rows (their count) when it is made."""
    import pandas as pd
    from mlflow.data.code_dataset_source import CodeDatasetSource

    datasets = {}
    for name in ("train", "dev", "test"):
        split = task.split(name)
        frame = pd.DataFrame({"sequence": split.sequences, "label": split.labels})
        folder = Path(task.source)
        source = (str(folder / f"{name}.csv") if folder.is_dir()
                  else CodeDatasetSource({"generator": "harness.synthetic", "task": task.name}))
        with warnings.catch_warnings():  # MLflow's hint that integer columns cannot hold missing values
            warnings.simplefilter("ignore", UserWarning)
            datasets[name] = mlflow.data.from_pandas(frame, source=source, targets="label", name=task.name,
                                                     digest=split.fingerprint)
    return datasets


@shutdown.uninterrupted
def log_datasets(datasets: dict[str, Any], splits: tuple[str, ...] = ("train", "dev", "test")) -> None:
    for name in splits:
        log_input_once(datasets[name], name)


def log_input_once(dataset: Any, context: str) -> None:
    def log() -> None:
        with warnings.catch_warnings():  # MLflow's hint that integer columns cannot hold missing values
            warnings.simplefilter("ignore", UserWarning)
            mlflow.log_input(dataset, context=context)

    retry_lost_race(log)


RACE = re.compile(r"UNIQUE constraint|duplicate key|Duplicate entry")  # sqlite, PostgreSQL, MySQL


def retry_lost_race(call: Callable[[], None], attempts: int = 5) -> None:
    """`call` (an MLflow write that several workers make alike), retried when another worker made the same write a
    moment before: MLflow's SQL store looks a row up, then inserts it, and the loser of two workers racing between
    the two steps gets a unique-constraint error (seen with two workers on sqlite: the parent run's parameters, a
    task's datasets); the next attempt finds the row (the same value) and goes on."""
    for attempt in range(attempts):
        try:
            return call()
        except mlflow.exceptions.MlflowException as err:
            if attempt == attempts - 1 or not RACE.search(str(err)):
                raise
            time.sleep(0.2 * (attempt + 1))


def source_tags(command: str, commit: str) -> dict[str, str]:
    """MLflow's Source column: the harness's command (`run`, `sweep`, from the command line as run), PROJECT under
    `mlflow run` (else LOCAL), and the commit."""
    words = command.split()
    entry = next((w for w in words[1:] if w in ("run", "sweep")), "run")
    commit = commit.split("+")[0]  # git_commit()'s, without its +dirty mark
    return {Tag.SOURCE_NAME: f"dna-harness {entry}", Tag.SOURCE_TYPE: "PROJECT" if LAUNCHER else "LOCAL",
            **({Tag.SOURCE_GIT_COMMIT: commit} if re.fullmatch(r"[0-9a-f]{40}", commit) else {})}


UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def runs_table_url(base: str, experiment_id: str, study: str) -> str:
    """The experiment's runs page in MLflow's model-training view (3.x opens experiments in its GenAI view
    otherwise), filtered to the study's parent runs (one per arm and task) and showing their charts: each
    result metric as bars labelled with the whole run name (the table cuts names short and shows no metric
    until columns are chosen; its button is beside the charts')."""
    view = urllib.parse.urlencode({"workflowType": "machine_learning",
                                   "searchFilter": query({Tag.STAGE: Stage.STUDY, Tag.STUDY: study}),
                                   "orderByKey": f"metrics.`{Metric.TEST_MCC_MEAN}`", "orderByAsc": "false",
                                   "compareRunsMode": "CHART"}, quote_via=urllib.parse.quote)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{view}"


def where_to_look(experiment_id: str, study: str, experiment: str, storage: str) -> list[str]:
    """The last lines of a run: the UI command and the URL of the results, the dashboard, the report."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        ui = [f"results: {runs_table_url(redact(uri), experiment_id, study)}"]
    else:
        ui = [f"results: mlflow ui --backend-store-uri {shlex.quote(redact(uri))}",
              f"  then open {runs_table_url(UI_ADDRESS, experiment_id, study)}"]
    return [*ui, f"tuning:  optuna-dashboard {shlex.quote(redact(storage))}   (pip install -e \".[dashboard]\"; "
                 "then http://127.0.0.1:8080)",
            f"compare: python -m analysis --experiment {shlex.quote(experiment)}   (once two or more arms have run)"]


def find_parent_run(experiment_id: str, tags: dict[str, str]) -> str | None:
    """The parent run with these tags (to resume it), or None. Should workers starting together have
    created several, every worker picks the same one: the earliest."""
    runs = MlflowClient().search_runs([experiment_id], query(tags), max_results=1000)
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else None


def claim_parent_run(experiment_id: str, identity: dict[str, str], tags: dict[str, Any], name: str) -> str:
    """The parent run of `identity`, created if there is none. Workers that created one at the same
    moment all keep the earliest and delete their own, so a cell has one parent however many workers."""
    found = find_parent_run(experiment_id, identity)
    if found:
        return found
    mine = MlflowClient().create_run(experiment_id, tags={k: str(v) for k, v in tags.items()}, run_name=name)
    chosen = find_parent_run(experiment_id, identity)
    if chosen != mine.info.run_id:
        MlflowClient().set_terminated(mine.info.run_id, "KILLED")
        MlflowClient().delete_run(mine.info.run_id)
    return chosen


def child_runs(experiment_id: str, parent_id: str, stage: str, status: str | None = "FINISHED") -> list[Run]:
    filter_string = query({Tag.PARENT: parent_id, Tag.STAGE: stage})
    if status:
        filter_string += f" and attributes.status = '{status}'"
    return MlflowClient().search_runs([experiment_id], filter_string, max_results=10_000)


def git_commit() -> str:
    """The commit of the harness's checkout (with '+dirty' if it has uncommitted changes)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
