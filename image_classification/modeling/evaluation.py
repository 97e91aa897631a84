"""The evaluate stage's work: test-set metrics, per-class table and confusion matrix, logged to the model's run."""

from __future__ import annotations

from pathlib import Path

import mlflow

from image_classification import artifacts, memory
from image_classification.config import EvaluateParams, flatten
from image_classification.data import dataset as dataset_lib
from image_classification.modeling import metrics, trained_model
from image_classification.tracking import runs, store


def evaluate_model(
    evaluate: EvaluateParams,
    model_dir: Path,
    test_path: Path,
    metrics_path: Path,
    per_class_path: Path,
    confusion_path: Path,
    figure_path: Path,
) -> dict:
    """Evaluate the trained model on the test split and attach the results to its MLflow run.

    Args:
        evaluate: the `evaluate` params.
        model_dir: the train stage's folder (the Keras model and its MLflow run id).
        test_path: the test split (.npz).
        metrics_path: headline metrics to write (.json): accuracy, loss (mean cross-entropy), macro
            precision, recall and F1, and the image count. Export's quality gate reads it.
        per_class_path: precision, recall, F1 and support per class to write (.csv).
        confusion_path: one actual/predicted class-name pair per test image to write (.csv).
        figure_path: the confusion matrix to draw (.png).

    Returns:
        The headline metrics written to `metrics_path`.

    Raises:
        ValueError: an unusable tracking store, a missing model or run, or an unreadable test split.
    """
    store.configure()  # a malformed or unreachable store fails here, before any heavy work
    model = trained_model.load_model(model_dir)
    run_id = trained_model.run_id(model_dir)
    memory.require(2 * memory.files_bytes(test_path), f"evaluating on {test_path}", memory.DATA_SIZE_FIX)
    test_set = artifacts.load_dataset(test_path)
    dataset_lib.validate(test_set, str(test_path))
    probabilities = model.predict(test_set.images, batch_size=evaluate.batch_size, verbose=0)
    summary, per_class = metrics.classification_metrics(test_set.labels, probabilities, test_set.class_names)
    predictions = probabilities.argmax(axis=1)
    matrix = metrics.confusion_matrix(test_set.labels, predictions, len(test_set.class_names))
    figure = metrics.confusion_figure(matrix, test_set.class_names)

    with runs.resume_run(run_id, source=trained_model.run_file(model_dir)):
        runs.log_params(flatten(evaluate, prefix="evaluate."))
        mlflow.set_tag("data.test_digest", dataset_lib.digest(test_set.images, test_set.labels))
        mlflow.log_metrics({f"test_{name}": float(value) for name, value in summary.items()})
        keys = runs.metric_keys("test_f1.", [row["class"] for row in per_class])
        mlflow.log_metrics({key: row["f1"] for key, row in zip(keys, per_class, strict=True)})
        mlflow.log_figure(figure, "evaluation/confusion_matrix.png")
        mlflow.log_dict(per_class, "evaluation/per_class.json")
        with artifacts.atomic_path(figure_path) as staged:
            figure.savefig(staged, format="png")
        artifacts.write_csv(
            confusion_path,
            [
                {"actual": test_set.class_names[actual], "predicted": test_set.class_names[predicted]}
                for actual, predicted in zip(test_set.labels, predictions, strict=True)
            ],
            ("actual", "predicted"),
        )
        artifacts.write_csv(per_class_path, per_class, ("class", "precision", "recall", "f1", "support"))
        artifacts.write_json(metrics_path, {name: _rounded(value) for name, value in summary.items()})
    return summary


def _rounded(value: float | int) -> float | int:
    return value if isinstance(value, int) else round(value, 6)
