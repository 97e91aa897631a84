"""The prepared dataset on disk: shards of bounded size read back by row, and one-line errors for damaged files."""

from __future__ import annotations

import concurrent.futures
import json
import re
from pathlib import Path

import numpy as np
import pytest

from image_classification.data import shards
from image_classification.data.dataset import Dataset, content_hashes
from tests.conftest import write_shards

# 60 images of 12x12x1 at 7 images per shard: 8 full shards and one of 4.
ROWS_PER_SHARD = 7


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "SHARD_BYTES", ROWS_PER_SHARD * 12 * 12)


def starting(path: Path, text: str) -> str:
    """A pattern for a message that starts with `path`, then `text`, and stays on one line."""
    return rf"^{re.escape(str(path))}: {re.escape(text)}[^\n]*$"


def test_rows_read_back_in_any_order_across_shards(tmp_path: Path, tiny_dataset: Dataset, small_shards) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    manifest = json.loads((folder / shards.MANIFEST).read_text())
    assert [shard["rows"] for shard in manifest["shards"]] == [7] * 8 + [4]
    assert sorted(path.name for path in folder.glob("images-*.npy")) == [
        f"images-{index:05d}.npy" for index in range(9)
    ]
    rng = np.random.default_rng(5)
    with shards.open_dataset(folder, verify=True) as data:
        assert len(data) == 60
        assert data.class_names == tiny_dataset.class_names
        assert data.image_shape == (12, 12, 1)
        assert np.array_equal(data.labels, tiny_dataset.labels)
        assert np.array_equal(data.hashes, content_hashes(tiny_dataset.images))
        assert np.array_equal(data.read(np.arange(60)), tiny_dataset.images)  # runs that cross shard boundaries
        shuffled = rng.permutation(60)
        assert np.array_equal(data.read(shuffled), tiny_dataset.images[shuffled])
        repeated = [59, 0, 0, 6, 7, 8, 13, 14, 3]
        assert np.array_equal(data.read(repeated), tiny_dataset.images[repeated])
        batches = list(data.batches(shuffled, 11))
        assert [len(batch) for batch in batches] == [11] * 5 + [5]
        assert np.array_equal(np.concatenate(batches), tiny_dataset.images[shuffled])
        assert data.read([]).shape == (0, 12, 12, 1)


def test_adding_in_pieces_writes_the_same_files(tmp_path: Path, tiny_dataset: Dataset, small_shards) -> None:
    whole = write_shards(tmp_path / "whole", tiny_dataset)
    hashes = content_hashes(tiny_dataset.images)
    with shards.ShardWriter(tmp_path / "pieces", (12, 12, 1), tiny_dataset.class_names) as writer:
        for start, stop in ((0, 3), (3, 20), (20, 21), (21, 60)):
            writer.add(tiny_dataset.images[start:stop], tiny_dataset.labels[start:stop], hashes[start:stop])
    assert snapshot(tmp_path / "pieces") == snapshot(whole)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_pixel_mean_and_std_are_those_of_every_pixel(tmp_path: Path, tiny_dataset: Dataset) -> None:
    with shards.ShardWriter(tmp_path / "prepared", (12, 12, 1), tiny_dataset.class_names) as writer:
        assert writer.pixel_mean_std() == (None, None)
        writer.add(tiny_dataset.images, tiny_dataset.labels, content_hashes(tiny_dataset.images))
    mean, std = writer.pixel_mean_std()  # counted as shards are written, the last one at close
    assert mean == pytest.approx(tiny_dataset.images.mean(), rel=1e-12)
    assert std == pytest.approx(tiny_dataset.images.std(), rel=1e-9)


def test_the_digest_names_the_content(tmp_path: Path, tiny_dataset: Dataset) -> None:
    first = shards.open_dataset(write_shards(tmp_path / "a", tiny_dataset)).digest
    assert shards.open_dataset(write_shards(tmp_path / "b", tiny_dataset)).digest == first
    images = tiny_dataset.images.copy()
    images[-1, -1, -1, 0] ^= 1
    changed = Dataset(images, tiny_dataset.labels, tiny_dataset.class_names)
    assert shards.open_dataset(write_shards(tmp_path / "c", changed)).digest != first


