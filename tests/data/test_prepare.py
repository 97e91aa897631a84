"""The prepare stage on each source: statistics, on_bad_file, and one-line errors from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from image_classification import artifacts
from image_classification.config import parse_params
from image_classification.data import dataset as dataset_lib
from image_classification.data import images, prepare, shards, sources
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, make_images, merged, raw_params
from tests.data.test_sources import counting_decodes, png, write_tree


def data_params(**overrides):
    values = {"source": "image_folder", "image_height": 12, "image_width": 12, "max_images": None, **overrides}
    return parse_params(merged(raw_params(), {"data": values})).data


def test_image_folder_statistics_report_everything(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=3, per_class=10)
    (raw / "class_2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    first = next((raw / "class_0").iterdir())
    (raw / "class_0" / "copy.png").write_bytes(first.read_bytes())
    (raw / "class_1" / "copy.png").write_bytes(first.read_bytes())  # the same image under another label
    statistics = prepare.prepare_dataset(
        data_params(), tmp_path / "prepared", tmp_path / "s.json", raw, workers=1, progress=False
    )
    assert statistics == artifacts.read_json(tmp_path / "s.json")
    # The copy under class_1 makes its original and class_0's copy ambiguous: all three are left out.
    assert statistics["images"] == 29
    assert statistics["count_per_class"] == {"class_0": 9, "class_1": 10, "class_2": 10}
    assert statistics["class_balance"]["ratio"] == 1.1111
    assert statistics["class_balance"]["smallest_class"] == "class_0"
    assert statistics["duplicates"] == 0
    assert statistics["conflicting_duplicates"] == 0
    assert statistics["constant_images"] == 0
    assert statistics["rejected_count"] == 4
    rejected = {problem["file"]: problem["reason"] for problem in statistics["rejected"]}
    assert rejected["class_2/broken.png"].startswith("not a readable image")
    assert rejected["class_1/copy.png"] == (
        f"the same image as class_0/{first.name} (class_0), class_0/copy.png (class_0), under another class; "
        "an image with two labels cannot be learned"
    )
    assert statistics["data_version"]["files"] == 33
    with shards.open_dataset(tmp_path / "prepared", verify=True) as prepared:
        assert len(prepared) == 29
        assert np.bincount(prepared.labels).tolist() == [9, 10, 10]


def test_problems_are_counted_and_the_first_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of many bad files keeps a few of them by name: memory holds no entry per bad file."""
    monkeypatch.setattr(sources, "MAX_LISTED", 3)
    raw = tmp_path / "raw"
    write_tree(raw, classes=3, per_class=10)
    for index in range(5):
        (raw / "class_1" / f"broken-{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (raw / "class_1" / f"notes-{index}.txt").write_text("not an image")
    (raw / "broken class").mkdir()
    for index in range(4):
        (raw / "broken class" / f"zero-{index}.png").write_bytes(b"")
    original = sorted((raw / "class_0").iterdir())[0]
    for name in ("class_1", "class_2"):
        for index in range(3):
            (raw / name / f"copy-{index}.png").write_bytes(original.read_bytes())
    statistics = prepare.prepare_dataset(
        data_params(), tmp_path / "prepared", tmp_path / "s.json", raw, workers=1, progress=False
    )
    assert statistics["rejected_count"] == 5 + 4 + 7  # broken files, empty files, and the original with its 6 copies
    assert len(statistics["rejected"]) == 3
    assert statistics["ignored_count"] == 5 + 1  # the notes, and the class folder left without an image
    # The first files by name, then every class folder left out, whatever the count.
    assert [problem["file"] for problem in statistics["ignored"]] == [
        "class_1/notes-0.txt",
        "class_1/notes-1.txt",
        "class_1/notes-2.txt",
        "broken class/",
    ]
    assert statistics["ignored"][-1]["reason"] == (
        "class folder without a usable image (all 4 image file(s) in it were rejected, first: "
        "broken class/zero-0.png: empty file (0 bytes)); class left out"
    )
    assert statistics["classes"] == 3


def test_a_copy_names_a_few_of_its_copies_and_counts_the_others(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=10)
    original = sorted((raw / "class_0").iterdir())[0]
    for index in range(6):
        (raw / "class_1" / f"copy-{index}.png").write_bytes(original.read_bytes())
    loaded = prepare.load(data_params(), raw, workers=1, progress=False)
    clashes = dataset_lib.conflicting_sets(loaded.labels, loaded.duplicate_sets())
    problems = prepare.conflicting_copies(loaded, clashes)
    assert [problem.file for problem in problems] == [original.relative_to(raw).as_posix()] + [
        f"class_1/copy-{index}.png" for index in range(6)
    ]
    assert problems[0].reason == (
        "the same image as class_1/copy-0.png (class_1), class_1/copy-1.png (class_1), class_1/copy-2.png (class_1) "
        "and 3 more, under another class; an image with two labels cannot be learned"
    )
    assert problems[-1].reason.startswith(f"the same image as {problems[0].file} (class_0), class_1/copy-0.png")


def test_on_bad_file_fail_stops_and_writes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=5)
    (raw / "class_1" / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1 image file\(s\) rejected.*first: class_1/zero.png: empty file"):
        prepare.prepare_dataset(
            data_params(on_bad_file="fail"), tmp_path / "prepared", tmp_path / "s.json", raw, workers=1
        )
    assert not (tmp_path / "prepared").exists()


def test_one_class_is_a_clear_error(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=1, per_class=5)
    with pytest.raises(ValueError, match=r"at least 2 classes, got 1: \['class_0'\]"):
        prepare.prepare_dataset(data_params(), tmp_path / "prepared", tmp_path / "s.json", raw, workers=1)


def test_folder_sources_need_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass it with --raw"):
        prepare.prepare_dataset(data_params(source="npz"), tmp_path / "prepared", tmp_path / "s.json")
    with pytest.raises(ValueError, match="no such folder"):
        prepare.prepare_dataset(
            data_params(source="idx"), tmp_path / "prepared", tmp_path / "s.json", tmp_path / "nope"
        )


def run_cli(tmp_path: Path, raw: Path, env: dict | None = None, **data) -> subprocess.CompletedProcess:
    params = merged(merged(raw_params(), TINY_OVERRIDES), {"data": data})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.prepare", "--params", str(tmp_path / "params.yaml"), "--raw", str(raw),
               "--output", str(tmp_path / "prepared"), "--statistics", str(tmp_path / "s.json")]  # fmt: skip
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=300)


