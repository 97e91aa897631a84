"""The decoded-image cache: keys that change with whatever changes the decoding, and entries that read back exactly."""

from __future__ import annotations

import dataclasses
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_classification.data import decode_cache, images
from image_classification.data.dataset import content_hashes, flat_values
from tests.conftest import make_images

SPEC = images.ImageSpec(12, 12, 1)
MD5 = "0123456789abcdef0123456789abcdef"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_keys_follow_the_content_the_suffix_and_the_rules() -> None:
    tag = decode_cache.rules_tag(SPEC)
    assert decode_cache.rules_tag(images.ImageSpec(12, 12, 1)) == tag
    key = decode_cache.file_key(MD5, "cat/a.png", tag)
    # The name counts by its suffix only, whatever its case: a renamed or moved file is not decoded again.
    assert decode_cache.file_key(MD5, "dog/deeper/B.PNG", tag) == key
    assert decode_cache.file_key(MD5, "cat/a.jxl", tag) != key  # refused by name
    assert decode_cache.file_key(MD5, "cat/a", tag) != key
    assert decode_cache.file_key("f" * 32, "cat/a.png", tag) != key
    changes = {"height": 13, "width": 11, "channels": 3, "interpolation": "nearest", "aspect": "crop",
               "background": "black", "max_pixels": 1000}  # fmt: skip
    tags = {decode_cache.rules_tag(dataclasses.replace(SPEC, **{name: value})) for name, value in changes.items()}
    assert len(tags | {tag}) == len(changes) + 1
    assert decode_cache.file_key(MD5, "cat/a.png", tags.pop()) != key


def test_a_new_cache_version_changes_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = decode_cache.rules_tag(SPEC)
    monkeypatch.setattr(decode_cache, "CACHE_VERSION", decode_cache.CACHE_VERSION + 1)
    assert decode_cache.rules_tag(SPEC) != before


def test_decode_entry_keeps_what_decoding_gave() -> None:
    image = make_images(classes=3, per_class=1).images[0]
    entry = decode_cache.decode_entry(png(image[:, :, 0]), "a.png", SPEC)
    assert entry.reason is None
    assert entry.pixels == image.tobytes()
    assert entry.content_hash == content_hashes(image[np.newaxis]).tobytes()
    assert entry.flat == -1
    assert decode_cache.decode_entry(png(np.full((5, 7), 9, np.uint8)), "a.png", SPEC).flat == 9
    refused = decode_cache.decode_entry(png(image[:, :, 0]), "a.svg", SPEC)
    assert refused == decode_cache.Entry(images.UNSUPPORTED_SUFFIXES[".svg"])
    assert decode_cache.decode_entry(b"", "a.png", SPEC) == decode_cache.Entry("empty file (0 bytes)")


def test_entries_read_back_in_the_order_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_cache, "QUERY_ROWS", 2)  # several queries, each answering a part
    dataset = make_images(classes=2, per_class=3)
    pixels = np.concatenate([dataset.images, np.full((1, 12, 12, 1), 200, np.uint8)])
    keys = [f"{row}:.png:rules" for row in range(len(pixels))]
    entries = [decode_cache.decode_entry(png(image[:, :, 0]), "x.png", SPEC) for image in pixels]
    with decode_cache.DecodeCache(tmp_path / "decoded.sqlite") as cache:
        cache.store([*zip(keys, entries, strict=True), ("bad", decode_cache.Entry("not a readable image: x"))])
    with decode_cache.DecodeCache(tmp_path / "decoded.sqlite") as cache:  # kept on disk
        asked = [keys[6], "bad", keys[0], keys[6], keys[3], keys[2]]
        reasons, hashes, flat = cache.outcomes(asked)
        assert reasons == [None, "not a readable image: x", None, None, None, None]
        wanted = pixels[[6, 0, 6, 3, 2]]
        assert np.array_equal(hashes[[0, 2, 3, 4, 5]], content_hashes(wanted))
        assert not hashes[1].any()
        assert flat.tolist() == [200, -1, *flat_values(wanted[1:]).tolist()]
        assert np.array_equal(cache.pixels([keys[6], keys[0], keys[6], keys[3], keys[2]], (12, 12, 1)), wanted)
        assert cache.pixels([], (12, 12, 1)).shape == (0, 12, 12, 1)


