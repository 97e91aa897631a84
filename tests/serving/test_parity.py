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
    with parity.FreshProcessCheck(backend, 0, paths["model"], paths["dataset"], paths["membership"], 16) as check:
        result = check.check(paths["savedmodel"])
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
    with (
        parity.FreshProcessCheck("jax", 0, tmp_path, paths["dataset"], paths["membership"], 16) as check,
        pytest.raises(ValueError, match="no trained model here; run the train stage first"),
    ):
        check.check(paths["savedmodel"])


def test_a_killed_check_process_is_named_and_leaves_nothing_running(pipeline) -> None:
    _, paths, _ = pipeline
    with parity.FreshProcessCheck("tensorflow", 0, paths["model"], paths["dataset"], paths["membership"], 16) as check:
        process = check._process
        process.kill()
        with pytest.raises(RuntimeError, match=r"parity check's process ended with exit code -9 before answering"):
            check.check(paths["savedmodel"])
    assert not process.is_alive()


def test_leaving_before_the_savedmodel_exists_stops_the_process(pipeline) -> None:
    _, paths, _ = pipeline
    with parity.FreshProcessCheck("tensorflow", 0, paths["model"], paths["dataset"], paths["membership"], 16) as check:
        process = check._process
    assert process.exitcode is not None
