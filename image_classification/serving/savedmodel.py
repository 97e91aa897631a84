"""The SavedModel that ships: export with named outputs, reload, and check it matches Keras."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from image_classification.data import shards
from image_classification.serving.contract import CLASS_NAMES, ENDPOINT, INPUT_NAME, OUTPUTS


@dataclass(frozen=True)
class Agreement:
    """How closely the SavedModel reproduces the Keras model on the same images."""

    images: int
    max_abs_difference: float
    mismatched_classes: int


def export_savedmodel(model: keras.Model, class_names: Sequence[str], path: str | Path) -> None:
    """Write a SavedModel whose `serve` (and `serving_default`) endpoint takes raw uint8 images.

    The endpoint accepts any batch size at the model's image size and returns `probabilities`
    (float32), `class_id` (int64) and `class_name` (string). The class names live in the SavedModel,
    so a client needs no side file: the endpoint gathers from them, and
    `tf.saved_model.load(path).class_names[0]` holds them all, by class id.

    Raises:
        OSError: the SavedModel could not be written (a full disk, for example).
    """
    height, width, channels = model.input_shape[1:]
    names = tf.Variable(list(class_names), trainable=False, dtype=tf.string, name=CLASS_NAMES)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_variable_collection(CLASS_NAMES, [names])

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(images, training=False)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

    archive.add_endpoint(
        ENDPOINT,
        serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name=INPUT_NAME)],
    )
    try:
        archive.write_out(str(path), verbose=False)
    except tf.errors.OpError as error:
        # TensorFlow reports a full disk as "<op and temp file>; No space left on device [Op:SaveV2]".
        raise OSError(error.message.rsplit(";", 1)[-1].split("[Op:")[0].strip()) from error


def signature(path: str | Path, name: str = "serving_default") -> dict:
    """Describe a SavedModel signature as plain data: its input's name, dtype and shape, and its outputs'.

    This is the contract clients rely on; the model card records it and a test pins it. Unknown
    dimensions (the batch) are None.
    """
    function = tf.saved_model.load(str(path)).signatures[name]
    (input_name, input_spec), *others = function.structured_input_signature[1].items()
    if others:
        raise ValueError(f"{path}: signature {name!r} takes {1 + len(others)} inputs; expected one")
    return {
        "input": {"name": input_name, "dtype": input_spec.dtype.name, "shape": input_spec.shape.as_list()},
        "outputs": {
            output: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
            for output, spec in sorted(function.structured_outputs.items())
        },
    }


@dataclass(frozen=True)
class Classifier:
    """A reloaded SavedModel's `serve` function with what a client needs to know about it."""

    serve: tf.types.experimental.ConcreteFunction
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    # The loaded object owns the variables `serve` reads; it must live as long as `serve`.
    loaded: object


def load_classifier(path: str | Path) -> Classifier:
    """Load a SavedModel written by `export_savedmodel`.

    Raises:
        ValueError: the folder does not hold a readable SavedModel, or one without the `serve`
            endpoint, the outputs or the class names `export_savedmodel` writes.
    """
    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, tf.errors.OpError, ValueError, DecodeError) as error:
        reason = (error.message if isinstance(error, tf.errors.OpError) else str(error)).strip() or repr(error)
        raise ValueError(f"{path}: not a readable SavedModel ({reason.splitlines()[0]})") from None
    function = loaded.signatures.get(ENDPOINT)
    specs = list(function.structured_input_signature[1].values()) if function is not None else []
    if len(specs) != 1 or specs[0].dtype != tf.uint8 or specs[0].shape.rank != 4:
        raise ValueError(f"{path}: the SavedModel has no '{ENDPOINT}' endpoint taking a batch of uint8 images")
    if set(function.structured_outputs) != set(OUTPUTS) or not getattr(loaded, CLASS_NAMES, None):
        raise ValueError(
            f"{path}: the SavedModel lacks the outputs {list(OUTPUTS)} or its class names; "
            "export it again with `dvc repro export`"
        )
    names = tuple(name.decode("utf-8") for name in getattr(loaded, CLASS_NAMES)[0].numpy())
    return Classifier(function, tuple(specs[0].shape[1:]), names, loaded)


def classify(classifier: Classifier, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run a batch of uint8 images through a loaded classifier's `serve` endpoint; the outputs as arrays."""
    outputs = classifier.serve(**{INPUT_NAME: tf.constant(images)})
    return {name: outputs[name].numpy() for name in OUTPUTS}


def predict_savedmodel(
    path: str | Path, images: np.ndarray | Iterable[np.ndarray], batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Run images through a SavedModel's `serve` endpoint, loaded with `tf.saved_model.load`.

    Args:
        path: the SavedModel folder.
        images: (N, H, W, C) uint8 images, run `batch_size` at a time, or an iterable of such batches.
        batch_size: images per call when `images` is one array.

    Returns:
        Each output of `contract.OUTPUTS`, one row per image, in order.
    """
    loaded = tf.saved_model.load(str(path))
    batches = images
    if isinstance(images, np.ndarray):
        batches = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUTS}
    for batch in batches:
        result = loaded.serve(tf.constant(batch))
        for name in OUTPUTS:
            outputs[name].append(result[name].numpy())
    return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in outputs.items()}


def predict_shards(path: str | Path, dataset_dir: str | Path, rows: np.ndarray, batch_size: int = 256) -> dict:
    """`predict_savedmodel` on `rows` of the prepared dataset at `dataset_dir`, streamed a batch at a time."""
    with shards.open_dataset(Path(dataset_dir)) as data:
        return predict_savedmodel(path, data.batches(np.asarray(rows, dtype=np.int64), batch_size))


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
