"""The split stage's work: a stratified, deterministic train/validation/test split with no shared images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_classification import artifacts
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
    )
    return {name: dataset.subset(getattr(indices, name)) for name in SPLITS}, indices.duplicates


def stratified_split(
    labels: np.ndarray,
    hashes: list[str],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> SplitIndices:
    """Split rows into train/validation/test, stratified by label and deterministic for a seed.

    Rows with identical content (equal hashes) form one group and land in the same split, so no
    image appears in two splits. A group is stratified by the label of its first row.

    Raises:
        ValueError: when a class has too few images for the requested fractions.
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
    except ValueError as error:
        counts = np.bincount(group_labels)
        raise ValueError(
            f"cannot split {len(groups)} distinct images into validation_fraction={validation_fraction:g} "
            f"and test_fraction={test_fraction:g} stratified by class (smallest class has "
            f"{counts[counts > 0].min()} images): {error}"
        ) from error

    def rows(selected_groups: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(group_of_row, selected_groups))

    return SplitIndices(rows(train_groups), rows(validation_groups), rows(test_groups), duplicates)
