"""DVC stage `evaluate`: test-set metrics, per-class table and confusion matrix, logged to the model's run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import mlflow

from stages import artifacts, cli, datasets, metrics, tracking, trained
from stages.params import EvaluateParams, flatten, load_params


def run(
    evaluate: EvaluateParams,
    model_dir: Path,
    test_path: Path,
    metrics_path: Path,
    per_class_path: Path,
    confusion_path: Path,
    figure_path: Path,
) -> dict:
    """Evaluate the trained model on the test split and attach the results to its MLflow run.

    Returns:
        The headline metrics written to `metrics_path`.
    """
    tracking.configure()  # a malformed or unreachable store fails here, before any heavy work
    classifier = trained.load_model(model_dir)
    run_id = trained.run_id(model_dir)
    test_set = artifacts.load_dataset(test_path)
    datasets.validate(test_set)
    probabilities = classifier.predict(test_set.images, batch_size=evaluate.batch_size, verbose=0)
    summary, per_class = metrics.classification_metrics(test_set.labels, probabilities, test_set.class_names)
    predictions = probabilities.argmax(axis=1)
    matrix = metrics.confusion_matrix(test_set.labels, predictions, len(test_set.class_names))
    figure = metrics.confusion_figure(matrix, test_set.class_names)

    with tracking.resume_run(run_id, source=trained.run_file(model_dir)):
        tracking.log_params(flatten(evaluate, prefix="evaluate."))
        mlflow.set_tag("data.test_digest", datasets.digest(test_set.images, test_set.labels))
        mlflow.log_metrics({f"test_{name}": float(value) for name, value in summary.items()})
        mlflow.log_metrics({f"test_f1.{row['class']}": row["f1"] for row in per_class})
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by the train stage")
    parser.add_argument("--test", type=Path, required=True, help="test split (.npz)")
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics to write (.json)")
    parser.add_argument("--per-class", type=Path, required=True, help="per-class metrics to write (.csv)")
    parser.add_argument("--confusion", type=Path, required=True, help="actual/predicted pairs to write (.csv)")
    parser.add_argument("--figure", type=Path, required=True, help="confusion-matrix figure to write (.png)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = run(params.evaluate, args.model_dir, args.test, args.metrics, args.per_class, args.confusion, args.figure)
    print(
        f"evaluate: test accuracy {summary['accuracy']:.4f}, loss {summary['loss']:.4f}, "
        f"macro F1 {summary['f1_macro']:.4f} on {summary['images']} images -> {args.metrics}"
    )


if __name__ == "__main__":
    sys.exit(cli.execute("evaluate", main))
