"""Two training processes against one: images per second, and what their communication costs.

Every run is the train stage itself (`python -m stages.train`, so the supervisor, `jax.distributed`
and Gloo are in it), on the JAX backend, with the default recipe on the embedded digits (3,500
training images), `--epochs` epochs:

- `one process`: one process with every core (`intra_op_threads: 0`), global batch `batch_size`.
- `two processes`: `distribution: multi_process`, two processes with the cores shared out
  (`launch.threads_per_process`), each feeding `batch_size / 2` images of every global batch.
- `one process, half batch, its share of the cores`: what each of the two processes computes
  alone, with no one to talk to. The two-process step minus this step is the communication
  overhead: the gradient all-reduce over Gloo and the waiting for the slower process.

Step time is the median of Keras' `ms/step` over the epochs after the first (which compiles).

    python -m benchmarks.distributed --output docs/distributed-benchmark.md   (`make bench-distributed`)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import pipeline
from image_classification import artifacts, launch

logger = logging.getLogger(__name__)

PARAMS = Path("params.yaml")
PROCESSES = 2
STEP = re.compile(r"^\d+/\d+ - \S+ - ([\d.]+)(ms|s)/step")


def run_train(root: Path, name: str, train: dict, epochs: int) -> dict:
    """Run the train stage on `root`'s prepared digits with `train` overrides; its step times and seconds."""
    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update({"backend": "jax", "epochs": epochs, **train})
    params_file = root / f"params-{name}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    workdir = root / name
    command = [
        sys.executable, "-m", "stages.train", "--params", str(params_file),
        "--dataset", str(root / "prepared"), "--membership", str(root / "membership.npz"),
        "--model-dir", str(workdir / "model"), "--history", str(workdir / "history.csv"),
        "--summary", str(workdir / "summary.json"), "--timing", str(workdir / "timing.json"),
        "--checkpoint-dir", str(workdir / "checkpoints"),
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, check=False,
        env=pipeline.environment(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}"),
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"{name}: the train stage failed:\n{result.stderr[-3000:]}")
    steps = []
    for line in result.stdout.splitlines():
        match = STEP.match(line)
        if match:
            steps.append(float(match[1]) * (1 if match[2] == "ms" else 1000))
    history = (workdir / "history.csv").read_text().splitlines()
    timing = artifacts.read_json(workdir / "timing.json")
    batch_size = params["train"]["batch_size"]
    step_ms = statistics.median(steps[1:])
    return {
        "name": name,
        "train": train,
        "step_ms": round(step_ms, 1),
        "images_per_second": round(batch_size / step_ms * 1000, 1),
        "train_seconds": timing["train_seconds"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "final_val_accuracy": float(history[-1].split(",")[4]),
        "param_count": artifacts.read_json(workdir / "summary.json")["param_count"],
    }


def prepare(root: Path) -> None:
    """The embedded digits, prepared and split as the pipeline does."""
    env = pipeline.environment()
    for command in (
        ["-m", "stages.prepare", "--params", str(PARAMS), "--output", str(root / "prepared"),
         "--statistics", str(root / "statistics.json")],
        ["-m", "stages.split", "--params", str(PARAMS), "--dataset", str(root / "prepared"),
         "--membership", str(root / "membership.npz"), "--report", str(root / "split.json")],
    ):  # fmt: skip
        subprocess.run([sys.executable, *command], capture_output=True, text=True, check=True, env=env)


def render(results: dict) -> str:
    one, two, half = (results["runs"][name] for name in ("one", "two", "half"))
    overhead = two["step_ms"] - half["step_ms"]
    rows = "\n".join(
        f"| {run['label']} | {run['step_ms']:.1f} | {run['images_per_second']:,.0f} | {run['train_seconds']:.1f} | "
        f"{run['final_val_accuracy']:.4f} |"
        for run in (one, two, half)
    )
    return f"""# Training across processes: two workers against one

Measured {results["date"]} on {results["machine"]} with `{results["command"]}`: Keras {results["keras"]} on JAX
{results["jax"]}, the default recipe on the embedded digits (3,500 training images), {results["epochs"]} epochs,
through the train stage (`python -m stages.train`). Step time: the median of Keras' `ms/step` over the epochs after
the first, which compiles. Images per second: the global batch of {results["batch_size"]} over the step time.

| run | ms per step | images/s | training s | final validation accuracy |
|---|---|---|---|---|
{rows}

- **Two processes against one: {two["images_per_second"] / one["images_per_second"]:.2f} times the images per second.**
- **Communication overhead: {overhead:.1f} ms of every {two["step_ms"]:.1f} ms step ({overhead / two["step_ms"]:.0%})**:
  the two-process step minus the step of one process computing its half of the batch alone on its share of the
  cores. It is every cross-process collective XLA puts in the step, over Gloo on TCP: the gradient all-reduce (at
  most {results["gradient_mib"]:.2f} MiB of float32: every parameter), and the batch-norm statistics, loss and
  metrics, which are reduced over the global batch. Each is a round trip between the processes, and each waits for
  the slower one. With a model this small ({one["param_count"]:,} parameters) a step computes for
  {half["step_ms"]:.0f} ms, so the latency of those round trips dominates, not their bytes.
- On one machine the processes share its cores, so two processes cannot beat one that already uses them all; the
  figure that carries over to a cluster is the overhead per step against the compute each machine adds. Training
  across processes pays when a step computes for much longer than its collectives take: larger models and images,
  or a device per process.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/distributed-benchmark.md"))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from benchmarks.scale import cpu_model

    params = yaml.safe_load(PARAMS.read_text())
    batch_size = params["train"]["batch_size"]
    threads = launch.threads_per_process(PROCESSES)
    runs = {
        "one": ("one process, every core", {}),
        "two": (f"{PROCESSES} processes, {threads} thread(s) each",
                {"distribution": "multi_process", "num_processes": PROCESSES}),
        "half": (f"one process, batch {batch_size // PROCESSES}, {threads} thread(s)",
                 {"batch_size": batch_size // PROCESSES, "intra_op_threads": threads}),
    }  # fmt: skip
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": cpu_model(),
        "command": "make bench-distributed" if not argv else f"python -m benchmarks.distributed {' '.join(argv)}",
        "keras": importlib.metadata.version("keras"),
        "jax": importlib.metadata.version("jax"),
        "epochs": args.epochs,
        "batch_size": batch_size,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as folder:
        root = Path(folder)
        prepare(root)
        for key, (label, train) in runs.items():
            logger.info("distributed: %s", label)
            results["runs"][key] = {"label": label, **run_train(root, key, train, args.epochs)}
    results["gradient_mib"] = results["runs"]["one"]["param_count"] * 4 / 2**20
    pipeline.write_page(args.output, results, render(results))


if __name__ == "__main__":
    main()
