"""Benchmark the pipeline as the data grows: peak memory of every stage, training speed, incremental prepare.

    python -m benchmarks.scale [--sizes 5000 60000 600000] [--photos 20000] [--output docs/scale.md] [--quick]

For each size, a throwaway copy of the project gets an image folder of that many generated 28x28
grayscale PNG files in 10 classes (the embedded digits, shifted by up to 2 pixels and noised, so
every file is a different image; `pipeline.enlarge`), and runs `dvc repro` with `data.source:
image_folder`, the default model and one epoch. Every stage runs under `benchmarks.profile`, which
records its peak resident memory. Then 1% new files are added and prepare alone is timed again:
it decodes only them, through the decoded-image cache, and writes again only the shards they fall
in. Then folders of 5,000 and 50,000 generated 64x64 RGB PNG photos run through `dvc repro` with a
small model. `--quick` runs 600 and 1,200 images, and 300 and 600 RGB ones (used by the tests); its
figures mean nothing. Last, the photo recipe (docs/data.md) runs on `--photos` generated RGB photos.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from benchmarks import pipeline
from image_classification import artifacts
from image_classification.data import sources
from image_classification.data.dataset import Dataset

logger = logging.getLogger("benchmarks")

SIZES = (5_000, 60_000, 100_000, 600_000)
QUICK_SIZES = (600, 1_200)
# The sizes whose peak memories the ratio row compares (the largest and a tenth of it).
RATIO_SIZES = (60_000, 600_000)
NEW_FRACTION = 0.01
# Incremental prepares measured after the full run, each after adding NEW_FRACTION new files; the
# page reports the median, since one run of a second or two moves by a quarter on a shared machine.
INCREMENTAL_REPEATS = 3
# 64x64 RGB folders: the largest stage's peak memory at the second size against the first.
RGB_SIZES = (5_000, 50_000)
QUICK_RGB_SIZES = (300, 600)
RGB_PARAMS = {
    "data": {"source": "image_folder", "image_height": 64, "image_width": 64, "channels": 3},
    "train": {"epochs": 1, "filters": 8},
}


def write_folder(dataset: Dataset, root: Path, start: int = 0) -> None:
    """Write `dataset` as `root/<class>/<index>.png`, numbering files from `start`."""
    for offset, (image, label) in enumerate(zip(dataset.images, dataset.labels, strict=True)):
        folder = root / dataset.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(folder / f"{start + offset:07d}.png", compress_level=1)


def measure_size(size: int, parent: Path, quick: bool) -> dict:
    """One `dvc repro` of `size` images, then prepare again after adding 1% new files."""
    root = pipeline.project_copy(parent)
    raw = root / "data" / "raw"
    for child in raw.iterdir():
        if child.is_dir():
            for path in sorted(child.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            child.rmdir()
        else:
            child.unlink()
    digits = sources.load_embedded_digits()
    started = time.perf_counter()
    write_folder(pipeline.enlarge(digits, size, seed=0), raw)
    logger.info("%d files written in %.0f s", size, time.perf_counter() - started)
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"]["source"] = "image_folder"
    params["train"]["epochs"] = 1
    if quick:
        params["train"].update({"filters": 8, "batch_size": 32})
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    profile = root / "stage-profile.jsonl"
    env = pipeline.environment(STAGES_PROFILE=str(profile))
    started = time.perf_counter()
    pipeline._dvc(root, env, "repro")
    wall = time.perf_counter() - started
    stages = {record.pop("stage"): record for record in map(json.loads, profile.read_text().splitlines())}
    timing = artifacts.read_json(root / "reports" / "train" / "timing.json")
    split_report = artifacts.read_json(root / "reports" / "data" / "split.json")
    train_images = split_report["splits"]["train"]["images"]

    new = max(1, int(size * NEW_FRACTION))
    manifest = root / "data" / "prepared" / "manifest.json"
    runs = []
    for repeat in range(INCREMENTAL_REPEATS):
        write_folder(pipeline.enlarge(digits, new, seed=1 + repeat), raw, start=size + repeat * new)
        profile.unlink()
        before = {shard["md5"] for shard in artifacts.read_json(manifest)["shards"]}
        pipeline._dvc(root, env, "repro", "prepare")
        (again,) = [json.loads(line) for line in profile.read_text().splitlines()]
        after = [shard["md5"] for shard in artifacts.read_json(manifest)["shards"]]
        runs.append(
            {
                "seconds": again["main_seconds"],
                "shards": len(after),
                "shards_written": len([md5 for md5 in after if md5 not in before]),
            }
        )
    median = sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]
    return {
        "images": size,
        "repro_seconds": round(wall, 1),
        "stages": stages,
        "train_images_per_second": round(train_images / timing["train_seconds"], 1),
        "prepared_bytes": sum(path.stat().st_size for path in (root / "data" / "prepared").iterdir()),
        "incremental": {
            "new_files": new,
            "prepare_seconds": median["seconds"],
            "full_prepare_seconds": stages["prepare"]["main_seconds"],
            "fraction_of_full": round(median["seconds"] / stages["prepare"]["main_seconds"], 3),
            "shards": median["shards"],
            "shards_written": median["shards_written"],
            "runs": runs,
        },
    }


def measure_rgb(size: int, parent: Path) -> dict:
    """One `dvc repro` of `size` generated 64x64 RGB PNG photos, 1 epoch of a small model (`RGB_PARAMS`)."""
    _, wall, stages = repro_photos(parent, size, RGB_PARAMS, sides=(64, 65), suffix=".png")
    return {"images": size, "repro_seconds": round(wall, 1), "stages": stages}


def repro_photos(parent: Path, count: int, overrides: dict, **photo_options: object) -> tuple[Path, float, dict]:
    """A project copy with `count` generated photos (`write_photos`) and the params `overrides`, through `dvc repro`.

    Returns:
        The copy's root, the wall seconds of `dvc repro`, and each stage's profile by name.
    """
    root = pipeline.project_copy(parent)
    started = time.perf_counter()
    write_photos(count, root / "data" / "raw", **photo_options)
    logger.info("%d photos written in %.0f s", count, time.perf_counter() - started)
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    for section, values in overrides.items():
        params[section].update(values)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    profile = root / "stage-profile.jsonl"
    started = time.perf_counter()
    pipeline._dvc(root, pipeline.environment(STAGES_PROFILE=str(profile)), "repro")
    wall = time.perf_counter() - started
    stages = {record.pop("stage"): record for record in map(json.loads, profile.read_text().splitlines())}
    return root, wall, stages


# The photo recipe (docs/data.md, "Photos"): what differs from params.yaml for RGB photos at 160x160.
PHOTO_RECIPE = {
    "data": {"source": "image_folder", "image_height": 160, "image_width": 160, "channels": 3, "aspect": "crop"},
    "train": {"conv_blocks": 4, "filters": 16, "pooling": "global_average", "epochs": 4},
    "export": {"model_name": "photos"},
    "registry": {"model_name": "photos", "min_test_accuracy": 0.5},
}
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring")


def photo(rng: np.random.Generator, label: int, sides: tuple[int, int] = (240, 481)) -> Image.Image:
    """A generated photo of class `label`: one of `SHAPES` in a warm or a cool colour, 10 classes in all.

    The size (`sides`: from the first up to the second pixels a side, excluded; landscape or
    portrait), background gradient, position, scale, colour shade and noise vary per photo, so the
    decoder resizes and crops, and the model must learn shape and hue rather than pixels.
    """
    width, height = (int(side) for side in rng.integers(*sides, 2))
    y, x = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1) / 2
    base, tint = rng.integers(40, 200, 3), rng.integers(-60, 61, 3)
    background = np.clip(base + ramp[..., None] * tint + rng.normal(0, 12, (height, width, 3)), 0, 255)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    shape, warm = SHAPES[label % len(SHAPES)], label >= len(SHAPES)
    hue = rng.integers(170, 256), rng.integers(0, 90)
    colour = (
        (int(hue[0]), int(hue[1]), int(rng.integers(0, 60)))
        if warm
        else (int(hue[1]), int(rng.integers(60, 160)), int(hue[0]))
    )
    side = int(min(width, height) * rng.uniform(0.3, 0.6))
    left, top = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    box = (left, top, left + side, top + side)
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(left, top + side), (left + side, top + side), (left + side // 2, top)], fill=colour)
    elif shape == "cross":
        third = side // 3
        draw.rectangle((left + third, top, left + 2 * third, top + side), fill=colour)
        draw.rectangle((left, top + third, left + side, top + 2 * third), fill=colour)
    else:
        draw.ellipse(box, outline=colour, width=max(3, side // 8))
    return image


def write_photos(
    count: int, root: Path, seed: int = 0, sides: tuple[int, int] = (240, 481), suffix: str = ".jpg"
) -> None:
    """Write `count` generated photos (`photo`) in 10 class folders under `root`: JPEG (quality 90) or PNG."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % 10
        folder = root / f"{'warm' if label >= len(SHAPES) else 'cool'}_{SHAPES[label % len(SHAPES)]}"
        folder.mkdir(parents=True, exist_ok=True)
        photo(rng, label, sides).save(folder / f"{index:07d}{suffix}", quality=90)


