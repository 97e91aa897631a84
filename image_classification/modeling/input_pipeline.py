"""The tf.data input pipelines over the prepared shards: in-order batches for evaluation, seeded epochs for training.

Nothing here holds the dataset: each batch is read from the shards (`shards.ShardedDataset.read`)
when tf.data asks for it, by parallel map calls, and prefetched while the model trains on the last.
Resident memory is a few batches, however many images the shards hold.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from image_classification.data.shards import ShardedDataset


def make_dataset(
    data: ShardedDataset, rows: np.ndarray, num_classes: int, batch_size: int, one_hot: bool = False
) -> tf.data.Dataset:
    """Batches of (uint8 images (b, H, W, C), int64 labels (b,) or one-hot float32 (b, K)) for `rows`, in order."""
    rows = np.asarray(rows, dtype=np.int64)
    batches = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)
    return batches.map(_loader(data, num_classes, one_hot), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def make_training_dataset(
    data: ShardedDataset,
    rows: np.ndarray,
    num_classes: int,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    one_hot: bool = False,
) -> tf.data.Dataset:
    """Shuffled batches of `rows` for epochs `first_epoch` .. `epochs - 1`, one epoch after another.

    Each epoch's order is a pure function of `(seed, epoch)`, not of how many epochs this process
    has already iterated, so training resumed at epoch k sees exactly the batches an uninterrupted
    run would have seen from epoch k on. The shuffle is over all of `rows` (any row can be read
    directly from its shard), not a window of them. Use with `fit(steps_per_epoch=steps_per_epoch(...))`.
    """
    rows_tensor = tf.constant(np.asarray(rows, dtype=np.int64))
    count = len(rows)

    @tf.autograph.experimental.do_not_convert
    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(tf.gather(rows_tensor, order)).batch(batch_size)

    epochs_dataset = tf.data.Dataset.range(first_epoch, epochs, output_type=tf.int64)
    batches = epochs_dataset.flat_map(one_epoch)
    return batches.map(_loader(data, num_classes, one_hot), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def steps_per_epoch(count: int, batch_size: int) -> int:
    return -(-count // batch_size)


def _loader(data: ShardedDataset, num_classes: int, one_hot: bool):
    """A tf.data map function from a batch of row numbers to (images, labels) read from the shards."""
    labels_tensor = tf.constant(data.labels)
    shape = data.image_shape

    @tf.autograph.experimental.do_not_convert
    def load(batch_rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # `read` is a pure function of the rows, so tf.data may run it in parallel under op determinism.
        images = tf.numpy_function(data.read, [batch_rows], tf.uint8, stateful=False)
        images.set_shape([None, *shape])
        labels = tf.gather(labels_tensor, batch_rows)
        if one_hot:
            labels = tf.one_hot(labels, num_classes)
        return images, labels

    return load
