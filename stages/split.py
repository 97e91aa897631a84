"""DVC stage `split`: stratified, deterministic train/validation/test membership with no shared images."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from image_classification import runner
from image_classification.config import load_params
from image_classification.data.split import SPLITS, split_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.split", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder (shards)")
    parser.add_argument(
        "--membership", type=Path, required=True, help="rows of each split to write (.npz: train, validation, test)"
    )
    parser.add_argument("--report", type=Path, required=True, help="split report to write (.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    report = split_dataset(params.split, args.dataset, args.membership, args.report)
    sizes = ", ".join(f"{name} {report['splits'][name]['images']}" for name in SPLITS)
    print(f"split: {sizes}; {report['duplicates_kept_together']} duplicate images kept with their twin")


if __name__ == "__main__":
    runner.run("split", main)
