"""The article's comparison, measured: the default recipe trained on TensorFlow, JAX and PyTorch side by side.

Each backend trains in its own fresh process (Keras reads its backend once, at import), on the same
embedded digits, split, params and seed, streaming from shards through the train stage's own loop
(`training.fit`). Per backend: process start-up (from the process's start until the compiled model
is ready: imports, backend start, model build), training images per second, the seconds of training
until the test accuracy first reaches the quality gate's floor, the final test accuracy, and the
peak resident memory (VmHWM). A second, shorter pass times the thread settings each backend could
use, which is how the defaults in params.yaml were chosen.

    python -m benchmarks.backends --output docs/backend-comparison.md   (`make bench-backends`)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import pipeline
from image_classification import backend
from image_classification.config import BACKENDS, load_params

logger = logging.getLogger(__name__)

PARAMS = Path("params.yaml")
# Thread settings timed for each backend: (intra_op_threads, inter_op_threads); 0 is the backend's choice.
THREAD_SETTINGS = ((0, 0), (1, 1), (2, 1))
THREAD_EPOCHS = 3


def measure(name: str, epochs: int, intra_op_threads: int, inter_op_threads: int, max_images: int | None) -> dict:
    """Train the default recipe on backend `name` in this process; call before anything imports Keras.

    Returns:
        start-up seconds, images per second (median epoch after the first), per-epoch test accuracy
        with cumulative training seconds, peak resident KiB, and the thread counts the backend used.
    """
    from benchmarks import profile

    backend.use(name, intra_op_threads)
    import numpy as np

    from benchmarks import training as bench_training
    from image_classification.data import dataset as dataset_lib
    from image_classification.data import sources, split
    from image_classification.modeling import training

    params = load_params(PARAMS)
    settings = params.train.model_copy(
        update={
            "backend": name,
            "epochs": epochs,
            "intra_op_threads": intra_op_threads,
            "inter_op_threads": inter_op_threads,
        }
    )
    data_started = time.perf_counter()
    digits = sources.load_embedded_digits()
    if max_images:
        digits = digits.subset(np.arange(max_images))
    indices = split.partition(
        digits.labels, dataset_lib.content_hashes(digits.images), digits.class_names, params.split
    )
    train_set, validation_set, test_set = (digits.subset(getattr(indices, name)) for name in split.SPLITS)
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as folder:
        data, (train_rows, validation_rows) = bench_training.write_shards(Path(folder), train_set, validation_set)
        data_seconds = time.perf_counter() - data_started
        with data:
            _, trainer = training.build_compiled_model(
                data.image_shape, len(data.class_names), len(train_rows), settings
            )
            # The data set-up is the benchmark's own, not a stage's: it is left out of the start-up.
            startup = profile.seconds_since_start() - data_seconds
            timer = bench_training.EpochTimer()
            test_accuracy = bench_training.TestAccuracy(test_set, timer)
            training.fit(trainer, data, train_rows, validation_rows, settings, [timer, test_accuracy], verbose=0)
    seconds = timer.seconds
    return {
        "backend": name,
        "version": backend.version(name),
        "epochs": epochs,
        "startup_seconds": round(startup, 2),
        "epoch_seconds": [round(value, 3) for value in seconds],
        "images_per_second": round(len(train_set) / statistics.median(seconds[1:]), 1) if len(seconds) > 1 else None,
        "test_accuracy": test_accuracy.rows,
        "peak_mib": round(profile.own_peak_kib() / 1024, 1),
        "threads": {"intra_op": intra_op_threads, "inter_op": inter_op_threads, "used": _threads_used(name)},
        "train_images": len(train_set),
        "test_images": len(test_set),
        "seed": settings.seed,
        "first_epoch_images_per_second": round(len(train_set) / seconds[0], 1) if seconds else None,
    }


def _threads_used(name: str) -> str:
    if name == "tensorflow":
        import tensorflow as tf

        intra, inter = (
            tf.config.threading.get_intra_op_parallelism_threads(),
            (tf.config.threading.get_inter_op_parallelism_threads()),
        )
        return f"intra {intra or 'auto'}, inter {inter or 'auto'}"
    if name == "torch":
        import torch

        return f"intra {torch.get_num_threads()}, inter {torch.get_num_interop_threads()}"
    return os.environ.get("XLA_FLAGS") or "XLA's default pool"


def in_fresh_process(name: str, epochs: int, intra: int, inter: int, max_images: int | None) -> dict:
    """`measure` in a new interpreter, so each backend starts as a stage would."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [
            sys.executable, "-m", "benchmarks.backends", "--worker", name, "--epochs", str(epochs),
            "--intra-op-threads", str(intra), "--inter-op-threads", str(inter), "--result", result.name,
        ] + (["--max-images", str(max_images)] if max_images else [])  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
        return json.loads(Path(result.name).read_text())


