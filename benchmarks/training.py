"""Training figures: throughput against plain `model.fit`, time to accuracy against the keras.io recipe,
training FLOPs per image and this machine's peak.

Everything here trains in this process on arrays already in memory; `benchmarks.pipeline` times
whole `dvc repro` runs.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from keras import layers

from image_classification.config import TrainParams
from image_classification.data import dataset as dataset_lib
from image_classification.data import shards
from image_classification.data.dataset import Dataset
from image_classification.modeling import architecture, checkpoints, input_pipeline, runtime, training

logger = logging.getLogger(__name__)

REFERENCE_RECIPE = "keras.io Simple MNIST convnet: conv 32, pool, conv 64, pool, dropout 0.5, Adam 1e-3, batch 128"
REFERENCE_BATCH_SIZE = 128
REFERENCE_EPOCHS = 15


class EpochTimer(keras.callbacks.Callback):
    """Record each epoch's wall seconds, from its first batch to the end of its validation.

    Put it first in the callback list so that later callbacks' `on_epoch_end` work is not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._started)


class TestAccuracy(keras.callbacks.Callback):
    """Evaluate on the test images after every epoch; the timer before it keeps this out of the seconds."""

    def __init__(self, test_set: Dataset, timer: EpochTimer) -> None:
        super().__init__()
        self.test_set = test_set
        self.timer = timer
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probabilities = self.model.predict(self.test_set.images, batch_size=512, verbose=0)
        accuracy = float(np.mean(np.argmax(probabilities, axis=1) == self.test_set.labels))
        self.rows.append({"epoch": epoch + 1, "seconds": round(sum(self.timer.seconds), 3), "accuracy": accuracy})


def reference_model(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The keras.io "Simple MNIST convnet", with the rescaling inside the model like ours."""
    inputs = keras.Input(shape=input_shape, dtype="uint8")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, kernel_size=3, activation="relu")(x)
    x = layers.MaxPooling2D(pool_size=2)(x)
    x = layers.Conv2D(64, kernel_size=3, activation="relu")(x)
    x = layers.MaxPooling2D(pool_size=2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    reference = keras.Model(inputs, outputs, name="keras_io_mnist_convnet")
    reference.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return reference


@dataclass(frozen=True)
class Throughput:
    """Images per second after the first epoch, per repeat, for each way of training."""

    pipeline: list[float]
    plain: list[float]
    plain_same_compile: list[float] | None
    epochs: int
    images: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.pipeline) / statistics.median(self.plain)


def throughput(settings: TrainParams, train_set: Dataset, validation_set: Dataset, repeats: int) -> Throughput:
    """Alternate the train stage's loop and plain `model.fit` on the same model and batch size.

    The stage's loop runs with its own callbacks (MLflow logging into a throwaway store, the per-epoch
    checkpoint into a temporary folder) and TensorFlow's op determinism. Plain `fit` gets the NumPy
    arrays, Keras's default compile and no op determinism, as it is usually written; when the params
    turn XLA on, a third variant compiles plain `fit` the same way.
    """
    if settings.epochs < 2:
        raise ValueError("the throughput benchmark needs at least 2 epochs: the first one is excluded")
    pipeline, plain, plain_same = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as folder:
        mlflow.set_tracking_uri(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        for repeat in range(repeats):
            logger.info("throughput repeat %d of %d", repeat + 1, repeats)
            pipeline.append(_pipeline_images_per_second(settings, train_set, validation_set, Path(folder)))
            plain.append(_plain_images_per_second(settings, train_set, validation_set, jit_compile=False))
            if settings.jit_compile:
                plain_same.append(_plain_images_per_second(settings, train_set, validation_set, jit_compile=True))
        mlflow.set_tracking_uri(None)
    return Throughput(pipeline, plain, plain_same or None, settings.epochs, len(train_set))


def _images_per_second(timer: EpochTimer, images: int) -> float:
    return images * (len(timer.seconds) - 1) / sum(timer.seconds[1:])


def write_shards(folder: Path, *parts: Dataset) -> tuple[shards.ShardedDataset, list[np.ndarray]]:
    """Write `parts` one after another as a prepared dataset in `folder`, as the prepare stage does.

    Returns:
        The opened dataset, and the rows of each part in it.
    """
    with shards.ShardWriter(folder, parts[0].images.shape[1:], parts[0].class_names) as writer:
        for part in parts:
            writer.add(part.images, part.labels, dataset_lib.content_hashes(part.images))
    ends = np.cumsum([0, *(len(part) for part in parts)])
    return shards.open_dataset(folder), [np.arange(start, end) for start, end in itertools.pairwise(ends)]


def _pipeline_images_per_second(
    settings: TrainParams, train_set: Dataset, validation_set: Dataset, folder: Path
) -> float:
    """The train stage's loop, streaming its batches from shards as `dvc repro` does."""
    data, (train_rows, validation_rows) = write_shards(folder / "prepared", train_set, validation_set)
    _, trainer = training.build_compiled_model(data.image_shape, len(data.class_names), len(train_rows), settings)
    checkpoint_path = folder / "checkpoint.npz"
    timer = EpochTimer()
    with data, mlflow.start_run() as run:
        checkpoint = checkpoints.Checkpoint(key="benchmark", run_id=run.info.run_id)
        callbacks = [timer, *training.training_callbacks(settings, checkpoint_path, checkpoint)]
        training.fit(trainer, data, train_rows, validation_rows, settings, callbacks, verbose=0)
    return _images_per_second(timer, len(train_set))


