"""The split stage's work: a stratified, deterministic train/validation/test membership with no shared images."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_classification import artifacts
from image_classification.config import SplitParams
from image_classification.data import dataset as dataset_lib
from image_classification.data import shards

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitIndices:
    """Row indices of each split, plus how many exact duplicates were kept together."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    duplicates: int


def split_dataset(split: SplitParams, dataset_dir: Path, membership_path: Path, report_path: Path) -> dict:
    """Split the prepared dataset: write which rows belong to each split, and a report.

    Only the labels and content hashes are read; the images stay in the prepared shards, and each
    later stage reads the rows of its split from there.

    Args:
        split: the fractions and seed.
        dataset_dir: the prepared dataset (`shards`).
        membership_path: the membership to write (.npz; `write_membership`).
        report_path: the report to write (.json).

    Returns:
        The report: images per split and per class, duplicates kept together, and digests.

    Raises:
        ValueError: an unreadable dataset, or a class with too few images for the fractions.
    """
    with shards.open_dataset(dataset_dir) as dataset:
        indices = stratified_split(
            dataset.labels,
            dataset.hashes,
            split.validation_fraction,
            split.test_fraction,
            split.seed,
            dataset.class_names,
        )
        members = {name: getattr(indices, name) for name in SPLITS}
        report: dict = {"images": len(dataset), "duplicates_kept_together": indices.duplicates, "splits": {}}
        for name, rows in members.items():
            counts = np.bincount(dataset.labels[rows], minlength=len(dataset.class_names))
            report["splits"][name] = {
                "images": len(rows),
                "count_per_class": {
                    label: int(count) for label, count in zip(dataset.class_names, counts, strict=True)
                },
                "digest": split_digest(dataset, rows),
            }
        write_membership(membership_path, members, dataset.digest)
    artifacts.write_json(report_path, report)
    return report


def split_digest(dataset: shards.ShardedDataset, rows: np.ndarray) -> str:
    """A digest naming a split's content: the prepared dataset's digest (covering every shard's md5) and the rows."""
    return dataset_lib.digest(np.frombuffer(dataset.digest.encode("ascii"), dtype=np.uint8), np.asarray(rows, np.int64))


def write_membership(path: Path, members: dict[str, np.ndarray], dataset_digest: str) -> None:
    """Write each split's rows (sorted int64) and the digest of the dataset they index, as a plain .npz."""
    with artifacts.atomic_path(path) as staged, staged.open("wb") as handle:
        np.savez(
            handle,
            dataset_digest=np.array(dataset_digest),
            **{name: np.asarray(members[name], dtype=np.int64) for name in SPLITS},
        )


