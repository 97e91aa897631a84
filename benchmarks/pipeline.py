"""Pipeline figures: a full and a no-op `dvc repro` in a throwaway copy of the project.

The copy's `dvc.yaml` runs every stage through `benchmarks.profile`, so each stage reports its own
start-up (interpreter and imports), its time in MLflow calls and its peak resident memory; the user's
workspace and MLflow store are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from image_classification import artifacts
from image_classification.data.dataset import Dataset

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "split", "train", "evaluate", "export")


@dataclass(frozen=True)
class ReproRun:
    """One full `dvc repro`: its wall time, the train stage's fit seconds and each stage's profile."""

    images: int
    wall_seconds: float
    train_seconds: float
    stages: dict[str, dict[str, float]]
    noop_seconds: list[float]
    overrides: dict


def project_copy(parent: Path) -> Path:
    """Copy the project's files as a fresh clone has them into `parent/project`, as its own git repo.

    The committed reference run (dvc.lock, reports/) is left out, so every stage runs, and each
    stage command runs under `benchmarks.profile`.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    root = parent / "project"
    for name in listed:
        source = PROJECT_ROOT / name
        if name.startswith(("dvc.lock", "reports/")) or not source.is_file():
            continue
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    pipeline = root / "dvc.yaml"
    pipeline.write_text(pipeline.read_text().replace("python -m stages.", "python -m benchmarks.profile stages."))
    _git(root, "init", "--quiet", "--initial-branch", "main")
    _git(root, "add", "--all")
    _git(root, "commit", "--quiet", "--message", "benchmark copy")
    return root


def repro(
    dataset: Dataset | None,
    overrides: dict,
    parent: Path,
    noop_repeats: int,
    variables: Mapping[str, str] | None = None,
    targets: Sequence[str] = (),
) -> ReproRun:
    """Run `dvc repro` on `dataset` (the embedded digits when None) with params `overrides`.

    The dataset goes into data/raw as an .npz file with `data.source: npz`. After the full run, a
    no-op `dvc repro` is timed `noop_repeats` times. `variables` are added to the stages'
    environment (a tracking URI); `targets` limits the run to those stages and what they depend on.
    """
    root = project_copy(parent)
    overrides = {section: dict(values) for section, values in overrides.items()}
    if dataset is not None:
        np.savez(root / "data" / "raw" / "images.npz", x=dataset.images, y=dataset.labels)
        height, width, channels = dataset.images.shape[1:]
        overrides["data"] = {
            "source": "npz", "image_height": height, "image_width": width, "channels": channels,
            **overrides.get("data", {}),
        }  # fmt: skip
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    for section, values in overrides.items():
        params[section] = {**params[section], **values}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    profile = root / "stage-profile.jsonl"
    env = environment(STAGES_PROFILE=str(profile), **(variables or {}))
    logger.info("dvc repro in %s", root)
    started = time.perf_counter()
    _dvc(root, env, "repro", *targets)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in profile.read_text().splitlines()]
    stages = {record.pop("stage"): record for record in records}
    train_seconds = json.loads((root / "reports" / "train" / "timing.json").read_text())["train_seconds"]
    images = json.loads((root / "reports" / "data" / "statistics.json").read_text())["images"]
    noop = []
    for _ in range(noop_repeats):
        started = time.perf_counter()
        _dvc(root, environment(), "repro")
        noop.append(time.perf_counter() - started)
    return ReproRun(images, wall, train_seconds, stages, noop, overrides)


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        yield Path(folder)


def enlarge(dataset: Dataset, size: int, seed: int = 0) -> Dataset:
    """Make `size` images from `dataset`: copies shifted by up to 2 pixels with a little noise.

    Deterministic for a given seed, so the large run is repeatable; every copy is a different image,
    so the prepare stage's duplicate check does not fold them together.
    """
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(dataset), size) if size > len(dataset) else rng.permutation(len(dataset))[:size]
    images = dataset.images[source].astype(np.int16)
    shifts = rng.integers(-2, 3, (size, 2))
    for row, (down, right) in enumerate(shifts):
        images[row] = np.roll(images[row], (down, right), axis=(0, 1))
    images += rng.integers(-8, 9, images.shape, dtype=np.int16)
    return Dataset(np.clip(images, 0, 255).astype(np.uint8), dataset.labels[source], dataset.class_names)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def environment(**extra: str) -> dict[str, str]:
    """The user's environment with the project's interpreter first and no tracking URI or DVC state."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_", "STAGES_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _dvc(root: Path, env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {root}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    )  # fmt: skip


def write_page(output: Path, results: dict, page: str) -> None:
    """Write a Markdown `page` to `output` and its figures beside it as .json; print the page."""
    artifacts.write_json(output.with_suffix(".json"), results)
    with artifacts.atomic_path(output) as staged:
        staged.write_text(page, encoding="utf-8")
    print(page)