def test_missing_gives_the_positions_of_unknown_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_cache, "QUERY_ROWS", 2)
    with decode_cache.DecodeCache(tmp_path / "decoded.sqlite") as cache:
        assert cache.missing(["a", "b"]) == [0, 1]
        cache.store([("a", decode_cache.Entry("bad")), ("c", decode_cache.Entry(None, b"\0", bytes(16), 0))])
        assert cache.missing(["a", "b", "c", "d", "b", "a"]) == [1, 3, 4]
        assert cache.missing([]) == []


def test_writes_are_committed_together_at_most_once_a_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "decoded.sqlite"
    monkeypatch.setattr(decode_cache, "COMMIT_SECONDS", 3600.0)
    with decode_cache.DecodeCache(path) as writer, decode_cache.DecodeCache(path) as reader:
        writer.store([("a", decode_cache.Entry("bad"))])
        assert writer.missing(["a"]) == []  # its own writes are visible to the writer at once
        assert reader.missing(["a"]) == [0]  # not yet to another process
        writer.commit()
        assert reader.missing(["a"]) == []
        writer.store([("b", decode_cache.Entry("bad"))])
        listing = writer.start_listing("folder", "rules")  # a listing's start and end commit too
        assert reader.missing(["b"]) == []
        writer.write_chunks(listing, 0, [decode_cache.ListingChunk.empty(["x.png"])])
        writer.store([("c", decode_cache.Entry("bad"))])
    with decode_cache.DecodeCache(path) as reader:  # closing committed the rest
        assert reader.missing(["c"]) == []
        assert reader.chunk(listing, 0).paths == ["x.png"]
    monkeypatch.setattr(decode_cache, "COMMIT_SECONDS", 0.0)
    with decode_cache.DecodeCache(path) as writer, decode_cache.DecodeCache(path) as reader:
        writer.store([("d", decode_cache.Entry("bad"))])
        assert reader.missing(["d"]) == []


def test_unknown_and_failed_keys_have_no_pixels(tmp_path: Path) -> None:
    with decode_cache.DecodeCache(tmp_path / "decoded.sqlite") as cache:
        cache.store([("bad", decode_cache.Entry("not a readable image"))])
        with pytest.raises(KeyError, match="bad"):
            cache.pixels(["bad"], (12, 12, 1))
        with pytest.raises(KeyError, match="unknown"):
            cache.pixels(["unknown"], (12, 12, 1))
        with pytest.raises(KeyError, match="unknown"):
            cache.outcomes(["bad", "unknown"])


def test_a_file_that_is_not_a_cache_says_to_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "decoded.sqlite"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    expected = rf"^{re.escape(str(path))}: unusable decoded-image cache \([^\n]*\); delete it \(prepare decodes"
    with pytest.raises(ValueError, match=expected + r" every file again\)$"):
        decode_cache.DecodeCache(path)


def a_chunk(count: int) -> decode_cache.ListingChunk:
    rng = np.random.default_rng(count)
    paths = ["class_0/é.png", "class_0/\udcff.png", "class_1/a b.png", "class_1/x.txt", "z.png"][:count]
    return decode_cache.ListingChunk(
        paths,  # "\udcff" is a byte that is not UTF-8 on disk
        rng.integers(0, 2**40, (count, 3)),
        rng.integers(0, 256, (count, 16), dtype=np.uint8),
        np.array([-1, 0, -2, 1, -1][:count], dtype=np.int32),
        rng.integers(0, 256, (count, 16), dtype=np.uint8),
        np.array([-1, 7, -1, -1, 255][:count], dtype=np.int16),
    )


def assert_same_chunk(found: decode_cache.ListingChunk, expected: decode_cache.ListingChunk) -> None:
    assert found.paths == expected.paths
    for name in decode_cache.ListingChunk.ARRAYS:
        assert np.array_equal(getattr(found, name), getattr(expected, name)), name
        assert getattr(found, name).dtype == getattr(expected, name).dtype, name


