"""Test-set metrics and the confusion-matrix figure, from labels and predicted probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk_metrics


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> tuple[dict[str, float], list[dict]]:
    """Headline metrics and a per-class table.

    Returns:
        `(summary, per_class)`: summary holds accuracy, loss (mean cross-entropy), macro
        precision/recall/F1 and the image count; per_class has one row per class with precision,
        recall, F1 and support.

    Raises:
        ValueError: when the shapes of labels and probabilities disagree.
    """
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), len(class_names)):
        raise ValueError(
            f"expected probabilities of shape ({len(labels)}, {len(class_names)}), got {probabilities.shape}"
        )
    classes = np.arange(len(class_names))
    predictions = probabilities.argmax(axis=1)
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    summary = {
        "accuracy": float(sk_metrics.accuracy_score(labels, predictions)),
        "loss": float(sk_metrics.log_loss(labels, probabilities, labels=classes)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "images": len(labels),
    }
    per_class = [
        {
            "class": name,
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
        }
        for index, name in enumerate(class_names)
    ]
    return summary, per_class


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    return sk_metrics.confusion_matrix(labels, predictions, labels=np.arange(num_classes))


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "Test confusion matrix"):
    """Render a confusion matrix (counts, with row-normalized colour) as a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    size = max(5.0, 0.55 * len(class_names) + 2)
    figure = Figure(figsize=(size, size), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    display = sk_metrics.ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=axes, cmap="Blues", colorbar=False, values_format="d")
    axes.set_title(title)
    return figure