def _plain_images_per_second(
    settings: TrainParams, train_set: Dataset, validation_set: Dataset, jit_compile: bool
) -> float:
    runtime.configure_runtime(settings)
    # Plain Keras as it is usually written: seeded, without TensorFlow's op determinism.
    runtime.seed_everything(settings.seed, deterministic_ops=False)
    model = architecture.build_model(train_set.images.shape[1:], len(train_set.class_names), settings)
    plain_settings = settings.model_copy(update={"jit_compile": jit_compile})
    model = architecture.compile_model(
        model, plain_settings, input_pipeline.steps_per_epoch(len(train_set), settings.batch_size)
    )
    if not jit_compile:
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(
        train_set.images,
        train_set.labels,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        validation_data=(validation_set.images, validation_set.labels),
        callbacks=[timer],
        verbose=0,
    )
    return _images_per_second(timer, len(train_set))


@dataclass(frozen=True)
class TimeToAccuracy:
    """Test accuracy after every epoch with the cumulative training seconds, for both recipes."""

    default: list[dict[str, float]]
    reference: list[dict[str, float]]
    train_images: int

    @property
    def target(self) -> float:
        return self.reference[-1]["accuracy"]

    @property
    def budget(self) -> float:
        return self.reference[-1]["seconds"]

    def seconds_to_target(self, rows: list[dict[str, float]]) -> float | None:
        return next((row["seconds"] for row in rows if row["accuracy"] >= self.target), None)

    def accuracy_within_budget(self, rows: list[dict[str, float]]) -> float | None:
        within = [row["accuracy"] for row in rows if row["seconds"] <= self.budget]
        return within[-1] if within else None

    def images_per_second(self, rows: list[dict[str, float]]) -> float | None:
        """Median training images per second over epochs 2 on (the first traces the graph); None for one epoch."""
        seconds = [later["seconds"] - earlier["seconds"] for earlier, later in itertools.pairwise(rows)]
        return self.train_images / statistics.median(seconds) if seconds else None


def time_to_accuracy(
    settings: TrainParams, train_set: Dataset, test_set: Dataset, reference_epochs: int
) -> TimeToAccuracy:
    """Train the default recipe through the stage's loop and the keras.io recipe with `fit` on arrays.

    Neither validates during training, so the seconds are training alone; the test accuracy after
    each epoch is measured outside them.
    """
    timer = EpochTimer()
    test_accuracy = TestAccuracy(test_set, timer)
    with tempfile.TemporaryDirectory(prefix="bench-race-") as folder:
        data, (train_rows,) = write_shards(Path(folder), train_set)
        _, trainer = training.build_compiled_model(data.image_shape, len(data.class_names), len(train_rows), settings)
        with data:
            training.fit(trainer, data, train_rows, None, settings, [timer, test_accuracy], verbose=0)
    default_rows = test_accuracy.rows

    runtime.configure_runtime(settings.model_copy(update={"mixed_precision": False}))
    runtime.seed_everything(settings.seed, deterministic_ops=False)
    reference = reference_model(train_set.images.shape[1:], len(train_set.class_names))
    timer = EpochTimer()
    test_accuracy = TestAccuracy(test_set, timer)
    reference.fit(
        train_set.images,
        train_set.labels,
        batch_size=REFERENCE_BATCH_SIZE,
        epochs=reference_epochs,
        callbacks=[timer, test_accuracy],
        verbose=0,
    )
    return TimeToAccuracy(default_rows, test_accuracy.rows, len(train_set))


@dataclass(frozen=True)
class Flops:
    """Floating-point operations of one training step divided by its batch size, by TensorFlow op type."""

    per_image_by_op: dict[str, float]

    @property
    def per_image(self) -> float:
        return sum(self.per_image_by_op.values())


