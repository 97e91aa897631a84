"""Resumable training: a checkpoint after every epoch, kept outside DVC's outputs.

DVC deletes a stage's outputs before running it, so the checkpoint lives in its own folder. It holds
every model and optimizer variable (random-generator states included, which `model.save` drops),
the early-stopping state, the history so far and the MLflow run id, so a killed run continues in
the same run and ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from image_classification import artifacts

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """The state of a training run after `epoch` completed epochs."""

    key: str
    run_id: str
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    variables: list[np.ndarray] = field(default_factory=list)
    early_stopping: dict[str, Any] | None = None
    best_weights: list[np.ndarray] | None = None
    seconds: float = 0.0


def checkpoint_key(settings: dict[str, Any], data_digest: str) -> str:
    """Identify what is being trained, so a checkpoint is only resumed by the same training."""
    text = json.dumps({"settings": settings, "data": data_digest, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def capture(model: keras.Model) -> list[np.ndarray]:
    """Copy every variable of the model and of its optimizer, in a stable order."""
    return [keras.ops.convert_to_numpy(variable) for variable in _state_variables(model)]


def restore(model: keras.Model, values: list[np.ndarray]) -> None:
    """Assign values captured by `capture` from a model of the same architecture.

    Raises:
        ValueError: the values do not fit this model.
    """
    model.optimizer.build(model.trainable_variables)
    targets = _state_variables(model)
    if len(targets) != len(values) or any(
        tuple(target.shape) != value.shape for target, value in zip(targets, values, strict=False)
    ):
        raise ValueError("the checkpoint was written by a different model architecture")
    for target, value in zip(targets, values, strict=True):
        target.assign(value)


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically as an .npz archive with no pickled objects."""
    meta = {
        "format": FORMAT_VERSION,
        "key": checkpoint.key,
        "run_id": checkpoint.run_id,
        "epoch": checkpoint.epoch,
        "seconds": checkpoint.seconds,
        "history": checkpoint.history,
        "early_stopping": checkpoint.early_stopping,
        "variables": len(checkpoint.variables),
        "best_weights": None if checkpoint.best_weights is None else len(checkpoint.best_weights),
    }
    arrays = {f"variable_{index}": value for index, value in enumerate(checkpoint.variables)}
    arrays.update({f"best_{index}": value for index, value in enumerate(checkpoint.best_weights or [])})
    with artifacts.atomic_path(path) as staged, staged.open("wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


def load(path: Path, key: str) -> Checkpoint | None:
    """Read the checkpoint at `path` if it belongs to the training identified by `key`."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
                logger.info("ignoring checkpoint %s: it belongs to other params or data", path)
                return None
            variables = [archive[f"variable_{index}"] for index in range(meta["variables"])]
            best = meta["best_weights"]
            best_weights = None if best is None else [archive[f"best_{index}"] for index in range(best)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring unreadable checkpoint %s: %s", path, error)
        return None
    return Checkpoint(
        key=key,
        run_id=meta["run_id"],
        epoch=meta["epoch"],
        seconds=meta["seconds"],
        history=meta["history"],
        variables=variables,
        early_stopping=meta["early_stopping"],
        best_weights=best_weights,
    )


class EpochCheckpoint(keras.callbacks.Callback):
    """Save a `Checkpoint` after every epoch; on resume, hand early stopping its earlier state.

    Place it after `EarlyStopping` in the callback list so it sees that epoch's decision.
    """

    def __init__(
        self, path: Path, checkpoint: Checkpoint, early_stopping: keras.callbacks.EarlyStopping | None
    ) -> None:
        super().__init__()
        self.path = path
        self.checkpoint = checkpoint
        self.early_stopping = early_stopping
        self._seconds_before = checkpoint.seconds
        self._started = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._started = time.perf_counter()
        stopping, state = self.early_stopping, self.checkpoint.early_stopping
        if stopping is not None and state is not None:
            stopping.best = state["best"]
            stopping.wait = state["wait"]
            stopping.best_epoch = state["best_epoch"]
            stopping.best_weights = self.checkpoint.best_weights

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, **{name: float(value) for name, value in (logs or {}).items()}}
        self.checkpoint.history.append(row)
        self.checkpoint.epoch = epoch + 1
        self.checkpoint.seconds = self._seconds_before + time.perf_counter() - self._started
        self.checkpoint.variables = capture(self.model)
        stopping = self.early_stopping
        if stopping is not None:
            best = None if stopping.best is None else float(stopping.best)
            self.checkpoint.early_stopping = {"best": best, "wait": stopping.wait, "best_epoch": stopping.best_epoch}
            self.checkpoint.best_weights = stopping.best_weights
        save(self.path, self.checkpoint)


def _state_variables(model: keras.Model) -> list:
    return [*model.variables, *model.optimizer.variables]
