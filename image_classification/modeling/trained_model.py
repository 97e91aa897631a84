"""The train stage's output folder: the Keras model and the id of the MLflow run that trained it.

Evaluate and export read both from here, so the link to the run travels with the model files.
"""

from __future__ import annotations

from pathlib import Path

import keras

from image_classification import artifacts

MODEL_FILE = "model.keras"
RUN_FILE = "mlflow_run.json"


def save(model: keras.Model, run_id: str, folder: Path) -> None:
    """Write the model and its run id into `folder`, which must not exist yet."""
    folder.mkdir(parents=True)
    model.save(folder / MODEL_FILE)
    artifacts.write_json(folder / RUN_FILE, {"run_id": run_id})


def load_model(folder: Path) -> keras.Model:
    """Load the trained Keras model.

    Raises:
        ValueError: the folder holds no model.
    """
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no trained model here; run the train stage first")
    return keras.models.load_model(path)


def run_id(folder: Path) -> str:
    """The id of the MLflow run that trained the model in `folder`.

    Raises:
        ValueError: the run file is missing or malformed.
    """
    path = folder / RUN_FILE
    try:
        return str(artifacts.read_json(path)["run_id"])
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the MLflow run id of the trained model ({error})") from error


def run_file(folder: Path) -> str:
    return str(folder / RUN_FILE)
