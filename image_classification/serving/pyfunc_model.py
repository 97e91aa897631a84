"""The exported SavedModel as an MLflow pyfunc model, for `mlflow models serve`.

MLflow loads this file as "models from code": it executes the file and serves the object passed to
`mlflow.models.set_model`, so nothing is pickled. The model holds no Keras code: it calls the same
`serve` endpoint TF Serving calls, so the REST answers are the SavedModel's answers.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

# The artifact key `image_classification.tracking.registry` stores the SavedModel folder under. This
# file imports nothing from the project: MLflow executes it on its own wherever the model is loaded.
SAVEDMODEL_ARTIFACT = "savedmodel"


class SavedModelClassifier(mlflow.pyfunc.PythonModel):
    """Raw uint8 images in; one row per image with `probabilities`, `class_id` and `class_name` out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(context.artifacts[SAVEDMODEL_ARTIFACT])

    # np.ndarray tells MLflow the input is described by the logged signature, which it checks; without
    # a type hint MLflow warns on every load.
    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> pd.DataFrame:
        # A named one-input signature hands the images over as {"images": array}.
        images = next(iter(model_input.values())) if isinstance(model_input, dict) else model_input
        outputs = self._model.serve(self._tf.constant(np.asarray(images)))
        # One record per image, as TF Serving answers a row-format ("instances") request.
        return pd.DataFrame(
            {
                "probabilities": list(outputs["probabilities"].numpy()),
                "class_id": outputs["class_id"].numpy(),
                # Class names are UTF-8 bytes; NumPy's astype(str) would decode them as ASCII.
                "class_name": [name.decode("utf-8") for name in outputs["class_name"].numpy()],
            }
        )


mlflow.models.set_model(SavedModelClassifier())
