"""Load `keras.datasets.<name>` with Keras' own code and hand the arrays back as a plain `.npz`.

The prepare stage runs this in a child process (`python -m image_classification.data.keras_fetch NAME OUTPUT`) so that
it never imports TensorFlow itself. Keras downloads into its cache (`KERAS_HOME`, else `~/.keras`)
through `keras.utils.get_file`, which checks the published checksum; a cached copy is used offline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from image_classification import config


def run(name: str, output: Path) -> None:
    """Load the dataset (downloading it into Keras' cache when missing) and write x and y to `output`."""
    import keras

    (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    with output.open("wb") as handle:
        np.savez(handle, x=np.concatenate([x_train, x_test]), y=np.concatenate([y_train, y_test]).reshape(-1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_classification.data.keras_fetch", description=__doc__)
    parser.add_argument("name", choices=config.KERAS_DATASETS)
    parser.add_argument("output", type=Path, help="where to write the arrays (.npz)")
    args = parser.parse_args(argv)
    try:
        run(args.name, args.output)
    except Exception as error:
        # get_file raises a bare Exception when a download fails; its message names the URL and the
        # network error. One line, for the parent process to quote.
        print(" ".join(str(error).split()) or type(error).__name__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
