"""Image datasets as plain arrays: the `Dataset` and `DataVersion` records, the one validation, statistics and digests.

Nothing here imports TensorFlow or opens files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DIGIT_CLASS_NAMES = tuple(str(digit) for digit in range(10))
# Bytes of the content hash that finds exact copies (BLAKE2b-128).
HASH_BYTES = 16


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
    images, labels = dataset.images, dataset.labels
    x, y = array_names
    where = f"{source}: " if source else ""
    if images.ndim != 4:
        raise ValueError(f"{where}{x} must be 4-D (count, height, width, channels), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{where}{x} must be uint8 pixels 0..255, got {images.dtype}")
    if images.shape[3] not in (1, 3):
        raise ValueError(f"{where}{x} must have 1 or 3 channels, got {images.shape[3]}")
    if labels.ndim == 1 and len(labels) != len(images):
        raise ValueError(f"{where}{x} holds {len(images)} images but {y} holds {len(labels)} labels; they must match")
    validate_labels(labels, dataset.class_names, source, y)


def validate_labels(labels: np.ndarray, class_names: Sequence[str], source: str = "", name: str = "labels") -> None:
    """Check that (N,) integer `labels` index at least 2 unique `class_names`, each with an image.

    Raises:
        ValueError: with a message naming `source` and what is wrong.
    """
    where = f"{source}: " if source else ""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}{name} must be 1-D integer labels, got {labels.dtype} of shape {labels.shape}")
    if len(class_names) < 2:
        raise ValueError(f"{where}a classifier needs at least 2 classes, got {len(class_names)}: {list(class_names)}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"{where}class names must be unique, got {list(class_names)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"{where}{name} must lie in 0..{len(class_names) - 1} to index the {len(class_names)} class names, "
            f"got {labels.min()}..{labels.max()}"
        )
    counts = np.bincount(labels, minlength=len(class_names))
    missing = np.flatnonzero(counts == 0).tolist()
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
    """Summarize a dataset held in memory; `summarize` says what each figure means."""
    mean, std = pixel_mean_std(dataset.images)
    return summarize(
        dataset.labels,
        duplicate_sets(content_hashes(dataset.images)),
        dataset.class_names,
        dataset.images.shape[1:],
        int((flat_values(dataset.images) >= 0).sum()),
        mean,
        std,
    )


def summarize(
    labels: np.ndarray,
    copies: Sequence[np.ndarray],
    class_names: Sequence[str],
    image_shape: Sequence[int],
    constant: int,
    mean: float | None,
    std: float | None,
) -> dict:
    """The prepare stage's statistics: class counts and balance, image shape, pixel mean/std (0..255), duplicates.

    `duplicates` counts images identical to an earlier one; `conflicting_duplicates` counts those whose
    label differs from that earlier image's; `constant_images` (`constant`) counts images of a single
    flat colour. `class_balance.ratio` is the largest class over the smallest.

    Args:
        labels: (N,) integer labels.
        copies: the rows of each set of identical images among them (`duplicate_sets`).
        class_names: the names the labels index.
        image_shape: (height, width, channels).
        constant: how many images are a single flat colour.
        mean: mean pixel value, or None for no images.
        std: standard deviation of the pixel values, or None for no images.
    """
    counts = np.bincount(labels, minlength=len(class_names))
    duplicates = sum(len(rows) - 1 for rows in copies)
    conflicting = sum(int((labels[rows[1:]] != labels[rows[0]]).sum()) for rows in copies)
    smallest, largest = (int(np.argmin(counts)), int(np.argmax(counts))) if len(counts) else (0, 0)
    return {
        "images": len(labels),
        "image_shape": [int(side) for side in image_shape],
        "classes": len(class_names),
        "class_names": list(class_names),
        "count_per_class": {name: int(count) for name, count in zip(class_names, counts, strict=True)},
        "class_balance": {
            "smallest_class": class_names[smallest] if len(counts) else None,
            "smallest_count": int(counts[smallest]) if len(counts) else 0,
            "largest_class": class_names[largest] if len(counts) else None,
            "largest_count": int(counts[largest]) if len(counts) else 0,
            "ratio": round(float(counts[largest] / counts[smallest]), 4) if len(counts) and counts[smallest] else None,
        },
        "duplicates": duplicates,
        "conflicting_duplicates": conflicting,
        "constant_images": constant,
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


def flat_values(images: np.ndarray) -> np.ndarray:
    """For each (H, W, C) image, its one value when every pixel and channel holds it, else -1: (N,) int16."""
    flat = images.reshape(len(images), -1)
    if not flat.size:
        return np.full(len(images), -1, dtype=np.int16)
    constant = flat.min(axis=1) == flat.max(axis=1)
    return np.where(constant, flat[:, 0].astype(np.int16), np.int16(-1))


def constant_images(images: np.ndarray) -> int:
    """How many of the (N, H, W, C) images hold one value in every pixel and channel."""
    return int((flat_values(images) >= 0).sum())


def content_hashes(images: np.ndarray) -> np.ndarray:
    """BLAKE2b-128 of each (H, W, C) image's pixels: (N, 16) uint8; equal rows mean identical images."""
    hashes = np.empty((len(images), HASH_BYTES), dtype=np.uint8)
    for row, image in enumerate(images):
        digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=HASH_BYTES).digest()
        hashes[row] = np.frombuffer(digest, dtype=np.uint8)
    return hashes


