"""DVC stage `train`: fit the CNN on the train split and record the run in MLflow.

Training saves a checkpoint after every epoch outside DVC's outputs; when a run is killed, the next
`dvc repro` continues from the last completed epoch, in the same MLflow run, with the same result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from image_classification import backend, launch, runner
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
    parser.add_argument(
        "--process-index", type=int, help="train.distribution multi_process: this process' index, 0 for the chief"
    )
    parser.add_argument(
        "--coordinator-address", help="multi_process: process 0's HOST:PORT (default: train.coordinator_address)"
    )
    parser.add_argument("--intra-op-threads", type=int, help="override train.intra_op_threads for this process")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    settings = params.train
    if args.process_index is None:
        command = [sys.executable, "-m", "stages.train", *(sys.argv[1:] if argv is None else argv)]
        if launch.supervise(settings, command, args.checkpoint_dir / "processes"):
            return  # every process of a multi-process run ran on this machine, under this one
    threads = settings.intra_op_threads if args.intra_op_threads is None else args.intra_op_threads
    backend.use(settings.backend, threads)
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
        args.process_index or 0,  # without a supervisor or an index, the chief
        args.coordinator_address or settings.coordinator_address,
    )
    if not summary:
        return  # a process other than the chief: the chief reports
    print(
        f"train: {summary['epochs_run']} epochs, best epoch {summary['best_epoch']} "
        f"(validation accuracy {summary['best_val_accuracy']:.4f}) -> {args.model_dir}"
    )


if __name__ == "__main__":
    runner.run("train", main)