def test_cli_skips_bad_files_with_a_warning(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=10)
    (raw / "class_0" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result = run_cli(tmp_path, raw, source="image_folder", image_height=12, image_width=12, max_images=None)
    assert result.returncode == 0, result.stderr
    assert "prepare: left out 1 rejected image file(s)" in result.stderr
    assert "20 images of shape [12, 12, 1] in 2 classes from 'image_folder', 1 file(s) rejected" in result.stdout
    assert json.loads((tmp_path / "s.json").read_text())["rejected"][0]["file"] == "class_0/bomb.png"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "npz"}, "expected exactly one .npz file for data.source npz, found none"),
        ({"source": "idx"}, "no IDX files for data.source idx"),
        ({"source": "image_folder"}, "a classifier needs at least 2 classes, got 0"),
    ],
)
def test_cli_bad_data_is_one_line(tmp_path: Path, data: dict, message: str) -> None:
    (tmp_path / "raw").mkdir()
    result = run_cli(tmp_path, tmp_path / "raw", **data)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("prepare: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_keras_dataset_offline_with_an_empty_cache_is_one_line(tmp_path: Path) -> None:
    # A proxy on a closed local port makes every download fail at once, without touching the network.
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update(KERAS_HOME=str(tmp_path / "keras"), https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    result = run_cli(tmp_path, tmp_path, env=env, source="keras", keras_dataset="mnist")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prepare: error: keras dataset 'mnist' is not in the Keras cache")
    assert "copy mnist.npz" in lines[0]
    assert "KERAS_HOME" in lines[0]


def shapes_on_transparent(root: Path, per_class: int = 30, shade: int = 0) -> None:
    """RGBA PNGs of an opaque shape of grey `shade` on a fully transparent background: circles and squares."""
    rng = np.random.default_rng(3)
    for name in ("circle", "square"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            size, left, top = rng.integers(8, 16), rng.integers(0, 12), rng.integers(0, 12)
            pixels = np.zeros((28, 28, 4), np.uint8)
            pixels[..., :3] = shade
            rows, columns = np.mgrid[:28, :28]
            if name == "circle":
                inside = (rows - top - size / 2) ** 2 + (columns - left - size / 2) ** 2 <= (size / 2) ** 2
            else:
                inside = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
            pixels[inside, 3] = 255
            Image.fromarray(pixels, "RGBA").save(root / name / f"{index:02d}.png")


def test_dark_shapes_on_transparent_backgrounds_keep_their_shape(tmp_path: Path) -> None:
    shapes_on_transparent(tmp_path / "raw")
    statistics = prepare.prepare_dataset(
        data_params(image_height=28, image_width=28), tmp_path / "prepared", tmp_path / "s.json", tmp_path / "raw", 1
    )
    assert statistics["images"] == 60
    assert statistics["pixel_std"] > 50
    assert statistics["duplicates"] == statistics["constant_images"] == 0


def test_degenerate_decoded_data_stops_prepare_naming_the_cause(tmp_path: Path) -> None:
    # White shapes on a transparent background, composited over white: 60 flat white squares.
    shapes_on_transparent(tmp_path / "raw", shade=255)
    params = data_params(image_height=28, image_width=28)
    with pytest.raises(ValueError, match=r"60 of 60 images decode to a single flat colour \(pixel value 255; first: "
                       r"circle/00.png\); .*data.background"):  # fmt: skip
        prepare.prepare_dataset(params, tmp_path / "prepared", tmp_path / "s.json", tmp_path / "raw", 1)
    assert not (tmp_path / "prepared").exists()
    statistics = prepare.prepare_dataset(
        data_params(image_height=28, image_width=28, background="black"), tmp_path / "prepared", tmp_path / "s.json",
        tmp_path / "raw", 1,
    )  # fmt: skip
    assert statistics["constant_images"] == 0


def test_a_folder_of_copies_stops_prepare(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=3)
    for name in ("class_0", "class_1"):
        first = sorted((raw / name).iterdir())[0]
        for copy in range(10):
            (raw / name / f"copy{copy}.png").write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match=r"20 of 26 images are exact copies of another after decoding \(first: "):
        prepare.prepare_dataset(data_params(), tmp_path / "prepared", tmp_path / "s.json", raw, workers=1)


def test_the_same_image_under_two_classes_stops_prepare_under_fail(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=5)
    first = sorted((raw / "class_0").iterdir())[0]
    (raw / "class_1" / "mislabelled.png").write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match=r"2 image file\(s\) rejected .*first: class_0/.*: the same image as "
                       r"class_1/mislabelled.png \(class_1\), under another class"):  # fmt: skip
        prepare.prepare_dataset(data_params(on_bad_file="fail"), tmp_path / "prepared", tmp_path / "s.json", raw, 1)


def test_unusable_image_files_count_and_stop_under_fail(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=5)
    (raw / "class_1" / "IMG_0001.jxl").write_bytes(b"\xff\x0a" + bytes(64))
    statistics = prepare.prepare_dataset(data_params(), tmp_path / "prepared", tmp_path / "s.json", raw, workers=1)
    assert statistics["rejected_count"] == 1
    assert statistics["rejected"][0]["reason"].startswith("JPEG XL is not supported")
    with pytest.raises(ValueError, match=r"1 image file\(s\) rejected .*IMG_0001.jxl: JPEG XL is not supported"):
        prepare.prepare_dataset(data_params(on_bad_file="fail"), tmp_path / "prepared", tmp_path / "s.json", raw, 1)


def decode_folder(raw: Path, spec: images.ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """Every image file of `raw/<class>/`, decoded one by one, in the order of classes then names, with its label."""
    files = [(label, path) for label, folder in enumerate(sorted(raw.iterdir())) for path in sorted(folder.iterdir())]
    pixels = np.stack([images.decode_image(path, spec) for _, path in files])
    return pixels, np.array([label for label, _ in files])


def test_the_prepared_shards_hold_the_decoded_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=3, per_class=10)
    # 4 images per shard, 3 per chunk read from the source: chunks straddle shards.
    monkeypatch.setattr(shards, "SHARD_BYTES", 4 * 12 * 12)
    monkeypatch.setattr(prepare, "READ_BYTES", 3 * 12 * 12)
    statistics = prepare.prepare_dataset(data_params(), tmp_path / "prepared", tmp_path / "s.json", raw, 1, False)
    expected, labels = decode_folder(raw, prepare.image_spec(data_params()))
    assert len(list((tmp_path / "prepared").glob("images-*.npy"))) == 8
    with shards.open_dataset(tmp_path / "prepared", verify=True) as prepared:
        assert prepared.class_names == ("class_0", "class_1", "class_2")
        assert np.array_equal(prepared.labels, labels)
        assert np.array_equal(prepared.hashes, dataset_lib.content_hashes(expected))
        order = np.random.default_rng(2).permutation(30)
        assert np.array_equal(prepared.read(order), expected[order])
        assert np.array_equal(np.concatenate(list(prepared.batches(order, 7))), expected[order])
    assert statistics["pixel_mean"] == pytest.approx(expected.mean(), abs=1e-4)
    assert statistics["pixel_std"] == pytest.approx(expected.std(), abs=1e-4)


def test_array_sources_write_the_sampled_rows_in_order(tmp_path: Path) -> None:
    dataset = make_images(classes=3, per_class=10)
    (tmp_path / "raw").mkdir()
    np.savez(tmp_path / "raw" / "data.npz", x=dataset.images, y=dataset.labels)
    params = data_params(source="npz", max_images=12)
    statistics = prepare.prepare_dataset(params, tmp_path / "prepared", tmp_path / "s.json", tmp_path / "raw")
    kept = dataset_lib.stratified_sample(dataset.labels, 12, params.seed)
    with shards.open_dataset(tmp_path / "prepared") as prepared:
        assert np.array_equal(prepared.read(np.arange(12)), dataset.images[kept])
        assert np.array_equal(prepared.labels, dataset.labels[kept])
    assert statistics["count_per_class"] == {"0": 4, "1": 4, "2": 4}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_an_incremental_prepare_equals_a_full_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Shards of 2 to 8 images, so that the unchanged ones are reused from the shard store.
    monkeypatch.setattr(shards, "SHARD_MIN_BYTES", 2 * 12 * 12)
    monkeypatch.setattr(shards, "SHARD_BYTES", 8 * 12 * 12)
    raw, cache = tmp_path / "raw", tmp_path / "cache" / "decoded.sqlite"
    write_tree(raw, classes=3, per_class=8)
    (raw / "class_2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    decoded = counting_decodes(monkeypatch)
    caplog.set_level("INFO", logger=prepare.__name__)
    before = prepare.prepare_dataset(data_params(), tmp_path / "before", tmp_path / "s0.json", raw, 1, False, cache)
    assert len(decoded) == 25
    # A first prepare has no earlier shards to speak of.
    (first,) = [record.getMessage() for record in caplog.records if record.msg.startswith("wrote ")]
    assert first == f"wrote {len(list((tmp_path / 'before').glob('images-*.npy')))} shards"
    caplog.clear()
    extra = make_images(classes=3, per_class=2, seed=9)
    for row, image in enumerate(extra.images[:3]):
        (raw / "class_1" / f"new{row}.png").write_bytes(png(image[:, :, 0]))
    removed, edited = sorted((raw / "class_0").iterdir())[:2]
    removed.unlink()
    edited.write_bytes(png(extra.images[3, :, :, 0]))
    decoded.clear()
    statistics = prepare.prepare_dataset(
        data_params(), tmp_path / "incremental", tmp_path / "s1.json", raw, 1, False, cache
    )
    (written,) = [record.args for record in caplog.records if record.msg.startswith("wrote %d of %d shards")]
    assert 0 < written[0] < written[1]
    stored = {path.name for path in (cache.parent / prepare.SHARD_STORE).glob("*.npy")}
    assert len(stored) == written[1]  # the store keeps the last dataset's shards only
    assert sorted(decoded) == ["class_0/" + edited.name, "class_1/new0.png", "class_1/new1.png", "class_1/new2.png"]
    assert statistics["images"] == before["images"] + 2 == 26
    # The broken file was not decoded again: its reason came from the cache.
    assert statistics["rejected"] == before["rejected"]
    assert [problem["file"] for problem in statistics["rejected"]] == ["class_2/broken.png"]
    scratch = prepare.prepare_dataset(data_params(), tmp_path / "scratch", tmp_path / "s2.json", raw, 1, False)
    assert folder_bytes(tmp_path / "incremental") == folder_bytes(tmp_path / "scratch")
    assert folder_bytes(tmp_path / "incremental") != folder_bytes(tmp_path / "before")
    assert statistics == scratch
    caplog.clear()
    prepare.prepare_dataset(data_params(), tmp_path / "again", tmp_path / "s3.json", raw, 1, False, cache)
    (again,) = [record.getMessage() for record in caplog.records if "shards" in record.getMessage()]
    assert again == f"all {written[1]} shards unchanged since the last prepare; none written"


def test_a_corrupt_cache_says_to_delete_it(tmp_path: Path) -> None:
    raw, cache = tmp_path / "raw", tmp_path / "decoded.sqlite"
    write_tree(raw, classes=2, per_class=3)
    cache.write_bytes(np.random.default_rng(0).bytes(8192))
    expected = rf"^{re.escape(str(cache))}: unusable decoded-image cache \([^\n]*\); delete it [^\n]*$"
    with pytest.raises(ValueError, match=expected):
        prepare.prepare_dataset(data_params(), tmp_path / "prepared", tmp_path / "s.json", raw, 1, False, cache)
    assert not (tmp_path / "prepared").exists()
