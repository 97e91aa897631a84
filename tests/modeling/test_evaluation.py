"""The evaluate stage's function: the metrics, per-class table, confusion pairs and figure DVC shows."""

from __future__ import annotations

import pytest

from image_classification import artifacts

pytestmark = pytest.mark.slow


def test_outputs_for_dvc_metrics_and_plots(pipeline) -> None:
    _, paths, _ = pipeline
    metrics = artifacts.read_json(paths["metrics"])
    assert set(metrics) == {"accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "images"}
    assert 0 <= metrics["accuracy"] <= 1
    history = paths["history"].read_text().splitlines()
    assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate"
    assert len(history) == 3
    confusion = paths["confusion"].read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) == 46
    assert paths["figure"].read_bytes().startswith(b"\x89PNG")
