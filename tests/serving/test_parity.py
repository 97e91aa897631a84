"""The parity check's fresh process, on the session's stage chain (a model trained on TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_classification.data import shards, split
from image_classification.modeling import trained_model
from image_classification.serving import parity, savedmodel


def rows_of_test_split(paths: dict[str, Path]) -> np.ndarray:
    with shards.open_dataset(paths["dataset"]) as data:
        return split.read_membership(paths["membership"], data, ("test",))["test"]


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_fresh_process_predicts_with_the_savedmodel_and_the_backend(pipeline, backend: str) -> None:
    _, paths, _ = pipeline
    rows = rows_of_test_split(paths)
    result = parity.in_fresh_process(
        backend, 0, paths["savedmodel"], paths["model"], paths["dataset"], rows, batch_size=16
    )
    with shards.open_dataset(paths["dataset"]) as data:
        images = data.read(rows)
    served = savedmodel.predict_savedmodel(paths["savedmodel"], images, batch_size=16)
    assert np.array_equal(result["probabilities"], served["probabilities"])
    assert np.array_equal(result["class_id"], served["class_id"])
    # The same weights, loaded on another backend: equal within float32 rounding, not to the bit.
    expected = trained_model.load_model(paths["model"]).predict(images, verbose=0)
    assert result["expected"].shape == expected.shape == (len(rows), len(data.class_names))
    assert np.abs(result["expected"] - expected).max() < 1e-5
    assert np.array_equal(result["expected"].argmax(axis=1), expected.argmax(axis=1))


def test_a_missing_model_fails_with_its_message(pipeline, tmp_path: Path) -> None:
    _, paths, _ = pipeline
    with pytest.raises(ValueError, match="no trained model here; run the train stage first"):
        parity.in_fresh_process(
            "jax", 0, paths["savedmodel"], tmp_path, paths["dataset"], rows_of_test_split(paths), 16
        )
