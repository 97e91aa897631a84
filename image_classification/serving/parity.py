"""The export stage's parity check, run in a fresh interpreter on the backend that trained the model.

The SavedModel is written by Keras on TensorFlow; what it must reproduce is what the training
backend predicts. So the check runs in a new process (spawned: nothing of the exporting process's
Keras objects or graph can leak into it) that first chooses the training backend, then runs the same
test rows through the reloaded SavedModel (`tf.saved_model.load`, no Keras) and through the `.keras`
model on that backend. This module imports no Keras at import time, so the child can still choose.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from image_classification import backend
from image_classification.data import shards


def predict_both(
    backend_name: str, intra_op_threads: int, savedmodel_path: str, model_dir: str, dataset_dir: str,
    rows: np.ndarray, batch_size: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Run `rows` of the prepared dataset through the SavedModel and through the Keras model on `backend_name`.

    Call in a process that has not imported Keras yet (`in_fresh_process` does).

    Returns:
        The SavedModel's outputs (`contract.OUTPUTS`, one row per image) and `expected`: the Keras
        model's (N, classes) float32 probabilities on the training backend.
    """
    backend.use(backend_name, intra_op_threads)
    from image_classification.modeling import trained_model
    from image_classification.serving import savedmodel

    outputs = savedmodel.predict_shards(savedmodel_path, dataset_dir, rows, batch_size)
    model = trained_model.load_model(Path(model_dir))
    with shards.open_dataset(Path(dataset_dir)) as data:
        parts = [np.asarray(model.predict_on_batch(batch)) for batch in data.batches(rows, batch_size)]
    classes = model.output_shape[-1]
    outputs["expected"] = np.concatenate(parts) if parts else np.zeros((0, classes), np.float32)
    return outputs


def in_fresh_process(
    backend_name: str, intra_op_threads: int, savedmodel_path: Path, model_dir: Path, dataset_dir: Path,
    rows: np.ndarray, batch_size: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """`predict_both` in a new interpreter (multiprocessing's spawn); its result as arrays."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(
            predict_both, backend_name, intra_op_threads, str(savedmodel_path), str(model_dir), str(dataset_dir),
            np.asarray(rows, dtype=np.int64), batch_size,
        ).result()  # fmt: skip
