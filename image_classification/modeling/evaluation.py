"""The evaluate stage's work: test-set metrics, per-class table and confusion matrix, logged to the model's run."""

from __future__ import annotations

from pathlib import Path

import mlflow

from image_classification import artifacts
from image_classification.config import EvaluateParams, TrainParams, flatten
from image_classification.data import dataset as dataset_lib
from image_classification.data import shards, split
from image_classification.modeling import input_pipeline, metrics, runtime, trained_model
from image_classification.tracking import runs, store


def evaluate_model(
    evaluate: EvaluateParams,
    model_dir: Path,
    dataset_dir: Path,
    membership_path: Path,
    metrics_path: Path,
    per_class_path: Path,
    confusion_path: Path,
    figure_path: Path,
    train: TrainParams | None = None,
) -> dict:
    """Evaluate the trained model on the test split and attach the results to its MLflow run.

    Args:
        evaluate: the `evaluate` params.
        model_dir: the train stage's folder (the Keras model and its MLflow run id).
        dataset_dir: the prepared dataset (`shards`), whose test rows are streamed through the model.
        membership_path: the split's membership (`split.write_membership`), naming the test rows.
        metrics_path: headline metrics to write (.json): accuracy, loss (mean cross-entropy), macro
            precision, recall and F1, and the image count. Export's quality gate reads it.
        per_class_path: precision, recall, F1 and support per class to write (.csv).
        confusion_path: one actual/predicted class-name pair per test image to write (.csv).
        figure_path: the confusion matrix to draw (.png).
        train: the train params, whose thread counts the backend takes; None keeps the backend's defaults.

    Returns:
        The headline metrics written to `metrics_path`.

    Raises:
        ValueError: an unusable tracking store, a missing model or run, or an unreadable or damaged test split.
    """
    store.configure()  # a malformed or unreachable store fails here, before any heavy work
    if train is not None:
        runtime.configure_runtime(train)
    model = trained_model.load_model(model_dir)
    run_id = trained_model.run_id(model_dir)
    with shards.open_dataset(dataset_dir, verify=True) as data:
        rows = split.read_membership(membership_path, data, ("test",))["test"]
        labels, class_names = data.labels[rows], data.class_names
        dataset_lib.validate_labels(labels, class_names, f"{dataset_dir} (test split)")
        batches = input_pipeline.make_dataset(data, rows, len(class_names), evaluate.batch_size)
        probabilities = model.predict(batches.map(lambda images, _: images), verbose=0)
        test_digest = split.split_digest(data, rows)
    summary, per_class = metrics.classification_metrics(labels, probabilities, class_names)
    predictions = probabilities.argmax(axis=1)
    matrix = metrics.confusion_matrix(labels, predictions, len(class_names))
    figure = metrics.confusion_figure(matrix, class_names)

    with runs.resume_run(run_id, source=trained_model.run_file(model_dir)):
        runs.log_params(flatten(evaluate, prefix="evaluate."))
        mlflow.set_tag("data.test_digest", test_digest)
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
                {"actual": class_names[actual], "predicted": class_names[predicted]}
                for actual, predicted in zip(labels, predictions, strict=True)
            ],
            ("actual", "predicted"),
        )
        artifacts.write_csv(per_class_path, per_class, ("class", "precision", "recall", "f1", "support"))
        artifacts.write_json(metrics_path, {name: _rounded(value) for name, value in summary.items()})
    return summary


def _rounded(value: float | int) -> float | int:
    return value if isinstance(value, int) else round(value, 6)