def test_the_writer_refuses_images_of_another_shape_or_type(tmp_path: Path, tiny_dataset: Dataset) -> None:
    with shards.ShardWriter(tmp_path / "prepared", (12, 12, 1), tiny_dataset.class_names) as writer:
        with pytest.raises(
            ValueError, match=r"expected uint8 images of shape \(12, 12, 1\), got uint8 \(2, 12, 12, 3\)"
        ):
            writer.add(np.zeros((2, 12, 12, 3), np.uint8), np.zeros(2, np.int64), np.zeros((2, 16), np.uint8))
        with pytest.raises(ValueError, match="got float32"):
            writer.add(np.zeros((2, 12, 12, 1), np.float32), np.zeros(2, np.int64), np.zeros((2, 16), np.uint8))


def test_a_writer_that_fails_leaves_no_manifest(tmp_path: Path, tiny_dataset: Dataset, small_shards) -> None:
    folder = tmp_path / "prepared"

    def interrupted_write() -> None:
        with shards.ShardWriter(folder, (12, 12, 1), ("a", "b")) as writer:
            writer.add(tiny_dataset.images, tiny_dataset.labels, content_hashes(tiny_dataset.images))
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted_write()
    assert list(folder.glob("images-*.npy"))  # the full shards were written
    assert not (folder / shards.MANIFEST).exists()
    with pytest.raises(ValueError, match=r"no prepared dataset \(manifest.json missing\); run `dvc repro prepare`$"):
        shards.open_dataset(folder)


def test_a_truncated_shard_stops_at_open_naming_the_file(tmp_path: Path, tiny_dataset: Dataset, small_shards) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    shard = folder / "images-00003.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=starting(shard, "truncated or padded (")) as caught:
        shards.open_dataset(folder)
    assert f"run `dvc checkout {folder}`" in str(caught.value)


def test_a_shard_cut_short_after_opening_stops_the_read(tmp_path: Path, tiny_dataset: Dataset, small_shards) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    with shards.open_dataset(folder) as data:
        shard = folder / "images-00008.npy"
        shard.write_bytes(shard.read_bytes()[:-1])
        assert np.array_equal(data.read([0, 1]), tiny_dataset.images[:2])
        with pytest.raises(ValueError, match=starting(shard, "is shorter than its manifest says")):
            data.read([59])


@pytest.mark.parametrize("name", ["images-00002.npy", shards.LABELS, shards.HASHES])
def test_a_corrupt_file_of_the_same_size_fails_verify_naming_it(
    tmp_path: Path, tiny_dataset: Dataset, small_shards, name: str
) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    data = bytearray((folder / name).read_bytes())
    data[-1] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    corrupt = starting(folder / name, "does not match its md5 in the manifest (corrupt); run `dvc checkout")
    # Sizes and headers are intact: opening does not read every byte, verifying does.
    with shards.open_dataset(folder) as opened, pytest.raises(ValueError, match=corrupt):
        opened.verify()
    with pytest.raises(ValueError, match="corrupt"):
        shards.open_dataset(folder, verify=True)


def test_a_missing_shard_says_to_pull_it(tmp_path: Path, tiny_dataset: Dataset) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    (folder / "images-00000.npy").unlink()
    missing = "shard missing from the prepared dataset; run `dvc pull` or `dvc repro prepare`"
    with pytest.raises(ValueError, match=starting(folder / "images-00000.npy", missing)):
        shards.open_dataset(folder)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x93NUMPY garbage", r"labels.npy: unreadable \(.*\); run `dvc checkout` or `dvc repro prepare`$"),
        (b"PK\x03\x04 a zip, not an .npy", r"labels.npy: unreadable \(the magic string is not correct"),
        (b"", r"labels.npy: unreadable \(EOF"),
    ],
)
def test_an_unreadable_labels_file_is_one_line(
    tmp_path: Path, tiny_dataset: Dataset, content: bytes, message: str
) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    (folder / shards.LABELS).write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        shards.open_dataset(folder)
    assert "\n" not in str(caught.value)