def training_flops(settings: TrainParams, input_shape: tuple[int, int, int], num_classes: int) -> Flops:
    """Count the FLOPs of one training step (forward, backward, optimizer update) from its graph.

    The step is traced as a graph with a fixed batch size and every live op is counted with TensorFlow's
    registered flop statistics, the numbers `tf.compat.v1.profiler`'s `float_operation()` sums:
    Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter, MatMul, pooling and elementwise ops. Ops
    with no registered statistic (data movement, random numbers) count as 0.
    """
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.profiler.internal import flops_registry  # noqa: F401 (registers the statistics)

    batch = settings.batch_size
    model = architecture.build_model(input_shape, num_classes, settings.model_copy(update={"mixed_precision": False}))
    model = architecture.compile_model(model, settings.model_copy(update={"jit_compile": False}), steps_per_epoch=1)
    model.optimizer.build(model.trainable_variables)
    label_spec = (
        tf.TensorSpec((batch, num_classes), tf.float32)
        if architecture.uses_one_hot_labels(settings)
        else tf.TensorSpec((batch,), tf.int64)
    )

    @tf.function(input_signature=[tf.TensorSpec((batch, *input_shape), tf.uint8), label_spec])
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        # What Keras's TensorFlow trainer does in `train_step`, without the metric bookkeeping.
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss = model.compute_loss(x=images, y=labels, y_pred=probabilities)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(gradients, model.trainable_variables)
        return loss

    graph = train_step.get_concrete_function().graph
    totals: dict[str, float] = collections.defaultdict(float)
    for graph_ in _graphs_with_functions(graph):
        for operation in _live_operations(graph_):
            try:
                flops = tf_ops.get_stats_for_node_def(graph_, operation.node_def, "flops").value
            except ValueError:  # an op type with no flop statistic, or a shape not known statically
                continue
            if flops:
                totals[operation.type] += flops
    return Flops({name: float(value) / batch for name, value in sorted(totals.items(), key=lambda item: -item[1])})


def _live_operations(graph: tf.Graph) -> list[tf.Operation]:
    """The ops the step's results and side effects depend on.

    A traced gradient also holds ops nothing uses (the gradient with respect to the input image of
    the first convolution); TensorFlow prunes them before running the graph, so they are not counted.
    """
    roots = [tensor.op for tensor in graph.outputs] + list(getattr(graph, "control_outputs", []))
    if not roots:
        return graph.get_operations()
    live: dict[str, tf.Operation] = {}
    pending = list(roots)
    while pending:
        operation = pending.pop()
        if operation.name in live:
            continue
        live[operation.name] = operation
        pending += [tensor.op for tensor in operation.inputs] + list(operation.control_inputs)
    return list(live.values())


def _graphs_with_functions(graph: tf.Graph) -> list[tf.Graph]:
    """The graph and the graphs of the functions it calls, recursively (the optimizer's update is one)."""
    found, pending, seen = [], [graph], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        for function in getattr(current, "_functions", {}).values():
            inner = getattr(function, "graph", None)
            if inner is not None:
                pending.append(inner)
    return found


@dataclass(frozen=True)
class Peak:
    """This CPU's float32 peak, from its specification and from a large matrix multiplication."""

    model_name: str
    cores: int
    megahertz: float
    flops_per_cycle: int
    theoretical: float
    measured: float
    matrix_side: int


def cpu_peak(matrix_side: int = 2048, repeats: int = 5) -> Peak:
    """Estimate the float32 peak two ways.

    Theoretical: cores x clock x FLOPs per cycle per core, where AVX-512 with two FMA units gives
    2 x 16 lanes x 2 = 64, AVX2 with FMA gives 2 x 8 x 2 = 32, otherwise 8. The clock is the
    nominal one /proc/cpuinfo reports; turbo can exceed it. Measured: the best of `repeats` float32
    matrix products of side `matrix_side` through TensorFlow (oneDNN), 2 n^3 FLOPs each.
    """
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    if "avx512f" in flags:
        per_cycle = 64
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32
    else:
        per_cycle = 8
    cores = len(os.sched_getaffinity(0))
    megahertz = float(info.get("cpu MHz", "0") or 0)
    left = tf.random.stateless_uniform((matrix_side, matrix_side), seed=(1, 2))
    right = tf.random.stateless_uniform((matrix_side, matrix_side), seed=(3, 4))
    tf.linalg.matmul(left, right).numpy()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.linalg.matmul(left, right).numpy()
        best = min(best, time.perf_counter() - started)
    return Peak(
        model_name=info.get("model name", "unknown"),
        cores=cores,
        megahertz=megahertz,
        flops_per_cycle=per_cycle,
        theoretical=cores * megahertz * 1e6 * per_cycle,
        measured=2 * matrix_side**3 / best,
        matrix_side=matrix_side,
    )


def cpuinfo() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (Linux); empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields
