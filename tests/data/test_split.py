"""The split: stratified, deterministic, duplicates kept together, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from image_classification import artifacts
from image_classification.config import SplitParams
from image_classification.data import dataset as dataset_lib
from image_classification.data import shards, split
from image_classification.data.dataset import Dataset
from tests.conftest import make_images, split_images, write_shards


def distinct_hashes(count: int) -> np.ndarray:
    """(count, 16) content hashes of `count` different images."""
    return dataset_lib.content_hashes(np.arange(count, dtype=np.int64)[:, np.newaxis])


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
    assert indices.duplicates == len(hashes) - len(np.unique(hashes, axis=0)) == 13
    split_of: dict[bytes, set[str]] = {}
    for name in split.SPLITS:
        for row in getattr(indices, name):
            split_of.setdefault(hashes[row].tobytes(), set()).add(name)
    assert len(split_of) == 120 - 13
    assert all(len(names) == 1 for names in split_of.values())


def test_a_class_too_small_to_split_is_named_with_its_count_and_the_fix() -> None:
    # The case: classes of 40, 40 and 1 to 4 images.
    for small in (1, 2, 3, 4):
        labels = np.array([0] * 40 + [1] * small + [2] * 40)
        hashes = distinct_hashes(len(labels))
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
    hashes = distinct_hashes(len(labels))
    with pytest.raises(
        ValueError, match=r"classes 0 \(5\), 1 \(5\), 2 \(5\), 3 \(5\), 4 \(5\) and 35 more have too few"
    ):
        split.stratified_split(labels, hashes, 0.1, 0.1, seed=0)


def test_needed_images_per_class_follows_the_smallest_share() -> None:
    assert split.images_needed_per_class(0.15, 0.15) == 7
    assert split.images_needed_per_class(0.1, 0.2) == 10
    assert split.images_needed_per_class(0.45, 0.45) == 10  # training keeps only a tenth
    assert split.images_needed_per_class(0.4, 0.4) == 5


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Dataset]:
    """A prepared dataset of 60 images with 6 copies, each of an image of its own class."""
    dataset = make_images(classes=3, per_class=20)
    images = dataset.images.copy()
    for label in range(3):
        rows = np.flatnonzero(dataset.labels == label)
        images[rows[1 : 2 + label]] = images[rows[0]]
    dataset = Dataset(images, dataset.labels, dataset.class_names)
    return write_shards(tmp_path / "prepared", dataset), dataset


def split_params(seed: int = 42) -> SplitParams:
    return SplitParams(validation_fraction=0.15, test_fraction=0.15, seed=seed)


def test_the_membership_holds_every_row_once_with_copies_together(tmp_path: Path, prepared) -> None:
    folder, dataset = prepared
    membership = tmp_path / "membership.npz"
    report = split.split_dataset(split_params(), folder, membership, tmp_path / "split.json")
    assert report == artifacts.read_json(tmp_path / "split.json")
    with shards.open_dataset(folder) as data:
        members = split.read_membership(membership, data)
        digests = {name: split.split_digest(data, rows) for name, rows in members.items()}
    assert list(members) == list(split.SPLITS)
    assert all(rows.dtype == np.int64 and np.all(np.diff(rows) > 0) for rows in members.values())
    assert np.array_equal(np.sort(np.concatenate(list(members.values()))), np.arange(60))
    hashes = dataset_lib.content_hashes(dataset.images)
    expected = split.partition(dataset.labels, hashes, dataset.class_names, split_params())
    assert all(np.array_equal(members[name], getattr(expected, name)) for name in split.SPLITS)
    assert report["images"] == 60
    assert report["duplicates_kept_together"] == expected.duplicates == 6
    for name, rows in members.items():
        counts = np.bincount(dataset.labels[rows], minlength=3)
        assert counts.min() > 0  # every class in every split
        assert report["splits"][name] == {
            "images": len(rows),
            "count_per_class": dict(zip(dataset.class_names, counts.tolist(), strict=True)),
            "digest": digests[name],
        }
    group = dataset_lib.duplicate_groups(hashes)
    split_of_group = {}
    for name, rows in members.items():
        for row in rows:
            assert split_of_group.setdefault(group[row], name) == name
    assert len(set(digests.values())) == 3


def test_the_same_seed_writes_the_same_membership_file(tmp_path: Path, prepared) -> None:
    folder, _ = prepared
    for name, seed in (("a.npz", 42), ("b.npz", 42), ("c.npz", 7)):
        split.split_dataset(split_params(seed), folder, tmp_path / name, tmp_path / f"{name}.json")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert (tmp_path / "a.npz").read_bytes() != (tmp_path / "c.npz").read_bytes()
    assert (tmp_path / "a.npz.json").read_bytes() == (tmp_path / "b.npz.json").read_bytes()


def test_a_membership_made_for_another_dataset_is_refused(tmp_path: Path, prepared) -> None:
    folder, dataset = prepared
    split.split_dataset(split_params(), folder, tmp_path / "membership.npz", tmp_path / "split.json")
    images = dataset.images.copy()
    images[0, 0, 0, 0] ^= 1
    other = write_shards(tmp_path / "other", Dataset(images, dataset.labels, dataset.class_names))
    expected = (
        rf"^{re.escape(str(tmp_path / 'membership.npz'))}: made for another prepared dataset than "
        rf"{re.escape(str(other))} \(digest [0-9a-f]{{12}}, now [0-9a-f]{{12}}\); run `dvc repro split`$"
    )
    with shards.open_dataset(other) as data, pytest.raises(ValueError, match=expected):
        split.read_membership(tmp_path / "membership.npz", data)


def test_a_missing_or_broken_membership_says_to_run_split(tmp_path: Path, prepared) -> None:
    folder, _ = prepared
    path = tmp_path / "membership.npz"
    with shards.open_dataset(folder) as data:
        with pytest.raises(ValueError, match=r"membership.npz: no split membership; run `dvc repro split`$"):
            split.read_membership(path, data)
        path.write_bytes(b"not a zip file")
        with pytest.raises(ValueError, match=r"membership.npz: not a split membership file \(.*\); run `dvc repro"):
            split.read_membership(path, data)
        split.write_membership(path, {"train": [0, 60], "validation": [1], "test": [2]}, data.digest)
        with pytest.raises(ValueError, match=r"the train rows do not index the 60 images of "):
            split.read_membership(path, data)
        only_test = split.read_membership(path, data, ("test",))  # the rows of the other splits go unchecked
        assert list(only_test) == ["test"]
        assert only_test["test"].tolist() == [2]


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
    train, validation, test = ({image.tobytes() for image in split_images(paths, name).images} for name in split.SPLITS)
    assert not train & validation
    assert not train & test
    assert not validation & test


@pytest.mark.parametrize(("classes", "size", "test_size"), [(3, 40, 0.3), (10, 1003, 0.25), (7, 200, 0.5)])
def test_the_lean_stratified_split_draws_what_scikit_learn_draws(classes: int, size: int, test_size: float) -> None:
    from sklearn.model_selection import train_test_split

    labels = np.random.default_rng(classes).integers(0, classes, size)
    positions = np.arange(size)
    for seed in (0, 42):
        expected = train_test_split(positions, test_size=test_size, stratify=labels, random_state=seed)
        got = split.stratified_shuffle_split(labels, test_size, seed)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    with pytest.raises(ValueError, match=r"4 items of 2 classes cannot be split 2/2"):
        split.stratified_shuffle_split(np.array([0, 0, 0, 1]), 0.5, 0)  # a class of one item
