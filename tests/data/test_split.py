"""The split: stratified, deterministic, duplicates kept together, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification import artifacts
from image_classification.data import dataset as dataset_lib
from image_classification.data import split
from image_classification.data.dataset import Dataset
from tests.conftest import make_images


def split_indices(dataset: Dataset, seed: int = 7) -> split.SplitIndices:
    return split.stratified_split(dataset.labels, dataset_lib.content_hashes(dataset.images), 0.2, 0.2, seed)


def test_split_is_disjoint_complete_stratified_and_deterministic() -> None:
    dataset = make_images(classes=4, per_class=50)
    indices = split_indices(dataset)
    parts = [indices.train, indices.validation, indices.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(dataset)))
    assert [len(part) for part in parts] == [120, 40, 40]
    for part in parts:
        counts = np.bincount(dataset.labels[part], minlength=4)
        assert counts.max() - counts.min() <= 1
    again = split_indices(dataset)
    assert all(np.array_equal(a, b) for a, b in zip(parts, [again.train, again.validation, again.test], strict=True))
    other = split_indices(dataset, seed=8)
    assert not np.array_equal(indices.test, other.test)


def test_duplicates_land_in_one_split_only() -> None:
    dataset = make_images(classes=3, per_class=40)
    images = dataset.images.copy()
    images[1::10] = images[0::10]  # 12 rows copy the row before them
    images[2] = images[0]  # and one image appears three times
    hashes = dataset_lib.content_hashes(images)
    indices = split.stratified_split(dataset.labels, hashes, 0.2, 0.2, seed=3)
    assert indices.duplicates == len(hashes) - len(set(hashes)) == 13
    split_of = {}
    for name in ("train", "validation", "test"):
        for row in getattr(indices, name):
            split_of.setdefault(hashes[row], set()).add(name)
    assert all(len(names) == 1 for names in split_of.values())


def test_a_class_too_small_to_split_is_named_with_its_count_and_the_fix() -> None:
    # The case: classes of 40, 40 and 1 to 4 images.
    for small in (1, 2, 3, 4):
        labels = np.array([0] * 40 + [1] * small + [2] * 40)
        hashes = [str(row) for row in range(len(labels))]
        with pytest.raises(ValueError, match=r"^cannot split: class .tiny.") as caught:
            split.stratified_split(labels, hashes, 0.15, 0.15, seed=42, class_names=("circle", "tiny", "square"))
        assert str(caught.value) == (
            f"cannot split: class 'tiny' has {small} distinct image(s); split.validation_fraction 0.15 and "
            "split.test_fraction 0.15 need about 7 per class so that each split gets one; add images to the "
            "class, remove its folder from the data, or raise the fractions"
        )
        assert "[1]" not in str(caught.value)


def test_every_class_reaches_every_split_or_the_split_stops() -> None:
    # 40 classes of 5: scikit-learn splits them, but some classes would get no test image.
    labels = np.repeat(np.arange(40), 5)
    hashes = [str(row) for row in range(len(labels))]
    with pytest.raises(
        ValueError, match=r"classes 0 \(5\), 1 \(5\), 2 \(5\), 3 \(5\), 4 \(5\) and 35 more have too few"
    ):
        split.stratified_split(labels, hashes, 0.1, 0.1, seed=0)


def test_needed_images_per_class_follows_the_smallest_share() -> None:
    assert split.images_needed_per_class(0.15, 0.15) == 7
    assert split.images_needed_per_class(0.1, 0.2) == 10
    assert split.images_needed_per_class(0.45, 0.45) == 10  # training keeps only a tenth
    assert split.images_needed_per_class(0.4, 0.4) == 5


@pytest.mark.slow
def test_prepare_and_split_outputs(pipeline) -> None:
    _, paths, _ = pipeline
    statistics = artifacts.read_json(paths["statistics"])
    assert statistics["images"] == 300
    assert sum(statistics["count_per_class"].values()) == 300
    report = artifacts.read_json(paths["split_report"])
    assert {name: part["images"] for name, part in report["splits"].items()} == {
        "train": 210,
        "validation": 45,
        "test": 45,
    }
    hashes = [
        {image.tobytes() for image in artifacts.load_dataset(paths[name]).images}
        for name in ("train", "validation", "test")
    ]
    train_hashes, validation_hashes, test_hashes = hashes
    assert not train_hashes & validation_hashes
    assert not train_hashes & test_hashes
    assert not validation_hashes & test_hashes
