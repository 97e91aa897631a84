"""DVC stage `export`: write the TF Serving SavedModel, prove it matches the Keras model, register and gate it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from image_classification import backend, runner
from image_classification.config import load_params
from image_classification.serving import parity


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.export", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by the train stage")
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder (shards)")
    parser.add_argument("--membership", type=Path, required=True, help="split membership written by split (.npz)")
    parser.add_argument("--metrics", type=Path, required=True, help="test metrics written by evaluate (.json)")
    parser.add_argument("--data-statistics", type=Path, required=True, help="statistics written by prepare (.json)")
    parser.add_argument("--output", type=Path, required=True, help="SavedModel version folder to write")
    parser.add_argument("--card", type=Path, required=True, help="model card to write (.json)")
    parser.add_argument("--report", type=Path, required=True, help="export report to write (.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    # The parity check's fresh process starts first, so that it loads its backend while this one loads TensorFlow.
    with parity.FreshProcessCheck(
        params.train.backend, params.train.intra_op_threads, args.model_dir, args.dataset, args.membership
    ) as fresh_process:
        # A TF Serving SavedModel is written by Keras on TensorFlow, whatever backend trained the model.
        backend.use("tensorflow")
        from image_classification.serving.export import export_model  # Keras, on TensorFlow

        report = export_model(
            params,
            args.model_dir,
            args.dataset,
            args.membership,
            args.metrics,
            args.data_statistics,
            args.output,
            args.card,
            args.report,
            fresh_process,
        )
    print(
        f"export: SavedModel -> {args.output}; reloaded in a fresh process, {report['images_checked']} test "
        f"images agree with {params.train.backend} (max probability difference {report['max_abs_difference']:.2g})"
    )
    verdict = "blessed, now champion" if report["blessed"] else "not blessed, champion unchanged"
    print(
        f"export: registered {report['registered_model']} version {report['registered_version']}: "
        f"{verdict}: {report['blessed_reason']}"
    )


if __name__ == "__main__":
    runner.run("export", main)
