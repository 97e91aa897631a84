"""The tf.data pipelines: one-hot labels, and epochs whose order depends only on (seed, epoch)."""

from __future__ import annotations

import numpy as np

from image_classification.data.dataset import Dataset
from image_classification.modeling import input_pipeline


def test_one_hot_pipeline(tiny_dataset: Dataset) -> None:
    data = input_pipeline.make_dataset(tiny_dataset.images, tiny_dataset.labels, 3, batch_size=16, one_hot=True)
    images, labels = next(iter(data))
    assert images.shape == (16, 12, 12, 1)
    assert labels.shape == (16, 3)
    assert np.array_equal(np.argmax(labels, axis=1), tiny_dataset.labels[:16])


def batches(dataset: Dataset, first_epoch: int, epochs: int) -> list[list[int]]:
    data = input_pipeline.make_training_dataset(
        dataset.images, dataset.labels, 3, 16, seed=5, first_epoch=first_epoch, epochs=epochs
    )
    return [labels.numpy().tolist() for _, labels in data]


def test_training_batches_depend_only_on_seed_and_epoch(tiny_dataset: Dataset) -> None:
    full = batches(tiny_dataset, 0, 3)
    steps = input_pipeline.steps_per_epoch(len(tiny_dataset), 16)
    assert len(full) == 3 * steps
    assert [len(batch) for batch in full[:steps]] == [16, 16, 16, 12]
    assert batches(tiny_dataset, 2, 3) == full[2 * steps :]
    assert full[:steps] != full[steps : 2 * steps]  # reshuffled every epoch
    for epoch in range(3):
        epoch_labels = sorted(label for batch in full[epoch * steps : (epoch + 1) * steps] for label in batch)
        assert epoch_labels == sorted(tiny_dataset.labels.tolist())