def measure_photos(count: int, parent: Path) -> dict:
    """One `dvc repro` of the photo recipe on `count` generated photos."""
    root, wall, stages = repro_photos(parent, count, PHOTO_RECIPE)
    timing = artifacts.read_json(root / "reports" / "train" / "timing.json")
    return {
        "date": datetime.date.today().isoformat(),
        "images": count,
        "repro_seconds": round(wall, 1),
        "stages": stages,
        "seconds_per_epoch": timing["seconds_per_epoch"],
        "test_accuracy": artifacts.read_json(root / "reports" / "evaluate" / "metrics.json")["accuracy"],
        "raw_bytes": sum(path.stat().st_size for path in (root / "data" / "raw").rglob("*.jpg")),
        "prepared_bytes": sum(path.stat().st_size for path in (root / "data" / "prepared").iterdir()),
    }


def carried_photos(path: Path) -> dict:
    """The photo-recipe figures of an earlier figures file, with the date they were measured.

    Raises:
        ValueError: the file holds none.
    """
    earlier = artifacts.read_json(path)
    if "photos" not in earlier:
        raise ValueError(f"{path} holds no photo-recipe figures")
    return {"date": earlier["date"], **earlier["photos"]}


def memory_table(rows: list[dict]) -> list[str]:
    """The peak resident memory (MiB) of every stage at each size, and the ratio of `RATIO_SIZES`."""
    names = pipeline.STAGES
    lines = ["| images | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in rows:
        peaks = " | ".join(f"{row['stages'][name]['peak_rss_mib']:,.0f}" for name in names)
        lines.append(f"| {row['images']:,} | {peaks} |")
    by_size = {row["images"]: row for row in rows}
    if len(rows) > 1:
        first, last = (
            (by_size[RATIO_SIZES[0]], by_size[RATIO_SIZES[1]]) if set(RATIO_SIZES) <= set(by_size) else rows[-2:]
        )
        ratios = " | ".join(
            f"{last['stages'][name]['peak_rss_mib'] / first['stages'][name]['peak_rss_mib']:.2f}" for name in names
        )
        lines.append(f"| ratio {last['images']:,} / {first['images']:,} | {ratios} |")
    return lines


def headlines(results: dict) -> list[str]:
    """One line each: training speed, incremental prepare, the RGB folders' growth, the photo recipe."""
    rows = results["sizes"]
    lines = [
        "- Training images/s (1 epoch, streamed from the shards): "
        + ", ".join(f"{row['train_images_per_second']:,.0f} at {row['images']:,}" for row in rows)
        + ".",
        "- Prepare after 1% new files, against a full prepare: "
        + ", ".join(
            f"{row['incremental']['fraction_of_full']:.1%} at {row['images']:,} "
            f"({row['incremental']['shards_written']:,} of {row['incremental']['shards']:,} shards written again)"
            for row in rows
        )
        + ".",
    ]
    rgb = results.get("rgb")
    if rgb and len(rgb) > 1:
        largest = [max(stage["peak_rss_mib"] for stage in row["stages"].values()) for row in rgb]
        lines.append(
            f"- 64x64 RGB PNG folders: the largest stage peaks at {largest[-1]:,.0f} MiB with {rgb[-1]['images']:,} "
            f"images, {largest[-1] / largest[0]:.2f} times its {largest[0]:,.0f} MiB with {rgb[0]['images']:,}."
        )
    photos = results.get("photos")
    if photos:
        stage, peak = max(
            ((name, record["peak_rss_mib"]) for name, record in photos["stages"].items()), key=lambda item: item[1]
        )
        lines.append(
            f"- The photo recipe on {photos['images']:,} generated 160x160 photos: largest stage {stage} at "
            f"{peak:,.0f} MiB, {photos['seconds_per_epoch']:,.0f} s per epoch, "
            f"test accuracy {photos['test_accuracy']:.4f}."
        )
    return lines


def render(results: dict) -> str:
    """The figures as a Markdown page."""
    rows = results["sizes"]
    names = pipeline.STAGES
    lines = [
        "# Scale: memory and speed as the data grows",
        "",
        f"Measured {results['date']} on {results['machine']} by `make bench-scale` (`python -m benchmarks.scale`).",
        "",
        "Data: generated 28x28 grayscale PNG files in 10 class folders (the embedded digits shifted by up to 2",
        "pixels and noised, every file a different image), `data.source: image_folder`, default params but",
        "`train.epochs: 1`. Each stage's peak resident memory is its own `VmHWM` or its largest child's",
        "`ru_maxrss`, whichever is larger (`benchmarks/profile.py`).",
        "",
        "## Peak resident memory per stage (MiB)",
        "",
        *memory_table(rows),
        "",
        "## Time",
        "",
        "| images | full `dvc repro` (s) | prepare (s) | training images/s | prepared dataset (MB) | "
        "prepare after 1% new files: median s (runs) | of a full prepare | shards written again |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        incremental = row["incremental"]
        runs = ", ".join(f"{run['seconds']:,.2f}" for run in incremental["runs"])
        lines.append(
            f"| {row['images']:,} | {row['repro_seconds']:,.0f} | {row['stages']['prepare']['main_seconds']:,.1f} | "
            f"{row['train_images_per_second']:,.0f} | {row['prepared_bytes'] / 1e6:,.1f} | "
            f"{incremental['prepare_seconds']:,.2f} ({incremental['new_files']:,} files; "
            f"{runs}) | "
            f"{incremental['fraction_of_full']:.1%} | "
            f"{incremental['shards_written']:,} of {incremental['shards']:,} |"
        )
    lines += [
        "",
        f"Prepare runs {INCREMENTAL_REPEATS} times after the full run, each time after 1% more new files; the row",
        "gives the median run's seconds and shards (the runs' seconds in brackets) against the full run's prepare.",
        "The new files are numbered after the others, so they sort last in each of the 10 class folders:",
        "10 places in the row order. Prepare reads only them (`decode_cache`: the listing of the last",
        "prepare tells unchanged files by size, modification time and inode) and writes again only the",
        "shards they fall in (`shards.shard_ends`, `shards.ShardStore`).",
    ]
    rgb = results.get("rgb")
    if rgb:
        rgb_names = [name for name in names if name in rgb[0]["stages"]]
        lines += [
            "",
            "## 64x64 RGB folders",
            "",
            "Generated 64x64 RGB PNG photos (`benchmarks.scale.photo` at 64 pixels a side), "
            f"`benchmarks.scale.RGB_PARAMS`: {json.dumps(RGB_PARAMS)}.",
            "",
            "| images | " + " | ".join(rgb_names) + " | largest | full `dvc repro` (s) |",
            "|---|" + "---|" * (len(rgb_names) + 2),
        ]
        for row in rgb:
            peaks = [row["stages"][name]["peak_rss_mib"] for name in rgb_names]
            cells = " | ".join(f"{peak:,.0f}" for peak in peaks)
            lines.append(f"| {row['images']:,} | {cells} | {max(peaks):,.0f} | {row['repro_seconds']:,.0f} |")
        if len(rgb) > 1:
            largest = [max(row["stages"][name]["peak_rss_mib"] for name in rgb_names) for row in rgb]
            lines.append(
                f"\nThe largest stage at {rgb[-1]['images']:,} images peaks at {largest[-1] / largest[0]:.2f} "
                f"times its figure at {rgb[0]['images']:,}."
            )
    photos = results.get("photos")
    if photos:
        peaks = " | ".join(f"{photos['stages'][name]['peak_rss_mib']:,.0f}" for name in names)
        lines += [
            "",
            "## Photos: the photo recipe on generated 160x160 RGB photos",
            "",
            f"Measured {photos.get('date', results['date'])}. "
            f"{photos['images']:,} generated JPEG photos (240 to 480 pixels a side, `benchmarks.scale.photo`: five",
            "shapes in warm or cool colours on noisy gradients, 10 classes), the recipe of docs/data.md",
            f"(`benchmarks.scale.PHOTO_RECIPE`). Raw JPEG files {photos['raw_bytes'] / 1e6:,.0f} MB, prepared shards "
            f"{photos['prepared_bytes'] / 1e6:,.0f} MB.",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            f"| peak resident memory (MiB) | {peaks} |",
            "",
            f"Full `dvc repro` {photos['repro_seconds']:,.0f} s, {photos['seconds_per_epoch']:,.0f} s per epoch, "
            f"test accuracy {photos['test_accuracy']:.4f}.",
        ]
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo with its widest vector instructions, or the machine type.

    Machines sold under one model name ("AMD EPYC") differ in whether they have AVX-512, which
    TensorFlow's kernels use: training on the same data ran twice as fast with it here.
    """
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    if not names:
        return platform.machine()
    return f"{names[0]} ({vector})" if vector else names[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help=f"image counts (default {' '.join(map(str, SIZES))})")
    parser.add_argument("--output", type=Path, default=Path("docs/scale.md"), help="Markdown page to write")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the benchmark itself runs")
    parser.add_argument(
        "--rgb-sizes", type=int, nargs="*", help=f"64x64 RGB image counts (default {' '.join(map(str, RGB_SIZES))})"
    )
    parser.add_argument(
        "--photos", type=int, help="generated photos for the photo recipe (0: none; default 20000, 0 with --quick)"
    )
    parser.add_argument(
        "--photos-from",
        type=Path,
        help="an earlier figures file (.json) whose photo-recipe figures to repeat, with their date, instead of "
        "measuring them again (35 minutes); for a change that leaves the photo recipe's stages as they were",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores",
        "sizes": [],
    }
    for size in sizes:
        logger.info("scale: %d images", size)
        with pipeline.workspace() as parent:
            results["sizes"].append(measure_size(size, parent, args.quick))
    rgb_sizes = args.rgb_sizes if args.rgb_sizes is not None else (QUICK_RGB_SIZES if args.quick else RGB_SIZES)
    for size in rgb_sizes:
        logger.info("scale: %d 64x64 RGB images", size)
        with pipeline.workspace() as parent:
            results.setdefault("rgb", []).append(measure_rgb(size, parent))
    photos = args.photos if args.photos is not None else (0 if args.quick else 20_000)
    if args.photos_from is not None:
        try:
            results["photos"] = carried_photos(args.photos_from)
        except ValueError as error:
            parser.error(str(error))
    elif photos:
        logger.info("scale: photo recipe on %d photos", photos)
        with pipeline.workspace() as parent:
            results["photos"] = measure_photos(photos, parent)
    pipeline.write_page(args.output, results, render(results))


if __name__ == "__main__":
    main()
