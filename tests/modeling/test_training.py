"""The train stage's function: one MLflow run, the checkpoint, divergence (on the session's stage chain)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from image_classification import artifacts
from image_classification.modeling import architecture, trained_model, training
from tests.conftest import chain_snapshot

pytestmark = pytest.mark.slow


def test_one_mlflow_run_holds_everything(pipeline) -> None:
    params, paths, uri = pipeline
    client = MlflowClient(chain_snapshot(uri))
    run_id = trained_model.run_id(paths["model"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params["train.learning_rate"] == str(params.train.learning_rate)
    assert run.data.params["split.seed"] == str(params.split.seed)
    assert run.data.params["evaluate.batch_size"] == str(params.evaluate.batch_size)
    assert run.data.params["export.model_name"] == "digits"
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [metric.step for metric in history] == [1, 2]
    metrics = artifacts.read_json(paths["metrics"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert run.data.metrics["test_f1_macro"] == pytest.approx(metrics["f1_macro"], abs=1e-6)
    assert len(run.data.tags["data.digest"]) == 64
    artifacts_logged = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts_logged
    logged_models = client.search_logged_models([run.info.experiment_id])
    assert sorted(logged.name for logged in logged_models) == ["model", "registered_model"]
    assert {logged.source_run_id for logged in logged_models} == {run_id}
    assert run.data.params["registry.model_name"] == params.registry.model_name
    description = run.data.tags["mlflow.note.content"]
    assert f"Data {run.data.tags['data.digest'][:12]}: 210 train, 45 validation images, 10 classes." in description
    assert f"Model: {artifacts.read_json(paths['summary'])['param_count']:,} parameters." in description
    assert {item.path for item in client.list_artifacts(run_id, "savedmodel/digits/1")} >= {
        "savedmodel/digits/1/saved_model.pb",
        "savedmodel/digits/1/variables",
    }


def test_checkpoint_is_removed_after_success(pipeline) -> None:
    _, paths, _ = pipeline
    assert not (paths["checkpoints"] / training.CHECKPOINT_FILE).exists()
    timing = artifacts.read_json(paths["timing"])
    assert timing["train_seconds"] > 0
    assert timing["resumed_after_epoch"] == 0


def test_non_finite_loss_fails_the_run_with_a_reason(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    params, paths, _ = pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    build = architecture.build_model

    def diverging(input_shape, num_classes, settings):
        classifier = build(input_shape, num_classes, settings)
        kernel = classifier.get_layer(architecture.LOGITS).kernel
        kernel.assign(keras.ops.full(kernel.shape, float("nan")))
        return classifier

    monkeypatch.setattr(architecture, "build_model", diverging)
    outputs = {name: tmp_path / name for name in ("model", "history.csv", "summary.json", "timing.json")}
    with pytest.raises(ValueError, match=r"training diverged: loss became nan in epoch 1; lower train.learning_rate"):
        training.train_model(
            params,
            paths["dataset"],
            paths["membership"],
            outputs["model"],
            outputs["history.csv"],
            outputs["summary.json"],
            outputs["timing.json"],
            tmp_path / "checkpoints",
        )
    assert not any(path.exists() for path in outputs.values())
    assert not (tmp_path / "checkpoints" / training.CHECKPOINT_FILE).exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(params.mlflow.experiment_name).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("ValueError: training diverged: loss became nan")