def test_labels_of_another_length_are_refused(tmp_path: Path, tiny_dataset: Dataset) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    np.save(folder / shards.LABELS, tiny_dataset.labels[:-1])
    with pytest.raises(ValueError, match=r"labels.npy: holds int64 \(59,\), the manifest says int64 \(60,\)$"):
        shards.open_dataset(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda manifest: "not json {", r"manifest.json: unreadable manifest \(.*\); run `dvc repro prepare`$"),
        (lambda manifest: [1, 2], r"manifest.json: not a prepared dataset manifest; run `dvc repro prepare`$"),
        (lambda manifest: {**manifest, "format_version": 99}, r"format version 99, this code reads 1; run `dvc repro"),
        (lambda manifest: {**manifest, "shards": [{"file": "x"}]}, r"manifest.json: malformed manifest \("),
        (
            lambda manifest: {**manifest, "images": 61},
            r"labels.npy: holds int64 \(60,\), the manifest says int64 \(61,",
        ),
        (lambda manifest: {**manifest, "image_shape": [12, 6, 2]}, r"images-00000.npy: holds uint8 \(60, 12, 12, 1\)"),
    ],
)
def test_a_bad_manifest_is_one_line(tmp_path: Path, tiny_dataset: Dataset, edit, message: str) -> None:
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    path = folder / shards.MANIFEST
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ValueError, match=message) as caught:
        shards.open_dataset(folder)
    assert "\n" not in str(caught.value)


def test_rows_outside_the_dataset_are_an_index_error(tmp_path: Path, tiny_dataset: Dataset) -> None:
    with shards.open_dataset(write_shards(tmp_path / "prepared", tiny_dataset)) as data:
        with pytest.raises(IndexError, match=r"rows must lie in 0\.\.59, got 0\.\.60"):
            data.read([0, 60])
        with pytest.raises(IndexError, match=r"got -1\.\.3"):
            data.read([3, -1])


def shard_files(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("images-*.npy"))]


def test_shards_end_where_content_says_so_an_insertion_changes_only_its_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4x4 images: at least 8 and at most 40 rows per shard, ending on a content hash.
    monkeypatch.setattr(shards, "SHARD_MIN_BYTES", 8 * 16)
    monkeypatch.setattr(shards, "SHARD_BYTES", 40 * 16)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (600, 4, 4, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 600)
    before = shard_files(write_shards(tmp_path / "before", Dataset(images, labels, ("a", "b", "c"))))
    manifest = json.loads((tmp_path / "before" / shards.MANIFEST).read_text())
    sizes = [shard["rows"] for shard in manifest["shards"]]
    assert sum(sizes) == 600
    assert min(sizes[:-1]) >= 8
    assert max(sizes) <= 40
    assert len(set(sizes)) > 3  # ends follow the content, not a fixed count
    new = rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    inserted = Dataset(
        np.concatenate([images[:300], new, images[300:]]), np.insert(labels, 300, [0, 1, 2]), ("a", "b", "c")
    )
    after = shard_files(write_shards(tmp_path / "after", inserted))
    # Every shard but the one or two around row 300 is byte for byte a shard of before.
    assert len([shard for shard in after if shard not in before]) <= 2
    assert len([shard for shard in before if shard not in after]) <= 2
    assert len(after) >= len(before) - 1


def test_shard_ends_are_the_same_however_rows_arrive() -> None:
    hashes = content_hashes(np.random.default_rng(1).integers(0, 256, (500, 2, 2, 1), dtype=np.uint8))
    whole, left = shards.shard_ends(hashes, 0, 7, 30)
    ends, filled, start = [], 0, 0
    for stop in (1, 2, 50, 51, 200, 500):
        part, filled = shards.shard_ends(hashes[start:stop], filled, 7, 30)
        ends += [start + end for end in part]
        start = stop
    assert ends == whole
    assert filled == left
    sizes = np.diff([0, *whole])
    assert sizes.min() >= 7
    assert sizes.max() <= 30
    assert shards.shard_ends(hashes[:0], 0, 7, 30) == ([], 0)


