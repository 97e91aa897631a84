"""MLflow runs: the single run each trained model gets, its name, tags and description, and its params.

The train stage opens the run and records its id next to the model; evaluate and export read that id
and attach to the same run, so the link travels with the model files rather than with global state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from image_classification.config import flatten, parse_yaml
from image_classification.tracking.store import configure, experiment_id, redact, store_errors

logger = logging.getLogger(__name__)

DESCRIPTION_TAG = "mlflow.note.content"


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
    return flatten(raw) if isinstance(raw, dict) else None


def changed_params(params: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, str]:
    """The params whose value differs from the baseline's, as logged (`None` is `null`)."""
    if baseline is None:
        return {}
    return {
        key: _param_value(value)
        for key, value in params.items()
        if key not in baseline or _param_value(baseline[key]) != _param_value(value)
    }


def run_name(changed: Mapping[str, str], commit: str | None, data_version: str, limit: int = 80) -> str:
    """Name a run so that a person can tell runs apart in the MLflow UI.

    The DVC experiment's name when there is one, else the params that differ from the baseline
    commit, else the commit and the data version (`3f2a9c1 data 5d41402a`): what a plain
    `dvc repro` with nothing changed trained from.
    """
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    name = ", ".join(f"{key}={value}" for key, value in changed.items())
    if not name:
        return f"{commit[:7] if commit else 'no commit'} data {data_version[:8]}"
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


FAILURE_TAG = "failure_reason"


@contextlib.contextmanager
def _ended_properly(run_id: str) -> Iterator[None]:
    """End the active run as FINISHED, KILLED (interrupted) or FAILED (with the reason as a tag).

    A run that finishes clears the failure reason an earlier, interrupted attempt left on it. When
    the store itself fails, the run cannot be closed; the original error is what propagates.
    """
    try:
        yield
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            mlflow.set_tag(FAILURE_TAG, "interrupted")
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        with contextlib.suppress(Exception):
            mlflow.set_tag(FAILURE_TAG, f"{type(error).__name__}: {error}"[:5000])
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        if FAILURE_TAG in MlflowClient().get_run(run_id).data.tags:
            MlflowClient().delete_tag(run_id, FAILURE_TAG)
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


@contextlib.contextmanager
def start_run(
    experiment_name: str, tags: Mapping[str, str], run_name: str | None = None, description: str | None = None
) -> Iterator[str]:
    """Open a new run in the project's store and yield its id; it never stays RUNNING.

    Raises:
        ValueError: the store fails (locked, corrupt, full, refusing): one line, from `store.store_errors`.
    """
    uri = configure()
    with store_errors(uri):
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
        ValueError: the run does not exist in the configured store, or the store fails (one line,
            from `store.store_errors`).
    """
    uri = configure()
    with store_errors(uri):
        try:
            mlflow.start_run(run_id=run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
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


def metric_keys(prefix: str, names: Sequence[str]) -> list[str]:
    """MLflow metric keys for user-given names (class names), one per name, distinct, in order.

    MLflow accepts letters and digits of any script, `_`, `-`, `.`, space and `/` in a key, and no
    key that a file path would resolve to another; every other character becomes `_`, a slash too.
    A name that then collides with an earlier one gets `_2`, `_3`, ... appended.
    """
    keys: list[str] = []
    for name in names:
        cleaned = re.sub(r"[^\w.\- ]", "_", name).strip() or "_"
        key, suffix = f"{prefix}{cleaned}", 2
        while key in keys:
            key, suffix = f"{prefix}{cleaned}_{suffix}", suffix + 1
        keys.append(key)
    return keys
