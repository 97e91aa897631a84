from __future__ import annotations

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from stages import registry, tracking


@pytest.fixture
def tiny_model() -> keras.Model:
    inputs = keras.Input(shape=(4, 4, 1), dtype="uint8", name="images")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def register(model: keras.Model, accuracy: float) -> int:
    with tracking.start_run("registry-test", {}):
        return registry.register(
            model,
            "demo",
            tracking.model_signature((4, 4, 1), 3, input_name=None),
            {registry.ACCURACY_TAG: str(accuracy)},
        )


def test_no_champion_before_any_promotion(mlflow_store: str, tiny_model: keras.Model) -> None:
    tracking.configure()
    assert registry.champion("demo") is None
    assert register(tiny_model, 0.5) == 1
    assert registry.champion("demo") is None  # registered, not promoted


def test_versions_count_up_and_promotion_moves_the_alias(mlflow_store: str, tiny_model: keras.Model) -> None:
    tracking.configure()
    first = register(tiny_model, 0.5)
    second = register(tiny_model, 0.75)
    assert (first, second) == (1, 2)
    registry.promote("demo", first)
    assert registry.champion("demo") == registry.Champion(1, 0.5, None)
    registry.promote("demo", second)
    assert registry.champion("demo").version == 2
    version = MlflowClient().get_model_version("demo", "2")
    assert version.tags[registry.ACCURACY_TAG] == "0.75"
    assert version.aliases == [registry.CHAMPION]


def test_registered_version_is_a_savedmodel_with_a_signature(mlflow_store: str, tiny_model: keras.Model) -> None:
    tracking.configure()
    register(tiny_model, 0.5)
    registry.promote("demo", 1)
    loaded = mlflow.pyfunc.load_model("models:/demo@champion")
    assert loaded.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    assert loaded.metadata.flavors["keras"]["save_exported_model"] is True
    images = np.zeros((2, 4, 4, 1), np.uint8)
    assert np.allclose(loaded.predict(images), tiny_model.predict(images, verbose=0), atol=1e-6)


def test_champion_without_accuracy_is_a_clear_error(mlflow_store: str, tiny_model: keras.Model) -> None:
    tracking.configure()
    register(tiny_model, 0.5)
    registry.promote("demo", 1)
    MlflowClient().delete_model_version_tag("demo", "1", registry.ACCURACY_TAG)
    with pytest.raises(ValueError, match="version 1 is the champion but has no 'test_accuracy' tag"):
        registry.champion("demo")
