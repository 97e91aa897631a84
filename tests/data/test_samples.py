from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from image_classification import artifacts
from image_classification.data import images, samples
from image_classification.data.dataset import Dataset
from tests.conftest import make_images


@pytest.mark.parametrize("channels", [1, 3])
def test_pngs_decode_back_to_the_arrays(tmp_path: Path, channels: int) -> None:
    dataset = make_images(classes=3, per_class=4, size=12, channels=channels)
    dataset = Dataset(dataset.images, dataset.labels, ("zero", "T-shirt/top", "two"))
    artifacts.save_dataset(tmp_path / "test.npz", dataset)
    names = samples.run(tmp_path / "test.npz", 5, png_folder=tmp_path / "pngs", request=tmp_path / "request.json")
    assert sorted(names) == sorted(path.name for path in (tmp_path / "pngs").iterdir())
    rows = [int(name.split("_")[0]) for name in names]
    assert [dataset.labels[row] for row in rows] == [0, 1, 2, 0, 1]  # each class in turn
    assert names[1] == f"{rows[1]:04d}_T-shirt-top.png"
    spec = images.ImageSpec(12, 12, channels)
    decoded = np.stack([images.decode_image(tmp_path / "pngs" / name, spec) for name in names])
    assert np.array_equal(decoded, dataset.images[rows])
    body = json.loads((tmp_path / "request.json").read_text())
    assert list(body) == ["instances"]
    assert np.array_equal(np.asarray(body["instances"], dtype=np.uint8), dataset.images[rows])


def test_pick_takes_each_class_in_turn() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert samples.pick(labels, 10) == [0, 3, 4, 1, 5, 2]
    assert samples.pick(labels, 2) == [0, 3]


def test_refuses_nothing_to_do(tmp_path: Path) -> None:
    artifacts.save_dataset(tmp_path / "test.npz", make_images())
    with pytest.raises(ValueError, match="nothing to write"):
        samples.run(tmp_path / "test.npz", 3)
    with pytest.raises(ValueError, match="count must be at least 1"):
        samples.run(tmp_path / "test.npz", 0, png_folder=tmp_path / "pngs")
    with pytest.raises(ValueError, match="no such dataset file"):
        samples.run(tmp_path / "missing.npz", 3, png_folder=tmp_path / "pngs")
