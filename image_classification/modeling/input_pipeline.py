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
    data: ShardedDataset,
    rows: np.ndarray,
    num_classes: int,
    batch_size: int,
    one_hot: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
) -> tf.data.Dataset:
    """Batches of (uint8 images (b, H, W, C), int64 labels (b,) or one-hot float32 (b, K)) for `rows`, in order.

    With `num_processes` > 1, this process' part of each global batch of `batch_size` (`process_rows`).
    """
    rows = process_rows(np.asarray(rows, dtype=np.int64), process_index, num_processes)
    batches = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size // num_processes)
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
    process_index: int = 0,
    num_processes: int = 1,
) -> tf.data.Dataset:
    """Shuffled batches of `rows` for epochs `first_epoch` .. `epochs - 1`, one epoch after another.

    Each epoch's order is a pure function of `(seed, epoch)`, not of how many epochs this process
    has already iterated, so training resumed at epoch k sees exactly the batches an uninterrupted
    run would have seen from epoch k on. The shuffle is over all of `rows` (any row can be read
    directly from its shard), not a window of them. Use with `fit(steps_per_epoch=steps_per_epoch(...))`.

    With `num_processes` > 1 every process draws the same order and keeps its part of each global
    batch of `batch_size` (`process_rows`), so the processes together train on the batches one process would.
    """
    rows_tensor = tf.constant(np.asarray(rows, dtype=np.int64))
    count = len(rows)

    @tf.autograph.experimental.do_not_convert
    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        mine = process_rows(tf.gather(rows_tensor, order), process_index, num_processes)
        return tf.data.Dataset.from_tensor_slices(mine).batch(batch_size // num_processes)

    epochs_dataset = tf.data.Dataset.range(first_epoch, epochs, output_type=tf.int64)
    batches = epochs_dataset.flat_map(one_epoch)
    return batches.map(_loader(data, num_classes, one_hot), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def steps_per_epoch(count: int, batch_size: int, num_processes: int = 1) -> int:
    """Global batches in an epoch of `count` rows (the last one may be short), after `process_rows` drops the tail."""
    return -(-(count - count % num_processes) // batch_size)


# Fewer optimizer updates an epoch than this and `few_updates_warning` speaks up.
FEW_UPDATES = 10


def few_updates_warning(train_images: int, batch_size: int, num_processes: int = 1) -> str | None:
    """A one-line warning when an epoch of `train_images` at global `batch_size` has fewer than `FEW_UPDATES` steps.

    A small image folder at a batch size tuned for large sets trains on a handful of updates in all.
    """
    steps = steps_per_epoch(train_images, batch_size, num_processes)
    if steps >= FEW_UPDATES:
        return None
    return (
        f"{train_images} training images at train.batch_size = {batch_size} give {steps} optimizer "
        f"update{'s' if steps != 1 else ''} an epoch; for a set this small lower train.batch_size "
        f"(to {max(1, train_images // FEW_UPDATES)} or less for {FEW_UPDATES} updates) or raise train.epochs"
    )


def process_rows(rows, process_index: int, num_processes: int):
    """Process `process_index`'s rows of `rows`: every `num_processes`-th one, after the last `count % num_processes`.

    Batching the result by `batch_size / num_processes` gives each process its equal part of every
    global batch of `rows` batched by `batch_size`, short last batch included: global batch j is the
    union of the processes' batches j. Up to `num_processes - 1` rows at the end are left out, so
    that every process feeds as many images; which ones follows the order. A NumPy array or a
    tf.Tensor of shape (n,); `num_processes` 1 returns `rows` unchanged.
    """
    if num_processes == 1:
        return rows
    kept = (rows.shape[0] // num_processes) * num_processes
    return rows[process_index:kept:num_processes]


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
