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

import collections
import hashlib
import json
import os
import resource
import shutil
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from image_classification import artifacts
from image_classification.data.dataset import HASH_BYTES

MANIFEST = "manifest.json"
LABELS = "labels.npy"
HASHES = "hashes.npy"
FORMAT = "image-classification-shards"
FORMAT_VERSION = 1
# The most bytes of pixels a shard holds: a writer's buffer stays modest, and a changed shard is cheap
# to write and push again.
SHARD_BYTES = 64 * 2**20
# Shards end where an image's content hash says so (content-defined chunking), once they hold at
# least a minimum of bytes; they average about twice as much. An added, removed or edited image
# then changes only the shard it falls in: prepare writes that one again and reuses the others, and
# `dvc push` sends only it. The minimum is SHARD_MIN_BYTES, or for a large dataset the power of two
# nearest below its bytes / SHARD_COUNT_LIMIT, so it has some 2,000 shards at most until they reach
# SHARD_BYTES: fewer files for DVC to hash and move, more bytes to write again after an edit.
SHARD_MIN_BYTES = 2**19
SHARD_COUNT_LIMIT = 4096
# Shard files a reader keeps open at once, the least recently used closed first: half the
# process's limit on open files (`ulimit -n`; often 1,024), at most 4,096. A read from a closed
# shard opens it again, which more than halves the rows read per second.
MAX_OPEN_SHARDS = min(4096, max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2))


@dataclass(frozen=True)
class ShardFile:
    """One file of the prepared dataset, as the manifest lists it: name, rows, size in bytes and md5."""

    file: str
    rows: int
    bytes: int
    md5: str


@dataclass(frozen=True)
class StoredShard:
    """A shard file written before, with its manifest entry's fields and its pixels' value and square sums."""

    rows: int
    bytes: int
    md5: str
    pixel_sum: int
    pixel_squares: int


