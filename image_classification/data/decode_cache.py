"""The decoded-image cache that makes prepare incremental: one SQLite row per (file content, decoding rules).

Prepare decodes only the image files whose content it has not decoded under the same rules before;
adding ten photos to a folder of 100,000 decodes ten. A key is the file's md5 (the hash DVC gives
it), its lower-case suffix (a few formats are refused by name) and the decoding rules with the
versions of the decoders, so the result is the one a prepare from scratch gives. Failures are
cached with their reason, so a bad file is not decoded again either. Each file's md5 is kept with
its size, modification time and inode, as DVC keeps them, so an unchanged file is not read again to
be hashed.

The cache lives outside DVC's outputs (dvc.yaml passes `cache/prepare/decoded.sqlite`); deleting it
costs one full decode. SQLite serializes writers, so two experiments preparing at once share it
safely.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from image_classification.data import images
from image_classification.data.dataset import HASH_BYTES

# Bump when decoding changes in a way the versions below do not show.
CACHE_VERSION = 1
# SQLite allows 32,766 parameters per statement; a few hundred keep the statements short.
QUERY_ROWS = 500
BUSY_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Entry:
    """What decoding one file gave: the reason it failed, or its pixels, content hash and flat value.

    `flat` is the single value of an image whose every pixel and channel holds it, else -1.
    """

    reason: str | None
    pixels: bytes | None = None
    content_hash: bytes | None = None
    flat: int = -1


@dataclass(frozen=True)
class FileStat:
    """A file's absolute path with the size (bytes), modification time (ns) and inode that tell it changed."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str) -> FileStat:
        """Stat the file at absolute path `path` (a string: this runs once per file of a large folder).

        Raises:
            OSError: the file cannot be stat'ed.
        """
        info = os.stat(path)
        return cls(path, info.st_size, info.st_mtime_ns, info.st_ino)


def rules_tag(spec: images.ImageSpec) -> str:
    """The decoding rules and decoder versions a cached image was made with, as part of its key."""
    try:
        import pillow_heif

        heif = pillow_heif.__version__
    except ImportError:
        heif = "none"
    fields = (
        spec.height, spec.width, spec.channels, spec.interpolation, spec.aspect, spec.background, spec.max_pixels,
        f"pillow {PIL.__version__}", f"pillow-heif {heif}", f"numpy {np.__version__}", f"cache {CACHE_VERSION}",
    )  # fmt: skip
    return hashlib.md5(repr(fields).encode("utf-8"), usedforsecurity=False).hexdigest()


def file_key(md5: str, name: str, tag: str) -> str:
    """The cache key of a file with content `md5`, called `name`, decoded under rules `tag`."""
    suffix = os.path.splitext(name)[1].lower()
    return f"{md5}:{suffix}:{tag}"


def decode_entry(data: bytes, name: str, spec: images.ImageSpec) -> Entry:
    """Decode one file's bytes with `images.decode_image` into a cache entry."""
    try:
        pixels = images.decode_image(data, spec, name=name)
    except ValueError as error:
        return Entry(str(error))
    flat = pixels.reshape(-1)
    value = int(flat[0]) if flat.min() == flat.max() else -1
    digest = hashlib.blake2b(pixels.tobytes(), digest_size=HASH_BYTES).digest()
    return Entry(None, pixels.tobytes(), digest, value)