# Rows whose hashes `read_duplicate_sets` sorts at a time: its memory beyond its inputs is a few bytes a row.
SORTED_ROWS = 2**14


def duplicate_sets(hashes: np.ndarray) -> list[np.ndarray]:
    """The rows of each set of two or more identical (N, 16) uint8 content hashes (`read_duplicate_sets`)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(len(hashes), HASH_BYTES)
    return read_duplicate_sets(hashes[:, 0], lambda rows: hashes[rows])


def read_duplicate_sets(first_bytes: np.ndarray, read: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """The rows of each set of two or more identical content hashes: ascending int64 arrays, ordered by first row.

    The hashes are read and sorted a part at a time, each part the rows whose first byte falls in
    one range, so that memory holds the first bytes and the sets, plus about 40 bytes a row of one
    part (about `SORTED_ROWS` rows): the hashes of 600,000 images need not be in memory at once.

    Args:
        first_bytes: (N,) uint8, the first byte of each row's hash.
        read: `read(rows)` gives the (len(rows), 16) uint8 hashes of ascending int64 `rows`.
    """
    count = len(first_bytes)
    parts = min(256, -(-count // SORTED_ROWS))
    found = []
    for part in range(parts):
        low, high = 256 * part // parts, 256 * (part + 1) // parts
        # uint8 arithmetic wraps: first_bytes - low < high - low holds for low <= first_bytes < high only.
        rows = np.arange(count) if parts == 1 else np.flatnonzero(first_bytes - np.uint8(low) < high - low)
        keys = np.ascontiguousarray(read(rows), dtype=np.uint8).view(np.uint64)  # (n, 2)
        order = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: a set's rows stay in row order
        ordered = keys[order]
        same = (ordered[1:] == ordered[:-1]).all(axis=1)  # row i + 1 repeats row i
        starts = np.flatnonzero(same & ~np.concatenate([[False], same[:-1]]))
        ends = np.flatnonzero(same & ~np.concatenate([same[1:], [False]])) + 2
        found.extend(rows[order[start:end]] for start, end in zip(starts.tolist(), ends.tolist(), strict=True))
    return sorted(found, key=lambda rows: int(rows[0]))


def sets_within(copies: Sequence[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
    """The sets of `copies` (`duplicate_sets`) among ascending `rows`, as positions in `rows`; sets of 2 or more."""
    found = []
    for members in copies:
        at = np.searchsorted(rows, members)
        inside = at[(at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == members)] if len(rows) else at[:0]
        if len(inside) >= 2:
            found.append(inside)
    return found


def duplicate_groups(hashes: np.ndarray) -> np.ndarray:
    """For each row, the first row with the same content hash (itself when it is the first): (N,) int64."""
    first = np.arange(len(hashes), dtype=np.int64)
    for rows in duplicate_sets(hashes):
        first[rows] = rows[0]
    return first


def conflicting_groups(labels: np.ndarray, hashes: np.ndarray) -> list[list[int]]:
    """Rows of identical images that carry more than one label, one list per image, in row order."""
    return [rows.tolist() for rows in conflicting_sets(labels, duplicate_sets(hashes))]


def conflicting_sets(labels: np.ndarray, copies: list[np.ndarray]) -> list[np.ndarray]:
    """The sets of identical images (`duplicate_sets`) whose rows carry more than one label."""
    return [rows for rows in copies if len(np.unique(labels[rows])) > 1]


def digest(*arrays: np.ndarray) -> str:
    """Digest of the full contents of arrays (shape and dtype included), as a hex string."""
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()