def shard_rows(image_shape: Sequence[int], expected_rows: int | None = None) -> tuple[int, int]:
    """The fewest rows a shard holds before a content-defined end may close it, and the most it holds.

    Args:
        image_shape: (height, width, channels) of the uint8 images.
        expected_rows: how many images the dataset will hold, when known: large datasets get larger shards.
    """
    image_bytes = max(1, int(np.prod(image_shape)))
    most = max(1, SHARD_BYTES // image_bytes)
    fewest_bytes = SHARD_MIN_BYTES
    if expected_rows:
        share = expected_rows * image_bytes // SHARD_COUNT_LIMIT
        fewest_bytes = max(fewest_bytes, 1 << max(0, share.bit_length() - 1))
    return min(most, max(1, fewest_bytes // image_bytes)), most


def shard_ends(hashes: np.ndarray, filled: int, fewest: int, most: int) -> tuple[list[int], int]:
    """Where shards end among rows that follow `filled` rows of an open shard.

    A shard ends after a row once it holds at least `fewest` rows and the row's content hash is 0
    modulo `fewest` (so shards average about `2 * fewest` rows), or once it holds `most`. This is
    content-defined chunking (as in rsync and restic): an end depends on the rows near it only, so
    inserting or removing rows moves the ends of the shard they fall in and no others.

    Args:
        hashes: (n, 16) uint8 content hashes of the rows, in dataset order.
        filled: rows already in the open shard.
        fewest, most: `shard_rows`.

    Returns:
        The positions in `hashes` after which shards end (exclusive ends), and the rows left in the open shard.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
    hits = np.flatnonzero(hashes[:, 8:].copy().view("<u8").reshape(-1) % np.uint64(fewest) == 0)
    ends: list[int] = []
    start = 0
    while True:
        earliest = start + max(fewest - filled, 1) - 1
        at = int(np.searchsorted(hits, earliest))
        end = min(int(hits[at]) if at < len(hits) else len(hashes), start + most - filled - 1)
        if end >= len(hashes):
            return ends, filled + len(hashes) - start
        ends.append(end + 1)
        start, filled = end + 1, 0


def shard_key(image_shape: Sequence[int], hashes: np.ndarray) -> str:
    """A name for a shard's content: its image shape and the content hashes of its rows, in order."""
    hasher = hashlib.blake2b(repr(tuple(int(side) for side in image_shape)).encode(), digest_size=16)
    hasher.update(np.ascontiguousarray(hashes, dtype=np.uint8).tobytes())
    return hasher.hexdigest()


class ShardStore:
    """Shards written by earlier prepares, by `shard_key`, so that a prepare after a small change writes few.

    A shard is stored as a hard link to the file prepare wrote (a copy where links are not
    possible), so it costs no space while the prepared dataset holds the same file. Each sits beside
    a small JSON file with its `StoredShard` fields and the size, modification time and inode it
    had: a file changed since is not reused.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> tuple[Path, StoredShard] | None:
        """The stored file and fields of shard `key`, or None when absent, unreadable or changed."""
        path = self.folder / f"{key}.npy"
        try:
            record = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
            info = os.stat(path)
            if [info.st_size, info.st_mtime_ns, info.st_ino] != record["stat"]:
                return None
            return path, StoredShard(**record["shard"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, path: Path, shard: StoredShard) -> None:
        """Keep the shard file at `path` (not moved) under `key`.

        The entry is replaced, never written into: a file linked from here may be another
        prepare's output at the same time.
        """
        stored = self.folder / f"{key}.npy"
        staged = self.folder / f".{key}.{os.getpid()}.npy"
        staged.unlink(missing_ok=True)
        link_or_copy(path, staged)
        info = os.stat(staged)
        os.replace(staged, stored)
        record = {"shard": vars(shard), "stat": [info.st_size, info.st_mtime_ns, info.st_ino]}
        artifacts.write_json(self.folder / f"{key}.json", record)

    def keep_only(self, keys: Collection[str]) -> None:
        """Delete every stored shard but `keys`: the store holds the last prepared dataset's shards."""
        keep = set(keys)
        for path in self.folder.iterdir():
            # A name starting with a dot is another prepare's entry on its way in (`put`).
            if path.stem not in keep and path.suffix in (".npy", ".json") and not path.name.startswith("."):
                path.unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `target` to `source`, or copy it where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class ShardWriter:
    """Write a prepared dataset into `folder`, a batch of images at a time, holding one shard at most.

    Use as a context manager: the manifest is written on a clean exit only, so a folder without
    one is incomplete. Shards end where `shard_ends` says, so the same rows (and `expected_rows`,
    which sets their minimum size, `shard_rows`) give the same files, however they are added.
    With a `store`, a shard whose content was written before is linked from there, and its pixels
    are never read (`add_rows`). Pixel sums are kept as shards are written, for `pixel_mean_std`;
    labels and hashes go to files as rows come, so that memory holds no per-row array.
    """

    def __init__(
        self,
        folder: Path,
        image_shape: Sequence[int],
        class_names: Sequence[str],
        store: ShardStore | None = None,
        expected_rows: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.image_shape = tuple(int(side) for side in image_shape)
        self.class_names = tuple(class_names)
        self.store = store
        self.image_bytes = int(np.prod(self.image_shape))
        self.fewest, self.most = shard_rows(self.image_shape, expected_rows)
        self._open: list[np.ndarray] = []  # pixels of the open shard's rows
        self._open_hashes: list[np.ndarray] = []
        self._filled = 0
        self._shards: list[ShardFile] = []
        # The labels' and hashes' bytes, written as rows come; `close` makes them `.npy` files.
        self._columns: dict[str, BinaryIO] = {}
        self._sum = 0
        self._squares = 0
        self._keys: list[str] = []
        self.rows = 0
        self.reused = 0

    def __enter__(self) -> ShardWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._columns = {name: _column_path(self.folder, name).open("wb") for name in (LABELS, HASHES)}
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        try:
            if kind is None:
                self.close()
        finally:
            for name, handle in self._columns.items():
                handle.close()
                _column_path(self.folder, name).unlink(missing_ok=True)

    def add(self, images: np.ndarray, labels: np.ndarray, hashes: np.ndarray) -> None:
        """Append (n, H, W, C) uint8 images with their (n,) labels and (n, 16) content hashes."""
        if images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape {self.image_shape}, got {images.dtype} {images.shape}")
        self.add_rows(labels, hashes, lambda start, stop: images[start:stop])

    def add_rows(self, labels: np.ndarray, hashes: np.ndarray, read: Callable[[int, int], np.ndarray]) -> None:
        """Append rows given by their (n,) labels and (n, 16) content hashes; `read(start, stop)` gives their pixels.

        `read` is called only for rows of shards the store does not hold, at most one shard at a time.
        """
        hashes = np.asarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
        self._columns[LABELS].write(np.asarray(labels, dtype="<i8").tobytes())
        self._columns[HASHES].write(hashes.tobytes())
        ends, filled = shard_ends(hashes, self._filled, self.fewest, self.most)
        start = 0
        for end in ends:
            if self._filled:  # the open shard's earlier rows are buffered: finish it with these
                self._buffer(read(start, end), hashes[start:end])
                self._write_open()
            else:
                self._write(hashes[start:end], lambda start=start, end=end: read(start, end))
            start = end
        if start < len(hashes):
            self._buffer(read(start, len(hashes)), hashes[start:])
        self._filled = filled
        self.rows += len(hashes)

    def pixel_mean_std(self) -> tuple[float | None, float | None]:
        """Mean and standard deviation (0..255) of every pixel value in the shards written, from exact integer sums.

        The last shard is written at `close`: call this after it for the whole dataset.
        """
        count = self.rows * self.image_bytes
        if not count:
            return None, None
        mean = self._sum / count
        return mean, max(self._squares / count - mean * mean, 0.0) ** 0.5

    def close(self) -> None:
        if self._filled:
            self._write_open()
        extras = {}
        for name, dtype, shape in ((LABELS, "<i8", (self.rows,)), (HASHES, "|u1", (self.rows, HASH_BYTES))):
            self._columns[name].close()
            path = self.folder / name
            # The header `np.save` writes for this array, then its bytes: the same file, a block at a time.
            with path.open("wb") as output, _column_path(self.folder, name).open("rb") as column:
                np.lib.format.write_array_header_1_0(output, {"descr": dtype, "fortran_order": False, "shape": shape})
                shutil.copyfileobj(column, output)
            extras[name] = _describe(path, self.rows)
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

    def _buffer(self, images: np.ndarray, hashes: np.ndarray) -> None:
        if images.shape != (len(hashes), *self.image_shape) or images.dtype != np.uint8:
            raise ValueError(f"expected {len(hashes)} uint8 images of shape {self.image_shape}, got {images.shape}")
        self._open.append(images)
        self._open_hashes.append(hashes)

    def _write_open(self) -> None:
        pixels, hashes = np.concatenate(self._open), np.concatenate(self._open_hashes)
        self._open, self._open_hashes = [], []
        self._write(hashes, lambda: pixels)

    def _write(self, hashes: np.ndarray, pixels: Callable[[], np.ndarray]) -> None:
        """Write the next shard, of the rows with `hashes`: linked from the store, or from `pixels()`."""
        path = self.folder / f"images-{len(self._shards):05d}.npy"
        key = shard_key(self.image_shape, hashes)
        found = self.store.get(key) if self.store else None
        if found:
            stored, shard = found
            try:
                link_or_copy(stored, path)
                self.reused += 1
            except OSError:  # gone since: another prepare sharing the store kept only its own
                found = None
        if not found:
            images = pixels()
            if images.shape != (len(hashes), *self.image_shape) or images.dtype != np.uint8:
                raise ValueError(f"expected {len(hashes)} uint8 images of {self.image_shape}, got {images.shape}")
            np.save(path, images, allow_pickle=False)
            written = _describe(path, len(images))
            shard = StoredShard(written.rows, written.bytes, written.md5, *pixel_sums(images))
            if self.store:
                self.store.put(key, path, shard)
        self._shards.append(ShardFile(path.name, shard.rows, shard.bytes, shard.md5))
        self._keys.append(key)
        self._sum += shard.pixel_sum
        self._squares += shard.pixel_squares
        self._filled = 0

    @property
    def keys(self) -> list[str]:
        """The `shard_key` of every shard written so far, in order."""
        return list(self._keys)


def pixel_sums(images: np.ndarray) -> tuple[int, int]:
    """The exact sums of the pixel values of uint8 `images`, and of their squares.

    `einsum` accumulates in uint64 as it goes, with no temporary array of the squares.
    """
    flat = np.ascontiguousarray(images).reshape(-1)
    total = int(flat.sum(dtype=np.uint64))
    squares = int(np.einsum("i,i->", flat, flat, dtype=np.uint64, casting="unsafe"))
    return total, squares


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
        self._handles: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._readers: collections.Counter[int] = collections.Counter()
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
            handle = self._acquire(shard)
            try:
                data = os.pread(handle, run * self.image_bytes, offset)
            finally:
                self._release(shard)
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

    def _acquire(self, shard: int) -> int:
        """An open handle on `shard`, held until `_release`; the least recently used idle ones are closed."""
        with self._lock:
            self._readers[shard] += 1
            if shard in self._handles:
                self._handles.move_to_end(shard)
                return self._handles[shard]
            idle = [other for other in self._handles if not self._readers[other]]
            for other in idle[: max(0, len(self._handles) + 1 - MAX_OPEN_SHARDS)]:
                os.close(self._handles.pop(other))
            try:
                self._handles[shard] = os.open(self.folder / self.shards[shard].file, os.O_RDONLY)
            except OSError:
                self._readers[shard] -= 1
                raise
            return self._handles[shard]

    def _release(self, shard: int) -> None:
        with self._lock:
            self._readers[shard] -= 1

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


def _column_path(folder: Path, name: str) -> Path:
    """Where a `ShardWriter` gathers the bytes of the column file `name` (hidden, removed at exit)."""
    return folder / f".{name}.part"


def _describe(path: Path, rows: int) -> ShardFile:
    return ShardFile(path.name, rows, path.stat().st_size, artifacts.file_md5(path))