def test_a_store_gives_back_the_shards_it_holds_without_reading_pixels(
    tmp_path: Path, tiny_dataset: Dataset, small_shards
) -> None:
    store = shards.ShardStore(tmp_path / "store")
    hashes = content_hashes(tiny_dataset.images)
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return tiny_dataset.images[start:stop]

    for name in ("first", "second"):
        reads.clear()
        with shards.ShardWriter(tmp_path / name, (12, 12, 1), tiny_dataset.class_names, store) as writer:
            writer.add_rows(tiny_dataset.labels, hashes, read)
        mean_std = writer.pixel_mean_std()
        assert mean_std[0] == pytest.approx(tiny_dataset.images.mean(), rel=1e-12)
    # The second writer linked all 9 shards from the store. Only the rows after the last end were
    # read: they wait in the open shard until `close`, which may find it in the store too.
    assert writer.reused == 9
    assert reads == [(56, 60)]
    assert snapshot(tmp_path / "first") == snapshot(tmp_path / "second")
    assert (tmp_path / "second" / "images-00000.npy").stat().st_ino == (
        tmp_path / "store" / f"{writer.keys[0]}.npy"
    ).stat().st_ino
    # A stored file changed since is not given back, and keep_only prunes the others.
    stored = tmp_path / "store" / f"{writer.keys[1]}.npy"
    (tmp_path / "second" / "images-00001.npy").unlink()
    stored.write_bytes(stored.read_bytes())
    assert store.get(writer.keys[1]) is None
    assert store.get(writer.keys[0]) is not None
    store.keep_only(writer.keys[:2])
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == sorted(
        f"{key}.{suffix}" for key in writer.keys[:2] for suffix in ("npy", "json")
    )


def test_a_reader_keeps_a_bounded_number_of_files_open(
    tmp_path: Path, tiny_dataset: Dataset, small_shards, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shards, "MAX_OPEN_SHARDS", 2)
    folder = write_shards(tmp_path / "prepared", tiny_dataset)
    order = np.random.default_rng(2).permutation(60)
    with shards.open_dataset(folder) as data:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(data.read, np.array_split(order, 30)))
        assert len(data._handles) <= 2
    assert np.array_equal(np.concatenate(parts), tiny_dataset.images[order])


def test_large_datasets_get_larger_shards_up_to_the_most() -> None:
    image = (28, 28, 1)
    fewest, most = shards.shard_rows(image)
    assert fewest == shards.SHARD_MIN_BYTES // 784
    assert most == shards.SHARD_BYTES // 784
    assert shards.shard_rows(image, 100_000) == (fewest, most)  # 78 MB: the smallest shards
    # 192 GB of 224x224 RGB images: the minimum grows to 32 MiB, so some 3,000 shards, not 190,000.
    fewest, most = shards.shard_rows((224, 224, 3), 1_281_167)
    assert fewest * 224 * 224 * 3 <= 32 * 2**20 < (fewest + 1) * 224 * 224 * 3
    assert most == shards.SHARD_BYTES // (224 * 224 * 3)
    assert shards.shard_rows((4000, 4000, 3)) == (1, 1)  # a 48 MB image is a shard of its own


def test_a_shard_gone_from_the_store_meanwhile_is_written_from_its_pixels(
    tmp_path: Path, tiny_dataset: Dataset, small_shards, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = shards.ShardStore(tmp_path / "store")
    with shards.ShardWriter(tmp_path / "first", (12, 12, 1), tiny_dataset.class_names, store) as writer:
        writer.add(tiny_dataset.images, tiny_dataset.labels, content_hashes(tiny_dataset.images))
    get = shards.ShardStore.get

    def get_then_lose(self: shards.ShardStore, key: str) -> tuple | None:
        found = get(self, key)
        if found:
            found[0].unlink()  # another prepare sharing the store pruned it after the lookup
        return found

    monkeypatch.setattr(shards.ShardStore, "get", get_then_lose)
    with shards.ShardWriter(tmp_path / "second", (12, 12, 1), tiny_dataset.class_names, store) as writer:
        writer.add(tiny_dataset.images, tiny_dataset.labels, content_hashes(tiny_dataset.images))
    assert writer.reused == 0
    assert snapshot(tmp_path / "first") == snapshot(tmp_path / "second")
