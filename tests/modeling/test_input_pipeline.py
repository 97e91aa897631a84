"""The tf.data pipelines over shards: one-hot labels, and epochs whose order depends only on (seed, epoch)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from image_classification.data import shards
from image_classification.data.dataset import Dataset
from image_classification.modeling import input_pipeline
from tests.conftest import write_shards


@pytest.fixture
def tiny_shards(
    tmp_path: Path, tiny_dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> Iterator[shards.ShardedDataset]:
    # Seven images a shard, so that batches cross shard boundaries.
    monkeypatch.setattr(shards, "SHARD_BYTES", 7 * int(np.prod(tiny_dataset.images.shape[1:])))
    with shards.open_dataset(write_shards(tmp_path / "prepared", tiny_dataset), verify=True) as data:
        assert len(data.shards) == 9
        yield data


def test_one_hot_pipeline(tiny_shards: shards.ShardedDataset, tiny_dataset: Dataset) -> None:
    rows = np.arange(5, 40)
    data = input_pipeline.make_dataset(tiny_shards, rows, 3, batch_size=16, one_hot=True)
    batches = [(images.numpy(), labels.numpy()) for images, labels in data]
    assert [len(labels) for _, labels in batches] == [16, 16, 3]
    images, labels = batches[0]
    assert images.shape == (16, 12, 12, 1)
    assert images.dtype == np.uint8
    assert labels.shape == (16, 3)
    assert np.array_equal(np.concatenate([images for images, _ in batches]), tiny_dataset.images[rows])
    assert np.array_equal(
        np.argmax(np.concatenate([labels for _, labels in batches]), axis=1), tiny_dataset.labels[rows]
    )


def test_pipeline_follows_the_rows_given(tiny_shards: shards.ShardedDataset, tiny_dataset: Dataset) -> None:
    rows = np.array([59, 0, 31, 31, 8, 7])
    ((images, labels),) = list(input_pipeline.make_dataset(tiny_shards, rows, 3, batch_size=8))
    assert np.array_equal(images.numpy(), tiny_dataset.images[rows])
    assert np.array_equal(labels.numpy(), tiny_dataset.labels[rows])


def training_batches(
    data: shards.ShardedDataset, rows: np.ndarray, first_epoch: int, epochs: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    pipeline = input_pipeline.make_training_dataset(data, rows, 3, 16, seed=5, first_epoch=first_epoch, epochs=epochs)
    return [(images.numpy(), labels.numpy()) for images, labels in pipeline]


def test_training_batches_depend_only_on_seed_and_epoch(
    tiny_shards: shards.ShardedDataset, tiny_dataset: Dataset
) -> None:
    # A split's rows: not every row, not in order.
    rows = np.sort(np.random.default_rng(1).permutation(len(tiny_dataset))[:52])
    full = training_batches(tiny_shards, rows, 0, 3)
    steps = input_pipeline.steps_per_epoch(len(rows), 16)
    assert len(full) == 3 * steps
    assert [len(labels) for _, labels in full[:steps]] == [16, 16, 16, 4]
    resumed = training_batches(tiny_shards, rows, 2, 3)
    assert len(resumed) == steps
    for (images, labels), (expected_images, expected_labels) in zip(resumed, full[2 * steps :], strict=True):
        assert np.array_equal(images, expected_images)
        assert np.array_equal(labels, expected_labels)
    labels_of = [
        np.concatenate([labels for _, labels in full[epoch * steps : (epoch + 1) * steps]]) for epoch in range(3)
    ]
    assert not np.array_equal(labels_of[0], labels_of[1])  # reshuffled every epoch
    by_content = {tiny_dataset.images[row].tobytes(): row for row in rows}
    assert len(by_content) == len(rows)
    for epoch in range(3):
        batches = full[epoch * steps : (epoch + 1) * steps]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        # Every training row exactly once, each image with its own label.
        seen = [by_content[image.tobytes()] for image in images]
        assert sorted(seen) == rows.tolist()
        assert np.array_equal(labels, tiny_dataset.labels[seen])


def test_a_shard_cut_short_while_streaming_fails_naming_it(tiny_shards: shards.ShardedDataset) -> None:
    shard = tiny_shards.folder / tiny_shards.shards[4].file
    with shard.open("r+b") as handle:
        handle.truncate(shard.stat().st_size - 1)
    pipeline = input_pipeline.make_dataset(tiny_shards, np.arange(60), 3, batch_size=8)
    with pytest.raises(tf.errors.OpError, match=re.escape(f"{shard}: is shorter than its manifest says")):
        list(pipeline)


def test_few_updates_an_epoch_are_named_with_the_fix() -> None:
    assert input_pipeline.few_updates_warning(3_500, 128) is None  # 28 updates
    message = input_pipeline.few_updates_warning(105, 128)
    assert message == (
        "105 training images at train.batch_size = 128 give 1 optimizer update an epoch; for a set this small "
        "lower train.batch_size (to 10 or less for 10 updates) or raise train.epochs"
    )
    assert input_pipeline.few_updates_warning(105, 10) is None  # 11 updates
    assert "give 9 optimizer updates" in input_pipeline.few_updates_warning(200, 24, num_processes=2)
