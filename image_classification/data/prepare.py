"""The prepare stage's work: load the source images, validate them and write the normalized dataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from image_classification import artifacts
from image_classification.config import DataParams
from image_classification.data import dataset as dataset_lib
from image_classification.data import images, sources
from image_classification.data.dataset import Dataset

logger = logging.getLogger(__name__)

# The statistics list at most this many rejected or ignored files each; the counts are always complete.
MAX_LISTED = 1000


def prepare_dataset(
    data: DataParams,
    output: Path,
    statistics_path: Path,
    raw_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Load the source chosen by `data.source`, validate and optionally subsample it; write it and its statistics.

    Images that are the same after decoding but sit under two classes are rejected like unreadable
    files: left out under `data.on_bad_file: skip`, the stage stops under `fail`.

    Args:
        data: the `data` params.
        output: the dataset file to write (.npz of uint8 NHWC images, int64 labels, class names).
        statistics_path: the statistics to write (.json), with the data version the train stage logs.
        raw_dir: the folder the image_folder, npz and idx sources read (DVC tracks it).
        workers: processes decoding an image folder; all available cores when None.
        progress: show a progress bar on stderr while decoding.

    Returns:
        The statistics written to `statistics_path`.

    Raises:
        ValueError: unreadable or inconsistent data, a rejected file with `data.on_bad_file: fail`,
            a dataset that cannot train a classifier (fewer than 2 classes), or one that is
            degenerate (most images flat or copies, `refuse_degenerate`).
    """
    loaded = load(data, raw_dir, workers, progress)
    dataset = loaded.dataset
    dataset_lib.validate(dataset, loaded.version.path)
    hashes = dataset_lib.content_hashes(dataset.images)
    refuse_degenerate(dataset, hashes, loaded)
    conflicting = conflicting_copies(loaded, hashes)
    rejected = [*loaded.rejected, *conflicting]
    if rejected:
        first = rejected[0]
        if data.on_bad_file == "fail":
            raise ValueError(
                f"{len(rejected)} image file(s) rejected in {loaded.version.path} and data.on_bad_file is fail; "
                f"first: {first.file}: {first.reason}"
            )
        logger.warning(
            "left out %d rejected image file(s), listed in %s; first: %s: %s",
            len(rejected), statistics_path, first.file, first.reason,
        )  # fmt: skip
    for problem in loaded.ignored:
        if problem.file.endswith("/"):
            logger.warning("%s: %s", problem.file, problem.reason)
    if conflicting:
        left_out = {row for rows in dataset_lib.conflicting_groups(dataset.labels, hashes) for row in rows}
        kept = np.array([row for row in range(len(dataset)) if row not in left_out], dtype=np.int64)
        dataset = dataset.subset(kept)
        dataset_lib.validate(dataset, f"{loaded.version.path} (without the images of two classes)")
    if data.max_images is not None and data.max_images < len(dataset):
        dataset = dataset.subset(
            dataset_lib.stratified_sample(dataset.labels, data.max_images, data.seed, dataset.class_names)
        )
        dataset_lib.validate(dataset, f"{loaded.version.path} (data.max_images = {data.max_images})")
    statistics = {
        "source": data.source,
        "data_version": loaded.version.to_json(),
        **dataset_lib.statistics(dataset),
        "rejected_count": len(rejected),
        "rejected": [vars(problem) for problem in rejected[:MAX_LISTED]],
        "ignored_count": len(loaded.ignored),
        "ignored": [vars(problem) for problem in loaded.ignored[:MAX_LISTED]],
        "hidden_skipped": loaded.hidden,
    }
    artifacts.save_dataset(output, dataset)
    artifacts.write_json(statistics_path, statistics)
    return statistics


def conflicting_copies(loaded: sources.Loaded, hashes: list[str]) -> list[sources.Problem]:
    """One problem per image whose identical copy carries another label: such an image cannot be learned."""
    dataset = loaded.dataset
    problems = []
    for rows in dataset_lib.conflicting_groups(dataset.labels, hashes):
        for row in rows:
            others = ", ".join(
                f"{loaded.describe(other)} ({dataset.class_names[dataset.labels[other]]})"
                for other in rows
                if other != row
            )
            reason = f"the same image as {others}, under another class; an image with two labels cannot be learned"
            problems.append(sources.Problem(loaded.describe(row), reason))
    return problems


def refuse_degenerate(dataset: Dataset, hashes: list[str], loaded: sources.Loaded) -> None:
    """Stop when the decoded images cannot train anything: most of them flat, or most of them copies.

    Raises:
        ValueError: naming how many images, the first one concerned and what to check.
    """
    flat = dataset.images.reshape(len(dataset), -1)
    constant = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
    if len(constant) > len(dataset) // 2:
        value = int(flat[constant[0], 0])
        raise ValueError(
            f"{len(constant)} of {len(dataset)} images decode to a single flat colour (pixel value {value}; first: "
            f"{loaded.describe(int(constant[0]))}); check the files, data.channels, and data.background (shapes of "
            "its colour on a transparent background vanish)"
        )
    first_row: dict[str, int] = {}
    copies = [(first_row.setdefault(content, row), row) for row, content in enumerate(hashes)]
    copies = [(original, row) for original, row in copies if original != row]
    if len(copies) > len(dataset) // 2:
        original, row = copies[0]
        raise ValueError(
            f"{len(copies)} of {len(dataset)} images are exact copies of another after decoding (first: "
            f"{loaded.describe(row)} = {loaded.describe(original)}); check for copied files, and that "
            "data.image_height, data.image_width, data.channels and data.background keep what tells them apart"
        )


def load(data: DataParams, raw_dir: Path | None, workers: int | None = None, progress: bool = True) -> sources.Loaded:
    """Read the dataset `data.source` names, every image brought to the params' size and channels.

    Raises:
        ValueError: a source that reads a folder without `raw_dir`, or what its loader raises.
    """
    spec = image_spec(data)
    if data.source == "embedded":
        return sources.load_embedded(spec)
    if data.source == "keras":
        return sources.load_keras(data.keras_dataset, spec)
    if raw_dir is None:
        raise ValueError(f"data.source {data.source} reads a folder; pass it with --raw (dvc.yaml passes data/raw)")
    if data.source == "image_folder":
        workers = workers or len(os.sched_getaffinity(0))
        return sources.load_image_folder(raw_dir, spec, workers=workers, progress=progress)
    if data.source == "npz":
        return sources.load_npz(raw_dir, spec)
    return sources.load_idx(raw_dir, spec)


def image_spec(data: DataParams) -> images.ImageSpec:
    """The decoding rules of the `data` params: what every image file becomes, here and in predict."""
    return images.ImageSpec(
        data.image_height, data.image_width, data.channels, data.interpolation, data.aspect, data.background
    )
