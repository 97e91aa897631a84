"""Time the prepare stage's image-folder path on 70,000 generated 28x28 PNG files.

    python benchmarks/prepare_images.py [--images 70000] [--workers N]

Writes the PNGs into a temporary folder (not timed), then runs `sources.load_image_folder` as
`dvc repro` does the first time, with an empty decoded-image cache (hash every file, decode in a
process pool, store the decoded images in the cache, hash the folder as DVC would) and prints seconds,
images per second, the peak resident memory of this process and of the largest worker, and the
size of the decoded dataset for comparison.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_classification.data import sources
from image_classification.data.images import ImageSpec


def write_pngs(root: Path, count: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / f"class {label}").mkdir(parents=True)
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
        (root / f"class {index % classes}" / f"{index:06d}.png").write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as folder:
        root = Path(folder)
        print(f"writing {args.images:,} PNG files ...", file=sys.stderr)
        write_pngs(root, args.images)
        before = _status_kib("VmRSS")
        start = time.perf_counter()
        loaded = sources.load_image_folder(root, ImageSpec(28, 28, 1), workers=args.workers)
        seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    increase = (_status_kib("VmHWM") - before) / 1024 if before else float("nan")
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    decoded = len(loaded) * math.prod(loaded.image_shape) / 2**20
    print(f"images: {len(loaded):,} decoded, {loaded.rejected_count} rejected, workers: {args.workers}")
    print(f"time: {seconds:.1f} s ({len(loaded) / seconds:,.0f} images/s), decoding and DVC hashing")
    print(f"decoded dataset: {decoded:.1f} MiB; peak RSS: {own:.0f} MiB this process, {worker:.0f} MiB largest worker")
    print(f"peak RSS growth while preparing: {increase:.0f} MiB over the {before / 1024:.0f} MiB before it")


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc (Linux), in KiB; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    main()
