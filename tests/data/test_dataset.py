"""The Dataset and DataVersion records and the one validation every dataset goes through."""

from __future__ import annotations

import hashlib

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


def test_content_hashes_are_blake2b_of_each_image(tiny_dataset: Dataset) -> None:
    hashes = dataset_lib.content_hashes(tiny_dataset.images)
    assert hashes.shape == (60, dataset_lib.HASH_BYTES)
    assert hashes.dtype == np.uint8
    expected = hashlib.blake2b(tiny_dataset.images[7].tobytes(), digest_size=16).digest()
    assert hashes[7].tobytes() == expected
    assert len(np.unique(hashes, axis=0)) == 60
    changed = tiny_dataset.images.copy()
    changed[3, 11, 11, 0] ^= 1
    differs = np.any(dataset_lib.content_hashes(changed) != hashes, axis=1)
    assert np.flatnonzero(differs).tolist() == [3]
    # Non-contiguous views hash their pixels, not their memory layout.
    assert np.array_equal(dataset_lib.content_hashes(tiny_dataset.images[::-1])[::-1], hashes)
    assert dataset_lib.content_hashes(np.zeros((0, 4, 4, 1), np.uint8)).shape == (0, 16)


def test_duplicate_groups_point_at_the_first_copy() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 4, 4, 1), dtype=np.uint8)
    images[[2, 5]] = images[0]
    images[4] = images[1]
    hashes = dataset_lib.content_hashes(images)
    assert dataset_lib.duplicate_groups(hashes).tolist() == [0, 1, 0, 3, 1, 0]
    assert dataset_lib.duplicate_groups(np.zeros((0, 16), np.uint8)).tolist() == []
    labels = np.array([0, 1, 0, 1, 0, 1])
    # Rows 0, 2 and 5 are one image under two labels; rows 1 and 4 too.
    assert dataset_lib.conflicting_groups(labels, hashes) == [[0, 2, 5], [1, 4]]
    assert dataset_lib.conflicting_groups(np.array([0, 1, 0, 1, 0, 0]), hashes) == [[1, 4]]
    assert dataset_lib.conflicting_groups(np.array([0, 1, 0, 1, 1, 0]), hashes) == []


def test_flat_values_find_single_colour_images() -> None:
    images = np.full((4, 3, 3, 3), 9, np.uint8)
    images[1, 0, 0, 0] = 10
    images[2] = 0
    images[3, :, :, 2] = 8  # flat in each channel, but not one value
    assert dataset_lib.flat_values(images).tolist() == [9, -1, 0, -1]
    assert dataset_lib.flat_values(images).dtype == np.int16
    assert dataset_lib.constant_images(images) == 2
    assert dataset_lib.flat_values(np.zeros((2, 0, 3, 1), np.uint8)).tolist() == [-1, -1]


@pytest.mark.parametrize(
    ("labels", "class_names", "message"),
    [
        (np.zeros((2, 1), np.int64), ("a", "b"), r"^raw: y must be 1-D integer labels, got int64 of shape \(2, 1\)$"),
        (np.array([0, 2]), ("a", "b"), r"^raw: y must lie in 0\.\.1 to index the 2 class names, got 0\.\.2$"),
        (np.array([0, 0]), ("a", "b"), r"^raw: classes without images: \['b'\]$"),
    ],
)
def test_validate_labels_names_the_source(labels: np.ndarray, class_names: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataset_lib.validate_labels(labels, class_names, "raw", "y")


def test_summarize_counts_copies_and_conflicts(tiny_dataset: Dataset) -> None:
    images = tiny_dataset.images.copy()
    labels = tiny_dataset.labels.copy()
    images[1] = images[0]
    labels[1] = labels[0]  # a copy under the same class
    images[2] = images[0]
    labels[2] = (labels[0] + 1) % 3  # and one under another
    images[5] = 7  # a flat image
    summary = dataset_lib.summarize(
        labels,
        dataset_lib.duplicate_sets(dataset_lib.content_hashes(images)),
        tiny_dataset.class_names,
        (12, 12, 1),
        1,
        50.0,
        3.25,
    )
    assert summary["duplicates"] == 2
    assert summary["conflicting_duplicates"] == 1
    assert summary["constant_images"] == 1
    assert (summary["pixel_mean"], summary["pixel_std"]) == (50.0, 3.25)
    counts = np.bincount(labels, minlength=3)
    assert list(summary["count_per_class"].values()) == counts.tolist()
    assert summary["class_balance"]["ratio"] == round(counts.max() / counts.min(), 4)
    in_memory = dataset_lib.statistics(Dataset(images, labels, tiny_dataset.class_names))
    assert {key: in_memory[key] for key in ("duplicates", "conflicting_duplicates", "constant_images")} == {
        "duplicates": 2,
        "conflicting_duplicates": 1,
        "constant_images": 1,
    }


@pytest.mark.parametrize("sorted_rows", [dataset_lib.SORTED_ROWS, 64])  # one sort; a sort per part of 64 rows
def test_duplicate_groups_match_numpys_unique_on_many_rows(sorted_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_lib, "SORTED_ROWS", sorted_rows)
    rng = np.random.default_rng(4)
    hashes = rng.integers(0, 256, (5000, 16), dtype=np.uint8)
    copies = rng.integers(0, 5000, (800, 2))
    hashes[copies[:, 0]] = hashes[copies[:, 1]]
    hashes[7, :8] = hashes[9, :8]  # equal in one half only: not a copy
    _, first, inverse = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
    assert np.array_equal(dataset_lib.duplicate_groups(hashes), first[inverse.reshape(-1)])


def test_sets_within_keeps_the_copies_among_the_rows_numbered_by_their_place() -> None:
    hashes = np.zeros((8, dataset_lib.HASH_BYTES), dtype=np.uint8)
    hashes[:, 0] = [1, 2, 1, 3, 2, 1, 4, 3]  # sets {0, 2, 5}, {1, 4}, {3, 7}
    copies = dataset_lib.duplicate_sets(hashes)
    rows = np.array([0, 1, 3, 5, 6])
    within = dataset_lib.sets_within(copies, rows)
    assert [members.tolist() for members in within] == [[0, 3]]  # rows 0 and 5; {1, 4} and {3, 7} lose a member
    assert [members.tolist() for members in within] == [
        members.tolist() for members in dataset_lib.duplicate_sets(hashes[rows])
    ]
    assert dataset_lib.sets_within(copies, np.array([], dtype=np.int64)) == []