class DecodeCache:
    """The cache file at `path`, created on first use. Use as a context manager, or call `close`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS decoded (key TEXT PRIMARY KEY, reason TEXT, content_hash BLOB, "
                "flat INTEGER, pixels BLOB)"
            )
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS file_md5 (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                "inode INTEGER, md5 TEXT)"
            )
            self._connection.commit()
        except sqlite3.DatabaseError as error:
            raise ValueError(
                f"{self.path}: unusable decoded-image cache ({error}); delete it (prepare decodes every file again)"
            ) from None

    def __enter__(self) -> DecodeCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Positions in `keys` of the keys the cache does not hold, in order."""
        unique = list(dict.fromkeys(keys))
        present: set[str] = set()
        for start in range(0, len(unique), QUERY_ROWS):
            chunk = unique[start : start + QUERY_ROWS]
            marks = ",".join("?" * len(chunk))
            present.update(row[0] for row in self._query(f"SELECT key FROM decoded WHERE key IN ({marks})", chunk))
        return [position for position, key in enumerate(keys) if key not in present]

    def store(self, entries: Iterable[tuple[str, Entry]]) -> None:
        """Add entries, each under its key, in one transaction."""
        rows = [(key, entry.reason, entry.content_hash, entry.flat, entry.pixels) for key, entry in entries]
        try:
            with self._connection:
                self._connection.executemany("INSERT OR REPLACE INTO decoded VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: cannot write the decoded-image cache ({error})") from None

    def known_md5s(self, files: Sequence[FileStat]) -> list[str | None]:
        """The md5 recorded for each file, or None when the file is new or its size, mtime or inode changed.

        The same test DVC applies before hashing a file again; it saves reading every unchanged file.
        """
        found: dict[str, tuple] = {}
        for start in range(0, len(files), QUERY_ROWS):
            chunk = [file.path for file in files[start : start + QUERY_ROWS]]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT path, size, mtime_ns, inode, md5 FROM file_md5 WHERE path IN ({marks})"
            found.update((row[0], row[1:]) for row in self._query(sql, chunk))
        known: list[str | None] = []
        for file in files:
            record = found.get(file.path)
            known.append(record[3] if record and tuple(record[:3]) == (file.size, file.mtime_ns, file.inode) else None)
        return known

    def remember_md5s(self, files: Iterable[tuple[FileStat, str]]) -> None:
        """Record each file's md5 with the size, mtime and inode it had when it was read."""
        rows = [(file.path, file.size, file.mtime_ns, file.inode, md5) for file, md5 in files]
        try:
            with self._connection:
                self._connection.executemany("INSERT OR REPLACE INTO file_md5 VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: cannot write the decoded-image cache ({error})") from None

    def outcomes(self, keys: Sequence[str]) -> tuple[list[str | None], np.ndarray, np.ndarray]:
        """For each key in order: the failure reason or None, the (N, 16) content hashes and (N,) flat values.

        Raises:
            KeyError: a key the cache does not hold.
        """
        reasons: list[str | None] = []
        hashes = np.zeros((len(keys), HASH_BYTES), dtype=np.uint8)
        flat = np.full(len(keys), -1, dtype=np.int16)
        for start in range(0, len(keys), QUERY_ROWS):
            chunk = keys[start : start + QUERY_ROWS]
            marks = ",".join("?" * len(set(chunk)))
            found = {
                row[0]: row[1:]
                for row in self._query(
                    f"SELECT key, reason, content_hash, flat FROM decoded WHERE key IN ({marks})", list(set(chunk))
                )
            }
            for offset, key in enumerate(chunk):
                reason, content_hash, value = found[key]
                reasons.append(reason)
                if content_hash is not None:
                    hashes[start + offset] = np.frombuffer(content_hash, dtype=np.uint8)
                    flat[start + offset] = value
        return reasons, hashes, flat

    def pixels(self, keys: Sequence[str], shape: tuple[int, int, int]) -> np.ndarray:
        """The decoded images of `keys`, in order: (len(keys), *shape) uint8.

        Raises:
            KeyError: a key the cache does not hold, or holds as a failure.
        """
        output = np.empty((len(keys), *shape), dtype=np.uint8)
        for start in range(0, len(keys), QUERY_ROWS):
            chunk = list(keys[start : start + QUERY_ROWS])
            unique = list(set(chunk))
            marks = ",".join("?" * len(unique))
            found = dict(self._query(f"SELECT key, pixels FROM decoded WHERE key IN ({marks})", unique))
            for offset, key in enumerate(chunk):
                data = found[key]
                if data is None:
                    raise KeyError(key)
                output[start + offset] = np.frombuffer(data, dtype=np.uint8).reshape(shape)
        return output

    def _query(self, sql: str, arguments: Sequence[str]) -> list[tuple]:
        try:
            return self._connection.execute(sql, arguments).fetchall()
        except sqlite3.DatabaseError as error:
            raise ValueError(
                f"{self.path}: unreadable decoded-image cache ({error}); delete it (prepare decodes every file again)"
            ) from None
