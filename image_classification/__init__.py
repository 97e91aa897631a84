"""The image-classification pipeline's library: data, modeling, tracking and serving.

`stages/` holds the five DVC entry points; each calls one function of this package. Sub-packages
name the concerns: `data` (reading, decoding, validating and splitting images), `modeling` (the Keras
network, its input pipeline, training and evaluation), `tracking` (MLflow runs and the model registry)
and `serving` (the SavedModel, its export and prediction). `config`, `artifacts` and `runner` are
shared by all of them.
"""

import os

from image_classification import native_logs

# Quiet by default, before TensorFlow or MLflow is imported; a user who sets any of these keeps theirs.
# TensorFlow's Python-side INFO and WARNING logs:
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow's INFO lines (creating tables, validating an input example) and its per-file download bars:
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# TensorFlow's native start-up lines, which no setting silences:
native_logs.install()
