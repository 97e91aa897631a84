"""The CNN, its optimizer and loss, and the tf.data input pipeline, all built from TrainParams."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from stages.params import TrainParams

logger = logging.getLogger(__name__)


def build_model(input_shape: tuple[int, int, int], num_classes: int, params: TrainParams) -> keras.Model:
    """Build the classifier with the Functional API.

    The model takes raw uint8 images and rescales them itself, so whatever serves it sees exactly
    what training saw. Each conv block doubles the filters of the previous one and halves the
    spatial size.

    Raises:
        ValueError: when the images are too small for the requested number of blocks.
    """
    height, width, _ = input_shape
    smallest_side = min(height, width) // 2**params.conv_blocks
    if smallest_side < 1:
        raise ValueError(
            f"train.conv_blocks = {params.conv_blocks} halves {height}x{width} images to nothing; "
            f"use at most {int(math.log2(min(height, width)))} blocks for this image size"
        )
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if params.augment_translation > 0:
        x = layers.RandomTranslation(
            params.augment_translation,
            params.augment_translation,
            fill_mode="constant",
            seed=params.seed,
            name="augment_translation",
        )(x)
    for block in range(params.conv_blocks):
        filters = params.filters * 2**block
        for conv in range(params.convs_per_block):
            x = layers.Conv2D(
                filters,
                params.kernel_size,
                padding="same",
                use_bias=not params.batch_norm,
                name=f"block{block + 1}_conv{conv + 1}",
            )(x)
            if params.batch_norm:
                x = layers.BatchNormalization(
                    momentum=params.batch_norm_momentum, name=f"block{block + 1}_bn{conv + 1}"
                )(x)
            x = layers.Activation(params.activation, name=f"block{block + 1}_act{conv + 1}")(x)
        x = layers.MaxPooling2D(name=f"block{block + 1}_pool")(x)
    if params.pooling == "global_average":
        x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    if params.dense_units:
        x = layers.Dropout(params.dropout_rate, seed=params.seed, name="dense_dropout")(x)
        x = layers.Dense(params.dense_units, activation=params.activation, name="dense")(x)
    x = layers.Dropout(params.dropout_rate, seed=params.seed, name="head_dropout")(x)
    # float32 even under mixed precision: a float16 softmax rounds small probabilities to 0.
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="image_classifier")


def learning_rate(params: TrainParams, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The constant rate, or a linear warm-up followed by cosine decay over all training steps."""
    if params.lr_schedule == "constant":
        return params.learning_rate
    warmup_steps = params.warmup_epochs * steps_per_epoch
    decay_steps = max(1, params.epochs * steps_per_epoch - warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=params.learning_rate / 10,
            decay_steps=decay_steps,
            warmup_target=params.learning_rate,
            warmup_steps=warmup_steps,
        )
    return keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps)


def compile_model(model: keras.Model, params: TrainParams, steps_per_epoch: int) -> None:
    """Attach the optimizer, loss and accuracy metric named in the params."""
    rate = learning_rate(params, steps_per_epoch)
    optimizers = {
        "adam": lambda: keras.optimizers.Adam(rate),
        "adamw": lambda: keras.optimizers.AdamW(rate),
        "nadam": lambda: keras.optimizers.Nadam(rate),
        "rmsprop": lambda: keras.optimizers.RMSprop(rate),
        "sgd": lambda: keras.optimizers.SGD(rate, momentum=0.9, nesterov=True),
    }
    metric = "accuracy" if params.loss.startswith("sparse_") else keras.metrics.CategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=optimizers[params.optimizer](), loss=params.loss, metrics=[metric], jit_compile=params.jit_compile
    )


def configure_runtime(params: TrainParams, gpus: Sequence[object] | None = None) -> None:
    """Apply the thread counts and the precision policy; call before building the model.

    Thread counts can only change before TensorFlow starts its runtime; a process that already ran
    TensorFlow ops keeps the counts it started with and a warning says so.

    Args:
        params: the train params.
        gpus: the GPUs to check mixed precision against; by default those TensorFlow sees.

    Raises:
        ValueError: mixed precision was asked for and no GPU is visible.
    """
    for name, setter, getter in (
        ("intra_op_threads", tf.config.threading.set_intra_op_parallelism_threads,
         tf.config.threading.get_intra_op_parallelism_threads),
        ("inter_op_threads", tf.config.threading.set_inter_op_parallelism_threads,
         tf.config.threading.get_inter_op_parallelism_threads),
    ):  # fmt: skip
        wanted = getattr(params, name)
        if wanted and getter() != wanted:
            try:
                setter(wanted)
            except RuntimeError:
                logger.warning("train.%s = %d ignored: TensorFlow already started in this process", name, wanted)
    if params.mixed_precision:
        gpus = tf.config.list_physical_devices("GPU") if gpus is None else gpus
        if not gpus:
            # On CPUs float16 arithmetic is emulated: it trains several times slower, not faster.
            raise ValueError(
                "train.mixed_precision = true needs a GPU and TensorFlow sees none; set it to false on CPUs"
            )
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        keras.mixed_precision.set_global_policy("float32")


def uses_one_hot_labels(params: TrainParams) -> bool:
    return not params.loss.startswith("sparse_")


def make_dataset(
    images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, one_hot: bool = False
) -> tf.data.Dataset:
    """A batched, prefetched tf.data pipeline over in-memory arrays, in their order (for evaluation)."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if one_hot:
        dataset = dataset.map(lambda image, label: (image, tf.one_hot(label, num_classes)))
    return dataset.cache().batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    one_hot: bool = False,
) -> tf.data.Dataset:
    """Shuffled batches for epochs `first_epoch` .. `epochs - 1`, one epoch after another.

    Each epoch's order is a pure function of `(seed, epoch)`, not of how many epochs this process
    has already iterated, so training resumed at epoch k sees exactly the batches an uninterrupted
    run would have seen from epoch k on. Use with `fit(steps_per_epoch=steps_per_epoch(...))`.
    """
    count = len(labels)
    images_tensor = tf.constant(images)
    labels_tensor = tf.constant(labels)

    @tf.autograph.experimental.do_not_convert
    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    @tf.autograph.experimental.do_not_convert
    def gather(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch_labels = tf.gather(labels_tensor, indices)
        if one_hot:
            batch_labels = tf.one_hot(batch_labels, num_classes)
        return tf.gather(images_tensor, indices), batch_labels

    epochs_dataset = tf.data.Dataset.range(first_epoch, epochs, output_type=tf.int64)
    return epochs_dataset.flat_map(one_epoch).map(gather).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(count: int, batch_size: int) -> int:
    return -(-count // batch_size)


def seed_everything(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow and, unless told otherwise, make TensorFlow ops deterministic.

    Keras turns XLA off while op determinism is on, so a run with `train.jit_compile` passes
    `deterministic_ops=False`.
    """
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    else:
        # The switch is process-wide; TensorFlow's public API can only turn it on.
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
