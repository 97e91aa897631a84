from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_classification import artifacts


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


def test_write_json_is_plain_json(tmp_path: Path) -> None:
    artifacts.write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"b": 1, "a": 2}
