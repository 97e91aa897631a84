"""Image datasets as plain arrays: the `Dataset` and `DataVersion` records, the one validation, statistics and digests.

Nothing here imports TensorFlow or opens files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
class DataVersion:
    """Which data a dataset came from, as the prepare stage records it and the train stage logs it to MLflow.

    Attributes:
        source: the `data.source` that read it, or `arrays` when only the arrays are known.
        path: the folder, or the Python or Keras name, it was read from.
        digest: the md5 DVC records for the same data (`<md5>.dir` for a folder): 36 characters at
            most, so that MLflow accepts it as a dataset digest.
        files: how many files the digest covers.
        bytes: their total size.
    """

    source: str
    path: str
    digest: str
    files: int
    bytes: int

    def to_json(self) -> dict:
        """The record as the statistics file stores it."""
        return {
            "source": self.source,
            "path": self.path,
            "digest": self.digest,
            "files": self.files,
            "bytes": self.bytes,
        }

    @classmethod
    def from_json(cls, record: dict, where: str) -> DataVersion:
        """Read a record written by `to_json`.

        Raises:
            ValueError: a key is missing; the message names `where` the record came from.
        """
        try:
            return cls(**{name: record[name] for name in ("source", "path", "digest", "files", "bytes")})
        except (KeyError, TypeError) as error:
            raise ValueError(f"{where}: not a data version record ({error}); run `dvc repro prepare`") from None

    @property
    def local(self) -> bool:
        """Whether `path` is a folder on this machine (image_folder, npz, idx) rather than a package name."""
        return self.source in ("image_folder", "npz", "idx")


def validate(dataset: Dataset, source: str = "", array_names: tuple[str, str] = ("images", "labels")) -> None:
    """Check shapes, dtypes, labels and class count: the one validation every dataset goes through.

    Args:
        dataset: the dataset to check.
        source: where the arrays came from (a file, a Keras dataset), named at the start of the message.
        array_names: what the user calls the image and label arrays there (`x` and `y` in an .npz file).

    Raises:
        ValueError: with a message saying what is wrong and what is expected.
    """
    images, labels, class_names = dataset.images, dataset.labels, dataset.class_names
    x, y = array_names
    where = f"{source}: " if source else ""
    if images.ndim != 4:
        raise ValueError(f"{where}{x} must be 4-D (count, height, width, channels), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{where}{x} must be uint8 pixels 0..255, got {images.dtype}")
    if images.shape[3] not in (1, 3):
        raise ValueError(f"{where}{x} must have 1 or 3 channels, got {images.shape[3]}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}{y} must be 1-D integer labels, got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{where}{x} holds {len(images)} images but {y} holds {len(labels)} labels; they must match")
    if len(class_names) < 2:
        raise ValueError(f"{where}a classifier needs at least 2 classes, got {len(class_names)}: {list(class_names)}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"{where}class names must be unique, got {list(class_names)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"{where}{y} must lie in 0..{len(class_names) - 1} to index the {len(class_names)} class names, "
            f"got {labels.min()}..{labels.max()}"
        )
    missing = sorted(set(range(len(class_names))) - set(np.unique(labels).tolist()))
    if missing:
        raise ValueError(f"{where}classes without images: {[class_names[index] for index in missing]}")


def stratified_sample(labels: np.ndarray, size: int, seed: int, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Pick `size` row indices keeping the class proportions, in a seeded, repeatable way.

    Args:
        labels: (N,) integer labels.
        size: how many rows to keep (`data.max_images`).
        seed: the sample is a pure function of the labels, the size and the seed.
        class_names: the names of the labels, for error messages.

    Returns:
        The kept row indices, sorted.

    Raises:
        ValueError: `size` cannot keep every class, or a class has a single image, which stratified
            sampling cannot place; the message names the class and the fixes.
    """
    from sklearn.model_selection import train_test_split

    if size >= len(labels):
        return np.arange(len(labels))
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    if size < len(present):
        raise ValueError(
            f"data.max_images = {size} is fewer than the {len(present)} classes; raise it to at least "
            f"{len(present)}, or set it to null"
        )
    single = [label for label in present if counts[label] == 1]
    if single:
        names = ", ".join(repr(class_names[label]) if class_names else str(label) for label in single[:5])
        raise ValueError(
            f"class {names} has a single image, and sampling data.max_images = {size} of {len(labels)} keeps "
            "the class proportions with 2 or more per class; add images to it, or set data.max_images: null"
        )
    try:
        indices, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    except ValueError:
        # scikit-learn's own message speaks of train and test sizes; this one speaks of the param.
        raise ValueError(
            f"data.max_images = {size} cannot be sampled from {len(labels)} images in {len(present)} classes "
            f"keeping their proportions; set it between {len(present)} and {len(labels) - len(present)}, or to null"
        ) from None
    return np.sort(indices)


def statistics(dataset: Dataset) -> dict:
    """Summarize a dataset: class counts and balance, image shape, pixel mean/std (0..255) and duplicates.

    `duplicates` counts images identical to an earlier one; `conflicting_duplicates` counts those whose
    label differs from that earlier image's; `constant_images` counts images of a single flat colour.
    `class_balance.ratio` is the largest class over the smallest.
    """
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    mean, std = pixel_mean_std(dataset.images)
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
        "constant_images": constant_images(dataset.images),
        "pixel_mean": None if mean is None else round(mean, 4),
        "pixel_std": None if std is None else round(std, 4),
    }


def pixel_mean_std(images: np.ndarray, chunk: int = 1024) -> tuple[float | None, float | None]:
    """Mean and standard deviation of every pixel value (0..255), in float64, `chunk` images at a time.

    A float64 copy of the whole array would take 8 times the images' memory.
    """
    if not images.size:
        return None, None
    count = images.size
    total = sum(float(images[start : start + chunk].sum(dtype=np.float64)) for start in range(0, len(images), chunk))
    mean = total / count
    squares = sum(
        float(np.square(images[start : start + chunk].astype(np.float64) - mean).sum())
        for start in range(0, len(images), chunk)
    )
    return mean, (squares / count) ** 0.5


def constant_images(images: np.ndarray) -> int:
    """How many of the (N, H, W, C) images hold one value in every pixel and channel."""
    flat = images.reshape(len(images), -1)
    return int((flat.min(axis=1) == flat.max(axis=1)).sum()) if flat.size else 0


def conflicting_groups(labels: np.ndarray, hashes: list[str]) -> list[list[int]]:
    """Rows of identical images that carry more than one label, one list per image, in row order."""
    rows_of: dict[str, list[int]] = {}
    for row, content in enumerate(hashes):
        rows_of.setdefault(content, []).append(row)
    return [rows for rows in rows_of.values() if len(rows) > 1 and len(set(labels[rows].tolist())) > 1]


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
