"""The MLflow tracking store: where runs are stored, and checking that it can be used before any work.

The default is a SQLite file at the project root; `MLFLOW_TRACKING_URI` points the stages at a
tracking server or another store instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow retries a failed HTTP request 7 times with exponential backoff: minutes before a stage
# learns that its server is gone. Two retries fail a stage within seconds of a refused connection.
# The answer timeout stays generous: MLflow retries a request that timed out, and registering a
# model is not idempotent, so a busy server that answered after a short timeout got the same
# version registered twice. A user who sets any of these keeps their value.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
HEALTH_TIMEOUT_SECONDS = 5
# How long a stage waits, before any work, for another program to release a write lock on a SQLite store.
LOCK_WAIT_SECONDS = 60


def project_root() -> Path:
    """The repository root: DVC's `DVC_ROOT` when a stage runs under DVC, else the working folder.

    `dvc exp run --temp` and queued experiments run in a temporary copy, but DVC still points
    `DVC_ROOT` at the real repository, which is why the store is resolved from it.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else an absolute SQLite store at the project root.

    Raises:
        ValueError: `MLFLOW_TRACKING_URI` is set to something MLflow could not use.
    """
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        check_uri(configured)
        return configured
    return f"sqlite:///{(root or project_root()) / STORE_FILE}"


def check_uri(uri: str) -> None:
    """Reject a tracking URI that is malformed, naming it (without credentials) and what is expected.

    Raises:
        ValueError: the URI has no known scheme, no host, a bad port, or a SQLite folder that is missing.
    """
    expected = "expected sqlite:///ABSOLUTE/PATH/mlflow.db or http(s)://HOST:PORT, or unset it for the project's store"
    shown = f"MLFLOW_TRACKING_URI = {redact(uri)!r}"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - evaluated for its ValueError on a port that is not a number
    except ValueError as error:
        raise ValueError(f"{shown}: {error}; {expected}") from None
    scheme = parts.scheme.split("+")[0]
    if scheme == "databricks":
        return
    if scheme not in _URI_SCHEMES or "://" not in uri:
        raise ValueError(f"{shown}: not a tracking URI; {expected}")
    if scheme in ("http", "https") and not parts.hostname:
        raise ValueError(f"{shown}: no host; {expected}")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise ValueError(f"{shown}: a SQLite URI has three slashes before the path; {expected}")
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise ValueError(f"{shown}: folder {folder} does not exist")


_URI_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file")


def redact(uri: str) -> str:
    """Drop any user name and password from a URI so it can be printed or logged."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def configure(root: Path | None = None) -> str:
    """Point MLflow at the project's store, check that it can be used, and return its URI.

    Stages call this before any heavy work or any write, so a store that cannot be used stops them
    while every previous output is still in place. A user name and password in an http(s) URI move
    to MLflow's `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`, so MLflow never prints
    them (it echoes run URLs to stdout).

    Raises:
        ValueError: a malformed URI, a tracking server that does not answer its health check, or a
            store that is locked, corrupt or on a full disk (one line, from `store_errors`).
    """
    uri = tracking_uri(root)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
        host = parts.hostname or ""
        uri = urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
    if parts.scheme in ("http", "https"):
        for variable, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(variable, value)
        check_server(uri)
    elif uri.startswith("sqlite:///"):
        with store_errors(uri):
            initialize_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
    """Ask a tracking server's `/health` endpoint whether it is up.

    Raises:
        ValueError: the server cannot be reached, or answers with anything but HTTP 200.
    """
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as error:
        reason = type(error).__name__
        raise ValueError(
            f"MLflow tracking server {redact(uri)} cannot be reached ({reason}); start it, or unset "
            "MLFLOW_TRACKING_URI to use the project's SQLite store"
        ) from None
    if response.status_code != 200:
        raise ValueError(
            f"MLflow tracking server {redact(uri)} is not healthy: /health answered HTTP {response.status_code}"
        )


def initialize_sqlite_store(uri: str) -> None:
    """Create or upgrade a SQLite store's tables while holding a lock beside it.

    MLflow creates the tables of a new store on first use. Two stages that do it at once, as two
    queued experiments do, run the same `ALTER TABLE`s and one of them fails; the lock makes the
    second wait until the first is done. Writes to an existing store need no lock: MLflow sets a
    20 s SQLite busy timeout on every session.

    Another program holding a write transaction on the store (a database browser, a stuck
    process) is waited for up to `LOCK_WAIT_SECONDS`, before the stage does any work.

    Raises:
        sqlite3.OperationalError, sqlite3.DatabaseError: the store stays locked, is not a database,
            or its disk is full; `store_errors` turns them into one line.
    """
    database = Path(uri[len("sqlite:///") :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with database.with_name(f"{database.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if database.exists():
                # BEGIN IMMEDIATE takes the write lock, waiting `timeout` for whoever holds it.
                with contextlib.closing(sqlite3.connect(database, timeout=LOCK_WAIT_SECONDS)) as connection:
                    connection.execute("BEGIN IMMEDIATE")
                    connection.rollback()
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Turn a failure of the tracking store inside the block into one `ValueError` line that names the
    store and what to do: locked, not a database, a full disk, or a request the store refused.

    MLflow and SQLAlchemy raise these with pages of chained tracebacks; the line is what a user can act on.
    """
    try:
        yield
    except (MlflowException, sqlite3.Error, *_sqlalchemy_errors()) as error:
        raise ValueError(describe_store_error(error, uri)) from error


def describe_store_error(error: BaseException, uri: str) -> str:
    """One line for a tracking-store failure, naming the store (without credentials)."""
    text = " ".join(str(error).split())
    store = f"MLflow store {redact(uri)}"
    if "database is locked" in text or "database table is locked" in text:
        return (
            f"{store} is locked by another process; close what holds it (a database browser, another "
            "process writing to it) and rerun"
        )
    if "not a database" in text or "malformed" in text or "no such table" in text:
        return (
            f"{store} is not a readable MLflow database ({_sqlite_reason(text)}); move the file aside to "
            "start a new store, or point MLFLOW_TRACKING_URI at the right one"
        )
    if "disk is full" in text or "No space left" in text:
        return f"{store}: no space left on its disk; free some and rerun"
    if "readonly database" in text or "Permission denied" in text:
        return f"{store} cannot be written ({_sqlite_reason(text)}); check the file's permissions"
    message = getattr(error, "message", None) or text
    first = " ".join(str(message).split())[:300]
    return f"{store} refused the request: {first}"


def _sqlite_reason(text: str) -> str:
    """The SQLite error itself, without SQLAlchemy's statement and background link."""
    match = re.search(r"\(sqlite3\.\w+\) ([^\[]+)", text)
    return (match.group(1) if match else text[:120]).strip()


def _sqlalchemy_errors() -> tuple[type[BaseException], ...]:
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # an http(s) store needs no SQLAlchemy
        return ()
    return (SQLAlchemyError,)


def _artifact_location(uri: str) -> str | None:
    # Runs logged straight to SQLite keep artifacts relative to the working folder unless the
    # experiment says otherwise; a temporary DVC copy would take them away with it.
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///") :])
        return (database.parent / ARTIFACTS_DIR).resolve().as_uri()
    return None


def experiment_id(name: str, uri: str) -> str:
    """Find the experiment by name, creating it as a model-training experiment when missing."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=_artifact_location(uri),
                tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
            )
        except MlflowException:
            # Another stage process created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment '{name}' is deleted in {redact(uri)}; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or set "
            "mlflow.experiment_name in params.yaml to another name"
        )
    return experiment.experiment_id
