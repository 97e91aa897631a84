from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from image_classification.data import images, samples, shards, split
from image_classification.data.dataset import Dataset
from tests.conftest import make_images, write_shards


def prepared_with_membership(folder: Path, dataset: Dataset) -> tuple[Path, Path, np.ndarray]:
    """Write `dataset` as shards and a membership whose test split is every third row, from row 1."""
    write_shards(folder / "prepared", dataset)
    rows = np.arange(len(dataset))
    members = {"train": rows[0::3], "validation": rows[2::3], "test": rows[1::3]}
    with shards.open_dataset(folder / "prepared") as data:
        split.write_membership(folder / "membership.npz", members, data.digest)
    return folder / "prepared", folder / "membership.npz", members["test"]


@pytest.mark.parametrize("channels", [1, 3])
def test_pngs_decode_back_to_the_arrays(tmp_path: Path, channels: int) -> None:
    dataset = make_images(classes=3, per_class=10, size=12, channels=channels)
    dataset = Dataset(dataset.images, dataset.labels, ("zero", "T-shirt/top", "two"))
    prepared, membership, test_rows = prepared_with_membership(tmp_path, dataset)
    names = samples.run(prepared, membership, 3, png_folder=tmp_path / "pngs", request=tmp_path / "request.json")
    assert sorted(names) == sorted(path.name for path in (tmp_path / "pngs").iterdir())
    positions = [int(name.split("_")[0]) for name in names]  # the image's position in the split
    rows = test_rows[positions]
    assert [dataset.labels[row] for row in rows] == [0, 1, 2]  # each class in turn
    assert names[1] == f"{positions[1]:04d}_T-shirt-top.png"
    spec = images.ImageSpec(12, 12, channels)
    decoded = np.stack([images.decode_image(tmp_path / "pngs" / name, spec) for name in names])
    assert np.array_equal(decoded, dataset.images[rows])
    body = json.loads((tmp_path / "request.json").read_text())
    assert list(body) == ["instances"]
    assert np.array_equal(np.asarray(body["instances"], dtype=np.uint8), dataset.images[rows])


def test_another_split_can_be_sampled(tmp_path: Path) -> None:
    dataset = make_images(classes=3, per_class=10)
    prepared, membership, _ = prepared_with_membership(tmp_path, dataset)
    samples.run(prepared, membership, 2, request=tmp_path / "request.json", split_name="train")
    train_rows = np.arange(len(dataset))[0::3]
    first_of_each = [train_rows[dataset.labels[train_rows] == label][0] for label in (0, 1)]
    body = json.loads((tmp_path / "request.json").read_text())
    assert np.array_equal(np.asarray(body["instances"], dtype=np.uint8), dataset.images[first_of_each])


def test_pick_takes_each_class_in_turn() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert samples.pick(labels, 10) == [0, 3, 4, 1, 5, 2]
    assert samples.pick(labels, 2) == [0, 3]


def test_refuses_nothing_to_do_and_missing_inputs(tmp_path: Path) -> None:
    prepared, membership, _ = prepared_with_membership(tmp_path, make_images())
    pngs = tmp_path / "pngs"
    with pytest.raises(ValueError, match="nothing to write"):
        samples.run(prepared, membership, 3)
    with pytest.raises(ValueError, match="count must be at least 1"):
        samples.run(prepared, membership, 0, png_folder=pngs)
    with pytest.raises(ValueError, match=r"no prepared dataset \(manifest.json missing\); run `dvc repro prepare`"):
        samples.run(tmp_path / "missing", membership, 3, png_folder=pngs)
    with pytest.raises(ValueError, match=r"missing.npz: no split membership; run `dvc repro split`"):
        samples.run(prepared, tmp_path / "missing.npz", 3, png_folder=pngs)
    assert not pngs.exists()
