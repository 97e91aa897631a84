"""The five stage functions chained in-process on tiny data, as DVC chains their files.

The `pipeline` fixture (tests/conftest.py) runs them once per test session; the tests of each
stage's library module read its outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from image_classification.config import Params
from image_classification.data import prepare, split
from image_classification.modeling import evaluation, training
from image_classification.serving import export


def run_stage_chain(params: Params, root: Path) -> dict[str, Path]:
    """Run the five stages' library functions in order under `root`, at the paths dvc.yaml gives them."""
    paths = {
        "dataset": root / "data/prepared",
        "statistics": root / "reports/data/statistics.json",
        "membership": root / "data/split/membership.npz",
        "split_report": root / "reports/data/split.json",
        "model": root / "models/trained",
        "history": root / "reports/train/history.csv",
        "summary": root / "reports/train/summary.json",
        "timing": root / "reports/train/timing.json",
        "checkpoints": root / "checkpoints/train",
        "metrics": root / "reports/evaluate/metrics.json",
        "per_class": root / "reports/evaluate/per_class.csv",
        "confusion": root / "reports/evaluate/confusion.csv",
        "figure": root / "reports/evaluate/confusion_matrix.png",
        "savedmodel": root / "models/serving/digits/1",
        "card": root / "models/serving/digits/model_card.json",
        "export_report": root / "reports/export/report.json",
    }
    prepare.prepare_dataset(params.data, paths["dataset"], paths["statistics"])
    split.split_dataset(params.split, paths["dataset"], paths["membership"], paths["split_report"])
    training.train_model(
        params,
        paths["dataset"],
        paths["membership"],
        paths["model"],
        paths["history"],
        paths["summary"],
        paths["timing"],
        paths["checkpoints"],
    )
    evaluation.evaluate_model(
        params.evaluate,
        paths["model"],
        paths["dataset"],
        paths["membership"],
        paths["metrics"],
        paths["per_class"],
        paths["confusion"],
        paths["figure"],
    )
    export_run(params, paths, paths["savedmodel"], paths["export_report"], paths["card"])
    return paths


def export_run(params: Params, paths: dict[str, Path], output: Path, report: Path, card: Path | None = None) -> dict:
    """The export stage on the pipeline's model, test split and reports, writing to `output`."""
    return export.export_model(
        params,
        paths["model"],
        paths["dataset"],
        paths["membership"],
        paths["metrics"],
        paths["statistics"],
        output,
        card or output.parent / "model_card.json",
        report,
    )


def copy_outputs(paths: dict[str, Path], names: tuple[str, ...], root: Path) -> dict[str, Path]:
    """Copy some of a finished pipeline's outputs under `root`, as the previous outputs of a rerun."""
    root.mkdir(parents=True, exist_ok=True)
    copies = {}
    for name in names:
        source, target = paths[name], root / f"{name}{paths[name].suffix}"
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        copies[name] = target
    return copies


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, by relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
