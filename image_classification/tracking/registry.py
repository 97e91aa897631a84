"""The MLflow model registry: a new version for every export, and the alias the quality gate moves.

Stages are deprecated in MLflow's registry; the current best model is the version carrying the
`champion` alias, loadable as `models:/<name>@champion` and servable with `mlflow models serve`.
Each version is the exported SavedModel itself, wrapped as a pyfunc model
(`image_classification/serving/pyfunc_model.py`), so MLflow serves exactly what TF Serving would.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
ACCURACY_TAG = "test_accuracy"
TEST_DIGEST_TAG = "data.test_digest"
MODEL_ARTIFACT = "registered_model"
# Logged "from code": MLflow runs this file to build the model, so the file must stand alone.
# Found without importing it: importing it would build a model.
PYFUNC_CODE = Path(importlib.util.find_spec("image_classification.serving.pyfunc_model").origin)
SAVEDMODEL_ARTIFACT = "savedmodel"  # the key pyfunc_model.py reads the SavedModel's folder from


@dataclass(frozen=True)
class Champion:
    """The version the `champion` alias points at, with what it scored when it was exported."""

    version: int
    test_accuracy: float
    test_digest: str | None


def champion(name: str) -> Champion | None:
    """The registered model's champion, or None when the model or the alias does not exist yet.

    Raises:
        ValueError: the champion lacks the test accuracy the gate compares against.
    """
    client = MlflowClient()
    models = client.search_registered_models(filter_string=f"name = '{name}'")
    if not models or CHAMPION not in models[0].aliases:
        return None
    version = client.get_model_version(name, str(models[0].aliases[CHAMPION]))
    if ACCURACY_TAG not in version.tags:
        raise ValueError(
            f"registered model '{name}' version {version.version} is the {CHAMPION} but has no "
            f"'{ACCURACY_TAG}' tag to compare against; tag it, or delete the alias to start afresh"
        )
    return Champion(int(version.version), float(version.tags[ACCURACY_TAG]), version.tags.get(TEST_DIGEST_TAG))


def register(
    savedmodel: Path, name: str, signature: ModelSignature, example: np.ndarray, tags: Mapping[str, str]
) -> int:
    """Log the SavedModel folder to the active run as a pyfunc model and add it as a version of `name`.

    `example` (a few images) is stored with the model as the request body the MLflow UI shows and
    `mlflow models serve` accepts; logging it runs the model on it once.

    The model is logged "from code" (`serving/pyfunc_model.py` travels with it), so loading it
    unpickles nothing; `savedmodel` is copied into the model's artifacts.

    Returns:
        The new version number.
    """
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=str(PYFUNC_CODE),
        artifacts={SAVEDMODEL_ARTIFACT: str(savedmodel)},
        signature=signature,
        input_example=example,
        registered_model_name=name,
        pip_requirements=[
            f"{package}=={metadata.version(package)}" for package in ("mlflow", "tensorflow", "numpy", "pandas")
        ],
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return int(version)


def promote(name: str, version: int) -> None:
    """Point the `champion` alias at `version`."""
    MlflowClient().set_registered_model_alias(name, CHAMPION, str(version))