def read_membership(path: Path, dataset: shards.ShardedDataset, names: Sequence[str] = SPLITS) -> dict[str, np.ndarray]:
    """The rows of each split in `names`, checked to index `dataset`.

    Raises:
        ValueError: a missing or unreadable file, or one written for another prepared dataset.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            digest = str(archive["dataset_digest"])
            members = {name: archive[name] for name in names}
    except FileNotFoundError:
        raise ValueError(f"{path}: no split membership; run `dvc repro split`") from None
    except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a split membership file ({error}); run `dvc repro split`") from None
    if digest != dataset.digest:
        raise ValueError(
            f"{path}: made for another prepared dataset than {dataset.folder} (digest {digest[:12]}, now "
            f"{dataset.digest[:12]}); run `dvc repro split`"
        )
    for name, rows in members.items():
        if rows.dtype != np.int64 or rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(dataset))):
            raise ValueError(f"{path}: the {name} rows do not index the {len(dataset)} images of {dataset.folder}")
    return members


def partition(labels: np.ndarray, hashes: np.ndarray, class_names: Sequence[str], split: SplitParams) -> SplitIndices:
    """Split rows as the stage does, from their labels and (N, 16) content hashes."""
    return stratified_split(labels, hashes, split.validation_fraction, split.test_fraction, split.seed, class_names)


def stratified_split(
    labels: np.ndarray,
    hashes: np.ndarray,
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
        hashes: (N, 16) uint8 content hashes (`dataset.content_hashes`); equal rows mean identical images.
        validation_fraction: share of the distinct images for validation, in (0, 1).
        test_fraction: share of the distinct images for test, in (0, 1).
        seed: the split is a pure function of the data, the fractions and the seed.
        class_names: the names of the labels, for error messages; labels stand for themselves without.

    Raises:
        ValueError: a class, named, has too few distinct images for the fractions; the message
            gives its count, about how many the fractions need, and the fixes.
    """
    if len(labels) != len(hashes):
        raise ValueError(f"got {len(hashes)} hashes for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot split an empty dataset")
    group_of_row = dataset_lib.duplicate_groups(hashes)
    groups = np.flatnonzero(group_of_row == np.arange(len(labels)))
    duplicates = len(labels) - len(groups)
    group_labels = labels[groups]
    held_out = validation_fraction + test_fraction
    try:
        train_at, held_at = stratified_shuffle_split(group_labels, held_out, seed)
        train_groups, held_groups = groups[train_at], groups[held_at]
        validation_at, test_at = stratified_shuffle_split(labels[held_groups], test_fraction / held_out, seed)
        validation_groups, test_groups = held_groups[validation_at], held_groups[test_at]
    except ValueError:
        # scikit-learn's message names classes by internal index; the user's is below.
        raise ValueError(_too_small(group_labels, validation_fraction, test_fraction, class_names)) from None
    present = set(np.unique(group_labels).tolist())
    for part in (train_groups, validation_groups, test_groups):
        if set(np.unique(labels[part]).tolist()) != present:
            raise ValueError(_too_small(group_labels, validation_fraction, test_fraction, class_names))

    # Each row goes where the first row of its group went.
    split_of_group = np.zeros(len(labels), dtype=np.int8)
    split_of_group[validation_groups] = 1
    split_of_group[test_groups] = 2
    split_of_row = split_of_group[group_of_row]
    train, validation, test = (np.flatnonzero(split_of_row == code) for code in range(3))
    return SplitIndices(train, validation, test, duplicates)


def stratified_shuffle_split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a stratified train/test split of `labels`: scikit-learn's `train_test_split`, leaner.

    The draws are those of `train_test_split(..., test_size=test_size, stratify=labels,
    random_state=seed)` (`StratifiedShuffleSplit`), so a split made before stays the same; a test
    checks it. That code gathers the positions in Python lists, about 60 bytes a row at its peak;
    this keeps them in NumPy arrays.

    Args:
        labels: (n,) integer labels, one per item to split.
        test_size: the share of items in the test part, in (0, 1).
        seed: the random state's seed.

    Returns:
        The (n_train,) and (n_test,) int64 positions in `labels`, each in shuffled order.

    Raises:
        ValueError: a class with fewer than 2 items, or a part too small to hold every class.
    """
    from sklearn.model_selection._split import _validate_shuffle_split
    from sklearn.utils import check_random_state
    from sklearn.utils.extmath import _approximate_mode

    n_train, n_test = _validate_shuffle_split(len(labels), test_size, None, default_test_size=0.25)
    classes, class_of, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"{len(labels)} items of {len(classes)} classes cannot be split {n_train}/{n_test}")
    members = np.split(np.argsort(class_of.reshape(-1), kind="stable"), np.cumsum(class_counts)[:-1])
    del class_of
    rng = check_random_state(seed)
    train_counts = _approximate_mode(class_counts, n_train, rng)
    test_counts = _approximate_mode(class_counts - train_counts, n_test, rng)
    train, test = [], []
    for index, count in enumerate(class_counts.tolist()):
        shuffled = members[index].take(rng.permutation(count), mode="clip")
        train.append(shuffled[: train_counts[index]])
        test.append(shuffled[train_counts[index] : train_counts[index] + test_counts[index]])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


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
