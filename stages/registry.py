"""The MLflow model registry: a new version for every export, and the alias the quality gate moves.

Stages are deprecated in MLflow's registry; the current best model is the version carrying the
`champion` alias, loadable as `models:/<name>@champion`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import keras
import mlflow
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
ACCURACY_TAG = "test_accuracy"
TEST_DIGEST_TAG = "data.test_digest"
MODEL_ARTIFACT = "registered_model"


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


def register(model: keras.Model, name: str, signature: ModelSignature, tags: Mapping[str, str]) -> int:
    """Log `model` to the active run as a SavedModel with `signature` and add it as a version of `name`.

    Returns:
        The new version number.
    """
    info = mlflow.keras.log_model(
        model,
        name=MODEL_ARTIFACT,
        signature=signature,
        save_exported_model=True,
        registered_model_name=name,
        pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return int(version)


def promote(name: str, version: int) -> None:
    """Point the `champion` alias at `version`."""
    MlflowClient().set_registered_model_alias(name, CHAMPION, str(version))
