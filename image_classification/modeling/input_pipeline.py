"""The tf.data input pipelines: in-order batches for evaluation, and seeded epochs for training."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


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
