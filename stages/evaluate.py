"""DVC stage `evaluate`: test-set metrics, per-class table and confusion matrix, logged to the model's run."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from image_classification import backend, runner
from image_classification.config import load_params


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by the train stage")
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder (shards)")
    parser.add_argument("--membership", type=Path, required=True, help="split membership written by split (.npz)")
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics to write (.json)")
    parser.add_argument("--per-class", type=Path, required=True, help="per-class metrics to write (.csv)")
    parser.add_argument("--confusion", type=Path, required=True, help="actual/predicted pairs to write (.csv)")
    parser.add_argument("--figure", type=Path, required=True, help="confusion-matrix figure to write (.png)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    # The test metrics are the training backend's own predictions.
    backend.use(params.train.backend, params.train.intra_op_threads)
    from image_classification.modeling.evaluation import evaluate_model  # Keras, on the backend just chosen

    summary = evaluate_model(
        params.evaluate,
        args.model_dir,
        args.dataset,
        args.membership,
        args.metrics,
        args.per_class,
        args.confusion,
        args.figure,
        params.train,
    )
    print(
        f"evaluate: test accuracy {summary['accuracy']:.4f}, loss {summary['loss']:.4f}, "
        f"macro F1 {summary['f1_macro']:.4f} on {summary['images']} images -> {args.metrics}"
    )


if __name__ == "__main__":
    runner.run("evaluate", main)
