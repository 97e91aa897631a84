"""The prepare stage on each source: statistics, on_bad_file, and one-line errors from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from image_classification import artifacts
from image_classification.config import parse_params
from image_classification.data import prepare
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, merged, raw_params
from tests.data.test_sources import write_tree


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
        data_params(), tmp_path / "d.npz", tmp_path / "s.json", raw, workers=1, progress=False
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
    assert len(artifacts.load_dataset(tmp_path / "d.npz")) == 29


def test_on_bad_file_fail_stops_and_writes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=5)
    (raw / "class_1" / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1 image file\(s\) rejected.*first: class_1/zero.png: empty file"):
        prepare.prepare_dataset(
            data_params(on_bad_file="fail"), tmp_path / "d.npz", tmp_path / "s.json", raw, workers=1
        )
    assert not (tmp_path / "d.npz").exists()


def test_one_class_is_a_clear_error(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=1, per_class=5)
    with pytest.raises(ValueError, match=r"at least 2 classes, got 1: \['class_0'\]"):
        prepare.prepare_dataset(data_params(), tmp_path / "d.npz", tmp_path / "s.json", raw, workers=1)


def test_folder_sources_need_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass it with --raw"):
        prepare.prepare_dataset(data_params(source="npz"), tmp_path / "d.npz", tmp_path / "s.json")
    with pytest.raises(ValueError, match="no such folder"):
        prepare.prepare_dataset(data_params(source="idx"), tmp_path / "d.npz", tmp_path / "s.json", tmp_path / "nope")


def run_cli(tmp_path: Path, raw: Path, env: dict | None = None, **data) -> subprocess.CompletedProcess:
    params = merged(merged(raw_params(), TINY_OVERRIDES), {"data": data})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.prepare", "--params", str(tmp_path / "params.yaml"), "--raw", str(raw),
               "--output", str(tmp_path / "d.npz"), "--statistics", str(tmp_path / "s.json")]  # fmt: skip
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
        data_params(image_height=28, image_width=28), tmp_path / "d.npz", tmp_path / "s.json", tmp_path / "raw", 1
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
        prepare.prepare_dataset(params, tmp_path / "d.npz", tmp_path / "s.json", tmp_path / "raw", 1)
    assert not (tmp_path / "d.npz").exists()
    statistics = prepare.prepare_dataset(
        data_params(image_height=28, image_width=28, background="black"), tmp_path / "d.npz", tmp_path / "s.json",
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
        prepare.prepare_dataset(data_params(), tmp_path / "d.npz", tmp_path / "s.json", raw, workers=1)


def test_the_same_image_under_two_classes_stops_prepare_under_fail(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=5)
    first = sorted((raw / "class_0").iterdir())[0]
    (raw / "class_1" / "mislabelled.png").write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match=r"2 image file\(s\) rejected .*first: class_0/.*: the same image as "
                       r"class_1/mislabelled.png \(class_1\), under another class"):  # fmt: skip
        prepare.prepare_dataset(data_params(on_bad_file="fail"), tmp_path / "d.npz", tmp_path / "s.json", raw, 1)


def test_unusable_image_files_count_and_stop_under_fail(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=5)
    (raw / "class_1" / "IMG_0001.jxl").write_bytes(b"\xff\x0a" + bytes(64))
    statistics = prepare.prepare_dataset(data_params(), tmp_path / "d.npz", tmp_path / "s.json", raw, workers=1)
    assert statistics["rejected_count"] == 1
    assert statistics["rejected"][0]["reason"].startswith("JPEG XL is not supported")
    with pytest.raises(ValueError, match=r"1 image file\(s\) rejected .*IMG_0001.jxl: JPEG XL is not supported"):
        prepare.prepare_dataset(data_params(on_bad_file="fail"), tmp_path / "d.npz", tmp_path / "s.json", raw, 1)


def test_images_too_large_for_memory_stop_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from image_classification import memory

    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=32)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * 2**30)
    params = data_params(image_height=4096, image_width=4096, channels=3)
    message = (
        r"^decoding 64 images of .* to 4096x4096x3 needs about 6.00 GiB of memory and 2.00 GiB is available; "
        r"lower data.image_height, data.image_width or data.channels"
    )
    with pytest.raises(ValueError, match=message):
        prepare.prepare_dataset(params, tmp_path / "d.npz", tmp_path / "s.json", raw, workers=1)
