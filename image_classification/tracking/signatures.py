"""MLflow model signatures: the one description of what the models take and return.

Both logged models take the same input, a batch of raw uint8 images named `images`: the trained
Keras model (logged by the train stage) returns a float32 probability tensor; the registered
SavedModel (logged by export, served by `mlflow models serve`) returns one record per image. MLflow
checks every request against the input: a wrong rank or image size, or values that are not integers
in 0..255, is answered with HTTP 400 before the model runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

from image_classification.serving.contract import INPUT_NAME, OUTPUTS


def images_input(image_shape: Sequence[int]) -> Schema:
    """A batch of uint8 images of `image_shape` (height, width, channels), any batch size."""
    return Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape), INPUT_NAME)])


def keras_signature(image_shape: Sequence[int], num_classes: int) -> ModelSignature:
    """The trained Keras model: images in, float32 probabilities of shape (batch, num_classes) out."""
    return ModelSignature(
        inputs=images_input(image_shape),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), OUTPUTS[0])]),
    )


def serving_signature(image_shape: Sequence[int]) -> ModelSignature:
    """The registered SavedModel: images in, one record per image with `probabilities`, `class_id`, `class_name`."""
    return ModelSignature(
        inputs=images_input(image_shape),
        outputs=Schema(
            [
                ColSpec(Array("float"), OUTPUTS[0]),
                ColSpec("long", OUTPUTS[1]),
                ColSpec("string", OUTPUTS[2]),
            ]
        ),
    )
