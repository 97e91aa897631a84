from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from image_classification import artifacts
from image_classification.data.dataset import Dataset


def test_atomic_path_moves_file_into_place(tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.json"
    with artifacts.atomic_path(target) as staged:
        assert staged != target
        staged.write_text("{}")
        assert not target.exists()
    assert target.read_text() == "{}"
    assert list(target.parent.iterdir()) == [target]


def test_atomic_path_keeps_previous_output_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    target.write_text("previous")

    def write_half_then_fail() -> None:
        with artifacts.atomic_path(target) as staged:
            staged.write_text("half")
            raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError, match="stage failed"):
        write_half_then_fail()
    assert target.read_text() == "previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["result.txt"]


def test_atomic_path_replaces_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with artifacts.atomic_path(target) as staged:
        staged.mkdir()
        (staged / "new.txt").write_text("new")
    assert [path.name for path in target.iterdir()] == ["new.txt"]


def test_atomic_path_requires_something_written(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"), artifacts.atomic_path(tmp_path / "x"):
        pass


def test_json_and_csv(tmp_path: Path) -> None:
    artifacts.write_json(tmp_path / "a.json", {"accuracy": 0.5})
    assert artifacts.read_json(tmp_path / "a.json") == {"accuracy": 0.5}
    artifacts.write_csv(tmp_path / "a.csv", [{"x": 1, "y": 2}], ("x", "y"))
    assert (tmp_path / "a.csv").read_text().splitlines() == ["x,y", "1,2"]


def test_dataset_round_trip(tmp_path: Path, tiny_dataset: Dataset) -> None:
    path = tmp_path / "data.npz"
    artifacts.save_dataset(path, tiny_dataset)
    loaded = artifacts.load_dataset(path)
    assert np.array_equal(loaded.images, tiny_dataset.images)
    assert np.array_equal(loaded.labels, tiny_dataset.labels)
    assert loaded.class_names == tiny_dataset.class_names


def test_load_dataset_refuses_pickled_arrays(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, images=np.zeros((1, 2, 2, 1), np.uint8), labels=np.zeros(1), class_names=np.array([{"a": 1}]))
    with pytest.raises(ValueError, match="allow_pickle"):
        artifacts.load_dataset(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such dataset file"),
        (b"not a zip file", "not a readable .npz dataset"),
    ],
)
def test_load_dataset_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "data.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        artifacts.load_dataset(path)


def test_load_dataset_missing_arrays(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match=r"missing arrays \['class_names', 'images', 'labels'\]"):
        artifacts.load_dataset(path)


def test_write_json_is_plain_json(tmp_path: Path) -> None:
    artifacts.write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"b": 1, "a": 2}
