"""MLflow tracking: where runs are stored, and the single run that each trained model gets.

The train stage opens the run and records its id next to the model; evaluate and export read that id
and attach to the same run, so the link travels with the model files rather than with global state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


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
    """Point MLflow at the project's store and return the URI in use.

    A user name and password in an http(s) URI move to MLflow's `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD`, so MLflow never prints them (it echoes run URLs to stdout).
    """
    uri = tracking_uri(root)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
        host = parts.hostname or ""
        uri = urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
    mlflow.set_tracking_uri(uri)
    return uri


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


def git_commit(root: Path) -> str | None:
    """The commit checked out in `root`, or None outside a git repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def run_tags(data_digest: str) -> dict[str, str]:
    """Tags that tie a run to its code, its DVC experiment and its data."""
    tags = {"data.digest": data_digest, "mlflow.source.name": "dvc repro"}
    commit = git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for variable, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev"),
        ("DVC_STAGE", "dvc.stage"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


@contextlib.contextmanager
def _ended_properly(run_id: str) -> Iterator[None]:
    """End the active run as FINISHED, KILLED (interrupted) or FAILED (with the reason as a tag)."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.set_tag("failure_reason", "interrupted")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        with contextlib.suppress(Exception):
            mlflow.set_tag("failure_reason", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


@contextlib.contextmanager
def start_run(experiment_name: str, tags: Mapping[str, str], run_name: str | None = None) -> Iterator[str]:
    """Open a new run in the project's store and yield its id; it never stays RUNNING."""
    uri = configure()
    run = mlflow.start_run(
        experiment_id=experiment_id(experiment_name, uri),
        run_name=run_name or os.environ.get("DVC_EXP_NAME") or None,
        tags=dict(tags),
    )
    with _ended_properly(run.info.run_id):
        yield run.info.run_id


@contextlib.contextmanager
def resume_run(run_id: str, source: str) -> Iterator[str]:
    """Reopen the run that produced a model; `source` names the file the id came from.

    Raises:
        ValueError: the run does not exist in the configured store.
    """
    uri = configure()
    try:
        mlflow.start_run(run_id=run_id)
    except MlflowException as error:
        raise ValueError(
            f"MLflow run {run_id} (from {source}) is not in the tracking store {redact(uri)}; "
            "point MLFLOW_TRACKING_URI at the store that trained the model, or retrain with "
            "`dvc repro --force train`"
        ) from error
    with _ended_properly(run_id):
        yield run_id


def run_exists(run_id: str) -> bool:
    """Whether the configured store holds a run with this id."""
    try:
        MlflowClient(tracking_uri=configure()).get_run(run_id)
    except MlflowException:
        return False
    return True


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run, keeping values already logged.

    MLflow forbids changing a logged param. When a later stage reruns with a changed value of its
    own params against the same trained model, the new value is recorded as a `param_update.` tag.
    """
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    new = {key: value for key, value in params.items() if key not in existing}
    if new:
        mlflow.log_params({key: _param_value(value) for key, value in new.items()})
    for key, value in params.items():
        if key in existing and existing[key] != _param_value(value):
            logger.warning("param %s changed from %s to %s since this run started", key, existing[key], value)
            mlflow.set_tag(f"param_update.{key}", _param_value(value))


def _param_value(value: Any) -> str:
    return "null" if value is None else str(value)
