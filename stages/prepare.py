"""DVC stage `prepare`: load the source images, validate them and write the prepared dataset's shards."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from image_classification import runner
from image_classification.config import load_params
from image_classification.data.prepare import prepare_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.prepare", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--raw", type=Path, help="folder of the user's data (image_folder, npz and idx sources)")
    parser.add_argument("--output", type=Path, required=True, help="prepared dataset folder to write (shards)")
    parser.add_argument("--statistics", type=Path, required=True, help="data statistics to write (.json)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    parser.add_argument(
        "--cache", type=Path, help="decoded-image cache (.sqlite) that makes preparing an image folder incremental"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    statistics = prepare_dataset(
        params.data, args.output, args.statistics, args.raw, args.workers, cache_path=args.cache
    )
    skipped = f", {statistics['rejected_count']} file(s) rejected" if statistics["rejected_count"] else ""
    print(
        f"prepare: {statistics['images']} images of shape {statistics['image_shape']} in "
        f"{statistics['classes']} classes from '{statistics['source']}'{skipped} -> {args.output}"
    )


if __name__ == "__main__":
    runner.run("prepare", main)
