"""The prepared dataset on disk: images in shards of bounded size, read a batch at a time.

A prepared dataset is a folder that DVC tracks as one output:

- `images-00000.npy`, ...: raw uint8 pixels, (n, height, width, channels) each, at most `SHARD_BYTES`
  per shard, rows in dataset order;
- `labels.npy`: (N,) int64 labels indexing the class names;
- `hashes.npy`: (N, 16) uint8, a BLAKE2b-128 digest of each image's pixels, for finding exact copies;
- `manifest.json`: the format, image shape, class names, and every file's row count, size and md5.

Raw pixels rather than encoded ones (TFRecord of PNG or JPEG): the stages read them back with
no decoding, which on a CPU machine costs more per epoch than the training step of a small CNN;
any row can be read with one `pread` at a known offset, so an epoch's shuffled order is a pure
function of (seed, epoch) over the whole dataset instead of a shuffle buffer's window; the files
are NumPy's own `.npy`, readable without TensorFlow by the data stages and by users. They are
larger than the source JPEGs (a 160x160 RGB image is 76.8 KB raw, some 8-15 KB as a photo JPEG),
which DVC stores once per content.

Nothing here imports TensorFlow. Reading never maps a file into memory: a stage's resident memory
stays the batch it is working on, however large the dataset is.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_classification import artifacts
from image_classification.data.dataset import HASH_BYTES

MANIFEST = "manifest.json"
LABELS = "labels.npy"
HASHES = "hashes.npy"
FORMAT = "image-classification-shards"
FORMAT_VERSION = 1
# Large enough that per-file overhead (DVC's hashing and transfer, opening) is small, small enough
# that a writer's buffer is modest and that a changed shard is cheap to push again.
SHARD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ShardFile:
    """One file of the prepared dataset, as the manifest lists it: name, rows, size in bytes and md5."""

    file: str
    rows: int
    bytes: int
    md5: str


class ShardWriter:
    """Write a prepared dataset into `folder`, a batch of images at a time, holding one shard at most.

    Use as a context manager: the manifest is written on a clean exit only, so a folder without
    one is incomplete. Pixel sums are kept as rows go by, for `pixel_mean_std`.
    """

    def __init__(self, folder: Path, image_shape: Sequence[int], class_names: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.image_shape = tuple(int(side) for side in image_shape)
        self.class_names = tuple(class_names)
        self.image_bytes = int(np.prod(self.image_shape))
        self.rows_per_shard = max(1, SHARD_BYTES // max(1, self.image_bytes))
        self._buffer = np.empty((self.rows_per_shard, *self.image_shape), dtype=np.uint8)
        self._filled = 0
        self._shards: list[ShardFile] = []
        self._labels: list[np.ndarray] = []
        self._hashes: list[np.ndarray] = []
        self._sum = 0
        self._squares = 0
        self.rows = 0

    def __enter__(self) -> ShardWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is None:
            self.close()

    def add(self, images: np.ndarray, labels: np.ndarray, hashes: np.ndarray) -> None:
        """Append (n, H, W, C) uint8 images with their (n,) labels and (n, 16) content hashes."""
        if images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape {self.image_shape}, got {images.dtype} {images.shape}")
        # A histogram of the 256 values gives exact sums of values and of squares, faster than squaring them.
        counts = np.bincount(images.reshape(-1), minlength=256).astype(np.uint64)
        values = np.arange(256, dtype=np.uint64)
        self._sum += int(counts @ values)
        self._squares += int(counts @ (values * values))
        self._labels.append(np.asarray(labels, dtype=np.int64))
        self._hashes.append(np.asarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES))
        start = 0
        while start < len(images):
            take = min(self.rows_per_shard - self._filled, len(images) - start)
            self._buffer[self._filled : self._filled + take] = images[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.rows_per_shard:
                self._flush()
        self.rows += len(images)

    def pixel_mean_std(self) -> tuple[float | None, float | None]:
        """Mean and standard deviation (0..255) of every pixel value added, from exact integer sums."""
        count = self.rows * self.image_bytes
        if not count:
            return None, None
        mean = self._sum / count
        return mean, max(self._squares / count - mean * mean, 0.0) ** 0.5

    def close(self) -> None:
        self._flush()
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        hashes = np.concatenate(self._hashes) if self._hashes else np.zeros((0, HASH_BYTES), np.uint8)
        extras = {}
        for name, array in ((LABELS, labels), (HASHES, hashes)):
            path = self.folder / name
            np.save(path, array, allow_pickle=False)
            extras[name] = _describe(path, len(array))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "image_shape": list(self.image_shape),
            "dtype": "uint8",
            "images": self.rows,
            "class_names": list(self.class_names),
            "labels": vars(extras[LABELS]),
            "hashes": vars(extras[HASHES]),
            "shards": [vars(shard) for shard in self._shards],
        }
        artifacts.write_json(self.folder / MANIFEST, manifest)

    def _flush(self) -> None:
        if not self._filled:
            return
        path = self.folder / f"images-{len(self._shards):05d}.npy"
        np.save(path, self._buffer[: self._filled], allow_pickle=False)
        self._shards.append(_describe(path, self._filled))
        self._filled = 0


class ShardedDataset:
    """A prepared dataset opened for reading: labels and hashes in memory, pixels read on demand.

    `read` is thread-safe, so tf.data may call it from parallel map calls.

    Attributes:
        folder: the dataset's folder.
        class_names: the class names labels index.
        image_shape: (height, width, channels) of every image.
        labels: (N,) int64.
        hashes: (N, 16) uint8 content hashes (`dataset.content_hashes`).
        digest: md5 of the manifest, which lists every file's md5: it names the dataset's content.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        try:
            manifest = artifacts.read_json(manifest_path)
        except FileNotFoundError:
            raise ValueError(
                f"{self.folder}: no prepared dataset ({MANIFEST} missing); run `dvc repro prepare`"
            ) from None
        except (OSError, ValueError) as error:
            raise ValueError(f"{manifest_path}: unreadable manifest ({error}); run `dvc repro prepare`") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: not a prepared dataset manifest; run `dvc repro prepare`")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path}: format version {manifest.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; run `dvc repro prepare`"
            )
        try:
            self.image_shape = tuple(int(side) for side in manifest["image_shape"])
            self.class_names = tuple(str(name) for name in manifest["class_names"])
            self.shards = tuple(_listed(entry) for entry in manifest["shards"])
            labels_file, hashes_file = _listed(manifest["labels"]), _listed(manifest["hashes"])
            images = int(manifest["images"])
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise ValueError(f"{manifest_path}: malformed manifest ({error}); run `dvc repro prepare`") from None
        self.digest = hashlib.md5(manifest_path.read_bytes(), usedforsecurity=False).hexdigest()
        self.image_bytes = int(np.prod(self.image_shape))
        self._files = (*self.shards, labels_file, hashes_file)
        self.labels = self._small_array(labels_file, np.int64, (images,))
        self.hashes = self._small_array(hashes_file, np.uint8, (images, HASH_BYTES))
        if sum(shard.rows for shard in self.shards) != images:
            raise ValueError(f"{manifest_path}: its shards hold another number of rows than its {images} images")
        self._ends = np.cumsum([shard.rows for shard in self.shards], dtype=np.int64)
        self._offsets = [self._data_offset(shard) for shard in self.shards]
        self._handles: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.labels)

    def __enter__(self) -> ShardedDataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for handle in self._handles.values():
                os.close(handle)
            self._handles.clear()

    def read(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """The images of `rows`, in that order: (len(rows), H, W, C) uint8.

        Raises:
            IndexError: a row outside 0..N-1.
            ValueError: a shard that has become shorter than its manifest says.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        output = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in 0..{len(self) - 1}, got {rows.min()}..{rows.max()}")
        shard_of = np.searchsorted(self._ends, rows, side="right")
        starts = self._ends - np.array([shard.rows for shard in self.shards], dtype=np.int64)
        flat = output.reshape(len(rows), self.image_bytes)
        position = 0
        while position < len(rows):
            shard, row = int(shard_of[position]), int(rows[position])
            # Consecutive rows of one shard are read with one call.
            run = 1
            while (
                position + run < len(rows) and shard_of[position + run] == shard and rows[position + run] == row + run
            ):
                run += 1
            local = row - int(starts[shard])
            offset = self._offsets[shard] + local * self.image_bytes
            data = os.pread(self._handle(shard), run * self.image_bytes, offset)
            if len(data) != run * self.image_bytes:
                raise ValueError(self._damaged(self.shards[shard].file, "is shorter than its manifest says"))
            flat[position : position + run] = np.frombuffer(data, dtype=np.uint8).reshape(run, -1)
            position += run
        return output

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """The images of `rows` in order, `batch_size` at a time."""
        for start in range(0, len(rows), batch_size):
            yield self.read(rows[start : start + batch_size])

    def verify(self) -> None:
        """Check every file's size and md5 against the manifest, reading each once, 1 MiB at a time.

        Raises:
            ValueError: one line naming the first file that is missing, truncated or corrupt.
        """
        for entry in self._files:
            path = self.folder / entry.file
            size = path.stat().st_size if path.exists() else 0
            if size != entry.bytes:
                raise ValueError(self._damaged(entry.file, f"holds {size:,} bytes, not {entry.bytes:,}"))
            if artifacts.file_md5(path) != entry.md5:
                raise ValueError(self._damaged(entry.file, "does not match its md5 in the manifest (corrupt)"))

    def _handle(self, shard: int) -> int:
        with self._lock:
            if shard not in self._handles:
                self._handles[shard] = os.open(self.folder / self.shards[shard].file, os.O_RDONLY)
            return self._handles[shard]

    def _data_offset(self, shard: ShardFile) -> int:
        """Where the pixels start in a shard's .npy file, after checking its header and size."""
        path = self.folder / shard.file
        try:
            with path.open("rb") as handle:
                major, _ = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(handle)
                offset = handle.tell()
            size = path.stat().st_size
        except FileNotFoundError:
            raise ValueError(
                f"{path}: shard missing from the prepared dataset; run `dvc pull` or `dvc repro prepare`"
            ) from None
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable shard ({error}); run `dvc repro prepare`") from None
        if tuple(shape) != (shard.rows, *self.image_shape) or fortran or dtype != np.uint8:
            raise ValueError(
                f"{path}: holds {dtype} {shape}, the manifest says uint8 {(shard.rows, *self.image_shape)}"
            )
        if size != shard.bytes or size != offset + shard.rows * self.image_bytes:
            raise ValueError(
                self._damaged(shard.file, f"truncated or padded ({size:,} bytes, the manifest says {shard.bytes:,})")
            )
        return offset

    def _small_array(self, entry: ShardFile, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        path = self.folder / entry.file
        try:
            # `read_array` reads only the .npy format: `np.load` would open a zip file put in its place as an .npz.
            with path.open("rb") as handle:
                array = np.lib.format.read_array(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"{path}: unreadable ({error}); run `dvc checkout` or `dvc repro prepare`") from None
        if array.dtype != dtype or array.shape != shape:
            raise ValueError(f"{path}: holds {array.dtype} {array.shape}, the manifest says {np.dtype(dtype)} {shape}")
        return array

    def _damaged(self, file: str, what: str) -> str:
        return (
            f"{self.folder / file}: {what}; run `dvc checkout {self.folder}` to restore it "
            "from the DVC cache, or `dvc repro prepare --force` to write it again"
        )


def open_dataset(folder: Path, verify: bool = False) -> ShardedDataset:
    """Open the prepared dataset in `folder`; with `verify`, check every shard's md5 first.

    Raises:
        ValueError: one line naming the file that is missing, malformed, truncated or corrupt.
    """
    dataset = ShardedDataset(folder)
    if verify:
        dataset.verify()
    return dataset


def _listed(entry: dict) -> ShardFile:
    """A file as the manifest lists it, with the types checked: a wrong one raises TypeError or ValueError."""
    if not isinstance(entry["file"], str) or not isinstance(entry["md5"], str):
        raise TypeError(f"file and md5 must be strings, got {entry['file']!r} and {entry['md5']!r}")
    if Path(entry["file"]).name != entry["file"] or entry["file"] in ("", ".", ".."):
        raise ValueError(f"file {entry['file']!r} is not a file name inside the dataset's folder")
    return ShardFile(entry["file"], int(entry["rows"]), int(entry["bytes"]), entry["md5"])


def _describe(path: Path, rows: int) -> ShardFile:
    return ShardFile(path.name, rows, path.stat().st_size, artifacts.file_md5(path))
