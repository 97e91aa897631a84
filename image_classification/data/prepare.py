"""The prepare stage's work: load the source images, validate them and write the normalized dataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from image_classification import artifacts
from image_classification.config import DataParams
from image_classification.data import dataset as dataset_lib
from image_classification.data import images, sources

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
            or a dataset that cannot train a classifier (fewer than 2 classes).
    """
    loaded = load(data, raw_dir, workers, progress)
    if loaded.rejected:
        first = loaded.rejected[0]
        if data.on_bad_file == "fail":
            raise ValueError(
                f"{len(loaded.rejected)} unreadable image file(s) in {raw_dir} and data.on_bad_file is fail; "
                f"first: {first.file}: {first.reason}"
            )
        logger.warning(
            "skipped %d unreadable image file(s), listed in %s; first: %s: %s",
            len(loaded.rejected), statistics_path, first.file, first.reason,
        )  # fmt: skip
    for problem in loaded.ignored:
        if problem.file.endswith("/"):
            logger.warning("%s: %s", problem.file, problem.reason)
    dataset = loaded.dataset
    dataset_lib.validate(dataset, loaded.version.path)
    if data.max_images is not None and data.max_images < len(dataset):
        dataset = dataset.subset(dataset_lib.stratified_sample(dataset.labels, data.max_images, data.seed))
        dataset_lib.validate(dataset, f"{loaded.version.path} (data.max_images = {data.max_images})")
    statistics = {
        "source": data.source,
        "data_version": loaded.version.to_json(),
        **dataset_lib.statistics(dataset),
        "rejected_count": len(loaded.rejected),
        "rejected": [vars(problem) for problem in loaded.rejected[:MAX_LISTED]],
        "ignored_count": len(loaded.ignored),
        "ignored": [vars(problem) for problem in loaded.ignored[:MAX_LISTED]],
        "hidden_skipped": loaded.hidden,
    }
    artifacts.save_dataset(output, dataset)
    artifacts.write_json(statistics_path, statistics)
    return statistics


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
    return images.ImageSpec(data.image_height, data.image_width, data.channels, data.interpolation, data.aspect)