def test_a_listing_reads_back_chunk_by_chunk_per_folder_and_rules(tmp_path: Path) -> None:
    path = tmp_path / "decoded.sqlite"
    with decode_cache.DecodeCache(path) as cache:
        assert cache.listing("/data/raw", "rules") is None
        listing = cache.start_listing("/data/raw", "rules")
        cache.write_chunks(listing, 0, [a_chunk(5)])
        cache.write_chunks(listing, 1, [a_chunk(1)])
        assert cache.listing("/data/raw", "rules") is None  # not complete yet
        cache.complete_listing(listing, ["not an image", "cannot read file: x"])
        other = cache.start_listing("/data/raw", "other rules")
        cache.write_chunks(other, 0, [a_chunk(3)])
        cache.complete_listing(other, [])
    with decode_cache.DecodeCache(path) as cache:
        assert cache.listing("/data/raw", "rules") == (listing, ["not an image", "cannot read file: x"])
        assert_same_chunk(cache.chunk(listing, 0), a_chunk(5))
        assert_same_chunk(cache.chunk(listing, 1), a_chunk(1))
        assert cache.chunk(listing, 2) is None
        assert len(cache.chunk(cache.listing("/data/raw", "other rules")[0], 0)) == 3
        assert cache.listing("/elsewhere", "rules") is None


def test_completing_a_listing_keeps_the_two_newest_of_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with decode_cache.DecodeCache(tmp_path / "decoded.sqlite") as cache:

        def complete(folder: str = "/data/raw", files: int = 2) -> int:
            listing = cache.start_listing(folder, "rules")
            cache.write_chunks(listing, 0, [a_chunk(files)])
            cache.complete_listing(listing, [])
            return listing

        first, elsewhere = complete(), complete("/elsewhere")
        running = cache.start_listing("/data/raw", "rules")  # another prepare, still walking
        cache.write_chunks(running, 0, [a_chunk(4)])
        second = complete()
        assert cache.listing("/data/raw", "rules") == (second, [])
        assert len(cache.chunk(first, 0)) == 2  # a prepare that started earlier may still read it
        third = complete()
        assert cache.listing("/data/raw", "rules") == (third, [])
        assert cache.chunk(first, 0) is None
        assert len(cache.chunk(second, 0)) == 2
        assert len(cache.chunk(running, 0)) == 4  # incomplete, and recent
        assert len(cache.chunk(elsewhere, 0)) == 2
        # A day later, an incomplete listing is a prepare that stopped half-way.
        now = time.time()
        monkeypatch.setattr(decode_cache.time, "time", lambda: now + decode_cache.STALE_LISTING_SECONDS + 1)
        complete()
        assert cache.chunk(running, 0) is None
        assert cache.chunk(second, 0) is None
        assert len(cache.chunk(third, 0)) == 2


def test_an_empty_chunk_reads_back_empty(tmp_path: Path) -> None:
    with decode_cache.DecodeCache(tmp_path / "decoded.sqlite") as cache:
        listing = cache.start_listing("/data/raw", "rules")
        cache.write_chunks(listing, 0, [decode_cache.ListingChunk.empty([])])
        assert_same_chunk(cache.chunk(listing, 0), decode_cache.ListingChunk.empty([]))


def test_a_damaged_listing_says_to_delete_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "decoded.sqlite"
    with decode_cache.DecodeCache(path) as cache:
        listing = cache.start_listing("/data/raw", "rules")
        cache.write_chunks(listing, 0, [a_chunk(5)])
        with cache._connection:
            cache._connection.execute("UPDATE listing_chunks SET md5s = ?", (b"short",))
        expected = rf"^{re.escape(str(path))}: unreadable decoded-image cache \([^\n]*\); delete it [^\n]*$"
        with pytest.raises(ValueError, match=expected):
            cache.chunk(listing, 0)
        cache.write_chunks(listing, 1, [a_chunk(5)])
        with cache._connection:
            cache._connection.execute("UPDATE listing_chunks SET files = 4 WHERE position = 1")
        with pytest.raises(ValueError, match=expected.replace("[^\\n]*", "5 paths for 4 files", 1)):
            cache.chunk(listing, 1)
