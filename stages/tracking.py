"""MLflow tracking: where runs are stored, and the single run that each trained model gets.

The train stage opens the run and records its id next to the model; evaluate and export read that id
and attach to the same run, so the link travels with the model files rather than with global state.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import numpy as np
import requests
import yaml
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from stages.params import parse_yaml

logger = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
DESCRIPTION_TAG = "mlflow.note.content"

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
        ValueError: a malformed URI, or a tracking server that does not answer its health check.
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
    """
    database = Path(uri[len("sqlite:///") :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with database.with_name(f"{database.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


def baseline_params(root: Path) -> dict[str, Any] | None:
    """The flat params of the commit this run started from, or None when they cannot be read.

    That commit is DVC's experiment baseline under `dvc exp run`, else `HEAD`.
    """
    revision = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    try:
        result = subprocess.run(
            ["git", "show", f"{revision}:params.yaml"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
        raw = parse_yaml(result.stdout)
    except (OSError, subprocess.SubprocessError, yaml.YAMLError):
        return None
    return _flatten_mapping(raw) if isinstance(raw, dict) else None


def changed_params(params: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, str]:
    """The params whose value differs from the baseline's, as logged (`None` is `null`)."""
    if baseline is None:
        return {}
    return {
        key: _param_value(value)
        for key, value in params.items()
        if key not in baseline or _param_value(baseline[key]) != _param_value(value)
    }


def run_name(changed: Mapping[str, str], limit: int = 80) -> str | None:
    """Name a run after its DVC experiment, else after the params it changes, else leave it to MLflow."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    name = ", ".join(f"{key}={value}" for key, value in changed.items())
    if not name:
        return None
    return name if len(name) <= limit else f"{name[: limit - 3]}..."


def run_description(
    data_digest: str, images: Mapping[str, int], classes: int, param_count: int, changed: Mapping[str, str]
) -> str:
    """A few lines for the run's description: data version, model size and what changed."""
    counts = ", ".join(f"{count} {split}" for split, count in images.items())
    lines = [
        f"Data {data_digest[:12]}: {counts} images, {classes} classes.",
        f"Model: {param_count:,} parameters.",
    ]
    if changed:
        lines.append("Changed from the baseline: " + ", ".join(f"{key}={value}" for key, value in changed.items()))
    return "\n\n".join(lines)


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
def start_run(
    experiment_name: str, tags: Mapping[str, str], run_name: str | None = None, description: str | None = None
) -> Iterator[str]:
    """Open a new run in the project's store and yield its id; it never stays RUNNING."""
    uri = configure()
    run = mlflow.start_run(
        experiment_id=experiment_id(experiment_name, uri),
        run_name=run_name or os.environ.get("DVC_EXP_NAME") or None,
        tags={**tags, DESCRIPTION_TAG: description} if description else dict(tags),
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


def model_signature(image_shape: tuple[int, ...], num_classes: int) -> ModelSignature:
    """The signature of the trained Keras model: raw uint8 images in, float32 class probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), "probabilities")]),
    )


def _param_value(value: Any) -> str:
    return "null" if value is None else str(value)


def _flatten_mapping(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(_flatten_mapping(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
