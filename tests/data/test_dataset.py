"""The Dataset and DataVersion records and the one validation every dataset goes through."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.data import dataset as dataset_lib
from image_classification.data.dataset import Dataset


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: Dataset(d.images[..., 0], d.labels, d.class_names), "images must be 4-D"),
        (lambda d: Dataset(d.images.astype(np.float32), d.labels, d.class_names), "images must be uint8"),
        (lambda d: Dataset(np.repeat(d.images, 2, axis=3), d.labels, d.class_names), "1 or 3 channels"),
        (
            lambda d: Dataset(d.images, d.labels[:-1], d.class_names),
            "images holds 60 images but labels holds 59 labels",
        ),
        (lambda d: Dataset(d.images, d.labels.astype(float), d.class_names), "labels must be 1-D integer labels"),
        (lambda d: Dataset(d.images, d.labels, ("only",)), "at least 2 classes"),
        (lambda d: Dataset(d.images, d.labels, ("a", "a", "b")), "class names must be unique"),
        (
            lambda d: Dataset(d.images, d.labels + 1, d.class_names),
            r"labels must lie in 0\.\.2 to index the 3 class names, got 1\.\.3",
        ),
        (lambda d: Dataset(d.images, d.labels, (*d.class_names, "empty")), r"classes without images: \['empty'\]"),
    ],
)
def test_validate_rejects(tiny_dataset: Dataset, change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataset_lib.validate(change(tiny_dataset))


def test_statistics(tiny_dataset: Dataset) -> None:
    stats = dataset_lib.statistics(tiny_dataset)
    assert stats["images"] == 60
    assert stats["image_shape"] == [12, 12, 1]
    assert stats["count_per_class"] == {"class_0": 20, "class_1": 20, "class_2": 20}
    assert stats["pixel_mean"] == pytest.approx(tiny_dataset.images.mean(), abs=1e-3)
    assert stats["pixel_std"] == pytest.approx(tiny_dataset.images.std(), abs=1e-3)


def test_stratified_sample_keeps_proportions() -> None:
    labels = np.repeat(np.arange(4), [100, 100, 50, 50])
    chosen = dataset_lib.stratified_sample(labels, 60, seed=1)
    assert len(chosen) == 60
    assert np.bincount(labels[chosen]).tolist() == [20, 20, 10, 10]
    assert np.array_equal(chosen, dataset_lib.stratified_sample(labels, 60, seed=1))
    assert len(dataset_lib.stratified_sample(labels, 1000, seed=1)) == len(labels)


def test_digest_covers_every_pixel() -> None:
    images = np.zeros((100, 28, 28, 1), dtype=np.uint8)
    before = dataset_lib.digest(images)
    images[-1, -1, -1, 0] = 1
    assert dataset_lib.digest(images) != before
    assert dataset_lib.digest(images.reshape(100, 784)) != dataset_lib.digest(images)


def test_validation_names_the_source_and_its_arrays(tiny_dataset: Dataset) -> None:
    broken = Dataset(tiny_dataset.images.astype(np.float32), tiny_dataset.labels, tiny_dataset.class_names)
    with pytest.raises(ValueError, match=r"^data/raw/x\.npz: x must be uint8 pixels 0\.\.255, got float32$"):
        dataset_lib.validate(broken, "data/raw/x.npz", array_names=("x", "y"))


def test_data_version_round_trips_and_names_a_bad_record() -> None:
    version = dataset_lib.DataVersion("image_folder", "data/raw", "0123abcd.dir", 12, 3456)
    assert dataset_lib.DataVersion.from_json(version.to_json(), "statistics.json") == version
    assert list(version.to_json()) == ["source", "path", "digest", "files", "bytes"]
    assert version.local
    assert not dataset_lib.DataVersion("keras", "keras.datasets.mnist", "ab", 1, 2).local
    with pytest.raises(ValueError, match=r"^reports/data/statistics.json: not a data version record .*prepare`$"):
        dataset_lib.DataVersion.from_json({"source": "npz"}, "reports/data/statistics.json")


@pytest.mark.parametrize(
    ("labels", "size", "message"),
    [
        (
            [0] * 20 + [1] * 20 + [2] * 20,
            2,
            r"^data.max_images = 2 is fewer than the 3 classes; raise it to at least 3",
        ),
        ([0] * 20 + [1] * 1, 10, r"^class 'b' has a single image, and sampling data.max_images = 10 of 21 keeps"),
        ([0] * 20 + [1] * 20 + [2] * 20, 59, r"^data.max_images = 59 cannot be sampled from 60 images in 3 classes"),
    ],
)
def test_max_images_that_cannot_keep_every_class_is_one_clear_line(labels: list, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataset_lib.stratified_sample(np.array(labels), size, seed=0, class_names=("a", "b", "c"))