def seconds_to(rows: list[dict], target: float) -> float | None:
    """Cumulative training seconds at the first epoch whose test accuracy reaches `target`, or None."""
    return next((row["seconds"] for row in rows if row["accuracy"] >= target), None)


def render(results: dict) -> str:
    target = results["target_accuracy"]
    lines = [
        "# TensorFlow, JAX and PyTorch: the default recipe on each backend",
        "",
        f"Measured {results['date']} on {results['machine']} with `{results['command']}`; "
        f"Keras {results['keras']}. Same data (the embedded digits: {results['runs'][0]['train_images']} "
        f"training and {results['runs'][0]['test_images']} test images), split, params and seed "
        f"({results['runs'][0]['seed']}); {results['epochs']} epochs; each backend in a fresh process, "
        "streaming from shards through the train stage's loop. Figures from one run; epoch times vary by "
        "about 10% between runs on this machine.",
        "",
        f"| backend | version | start-up s | images/s | first epoch images/s | s to test accuracy {target} "
        "| final test accuracy | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        reached = seconds_to(run["test_accuracy"], target)
        lines.append(
            f"| {run['backend']} | {run['version']} | {run['startup_seconds']:.1f} | {run['images_per_second']:,.0f} "
            f"| {run['first_epoch_images_per_second']:,.0f} | {'not reached' if reached is None else f'{reached:.1f}'} "
            f"| {run['test_accuracy'][-1]['accuracy']:.4f} | {run['peak_mib']:,.0f} |"
        )
    lines += [
        "",
        "Start-up runs from the process's start until the compiled model is ready (imports, the backend's",
        "own start, building and compiling the model; TensorFlow is imported on every backend, since the",
        "input pipeline is tf.data). The first epoch also",
        "traces or compiles the training step, so images per second is the median of the other epochs.",
        "",
        "## Test accuracy after each epoch (cumulative training seconds)",
        "",
        "| epoch | " + " | ".join(run["backend"] for run in results["runs"]) + " |",
        "|---|" + "---|" * len(results["runs"]),
    ]
    for index in range(results["epochs"]):
        cells = []
        for run in results["runs"]:
            rows = run["test_accuracy"]
            cells.append(f"{rows[index]['accuracy']:.4f} ({rows[index]['seconds']:.1f} s)" if index < len(rows) else "")
        lines.append(f"| {index + 1} | " + " | ".join(cells) + " |")
    if not results["threads"]:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"## Threads ({results['threads'][0]['epochs']} epochs each; images per second after the first epoch)",
        "",
        "| backend | intra_op_threads | inter_op_threads | threads used | images/s |",
        "|---|---|---|---|---|",
    ]
    for run in results["threads"]:
        threads = run["threads"]
        lines.append(
            f"| {run['backend']} | {threads['intra_op']} | {threads['inter_op']} | {threads['used']} "
            f"| {run['images_per_second']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/backend-comparison.md"))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--epochs", type=int, help="training epochs (default: train.epochs of params.yaml)")
    parser.add_argument("--max-images", type=int, help="use only this many of the digits (to check the benchmark)")
    parser.add_argument("--quick", action="store_true", help="2 epochs on 600 images, no thread pass")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--intra-op-threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inter-op-threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = measure(args.worker, args.epochs, args.intra_op_threads, args.inter_op_threads, args.max_images)
        args.result.write_text(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from benchmarks.scale import cpu_model

    params = load_params(PARAMS)
    epochs = args.epochs or (2 if args.quick else params.train.epochs)
    max_images = args.max_images or (600 if args.quick else None)
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_model(),
        "command": "make bench-backends" if not argv else f"python -m benchmarks.backends {' '.join(argv)}",
        "keras": importlib.metadata.version("keras"),
        "epochs": epochs,
        "target_accuracy": params.registry.min_test_accuracy,
        "runs": [],
        "threads": [],
    }
    defaults = (params.train.intra_op_threads, params.train.inter_op_threads)
    for name in args.backends:
        logger.info("backends: %s, %d epochs", name, epochs)
        results["runs"].append(in_fresh_process(name, epochs, *defaults, max_images))
    for name in args.backends if not args.quick else []:
        for intra, inter in THREAD_SETTINGS:
            logger.info("backends: %s threads intra %d inter %d", name, intra, inter)
            epochs_run = min(epochs, THREAD_EPOCHS)
            results["threads"].append(in_fresh_process(name, epochs_run, intra, inter, max_images))
    pipeline.write_page(args.output, results, render(results))


if __name__ == "__main__":
    main()
