from __future__ import annotations

import io

import numpy as np
import pytest

from image_classification.modeling import metrics

NAMES = ("cat", "dog", "owl")


def one_hot(predictions: list[int], confidence: float = 0.9) -> np.ndarray:
    probabilities = np.full((len(predictions), 3), (1 - confidence) / 2)
    probabilities[np.arange(len(predictions)), predictions] = confidence
    return probabilities


def test_perfect_predictions() -> None:
    labels = np.array([0, 1, 2, 2])
    summary, per_class = metrics.classification_metrics(labels, one_hot([0, 1, 2, 2]), NAMES)
    assert summary["accuracy"] == 1.0
    assert summary["f1_macro"] == 1.0
    assert summary["loss"] == pytest.approx(-np.log(0.9))
    assert [row["support"] for row in per_class] == [1, 1, 2]


def test_known_mistakes() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = [0, 1, 1, 1, 2, 0]
    summary, per_class = metrics.classification_metrics(labels, one_hot(predictions), NAMES)
    assert summary["accuracy"] == pytest.approx(4 / 6)
    by_class = {row["class"]: row for row in per_class}
    assert by_class["dog"]["precision"] == pytest.approx(2 / 3)
    assert by_class["dog"]["recall"] == 1.0
    assert by_class["owl"]["precision"] == 1.0
    assert by_class["owl"]["recall"] == 0.5
    assert summary["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    matrix = metrics.confusion_matrix(labels, np.array(predictions), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_absent_class_gets_zero_not_an_error() -> None:
    summary, per_class = metrics.classification_metrics(np.array([0, 0]), one_hot([0, 1]), NAMES)
    assert per_class[2]["support"] == 0
    assert per_class[2]["f1"] == 0.0
    assert summary["images"] == 2


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"expected probabilities of shape \(2, 3\), got \(2, 2\)"):
        metrics.classification_metrics(np.array([0, 1]), np.ones((2, 2)) / 2, NAMES)


def test_confusion_figure_renders() -> None:
    figure = metrics.confusion_figure(np.array([[3, 1, 0], [0, 4, 0], [1, 0, 2]]), NAMES)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"3", "4", "2"} <= texts
