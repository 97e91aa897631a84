"""The prepare stage's work: load the source images, validate them and write the prepared dataset's shards."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from image_classification import artifacts
from image_classification.config import DataParams
from image_classification.data import dataset as dataset_lib
from image_classification.data import images, shards, sources

logger = logging.getLogger(__name__)

# Other images a conflicting copy's reason names; the rest are counted.
NAMED_COPIES = 3
# Bytes of decoded images read from the source per chunk while writing shards.
READ_BYTES = 32 * 2**20
# The folder, beside the decoded-image cache, of the shards the last prepare wrote (`shards.ShardStore`).
SHARD_STORE = "shards"


def prepare_dataset(
    data: DataParams,
    output: Path,
    statistics_path: Path,
    raw_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    cache_path: Path | None = None,
) -> dict:
    """Load the source chosen by `data.source`, validate and optionally subsample it; write its shards and statistics.

    Images that are the same after decoding but sit under two classes are rejected like unreadable
    files: left out under `data.on_bad_file: skip`, the stage stops under `fail`. Memory holds a
    chunk of images at a time for an image folder; the array sources hold their arrays.

    Args:
        data: the `data` params.
        output: the prepared dataset's folder to write (`shards`: uint8 NHWC images in shards of
            bounded size, int64 labels, content hashes, class names).
        statistics_path: the statistics to write (.json), with the data version the train stage logs.
        raw_dir: the folder the image_folder, npz and idx sources read (DVC tracks it).
        workers: processes decoding an image folder; all available cores when None.
        progress: show progress bars on stderr while hashing, decoding and writing.
        cache_path: the decoded-image cache (`decode_cache`) that lets an image folder be prepared
            again decoding only new or changed files; the shards written are kept beside it, in
            `SHARD_STORE`, so that the next prepare writes only the shards whose rows changed.
            Nothing kept when None.

    Returns:
        The statistics written to `statistics_path`.

    Raises:
        ValueError: unreadable or inconsistent data, a rejected file with `data.on_bad_file: fail`,
            a dataset that cannot train a classifier (fewer than 2 classes), or one that is
            degenerate (most images flat or copies, `refuse_degenerate`).
    """
    loaded = load(data, raw_dir, workers, progress, cache_path)
    dataset_lib.validate_labels(loaded.labels, loaded.class_names, loaded.version.path)
    copies = loaded.duplicate_sets()
    refuse_degenerate(loaded, copies)
    clashes = dataset_lib.conflicting_sets(loaded.labels, copies)
    conflicting = conflicting_copies(loaded, clashes)
    rejected = [*loaded.rejected, *conflicting][: sources.MAX_LISTED]
    rejected_count = loaded.rejected_count + sum(len(rows) for rows in clashes)
    if rejected_count:
        first = rejected[0]
        if data.on_bad_file == "fail":
            raise ValueError(
                f"{rejected_count} image file(s) rejected in {loaded.version.path} and data.on_bad_file is fail; "
                f"first: {first.file}: {first.reason}"
            )
        logger.warning(
            "left out %d rejected image file(s), listed in %s; first: %s: %s",
            rejected_count, statistics_path, first.file, first.reason,
        )  # fmt: skip
    for problem in loaded.ignored:
        if problem.file.endswith("/"):
            logger.warning("%s: %s", problem.file, problem.reason)
    # The rows written, or None for all of them: the whole dataset's arrays are never copied.
    kept = None
    if clashes:
        kept = np.setdiff1d(np.arange(len(loaded)), np.concatenate(clashes))
        dataset_lib.validate_labels(
            loaded.labels[kept], loaded.class_names, f"{loaded.version.path} (without the images of two classes)"
        )
    if data.max_images is not None and data.max_images < (len(loaded) if kept is None else len(kept)):
        labels = loaded.labels if kept is None else loaded.labels[kept]
        sample = dataset_lib.stratified_sample(labels, data.max_images, data.seed, loaded.class_names)
        kept = sample if kept is None else kept[sample]
        dataset_lib.validate_labels(
            loaded.labels[kept], loaded.class_names, f"{loaded.version.path} (data.max_images = {data.max_images})"
        )

    def take(array: np.ndarray) -> np.ndarray:
        return array if kept is None else array[kept]

    store = shards.ShardStore(cache_path.parent / SHARD_STORE) if cache_path is not None else None
    mean, std = write_shards(loaded, kept, output, progress, store)
    statistics = {
        "source": data.source,
        "data_version": loaded.version.to_json(),
        **dataset_lib.summarize(
            take(loaded.labels),
            copies if kept is None else dataset_lib.sets_within(copies, kept),
            loaded.class_names,
            loaded.image_shape,
            int((take(loaded.flat) >= 0).sum()),
            mean,
            std,
        ),
        "rejected_count": rejected_count,
        "rejected": [vars(problem) for problem in rejected],
        "ignored_count": loaded.ignored_count,
        "ignored": [vars(problem) for problem in loaded.ignored],
        "hidden_skipped": loaded.hidden,
    }
    artifacts.write_json(statistics_path, statistics)
    return statistics


def write_shards(
    loaded: sources.Loaded,
    rows: np.ndarray | None,
    output: Path,
    progress: bool = True,
    store: shards.ShardStore | None = None,
) -> tuple:
    """Write `rows` of `loaded` (all when None), in order, as the prepared dataset at `output`, a chunk at a time.

    With a `store`, shards whose rows it holds already are linked from there without reading their
    pixels, and afterwards it keeps this dataset's shards only.

    Returns:
        The pixel mean and standard deviation (0..255) of the rows written, or (None, None) for none.
    """
    count = len(loaded) if rows is None else len(rows)
    chunk = max(1, READ_BYTES // int(np.prod(loaded.image_shape)))
    bar = tqdm(
        total=count, desc="writing shards", unit="img", file=sys.stderr, disable=not progress, leave=False, delay=2
    )
    with bar, artifacts.atomic_path(output) as staged:
        with shards.ShardWriter(staged, loaded.image_shape, loaded.class_names, store, count) as writer:
            for start in range(0, count, chunk):
                part = np.arange(start, min(start + chunk, count)) if rows is None else rows[start : start + chunk]
                writer.add_rows(
                    loaded.labels[part],
                    loaded.content_hashes(part),
                    lambda first, stop, part=part: loaded.images.read(part[first:stop]),
                )
                bar.update(len(part))
        if store is not None:
            store.keep_only(writer.keys)
        written = len(writer.keys) - writer.reused
        if not writer.reused:
            logger.info("wrote %d shards", len(writer.keys))
        elif written:
            logger.info("wrote %d of %d shards, the others unchanged since the last prepare", written, len(writer.keys))
        else:
            logger.info("all %d shards unchanged since the last prepare; none written", len(writer.keys))
        return writer.pixel_mean_std()


def conflicting_copies(loaded: sources.Loaded, clashes: list[np.ndarray]) -> list[sources.Problem]:
    """A problem for each of the first `sources.MAX_LISTED` images whose identical copy carries another label.

    Such an image cannot be learned. Each reason names `NAMED_COPIES` of its copies at most, and counts the others.

    Args:
        loaded: the source's images.
        clashes: the rows of each set of identical images under more than one label (`dataset.conflicting_sets`).
    """
    problems = []
    for rows in clashes:
        for row in rows.tolist():
            if len(problems) == sources.MAX_LISTED:
                return problems
            others = [other for other in rows[: NAMED_COPIES + 1].tolist() if other != row][:NAMED_COPIES]
            named = ", ".join(
                f"{loaded.describe(other)} ({loaded.class_names[loaded.labels[other]]})" for other in others
            )
            more = len(rows) - 1 - len(others)
            named += f" and {more} more" if more else ""
            reason = f"the same image as {named}, under another class; an image with two labels cannot be learned"
            problems.append(sources.Problem(loaded.describe(row), reason))
    return problems


def refuse_degenerate(loaded: sources.Loaded, copies: list[np.ndarray]) -> None:
    """Stop when the decoded images cannot train anything: most of them flat, or most of them copies.

    Args:
        loaded: the source's images.
        copies: the rows of each set of identical images (`dataset.duplicate_sets`).

    Raises:
        ValueError: naming how many images, the first one concerned and what to check.
    """
    count = len(loaded)
    constant = np.flatnonzero(loaded.flat >= 0)
    if len(constant) > count // 2:
        value = int(loaded.flat[constant[0]])
        raise ValueError(
            f"{len(constant)} of {count} images decode to a single flat colour (pixel value {value}; first: "
            f"{loaded.describe(int(constant[0]))}); check the files, data.channels, and data.background (shapes of "
            "its colour on a transparent background vanish)"
        )
    repeated = sum(len(rows) - 1 for rows in copies)
    if repeated > count // 2:
        rows = min(copies, key=lambda rows: int(rows[1]))  # the set of the first row that copies another
        raise ValueError(
            f"{repeated} of {count} images are exact copies of another after decoding (first: "
            f"{loaded.describe(int(rows[1]))} = {loaded.describe(int(rows[0]))}); check for copied files, and that "
            "data.image_height, data.image_width, data.channels and data.background keep what tells them apart"
        )


def load(
    data: DataParams,
    raw_dir: Path | None,
    workers: int | None = None,
    progress: bool = True,
    cache_path: Path | None = None,
) -> sources.Loaded:
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
        return sources.load_image_folder(raw_dir, spec, workers=workers, progress=progress, cache_path=cache_path)
    if data.source == "npz":
        return sources.load_npz(raw_dir, spec)
    return sources.load_idx(raw_dir, spec)


def image_spec(data: DataParams) -> images.ImageSpec:
    """The decoding rules of the `data` params: what every image file becomes, here and in predict."""
    return images.ImageSpec(
        data.image_height, data.image_width, data.channels, data.interpolation, data.aspect, data.background
    )
