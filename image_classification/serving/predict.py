"""Predict the class of image files with the exported SavedModel.

Run it as `python -m image_classification.serving.predict IMAGE...` (`make predict` shows how).

Every file goes through the prepare stage's decoder (`images.decode_image`) with the decoding rules
the model was trained with, so an image predicted here becomes the same array a training image
did. TensorFlow is imported only once the inputs and the model folder are known to exist.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from image_classification import artifacts, runner
from image_classification.config import DataParams, load_params
from image_classification.data import images, sources
from image_classification.data.prepare import image_spec

FORMATS = ("csv", "jsonl")
FIELDS = ("path", "class_name", "class_id", "probability", "top_k", "error")
CARD_FILE = "model_card.json"
# Below this many files a progress bar would only flash by.
PROGRESS_THRESHOLD = 1000
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Summary:
    """What a predict run did: files seen, predicted and failed, and the model version it used."""

    files: int
    predicted: int
    failed: int
    model: Path
    rules: str


def run(
    inputs: Sequence[str],
    model: Path,
    data: DataParams,
    output: Path | None,
    output_format: str,
    top_k: int,
    batch_size: int,
    progress: bool | None = None,
    stream: TextIO | None = None,
) -> Summary:
    """Predict every image file `inputs` name and write one row per file to `output`, or to `stream`.

    Args:
        inputs: image files, folders (searched recursively for image files) and glob patterns.
        model: a SavedModel version folder, or a base folder whose highest integer version is used.
        data: decoding rules used when the model has no model card beside it (params.yaml's `data`).
        output: the `.csv` or `.jsonl` file to write, atomically; None writes to `stream`.
        output_format: `csv` or `jsonl`.
        top_k: how many of the most probable classes each row lists.
        batch_size: images decoded and predicted at a time.
        progress: show a progress bar on stderr; by default only for `PROGRESS_THRESHOLD` files or more.

    Returns:
        How many files were predicted and how many got an error row instead.

    Raises:
        ValueError: a missing input, a folder without images, a pattern that matches nothing, a
            folder that is not a SavedModel, decoding rules that disagree with the model, or no file
            that could be decoded.
    """
    if output_format not in FORMATS:
        raise ValueError(f"output format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    files = find_files(inputs)
    version = find_version(model)
    # TensorFlow takes seconds to import; everything above fails fast without it.
    from image_classification.serving import savedmodel

    classifier = savedmodel.load_classifier(version)
    height, width, channels = classifier.image_shape
    spec, rules = decoding_rules(version, data)
    if (spec.height, spec.width, spec.channels) != (height, width, channels):
        raise ValueError(
            f"{rules} decodes images to {spec.height}x{spec.width}x{spec.channels}, but the SavedModel "
            f"{version} takes {height}x{width}x{channels}; pass the params the model was trained with (--params)"
        )
    predicted = failed = 0
    first_error = ""
    show = len(files) >= PROGRESS_THRESHOLD if progress is None else progress
    with _open_output(output, stream) as handle, tqdm(
        total=len(files), desc="predicting", unit="img", file=sys.stderr, disable=not show
    ) as bar:  # fmt: skip
        write = _writer(handle, output_format)
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded, reasons = _decode(chunk, spec)
            outputs = savedmodel.classify(classifier, decoded) if len(decoded) else None
            rows = iter(_rows(outputs, classifier.class_names, top_k) if outputs else ())
            for path, reason in zip(chunk, reasons, strict=True):
                if reason is None:
                    write({"path": str(path), **next(rows), "error": None})
                    predicted += 1
                else:
                    write({"path": str(path), "class_name": None, "class_id": None, "probability": None,
                           "top_k": None, "error": reason})  # fmt: skip
                    failed += 1
                    first_error = first_error or f"{path}: {reason}"
            bar.update(len(chunk))
        if not predicted:
            raise ValueError(f"none of the {len(files)} file(s) could be decoded; first: {first_error}")
    return Summary(len(files), predicted, failed, version, rules)


def find_files(inputs: Sequence[str]) -> list[Path]:
    """Expand files, folders and glob patterns into a list of files, each once, in a stable order.

    A folder contributes its image files (by extension, as the prepare stage's image folders;
    hidden files skipped) at any depth; a file named directly is taken whatever its name, and one
    that does not decode gets an error row. `**` in a pattern matches folders at any depth.

    Raises:
        ValueError: a path that does not exist, a pattern that matches no file, a folder without image files.
    """
    found: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            inside = _images_in(path)
            if not inside:
                raise ValueError(f"{path}: no image files in this folder ({', '.join(images.IMAGE_SUFFIXES)})")
            found += inside
        elif path.is_file():
            found.append(path)
        elif GLOB_CHARACTERS & set(name):
            matches = [Path(match) for match in sorted(glob.glob(name, recursive=True))]
            matches = [match for match in matches if match.is_file()]
            if not matches:
                raise ValueError(f"{name}: no file matches this pattern")
            found += matches
        else:
            raise ValueError(f"{path}: no such file or folder")
    # A file named twice (a folder and a pattern inside it) gets one row.
    return list(dict.fromkeys(found))


def _images_in(folder: Path) -> list[Path]:
    found, _, _ = sources.index_images(folder)
    return [folder / path for path in found]


def find_version(path: Path) -> Path:
    """The SavedModel version folder `path` names: itself, or the highest integer version under it.

    `path` is a version folder (it holds `saved_model.pb`) or a model's base folder in TF Serving's
    layout, `<model_name>/<integer version>/`, of which TF Serving also serves the highest.

    Raises:
        ValueError: `path` does not exist, or is neither of the two.
    """
    if not path.is_dir():
        raise ValueError(f"{path}: no such model folder; export one with `dvc repro`, or pass --model")
    if (path / "saved_model.pb").is_file():
        return path
    versions = [child for child in path.iterdir() if child.name.isdigit() and (child / "saved_model.pb").is_file()]
    if not versions:
        raise ValueError(f"{path}: not a SavedModel (no saved_model.pb), nor a folder of integer versions holding one")
    return max(versions, key=lambda child: int(child.name))


def decoding_rules(version: Path, data: DataParams) -> tuple[images.ImageSpec, str]:
    """The decoding rules for a model version, and where they came from.

    The model card beside the version folder records the `data` params the model was trained with;
    when it describes this version, its rules win over `data` (the current params.yaml), which may
    have changed since.

    Raises:
        ValueError: the model card exists but cannot be read.
    """
    card_path = version.parent / CARD_FILE
    if card_path.is_file():
        try:
            card = artifacts.read_json(card_path)
            if str(card["version"]) == version.name:
                # Cards written before `data.background` existed describe models trained with
                # transparency composited over black.
                recorded = {"background": "black", **card["params"]["data"]}
                return image_spec(DataParams.model_validate(recorded)), str(card_path)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{card_path}: not a readable model card ({error})") from None
    return image_spec(data), "params.yaml's data section"


def _decode(paths: Sequence[Path], spec: images.ImageSpec) -> tuple[np.ndarray, list[str | None]]:
    arrays, reasons = [], []
    for path in paths:
        try:
            arrays.append(images.decode_image(path, spec))
            reasons.append(None)
        except ValueError as error:
            reasons.append(str(error))
    shape = (len(arrays), spec.height, spec.width, spec.channels)
    return (np.stack(arrays) if arrays else np.zeros(shape, np.uint8)), reasons


def _rows(outputs: dict[str, np.ndarray], class_names: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """One row per image: the predicted class, its probability and the `top_k` most probable classes."""
    probabilities = outputs["probabilities"]
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        {
            "class_name": name.decode("utf-8"),
            "class_id": int(class_id),
            "probability": round(float(probabilities[row, class_id]), 6),
            "top_k": {class_names[index]: round(float(probabilities[row, index]), 6) for index in order[row]},
        }
        for row, (class_id, name) in enumerate(zip(outputs["class_id"], outputs["class_name"], strict=True))
    ]


@contextlib.contextmanager
def _open_output(output: Path | None, stream: TextIO | None) -> Iterator[TextIO]:
    if output is None:
        yield stream or sys.stdout
        return
    with artifacts.atomic_path(output) as staged, staged.open("w", newline="", encoding="utf-8") as handle:
        yield handle


def _writer(handle: TextIO, output_format: str):
    """A function that writes one row; `top_k` becomes a JSON object in a CSV cell."""
    if output_format == "jsonl":
        return lambda row: handle.write(json.dumps(row) + "\n")
    writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()

    def write(row: dict[str, Any]) -> None:
        top_k = row["top_k"]
        writer.writerow({**row, "top_k": "" if top_k is None else json.dumps(top_k)})

    return write


def output_format(output: Path | None, requested: str | None) -> str:
    """The format asked for, else the one `output`'s suffix names, else csv.

    Raises:
        ValueError: an output file whose suffix names no format, with no format asked for.
    """
    if requested:
        return requested
    if output is None:
        return "csv"
    suffix = output.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"{output}: cannot tell the format from the suffix; use .csv or .jsonl, or pass --format")
    return suffix


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m image_classification.serving.predict", description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or quoted glob patterns")
    parser.add_argument(
        "--model",
        type=Path,
        help="SavedModel version folder, or a base folder whose highest integer version is used "
        "(default: models/serving/<export.model_name>)",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--output", type=Path, help="file to write, .csv or .jsonl (default: standard output)")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from --output's suffix, else csv)")
    parser.add_argument("--top-k", type=_positive, help="classes listed per image (default: predict.top_k)")
    parser.add_argument("--batch-size", type=_positive, help="images per batch (default: predict.batch_size)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = run(
        args.inputs,
        args.model or Path("models/serving") / params.export.model_name,
        params.data,
        args.output,
        output_format(args.output, args.format),
        args.top_k or params.predict.top_k,
        args.batch_size or params.predict.batch_size,
    )
    failed = f", {summary.failed} could not be decoded (error rows)" if summary.failed else ""
    destination = f" -> {args.output}" if args.output else ""
    # Standard output may be the predictions themselves; the summary goes to stderr.
    print(
        f"predict: {summary.predicted} of {summary.files} image(s) predicted with {summary.model}{failed}{destination}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    runner.run("predict", main)
