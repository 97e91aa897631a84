"""DVC stage `train`: fit the CNN on the train split and record the run in MLflow.

Training saves a checkpoint after every epoch outside DVC's outputs; when a run is killed, the next
`dvc repro` continues from the last completed epoch, in the same MLflow run, with the same result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from image_classification import backend, runner
from image_classification.config import load_params


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder (shards)")
    parser.add_argument("--membership", type=Path, required=True, help="split membership written by split (.npz)")
    parser.add_argument("--model-dir", type=Path, required=True, help="folder to write the model into")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch history to write (.csv)")
    parser.add_argument("--summary", type=Path, required=True, help="training summary to write (.json)")
    parser.add_argument("--timing", type=Path, required=True, help="training time to write (.json)")
    parser.add_argument(
        "--checkpoint-dir", type=Path, required=True, help="folder for the per-epoch checkpoint (not a DVC output)"
    )
    parser.add_argument(
        "--data-statistics", type=Path, help="the prepare stage's statistics, whose data version the run records"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    backend.use(params.train.backend, params.train.intra_op_threads)
    from image_classification.modeling.training import train_model  # Keras, on the backend just chosen

    summary = train_model(
        params,
        args.dataset,
        args.membership,
        args.model_dir,
        args.history,
        args.summary,
        args.timing,
        args.checkpoint_dir,
        args.data_statistics,
    )
    print(
        f"train: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
        f"(validation accuracy {summary['best_val_accuracy']:.4f}) -> {args.model_dir}"
    )


if __name__ == "__main__":
    sys.exit(runner.execute("train", main))
