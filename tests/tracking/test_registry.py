from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from image_classification.serving import savedmodel
from image_classification.tracking import registry, runs, signatures, store


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inputs = keras.Input(shape=(4, 4, 1), dtype="uint8", name="images")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    path = tmp_path_factory.mktemp("export") / "1"
    savedmodel.export_savedmodel(keras.Model(inputs, outputs), ("a", "b", "c"), path)
    return path


def register(exported: Path, accuracy: float) -> int:
    with runs.start_run("registry-test", {}):
        return registry.register(
            exported,
            "demo",
            signatures.serving_signature((4, 4, 1)),
            np.zeros((1, 4, 4, 1), np.uint8),
            {registry.ACCURACY_TAG: str(accuracy)},
        )


def test_no_champion_before_any_promotion(mlflow_store: str, exported: Path) -> None:
    store.configure()
    assert registry.champion("demo") is None
    assert register(exported, 0.5) == 1
    assert registry.champion("demo") is None  # registered, not promoted


def test_versions_count_up_and_promotion_moves_the_alias(mlflow_store: str, exported: Path) -> None:
    store.configure()
    first = register(exported, 0.5)
    second = register(exported, 0.75)
    assert (first, second) == (1, 2)
    registry.promote("demo", first)
    assert registry.champion("demo") == registry.Champion(1, 0.5, None)
    registry.promote("demo", second)
    assert registry.champion("demo").version == 2
    version = MlflowClient().get_model_version("demo", "2")
    assert version.tags[registry.ACCURACY_TAG] == "0.75"
    assert version.aliases == [registry.CHAMPION]


def test_registered_version_serves_the_savedmodel_without_pickles(mlflow_store: str, exported: Path) -> None:
    store.configure()
    register(exported, 0.5)
    registry.promote("demo", 1)
    loaded = mlflow.pyfunc.load_model("models:/demo@champion")
    spec = loaded.metadata.signature.inputs.to_dict()[0]
    assert spec == {"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, 4, 4, 1)}, "name": "images"}
    assert loaded.metadata.signature.outputs.input_names() == ["probabilities", "class_id", "class_name"]
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)
    answer = loaded.predict(images)
    expected = savedmodel.predict_savedmodel(exported, images)
    assert isinstance(answer, pd.DataFrame)
    assert np.array_equal(np.stack(answer["probabilities"]), expected["probabilities"])
    assert answer["class_id"].tolist() == expected["class_id"].tolist()
    assert answer["class_name"].tolist() == expected["class_name"].astype(str).tolist()
    model_folder = Path(mlflow.artifacts.download_artifacts("models:/demo/1"))
    assert not list(model_folder.rglob("*.pkl")), "the model is logged from code; nothing is pickled"


def test_wrong_shape_or_dtype_is_refused_before_the_model_runs(mlflow_store: str, exported: Path) -> None:
    store.configure()
    register(exported, 0.5)
    loaded = mlflow.pyfunc.load_model("models:/demo/1")
    with pytest.raises(mlflow.exceptions.MlflowException, match="Shape of input"):
        loaded.predict(np.zeros((2, 5, 4, 1), np.uint8))
    with pytest.raises(mlflow.exceptions.MlflowException, match="dtype of input float32 does not match"):
        loaded.predict(np.zeros((2, 4, 4, 1), np.float32))


def test_champion_without_accuracy_is_a_clear_error(mlflow_store: str, exported: Path) -> None:
    store.configure()
    register(exported, 0.5)
    registry.promote("demo", 1)
    MlflowClient().delete_model_version_tag("demo", "1", registry.ACCURACY_TAG)
    with pytest.raises(ValueError, match="version 1 is the champion but has no 'test_accuracy' tag"):
        registry.champion("demo")
