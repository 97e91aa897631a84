"""The prepare stage on each source: statistics, on_bad_file, and one-line errors from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    assert statistics["images"] == 32
    assert statistics["count_per_class"] == {"class_0": 11, "class_1": 11, "class_2": 10}
    assert statistics["class_balance"]["ratio"] == 1.1
    assert statistics["class_balance"]["smallest_class"] == "class_2"
    assert statistics["duplicates"] == 2
    assert statistics["conflicting_duplicates"] == 1
    assert statistics["rejected_count"] == 1
    assert statistics["rejected"][0]["file"] == "class_2/broken.png"
    assert statistics["data_version"]["files"] == 33
    assert len(artifacts.load_dataset(tmp_path / "d.npz")) == 32


def test_on_bad_file_fail_stops_and_writes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(raw, classes=2, per_class=5)
    (raw / "class_1" / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1 unreadable image file\(s\).*first: class_1/zero.png: empty file"):
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
    assert "prepare: skipped 1 unreadable image file(s)" in result.stderr
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
