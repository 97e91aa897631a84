"""The split stage's work: a stratified, deterministic train/validation/test split with no shared images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_classification import artifacts, memory
from image_classification.config import SplitParams
from image_classification.data import dataset as dataset_lib
from image_classification.data.dataset import Dataset

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitIndices:
    """Row indices of each split, plus how many exact duplicates were kept together."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    duplicates: int


def split_dataset(split: SplitParams, dataset_path: Path, outputs: dict[str, Path], report_path: Path) -> dict:
    """Split the prepared dataset and write one dataset file per split plus a report.

    Args:
        split: the fractions and seed.
        dataset_path: the prepared dataset (.npz).
        outputs: the file to write for each of "train", "validation" and "test".
        report_path: the report to write (.json).

    Returns:
        The report: images per split and per class, duplicates kept together, and digests.

    Raises:
        ValueError: an unreadable dataset, or a class with too few images for the fractions.
    """
    memory.require(2 * memory.files_bytes(dataset_path), f"splitting {dataset_path}", memory.DATA_SIZE_FIX)
    dataset = artifacts.load_dataset(dataset_path)
    dataset_lib.validate(dataset, str(dataset_path))
    parts, duplicates = partition(dataset, split)
    report: dict = {"images": len(dataset), "duplicates_kept_together": duplicates, "splits": {}}
    for name, part in parts.items():
        counts = np.bincount(part.labels, minlength=len(part.class_names))
        report["splits"][name] = {
            "images": len(part),
            "count_per_class": {label: int(count) for label, count in zip(part.class_names, counts, strict=True)},
            "digest": dataset_lib.digest(part.images, part.labels),
        }
        artifacts.save_dataset(outputs[name], part)
    artifacts.write_json(report_path, report)
    return report


def partition(dataset: Dataset, split: SplitParams) -> tuple[dict[str, Dataset], int]:
    """Split `dataset` as the stage does.

    Returns:
        One dataset per name in `SPLITS`, and how many duplicate images were kept in their twin's split.
    """
    indices = stratified_split(
        dataset.labels,
        dataset_lib.content_hashes(dataset.images),
        split.validation_fraction,
        split.test_fraction,
        split.seed,
        dataset.class_names,
    )
    return {name: dataset.subset(getattr(indices, name)) for name in SPLITS}, indices.duplicates


def stratified_split(
    labels: np.ndarray,
    hashes: list[str],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> SplitIndices:
    """Split rows into train/validation/test, stratified by label and deterministic for a seed.

    Rows with identical content (equal hashes) form one group and land in the same split, so no
    image appears in two splits. A group is stratified by the label of its first row. Every class
    gets at least one image in each split.

    Args:
        labels: (N,) integer labels.
        hashes: one content hash per row; equal hashes mean identical images.
        validation_fraction: share of the distinct images for validation, in (0, 1).
        test_fraction: share of the distinct images for test, in (0, 1).
        seed: the split is a pure function of the data, the fractions and the seed.
        class_names: the names of the labels, for error messages; labels stand for themselves without.

    Raises:
        ValueError: a class, named, has too few distinct images for the fractions; the message
            gives its count, about how many the fractions need, and the fixes.
    """
    from sklearn.model_selection import train_test_split

    if len(labels) != len(hashes):
        raise ValueError(f"got {len(hashes)} hashes for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot split an empty dataset")
    first_row: dict[str, int] = {}
    group_of_row = np.empty(len(labels), dtype=np.int64)
    for row, content in enumerate(hashes):
        group_of_row[row] = first_row.setdefault(content, row)
    groups = np.array(sorted(first_row.values()), dtype=np.int64)
    duplicates = len(labels) - len(groups)
    group_labels = labels[groups]
    held_out = validation_fraction + test_fraction
    try:
        train_groups, held_groups = train_test_split(
            groups, test_size=held_out, stratify=group_labels, random_state=seed
        )
        validation_groups, test_groups = train_test_split(
            held_groups,
            test_size=test_fraction / held_out,
            stratify=labels[held_groups],
            random_state=seed,
        )
    except ValueError:
        # scikit-learn's message names classes by internal index; the user's is below.
        raise ValueError(_too_small(group_labels, validation_fraction, test_fraction, class_names)) from None
    present = set(np.unique(group_labels).tolist())
    for part in (train_groups, validation_groups, test_groups):
        if set(np.unique(labels[part]).tolist()) != present:
            raise ValueError(_too_small(group_labels, validation_fraction, test_fraction, class_names))

    def rows(selected_groups: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(group_of_row, selected_groups))

    return SplitIndices(rows(train_groups), rows(validation_groups), rows(test_groups), duplicates)


def images_needed_per_class(validation_fraction: float, test_fraction: float) -> int:
    """About how many distinct images a class needs so that each split can expect one of them."""
    smallest = min(validation_fraction, test_fraction, 1 - validation_fraction - test_fraction)
    return max(3, math.ceil(1 / smallest - 1e-9))


def _too_small(
    group_labels: np.ndarray, validation_fraction: float, test_fraction: float, class_names: Sequence[str] | None
) -> str:
    counts = np.bincount(group_labels)
    needed = images_needed_per_class(validation_fraction, test_fraction)
    classes = [label for label in np.argsort(counts, kind="stable") if counts[label] > 0]
    short = [label for label in classes if counts[label] < needed] or classes[:1]

    def name(label: int) -> str:
        return repr(class_names[label]) if class_names is not None else str(label)

    if len(short) == 1:
        which = f"class {name(short[0])} has {counts[short[0]]} distinct image(s)"
    else:
        listed = ", ".join(f"{name(label)} ({counts[label]})" for label in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        which = f"classes {listed}{more} have too few distinct images"
    return (
        f"cannot split: {which}; split.validation_fraction {validation_fraction:g} "
        f"and split.test_fraction {test_fraction:g} need about {needed} per class so that each split gets one; "
        f"add images to the class, remove its folder from the data, or raise the fractions"
    )
