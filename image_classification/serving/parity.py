"""The export stage's parity check, run in a fresh interpreter on the backend that trained the model.

The SavedModel is written by Keras on TensorFlow; what it must reproduce is what the training
backend predicts. So the check runs in a new process (spawned: nothing of the exporting process's
Keras objects or graph can leak into it) that first chooses the training backend, then runs the same
test rows through the `.keras` model on that backend and through the reloaded SavedModel
(`tf.saved_model.load`, no Keras). This module imports no Keras at import time, so the child can still choose.

The process starts before the SavedModel exists (`FreshProcessCheck`), as the export stage's first
act: it imports its backend, loads the Keras model and predicts while the exporting process imports
TensorFlow and writes the SavedModel, then waits for the SavedModel's path. The two interpreters'
start-up overlaps instead of adding up.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from image_classification import backend
from image_classification.data import shards, split

# Test images per batch in the parity check.
CHECK_BATCH = 256


def test_rows(dataset_dir: Path, membership_path: Path) -> np.ndarray:
    """The test split's rows of the prepared dataset (`split.read_membership`)."""
    with shards.open_dataset(dataset_dir) as data:
        return split.read_membership(membership_path, data, ("test",))["test"]


def predict_keras(
    backend_name: str, intra_op_threads: int, model_dir: str, dataset_dir: str, rows: np.ndarray, batch_size: int
) -> np.ndarray:
    """The Keras model's (N, classes) float32 probabilities for `rows`, on `backend_name`.

    Call in a process that has not imported Keras yet (`FreshProcessCheck` does).
    """
    backend.use(backend_name, intra_op_threads)
    from image_classification.modeling import trained_model

    model = trained_model.load_model(Path(model_dir))
    with shards.open_dataset(Path(dataset_dir)) as data:
        parts = [np.asarray(model.predict_on_batch(batch)) for batch in data.batches(rows, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def predict_savedmodel(savedmodel_path: str, dataset_dir: str, rows: np.ndarray, batch_size: int) -> dict:
    """The reloaded SavedModel's outputs (`contract.OUTPUTS`, one row per image) for `rows`."""
    from image_classification.serving import savedmodel

    return savedmodel.predict_shards(savedmodel_path, dataset_dir, rows, batch_size)


class FreshProcessCheck:
    """A spawned process that predicts the test split with the Keras model now and with a SavedModel later.

    Use as a context manager: the process starts on entry and is stopped on exit, whatever happened.
    It reads the test rows from `membership_path` itself. Errors in the child come back as themselves
    (a `ValueError` for a missing model, for example).
    """

    def __init__(
        self, backend_name: str, intra_op_threads: int, model_dir: Path, dataset_dir: Path, membership_path: Path,
        batch_size: int = CHECK_BATCH,
    ) -> None:  # fmt: skip
        self._arguments = (
            backend_name, intra_op_threads, str(model_dir), str(dataset_dir), str(membership_path), batch_size,
        )  # fmt: skip
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    def __enter__(self) -> FreshProcessCheck:
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_child, args=(child_end, *self._arguments), daemon=True)
        self._process.start()
        child_end.close()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.terminate()
            self._process.join()
        if self._connection is not None:
            self._connection.close()

    def check(self, savedmodel_path: Path) -> dict[str, np.ndarray]:
        """Run the SavedModel at `savedmodel_path` in the child.

        Returns:
            The SavedModel's outputs and `expected`: the Keras model's probabilities on the training backend.

        Raises:
            Whatever the child raised, or RuntimeError when it died without a word.
        """
        if self._connection is None or self._process is None:
            raise RuntimeError("FreshProcessCheck.check called outside its `with` block")
        try:
            self._connection.send(str(savedmodel_path))
            status, payload = self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._process.join()
            raise RuntimeError(
                f"the parity check's process ended with exit code {self._process.exitcode} before answering"
            ) from None
        except Exception as error:  # an answer that could not be read back (an exception class that will not rebuild)
            raise RuntimeError(f"the parity check's answer could not be read: {error}") from error
        if status == "error":
            raise payload
        return payload


def _child(
    connection: Connection, backend_name: str, intra_op_threads: int, model_dir: str, dataset_dir: str,
    membership_path: str, batch_size: int,
) -> None:  # fmt: skip
    try:
        rows = test_rows(Path(dataset_dir), Path(membership_path))
        expected = predict_keras(backend_name, intra_op_threads, model_dir, dataset_dir, rows, batch_size)
        savedmodel_path = connection.recv()
        outputs = predict_savedmodel(savedmodel_path, dataset_dir, rows, batch_size)
        outputs["expected"] = expected
        connection.send(("ok", outputs))
    except EOFError:  # the exporting process gave up before writing the SavedModel
        pass
    except BaseException as error:  # every failure goes back to the exporting process
        try:
            connection.send(("error", error))
        except Exception:  # an exception that cannot be sent as itself goes as its text
            connection.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))
    finally:
        connection.close()
