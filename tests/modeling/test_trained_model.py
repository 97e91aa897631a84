from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_classification.config import Params
from image_classification.modeling import architecture, trained_model


def test_save_and_load_round_trip(tmp_path: Path, params: Params) -> None:
    classifier = architecture.build_model((12, 12, 1), 3, params.train)
    folder = tmp_path / "trained"
    trained_model.save(classifier, "abc123", folder)
    assert sorted(path.name for path in folder.iterdir()) == [trained_model.RUN_FILE, trained_model.MODEL_FILE]
    assert trained_model.run_id(folder) == "abc123"
    images = np.random.default_rng(0).integers(0, 255, (4, 12, 12, 1), dtype=np.uint8)
    reloaded = trained_model.load_model(folder)
    assert np.allclose(reloaded.predict(images, verbose=0), classifier.predict(images, verbose=0))


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model.keras: no trained model here; run the train stage first"):
        trained_model.load_model(tmp_path)


@pytest.mark.parametrize("content", [None, "not json", '{"other": 1}', "[1, 2]"])
def test_bad_run_file_is_a_clear_error(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / trained_model.RUN_FILE).write_text(content)
    with pytest.raises(ValueError, match=r"mlflow_run.json: cannot read the MLflow run id"):
        trained_model.run_id(tmp_path)


def test_a_corrupt_model_file_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / trained_model.MODEL_FILE).write_text("not a .keras archive")
    with pytest.raises(ValueError, match=r"model.keras: not a readable Keras model \(.*\); retrain it with"):
        trained_model.load_model(tmp_path)
