from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stages import datasets
from stages.datasets import Dataset
from tests.conftest import PROJECT_ROOT, make_images


def test_embedded_digits_are_real_mnist() -> None:
    digits = datasets.load_embedded_digits()
    assert digits.images.shape == (5000, 28, 28, 1)
    assert digits.images.dtype == np.uint8
    assert digits.class_names == tuple("0123456789")
    assert np.bincount(digits.labels).tolist() == [500] * 10
    # Real digits: dark background, bright strokes, not noise.
    assert 20 < digits.images.mean() < 60
    assert digits.images.max() == 255
    datasets.validate(digits)


def test_data_stages_do_not_import_tensorflow() -> None:
    code = "import sys, stages.prepare, stages.split; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: Dataset(d.images[..., 0], d.labels, d.class_names), "images must be 4-D"),
        (lambda d: Dataset(d.images.astype(np.float32), d.labels, d.class_names), "images must be uint8"),
        (lambda d: Dataset(np.repeat(d.images, 2, axis=3), d.labels, d.class_names), "1 or 3 channels"),
        (lambda d: Dataset(d.images, d.labels[:-1], d.class_names), "one label per image"),
        (lambda d: Dataset(d.images, d.labels.astype(float), d.class_names), "labels must be integers"),
        (lambda d: Dataset(d.images, d.labels, ("only",)), "at least 2 classes"),
        (lambda d: Dataset(d.images, d.labels, ("a", "a", "b")), "class names must be unique"),
        (lambda d: Dataset(d.images, d.labels + 1, d.class_names), r"labels must lie in 0\.\.2, got 1\.\.3"),
        (lambda d: Dataset(d.images, d.labels, (*d.class_names, "empty")), r"classes without images: \['empty'\]"),
    ],
)
def test_validate_rejects(tiny_dataset: Dataset, change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        datasets.validate(change(tiny_dataset))


def test_statistics(tiny_dataset: Dataset) -> None:
    stats = datasets.statistics(tiny_dataset)
    assert stats["images"] == 60
    assert stats["image_shape"] == [12, 12, 1]
    assert stats["count_per_class"] == {"class_0": 20, "class_1": 20, "class_2": 20}
    assert stats["pixel_mean"] == pytest.approx(tiny_dataset.images.mean(), abs=1e-3)
    assert stats["pixel_std"] == pytest.approx(tiny_dataset.images.std(), abs=1e-3)


def test_stratified_sample_keeps_proportions() -> None:
    labels = np.repeat(np.arange(4), [100, 100, 50, 50])
    chosen = datasets.stratified_sample(labels, 60, seed=1)
    assert len(chosen) == 60
    assert np.bincount(labels[chosen]).tolist() == [20, 20, 10, 10]
    assert np.array_equal(chosen, datasets.stratified_sample(labels, 60, seed=1))
    assert len(datasets.stratified_sample(labels, 1000, seed=1)) == len(labels)


def test_digest_covers_every_pixel() -> None:
    images = np.zeros((100, 28, 28, 1), dtype=np.uint8)
    before = datasets.digest(images)
    images[-1, -1, -1, 0] = 1
    assert datasets.digest(images) != before
    assert datasets.digest(images.reshape(100, 784)) != datasets.digest(images)


def split(dataset: Dataset, seed: int = 7):
    return datasets.stratified_split(dataset.labels, datasets.content_hashes(dataset.images), 0.2, 0.2, seed)


def test_split_is_disjoint_complete_stratified_and_deterministic() -> None:
    dataset = make_images(classes=4, per_class=50)
    indices = split(dataset)
    parts = [indices.train, indices.validation, indices.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(dataset)))
    assert [len(part) for part in parts] == [120, 40, 40]
    for part in parts:
        counts = np.bincount(dataset.labels[part], minlength=4)
        assert counts.max() - counts.min() <= 1
    again = split(dataset)
    assert all(np.array_equal(a, b) for a, b in zip(parts, [again.train, again.validation, again.test], strict=True))
    other = split(dataset, seed=8)
    assert not np.array_equal(indices.test, other.test)


def test_duplicates_land_in_one_split_only() -> None:
    dataset = make_images(classes=3, per_class=40)
    images = dataset.images.copy()
    images[1::10] = images[0::10]  # 12 rows copy the row before them
    images[2] = images[0]  # and one image appears three times
    hashes = datasets.content_hashes(images)
    indices = datasets.stratified_split(dataset.labels, hashes, 0.2, 0.2, seed=3)
    assert indices.duplicates == len(hashes) - len(set(hashes)) == 13
    split_of = {}
    for name in ("train", "validation", "test"):
        for row in getattr(indices, name):
            split_of.setdefault(hashes[row], set()).add(name)
    assert all(len(names) == 1 for names in split_of.values())


def test_split_too_small_class_is_a_clear_error() -> None:
    labels = np.array([0] * 20 + [1] * 2)
    hashes = [str(row) for row in range(len(labels))]
    with pytest.raises(ValueError, match="smallest class has 2 images"):
        datasets.stratified_split(labels, hashes, 0.15, 0.15, seed=0)
