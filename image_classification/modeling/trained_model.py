"""The train stage's output folder: the Keras model and the id of the MLflow run that trained it.

Evaluate and export read both from here, so the link to the run travels with the model files.
"""

from __future__ import annotations

import zipfile
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
        ValueError: the folder holds no model, or a file that is not a readable `.keras` archive.
    """
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no trained model here; run the train stage first")
    try:
        return keras.models.load_model(path)
    except (ValueError, OSError, zipfile.BadZipFile, KeyError) as error:
        # Keras reports a file that is not a .keras archive as "File not found", though it is there.
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ValueError(
            f"{path}: not a readable Keras model ({reason}); retrain it with `dvc repro --force train`"
        ) from None


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
