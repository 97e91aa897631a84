"""The five stage functions chained: reruns are identical; a failing stage leaves the previous outputs whole.

Train, evaluate and export stop in one line, naming the shard, when a shard of the prepared dataset is corrupt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from image_classification import artifacts, runner
from image_classification.config import Params
from image_classification.data import prepare, split
from image_classification.modeling import evaluation, training
from image_classification.serving import savedmodel
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, merged, pipeline_env, raw_params, split_images, store_copy
from tests.stage_chain import copy_outputs, export_run, run_stage_chain, snapshot

pytestmark = pytest.mark.slow


def test_rerun_gives_identical_metrics(pipeline, tmp_path: Path) -> None:
    params, paths, _ = pipeline
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        again = run_stage_chain(params, tmp_path)
    for name in ("statistics", "split_report", "history", "summary", "metrics", "per_class", "confusion"):
        assert again[name].read_bytes() == paths[name].read_bytes(), name
    test_images = split_images(paths, "test").images
    assert np.array_equal(
        savedmodel.predict_savedmodel(again["savedmodel"], test_images)["probabilities"],
        savedmodel.predict_savedmodel(paths["savedmodel"], test_images)["probabilities"],
    )
    # The model card differs only in the MLflow run it names.
    card, card_again = artifacts.read_json(paths["card"]), artifacts.read_json(again["card"])
    assert card["mlflow"]["run_id"] != card_again["mlflow"]["run_id"]
    assert {key: value for key, value in card.items() if key != "mlflow"} == {
        key: value for key, value in card_again.items() if key != "mlflow"
    }


# Failing partway: every stage leaves the previous outputs and no half-written file.

STAGE_OUTPUTS = {
    "prepare": ("dataset", "statistics"),
    "split": ("membership", "split_report"),
    "train": ("model", "history", "summary", "timing"),
    "evaluate": ("metrics", "per_class", "confusion", "figure"),
    "export": ("savedmodel", "card", "export_report"),
}


def fail_after_writing(real):
    """Wrap a writer: let it write its temporary file, then fail as a full disk would."""

    def writer(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(28, "No space left on device")

    return writer


def rerun(stage: str, params: Params, paths: dict[str, Path], outputs: dict[str, Path], scratch: Path) -> None:
    if stage == "prepare":
        prepare.prepare_dataset(params.data, outputs["dataset"], outputs["statistics"])
    elif stage == "split":
        split.split_dataset(params.split, paths["dataset"], outputs["membership"], outputs["split_report"])
    elif stage == "train":
        training.train_model(params, paths["dataset"], paths["membership"], outputs["model"], outputs["history"],
                             outputs["summary"], outputs["timing"], scratch / "checkpoints")  # fmt: skip
    elif stage == "evaluate":
        evaluation.evaluate_model(params.evaluate, paths["model"], paths["dataset"], paths["membership"],
                                  outputs["metrics"], outputs["per_class"], outputs["confusion"],
                                  outputs["figure"])  # fmt: skip
    else:
        export_run(params, paths, outputs["savedmodel"], outputs["export_report"], outputs["card"])


@pytest.mark.parametrize("stage", list(STAGE_OUTPUTS))
def test_failing_stage_leaves_previous_outputs_whole(
    stage: str, pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras
    from matplotlib.figure import Figure

    params, paths, uri = pipeline
    # Evaluate and export attach to the run that trained the model, which lives in the pipeline's store.
    # A copy of it, since the failure marks that run FAILED.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_copy(uri, tmp_path / "store"))
    outputs = copy_outputs(paths, STAGE_OUTPUTS[stage], tmp_path / "outputs")
    before = snapshot(tmp_path / "outputs")
    writer = {
        # The shards and labels are .npy files; the membership is an .npz.
        "prepare": (np, "save"),
        "split": (np, "savez"),
        "train": (keras.Model, "save"),
        "evaluate": (Figure, "savefig"),
        # ExportArchive() builds a backend-specific subclass, which has its own write_out.
        "export": (type(keras.export.ExportArchive()), "write_out"),
    }[stage]
    monkeypatch.setattr(*writer, fail_after_writing(getattr(*writer)))
    with pytest.raises(OSError, match="No space left on device"):
        rerun(stage, params, paths, outputs, tmp_path)
    assert snapshot(tmp_path / "outputs") == before
    assert sorted(path.name for path in (tmp_path / "outputs").iterdir()) == sorted(
        path.name for path in outputs.values()
    )


# A damaged shard: train, evaluate and export check every shard's md5 before they read an image.


def stage_command(stage: str, params_file: Path, paths: dict[str, Path], dataset: Path, out: Path) -> list[str]:
    """The stage's command line as dvc.yaml gives it, reading `dataset` and writing under `out`."""
    inputs = ["--params", str(params_file), "--dataset", str(dataset), "--membership", str(paths["membership"])]
    options = {
        "train": ["--model-dir", out / "model", "--history", out / "history.csv", "--summary", out / "summary.json",
                  "--timing", out / "timing.json", "--checkpoint-dir", out / "checkpoints"],
        "evaluate": ["--model-dir", paths["model"], "--metrics", out / "metrics.json",
                     "--per-class", out / "per_class.csv", "--confusion", out / "confusion.csv",
                     "--figure", out / "confusion_matrix.png"],
        "export": ["--model-dir", paths["model"], "--metrics", paths["metrics"],
                   "--data-statistics", paths["statistics"], "--output", out / "digits/1",
                   "--card", out / "digits/model_card.json", "--report", out / "report.json"],
    }[stage]  # fmt: skip
    return [sys.executable, "-m", f"stages.{stage}", *inputs, *map(str, options)]


def run_statuses(uri: str) -> dict[str, str]:
    client = MlflowClient(uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return {run.info.run_id: run.info.status for run in client.search_runs(experiments)}


@pytest.mark.parametrize("stage", ["train", "evaluate", "export"])
def test_a_corrupt_shard_stops_the_stage_with_one_line_naming_it(pipeline, stage: str, tmp_path: Path) -> None:
    _, paths, uri = pipeline
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(merged(raw_params(), TINY_OVERRIDES), sort_keys=False))
    # A copy of the session's store: evaluate and export look up the run that trained the model.
    store = store_copy(uri, tmp_path)
    before = run_statuses(store)
    dataset = tmp_path / "prepared"
    shutil.copytree(paths["dataset"], dataset)
    shard = dataset / "images-00000.npy"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0x10  # one bit, same size: only the md5 tells
    shard.write_bytes(bytes(content))
    out = tmp_path / "out"
    out.mkdir()

    result = subprocess.run(
        stage_command(stage, params_file, paths, dataset, out),
        cwd=PROJECT_ROOT,
        env=pipeline_env(MLFLOW_TRACKING_URI=store),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == runner.EXIT_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{stage}: error")]
    assert errors == [
        f"{stage}: error: {shard}: does not match its md5 in the manifest (corrupt); run `dvc checkout {dataset}` "
        "to restore it from the DVC cache, or `dvc repro prepare --force` to write it again"
    ]
    assert result.stderr.splitlines()[-1] == errors[0]
    assert list(out.iterdir()) == []
    # Stopped before any MLflow run was started or resumed.
    assert run_statuses(store) == before
