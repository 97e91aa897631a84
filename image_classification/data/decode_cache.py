"""The decoded-image cache that makes prepare incremental: one SQLite row per (file content, decoding rules).

Prepare decodes only the image files whose content it has not decoded under the same rules before;
adding ten photos to a folder of 100,000 decodes ten. A key is the file's md5 (the hash DVC gives
it), its lower-case suffix (a few formats are refused by name) and the decoding rules with the
versions of the decoders, so the result is the one a prepare from scratch gives. Failures are
cached with their reason, so a bad file is not decoded again either.

The cache also keeps, per folder and decoding rules, the listing the last prepare made
(`ListingChunk`): each file's path, size, modification time and inode, as DVC keeps them, with its
md5 and what decoding it gave, in chunks of consecutive files in the order of their paths. A file
whose size, time and inode have not changed is neither read nor looked up again: a prepare after a
small change costs a walk of the folder, and the new files. A listing is read and written a chunk
at a time, so memory holds a few chunks of it whatever the folder's size.

The cache lives outside DVC's outputs (dvc.yaml passes `cache/prepare/decoded.sqlite`); deleting it
costs one full decode. SQLite serializes writers, so two experiments preparing at once share it
safely: a listing stays until two later prepares of the folder have completed theirs, so a prepare
still writing its shards keeps reading its own (`complete_listing`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import PIL

from image_classification.data import images
from image_classification.data.dataset import HASH_BYTES

# Bump when decoding changes in a way the versions below do not show.
CACHE_VERSION = 1
# Bump when the tables change: a cache file of another schema is emptied.
SCHEMA_VERSION = 4
# SQLite allows 32,766 parameters per statement; a few hundred keep the statements short.
QUERY_ROWS = 500
BUSY_TIMEOUT_SECONDS = 120
# Completed listings kept per folder and decoding rules: the newest, and the one before it, which a
# prepare started earlier may still be reading.
KEPT_LISTINGS = 2
# An incomplete listing older than this is a prepare that stopped half-way: it is deleted.
STALE_LISTING_SECONDS = 24 * 3600
# Writes are committed together, at most this often: a commit waits for the disk (`fsync`), 20 ms
# on the reference machine's network disk, and a prepare of 60,000 files wrote over a hundred
# batches. The write lock is held that long at most; a prepare killed meanwhile loses that much.
COMMIT_SECONDS = 1.0


@dataclass(frozen=True)
class Entry:
    """What decoding one file gave: the reason it failed, or its pixels, content hash and flat value.

    `flat` is the single value of an image whose every pixel and channel holds it, else -1.
    """

    reason: str | None
    pixels: bytes | None = None
    content_hash: bytes | None = None
    flat: int = -1


@dataclass
class ListingChunk:
    """Consecutive files of a folder's listing, in the order of their relative paths.

    Attributes:
        paths: each file's path relative to the folder.
        stats: (N, 3) int64 size (bytes), modification time (ns) and inode; -1 for a file that
            could not be read.
        md5s: (N, 16) uint8 md5 of each file's bytes (zeros for a file that could not be read).
        reasons: (N,) int32 index in the listing's reason texts of why a file was rejected; -1 for
            a decoded image, -2 for a file prepare did not decode (not an image, or hidden).
        hashes: (N, 16) uint8 content hashes of the decoded images (zeros for others).
        flat: (N,) int16 flat values of the decoded images (`Entry.flat`).
    """

    paths: list[str]
    stats: np.ndarray
    md5s: np.ndarray
    reasons: np.ndarray
    hashes: np.ndarray
    flat: np.ndarray

    ARRAYS: ClassVar[dict[str, str]] = {
        "stats": "<i8", "md5s": "u1", "reasons": "<i4", "hashes": "u1", "flat": "<i2",
    }  # fmt: skip

    @classmethod
    def empty(cls, paths: list[str]) -> ListingChunk:
        """A chunk of `paths` that knows nothing of them yet: unread, not decoded."""
        count = len(paths)
        return cls(
            paths,
            np.full((count, 3), -1, np.int64),
            np.zeros((count, 16), np.uint8),
            np.full(count, -2, np.int32),
            np.zeros((count, HASH_BYTES), np.uint8),
            np.full(count, -1, np.int16),
        )

    def __len__(self) -> int:
        return len(self.paths)

    def to_row(self) -> tuple:
        """The chunk as the values of a `listing_chunks` row after its listing and position."""
        paths = "\0".join(self.paths).encode("utf-8", "surrogateescape")
        blobs = (np.ascontiguousarray(getattr(self, name), dtype=dtype).data for name, dtype in self.ARRAYS.items())
        return (len(self.paths), paths, *blobs)

    @classmethod
    def from_row(cls, row: Sequence) -> ListingChunk:
        """A chunk from the values `to_row` gave.

        Raises:
            ValueError: paths or arrays whose sizes disagree with the file count.
        """
        count, paths, *blobs = row
        names = paths.decode("utf-8", "surrogateescape").split("\0") if count else []
        if len(names) != count:
            raise ValueError(f"{len(names)} paths for {count} files")
        shapes = {"stats": (count, 3), "md5s": (count, 16), "hashes": (count, HASH_BYTES)}
        arrays = {
            name: np.frombuffer(blob, dtype=dtype).reshape(shapes.get(name, (count,))).copy()
            for (name, dtype), blob in zip(cls.ARRAYS.items(), blobs, strict=True)
        }
        return cls(names, **arrays)


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
    return f"{md5}:{images.suffix(name)}:{tag}"


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
        self._committed = time.monotonic()
        try:
            self._connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
            with self._connection:
                if self._connection.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    tables = self._connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
                    for (table,) in tables:
                        self._connection.execute(f'DROP TABLE "{table}"')
                    self._connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS decoded (key TEXT PRIMARY KEY, reason TEXT, content_hash BLOB, "
                    "flat INTEGER, pixels BLOB)"
                )
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS listings (id INTEGER PRIMARY KEY, folder TEXT, rules TEXT, "
                    "complete INTEGER, reason_texts TEXT, started REAL)"
                )
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS listing_chunks (listing INTEGER, position INTEGER, files INTEGER, "
                    f"paths BLOB, {', '.join(f'{name} BLOB' for name in ListingChunk.ARRAYS)}, "
                    "PRIMARY KEY (listing, position))"
                )
        except sqlite3.DatabaseError as error:
            raise ValueError(
                f"{self.path}: unusable decoded-image cache ({error}); delete it (prepare decodes every file again)"
            ) from None

    def __enter__(self) -> DecodeCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what was written, and close the file."""
        try:
            self.commit()
        finally:
            self._connection.close()

    def commit(self) -> None:
        """Make every write so far durable and visible to other processes."""
        try:
            self._connection.commit()
        except sqlite3.DatabaseError as error:
            raise self._unwritable(error) from None
        self._committed = time.monotonic()

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
        """Add entries, each under its key; committed within `COMMIT_SECONDS`, or by `commit`."""
        rows = [(key, entry.reason, entry.content_hash, entry.flat, entry.pixels) for key, entry in entries]
        self._write("INSERT OR REPLACE INTO decoded VALUES (?, ?, ?, ?, ?)", rows)

    def listing(self, folder: str, tag: str) -> tuple[int, list[str]] | None:
        """The id and reason texts of the listing the last prepare of `folder` under rules `tag` completed, or None."""
        rows = self._query(
            "SELECT id, reason_texts FROM listings WHERE folder = ? AND rules = ? AND complete = 1 "
            "ORDER BY id DESC LIMIT 1",
            [folder, tag],
        )
        if not rows:
            return None
        try:
            return rows[0][0], json.loads(rows[0][1])
        except (ValueError, TypeError) as error:
            raise self._unreadable(error) from None

    def start_listing(self, folder: str, tag: str) -> int:
        """A new, incomplete listing of `folder` under rules `tag`, to write chunk by chunk: its id."""
        try:
            with self._connection:
                cursor = self._connection.execute(
                    "INSERT INTO listings (folder, rules, complete, started) VALUES (?, ?, 0, ?)",
                    (folder, tag, time.time()),
                )
        except sqlite3.DatabaseError as error:
            raise self._unwritable(error) from None
        return int(cursor.lastrowid)

    def write_chunks(self, listing: int, position: int, chunks: Sequence[ListingChunk]) -> None:
        """Keep `chunks` as the chunks of `listing` from the `position`-th on; committed as `store` commits."""
        rows = [(listing, position + offset, *chunk.to_row()) for offset, chunk in enumerate(chunks)]
        if rows:
            self._write(f"INSERT OR REPLACE INTO listing_chunks VALUES ({', '.join('?' * len(rows[0]))})", rows)

    def chunk(self, listing: int, position: int) -> ListingChunk | None:
        """The `position`-th chunk of `listing`, or None past its last."""
        columns = ", ".join(["files", "paths", *ListingChunk.ARRAYS])
        rows = self._query(
            f"SELECT {columns} FROM listing_chunks WHERE listing = ? AND position = ?", [listing, position]
        )
        if not rows:
            return None
        try:
            return ListingChunk.from_row(rows[0])
        except (ValueError, TypeError, UnicodeDecodeError) as error:
            raise self._unreadable(error) from None

    def complete_listing(self, listing: int, reason_texts: Sequence[str]) -> None:
        """Mark `listing` complete, with the reason texts its chunks index, and forget its folder's old listings.

        Of the completed listings of the same folder and rules, the newest `KEPT_LISTINGS` stay:
        a prepare that started earlier may still be reading its own. Incomplete ones stay for
        `STALE_LISTING_SECONDS`: another prepare may still be writing them.
        """
        try:
            with self._connection:
                self._connection.execute(
                    "UPDATE listings SET complete = 1, reason_texts = ? WHERE id = ?",
                    (json.dumps(list(reason_texts)), listing),
                )
                (folder, tag) = self._connection.execute(
                    "SELECT folder, rules FROM listings WHERE id = ?", (listing,)
                ).fetchone() or (None, None)
                self._connection.execute(
                    "DELETE FROM listings WHERE folder = ? AND rules = ? AND ("
                    "(complete = 1 AND id NOT IN (SELECT id FROM listings WHERE folder = ? AND rules = ? "
                    "AND complete = 1 ORDER BY id DESC LIMIT ?)) OR (complete = 0 AND started < ?))",
                    (folder, tag, folder, tag, KEPT_LISTINGS, time.time() - STALE_LISTING_SECONDS),
                )
                self._connection.execute("DELETE FROM listing_chunks WHERE listing NOT IN (SELECT id FROM listings)")
        except sqlite3.DatabaseError as error:
            raise self._unwritable(error) from None

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

    def _unreadable(self, error: Exception) -> ValueError:
        return ValueError(
            f"{self.path}: unreadable decoded-image cache ({error}); delete it (prepare decodes every file again)"
        )

    def _unwritable(self, error: Exception) -> ValueError:
        return ValueError(f"{self.path}: cannot write the decoded-image cache ({error})")

    def _write(self, sql: str, rows: list[tuple]) -> None:
        try:
            self._connection.executemany(sql, rows)
        except sqlite3.DatabaseError as error:
            raise self._unwritable(error) from None
        if time.monotonic() - self._committed >= COMMIT_SECONDS:
            self.commit()

    def _query(self, sql: str, arguments: Sequence[str]) -> list[tuple]:
        try:
            return self._connection.execute(sql, arguments).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._unreadable(error) from None
