"""DVC stage `split`: stratified, deterministic train/validation/test split with no shared images."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages import artifacts, cli, datasets
from stages.params import SplitParams, load_params

SPLITS = ("train", "validation", "test")


def run(split: SplitParams, dataset_path: Path, outputs: dict[str, Path], report_path: Path) -> dict:
    """Split the prepared dataset and write one dataset file per split plus a report.

    Args:
        outputs: the file to write for each of "train", "validation" and "test".

    Returns:
        The report: images per split and per class, duplicates kept together, and digests.
    """
    dataset = artifacts.load_dataset(dataset_path)
    datasets.validate(dataset)
    parts, duplicates = partition(dataset, split)
    report: dict = {"images": len(dataset), "duplicates_kept_together": duplicates, "splits": {}}
    for name, part in parts.items():
        counts = np.bincount(part.labels, minlength=len(part.class_names))
        report["splits"][name] = {
            "images": len(part),
            "count_per_class": {label: int(count) for label, count in zip(part.class_names, counts, strict=True)},
            "digest": datasets.digest(part.images, part.labels),
        }
        artifacts.save_dataset(outputs[name], part)
    artifacts.write_json(report_path, report)
    return report


def partition(dataset: datasets.Dataset, split: SplitParams) -> tuple[dict[str, datasets.Dataset], int]:
    """Split `dataset` as the stage does: one dataset per name in `SPLITS`, and how many duplicate
    images were kept in their twin's split."""
    indices = datasets.stratified_split(
        dataset.labels,
        datasets.content_hashes(dataset.images),
        split.validation_fraction,
        split.test_fraction,
        split.seed,
    )
    return {name: dataset.subset(getattr(indices, name)) for name in SPLITS}, indices.duplicates


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.split", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset (.npz)")
    for name in SPLITS:
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"{name} split to write (.npz)")
    parser.add_argument("--report", type=Path, required=True, help="split report to write (.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    report = run(params.split, args.dataset, {name: getattr(args, name) for name in SPLITS}, args.report)
    sizes = ", ".join(f"{name} {report['splits'][name]['images']}" for name in SPLITS)
    print(f"split: {sizes}; {report['duplicates_kept_together']} duplicate images kept with their twin")


if __name__ == "__main__":
    sys.exit(cli.execute("split", main))
