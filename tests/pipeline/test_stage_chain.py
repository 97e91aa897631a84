"""The five stage functions chained: reruns are identical; a failing stage leaves the previous outputs whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_classification import artifacts
from image_classification.config import Params
from image_classification.data import prepare, split
from image_classification.modeling import evaluation, training
from image_classification.serving import savedmodel
from tests.stage_chain import copy_outputs, export_run, run_stage_chain, snapshot

pytestmark = pytest.mark.slow


def test_rerun_gives_identical_metrics(pipeline, tmp_path: Path) -> None:
    params, paths, _ = pipeline
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        again = run_stage_chain(params, tmp_path)
    for name in ("statistics", "split_report", "history", "summary", "metrics", "per_class", "confusion"):
        assert again[name].read_bytes() == paths[name].read_bytes(), name
    test_images = artifacts.load_dataset(paths["test"]).images
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
    "split": ("train", "validation", "test", "split_report"),
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
        splits = {name: outputs[name] for name in ("train", "validation", "test")}
        split.split_dataset(params.split, paths["dataset"], splits, outputs["split_report"])
    elif stage == "train":
        training.train_model(params, paths["train"], paths["validation"], outputs["model"], outputs["history"],
                             outputs["summary"], outputs["timing"], scratch / "checkpoints")  # fmt: skip
    elif stage == "evaluate":
        evaluation.evaluate_model(params.evaluate, paths["model"], paths["test"], outputs["metrics"],
                                  outputs["per_class"], outputs["confusion"], outputs["figure"])  # fmt: skip
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
    own_store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri if stage in ("evaluate", "export") else own_store)
    outputs = copy_outputs(paths, STAGE_OUTPUTS[stage], tmp_path / "outputs")
    before = snapshot(tmp_path / "outputs")
    writer = {
        "prepare": (np, "savez"),
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
