"""Two levers of Keras' `compile` on this machine: the dtype policy and `steps_per_execution`.

- Dtype policy, `float32` against `mixed_bfloat16`: on a CPU whose cores have AVX-512 BF16 (the
  `avx512_bf16` flag of /proc/cpuinfo) or AMX, oneDNN runs bfloat16 convolutions and matrix products
  natively; elsewhere they are emulated.
- `steps_per_execution`: training steps run per call of the compiled train function, which saves
  Python's per-step overhead when steps are short.

This trains the default recipe on TensorFlow (Keras' default backend, as in `make bench`) through
the train stage's own loop (`training.fit`, streaming from shards, op determinism on, no
validation) under each variant of `VARIANTS`, alternating them `--repeats` times, on the embedded
digits and on the distorted digits of `benchmarks.hard_digits`. Per run: training images per second
over epochs 2 onwards (`benchmarks.training.EpochTimer`) and the test accuracy after the last epoch.
It prints a Markdown table.

    python -m benchmarks.compile_options [--images 60000] [--epochs 6] [--digits-epochs 12] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import keras

from benchmarks import hard_digits, pipeline
from benchmarks import training as bench_training
from image_classification.config import TrainParams, load_params
from image_classification.data import dataset as dataset_lib
from image_classification.data import sources, split
from image_classification.data.dataset import Dataset
from image_classification.modeling import architecture, input_pipeline, runtime, training

logger = logging.getLogger("benchmarks")

# (dtype policy, steps_per_execution); the first is what the train stage runs.
VARIANTS = (("float32", 1), ("mixed_bfloat16", 1), ("float32", 4), ("float32", 16))


def train_once(
    settings: TrainParams, policy: str, steps_per_execution: int, train_set: Dataset, test_set: Dataset
) -> dict:
    """Train the recipe `settings` under the Keras dtype policy `policy`, `steps_per_execution` steps a call.

    Returns:
        `images_per_second` (epochs 2 onwards), the final test `accuracy`, the dtype the
        convolutions computed in (`conv_dtype`) and the compiled model's `steps_per_execution`.
    """
    runtime.configure_runtime(settings)
    keras.mixed_precision.set_global_policy(policy)  # after configure_runtime, which sets float32 on CPUs
    runtime.seed_everything(settings.seed)
    timer = bench_training.EpochTimer()
    accuracy = bench_training.TestAccuracy(test_set, timer)
    with tempfile.TemporaryDirectory(prefix="bench-dtype-") as folder:
        data, (rows,) = bench_training.write_shards(Path(folder), train_set)
        model = architecture.build_model(data.image_shape, len(data.class_names), settings)
        steps = input_pipeline.steps_per_epoch(len(rows), settings.batch_size)
        trainer = architecture.compile_model(model, settings, steps, steps_per_execution)
        with data:
            training.fit(trainer, data, rows, None, settings, [timer, accuracy], verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    return {
        "images_per_second": len(train_set) * (len(timer.seconds) - 1) / sum(timer.seconds[1:]),
        "accuracy": accuracy.rows[-1]["accuracy"],
        "conv_dtype": next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)).compute_dtype,
        "steps_per_execution": trainer.steps_per_execution,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_options", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000, help="distorted digits of the larger set")
    parser.add_argument("--epochs", type=int, default=6, help="epochs on the larger set (the digits get train.epochs)")
    parser.add_argument("--digits-epochs", type=int, help="epochs on the embedded digits (default: train.epochs)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each policy on each set, alternated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    params = load_params(pipeline.PROJECT_ROOT / "params.yaml")
    digits = sources.load_embedded_digits()
    indices = split.partition(
        digits.labels, dataset_lib.content_hashes(digits.images), digits.class_names, params.split
    )
    hard, _ = hard_digits.build(args.images, params.split)
    sets = {
        "embedded digits": (
            params.train.model_copy(update={"epochs": args.digits_epochs or params.train.epochs}),
            digits.subset(indices.train),
            digits.subset(indices.test),
        ),
        f"{args.images:,} distorted digits": (
            params.train.model_copy(update={"epochs": args.epochs}),
            hard["train"],
            hard["test"],
        ),
    }
    cpu_flags = bench_training.cpuinfo().get("flags", "").split()
    flags = sorted(flag for flag in cpu_flags if "bf16" in flag or flag.startswith("amx"))
    lines = [
        f"CPU flags for bfloat16: {', '.join(flags) or 'none'}",
        "",
        "| data | policy | steps_per_execution | convolutions in | images/s (runs) | final test accuracy (runs) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (settings, train_set, test_set) in sets.items():
        runs: dict[tuple[str, int], list[dict]] = {variant: [] for variant in VARIANTS}
        for repeat in range(args.repeats):
            for policy, steps in VARIANTS:
                logger.info("%s, %s, %d step(s) a call, run %d of %d", name, policy, steps, repeat + 1, args.repeats)
                runs[policy, steps].append(train_once(settings, policy, steps, train_set, test_set))
        for (policy, _steps), measured in runs.items():
            speeds = [run["images_per_second"] for run in measured]
            accuracies = [run["accuracy"] for run in measured]
            lines.append(
                f"| {name} ({settings.epochs} epochs) | `{policy}` | {measured[0]['steps_per_execution']} | "
                f"{measured[0]['conv_dtype']} | "
                f"{statistics.median(speeds):,.0f} "
                f"({', '.join(f'{speed:,.0f}' for speed in speeds)}) | {statistics.median(accuracies):.4f} "
                f"({', '.join(f'{accuracy:.4f}' for accuracy in accuracies)}) |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
