"""The SavedModel that ships: export with named outputs, reload, and check it matches Keras."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

ENDPOINT = "serve"
OUTPUTS = ("probabilities", "class_id", "class_name")


@dataclass(frozen=True)
class Agreement:
    """How closely the SavedModel reproduces the Keras model on the same images."""

    images: int
    max_abs_difference: float
    mismatched_classes: int


def export_savedmodel(model: keras.Model, class_names: Sequence[str], path: str | Path) -> None:
    """Write a SavedModel whose `serve` (and `serving_default`) endpoint takes raw uint8 images.

    The endpoint accepts any batch size at the model's image size and returns `probabilities`
    (float32), `class_id` (int64) and `class_name` (string); the class names live in the graph, so a
    client needs no side file.

    Raises:
        OSError: the SavedModel could not be written (a full disk, for example).
    """
    height, width, channels = model.input_shape[1:]
    names = tf.constant(list(class_names), dtype=tf.string)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(images, training=False)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

    archive.add_endpoint(
        ENDPOINT,
        serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")],
    )
    try:
        archive.write_out(str(path), verbose=False)
    except tf.errors.OpError as error:
        # TensorFlow reports a full disk as "<op and temp file>; No space left on device [Op:SaveV2]".
        raise OSError(error.message.rsplit(";", 1)[-1].split("[Op:")[0].strip()) from error


def predict_savedmodel(path: str | Path, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run images through a SavedModel's `serve` endpoint, loaded with `tf.saved_model.load`."""
    loaded = tf.saved_model.load(str(path))
    batches = [
        loaded.serve(tf.constant(images[start : start + batch_size])) for start in range(0, len(images), batch_size)
    ]
    return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in OUTPUTS}


def compare(keras_probabilities: np.ndarray, savedmodel_probabilities: np.ndarray) -> Agreement:
    """Measure the largest probability difference and how many predicted classes differ."""
    if keras_probabilities.shape != savedmodel_probabilities.shape:
        raise ValueError(
            f"SavedModel returned probabilities of shape {savedmodel_probabilities.shape}, "
            f"Keras {keras_probabilities.shape}"
        )
    return Agreement(
        images=len(keras_probabilities),
        max_abs_difference=float(np.abs(keras_probabilities - savedmodel_probabilities).max(initial=0.0)),
        mismatched_classes=int((keras_probabilities.argmax(axis=1) != savedmodel_probabilities.argmax(axis=1)).sum()),
    )
