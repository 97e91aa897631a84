"""DVC stage `prepare`: load the source images, validate them and write the normalized dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages import artifacts, cli, datasets
from stages.params import DataParams, load_params


def run(data: DataParams, output: Path, statistics_path: Path) -> dict:
    """Load, validate and optionally subsample the dataset; write it and its statistics.

    Returns:
        The statistics written to `statistics_path`.
    """
    dataset = datasets.load_embedded_digits()
    datasets.validate(dataset)
    if data.max_images is not None and data.max_images < len(dataset):
        dataset = dataset.subset(datasets.stratified_sample(dataset.labels, data.max_images, data.seed))
        datasets.validate(dataset)
    statistics = {"source": data.source, **datasets.statistics(dataset)}
    artifacts.save_dataset(output, dataset)
    artifacts.write_json(statistics_path, statistics)
    return statistics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.prepare", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--output", type=Path, required=True, help="dataset file to write (.npz)")
    parser.add_argument("--statistics", type=Path, required=True, help="data statistics to write (.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    statistics = run(params.data, args.output, args.statistics)
    print(
        f"prepare: {statistics['images']} images of shape {statistics['image_shape']} in "
        f"{statistics['classes']} classes from '{statistics['source']}' -> {args.output}"
    )


if __name__ == "__main__":
    sys.exit(cli.execute("prepare", main))
