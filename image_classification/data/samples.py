"""Write a few images of a dataset split as PNG files, or as a REST request body, to try the model on.

`make predict` writes test-split PNG files for `python -m image_classification.serving.predict`: they decode back to
exactly the arrays the model was evaluated on. `--request` writes the same images as the JSON body
that both `mlflow models serve` and TF Serving accept: `{"instances": [image, ...]}`, each image a
nested list of uint8 values, height x width x channels.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from image_classification import artifacts, runner
from image_classification.data import shards, split
from image_classification.data.split import SPLITS


def request_body(images: np.ndarray) -> dict:
    """The REST request body for a batch of uint8 images, in TF Serving's row ("instances") format.

    A model with one named input takes the images themselves as instances, so the body is the same
    for TF Serving's `:predict` and MLflow's `/invocations`.
    """
    return {"instances": images.tolist()}


def pick(labels: np.ndarray, count: int) -> list[int]:
    """Rows of the first image of each class in turn, then the second of each, up to `count` rows."""
    by_class = [np.flatnonzero(labels == label).tolist() for label in np.unique(labels)]
    picked: list[int] = []
    for turn in range(max((len(rows) for rows in by_class), default=0)):
        picked += [rows[turn] for rows in by_class if turn < len(rows)]
        if len(picked) >= count:
            break
    return picked[:count]


def run(
    dataset_dir: Path,
    membership: Path,
    count: int,
    png_folder: Path | None = None,
    request: Path | None = None,
    split_name: str = "test",
) -> list[str]:
    """Write `count` images of a split as `<row>_<class name>.png` files and/or a request body.

    `<row>` is the image's position in the split. Only the chosen images are read from the shards.

    The images are the first of each class in turn (class 0, 1, 2, ..., then each class's second),
    so a handful of them covers the classes even when the split is sorted by class.

    The PNG folder is replaced as a whole; both outputs are written atomically.

    Returns:
        The names of the images, in order.

    Raises:
        ValueError: the dataset or membership cannot be read, `count` is below 1, or there is nothing to write.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if png_folder is None and request is None:
        raise ValueError("nothing to write: give a folder for PNG files, a request file, or both")
    with shards.open_dataset(dataset_dir) as data:
        members = split.read_membership(membership, data, (split_name,))[split_name]
        split_labels = data.labels[members]
        rows = pick(split_labels, count)
        chosen = data.read(members[rows])
        class_names = data.class_names
    # Class names such as "T-shirt/top" are not file names.
    labels = [re.sub(r"[^A-Za-z0-9_.-]+", "-", class_names[split_labels[row]]) for row in rows]
    names = [f"{row:04d}_{label}.png" for row, label in zip(rows, labels, strict=True)]
    if png_folder is not None:
        with artifacts.atomic_path(png_folder) as staged:
            staged.mkdir()
            for image, name in zip(chosen, names, strict=True):
                Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(staged / name)
    if request is not None:
        with artifacts.atomic_path(request) as staged:
            staged.write_text(json.dumps(request_body(chosen)), encoding="utf-8")
    return names


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m image_classification.data.samples", description=__doc__)
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder, e.g. data/prepared")
    parser.add_argument(
        "--membership", type=Path, required=True, help="split membership, e.g. data/split/membership.npz"
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split to take images from")
    parser.add_argument("--count", type=int, default=8, help="how many images, one class after another (default 8)")
    parser.add_argument("--output", type=Path, help="folder to write the images to as PNG files")
    parser.add_argument("--request", type=Path, help="file to write the images to as a REST request body (.json)")
    args = parser.parse_args(argv)
    names = run(args.dataset, args.membership, args.count, args.output, args.request, args.split)
    written = " and ".join(str(path) for path in (args.output, args.request) if path is not None)
    print(f"samples: {len(names)} images of the {args.split} split of {args.dataset} -> {written}")


if __name__ == "__main__":
    runner.run("samples", main)
