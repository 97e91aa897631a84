"""The stage functions chained in-process on tiny data, as DVC would chain their files."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from stages import artifacts, evaluate, export, prepare, serving, split, train, trained
from stages.params import Params, RegistryParams, parse_params
from tests.conftest import merged

pytestmark = pytest.mark.slow


def run_pipeline(params: Params, root: Path) -> dict[str, Path]:
    paths = {
        "dataset": root / "data/prepared/dataset.npz",
        "statistics": root / "reports/data/statistics.json",
        "train": root / "data/split/train.npz",
        "validation": root / "data/split/validation.npz",
        "test": root / "data/split/test.npz",
        "split_report": root / "reports/data/split.json",
        "model": root / "models/trained",
        "history": root / "reports/train/history.csv",
        "summary": root / "reports/train/summary.json",
        "metrics": root / "reports/evaluate/metrics.json",
        "per_class": root / "reports/evaluate/per_class.csv",
        "confusion": root / "reports/evaluate/confusion.csv",
        "figure": root / "reports/evaluate/confusion_matrix.png",
        "savedmodel": root / "models/serving/digits/1",
        "export_report": root / "reports/export/report.json",
    }
    prepare.run(params.data, paths["dataset"], paths["statistics"])
    split.run(
        params.split,
        paths["dataset"],
        {name: paths[name] for name in ("train", "validation", "test")},
        paths["split_report"],
    )
    train.run(params, paths["train"], paths["validation"], paths["model"], paths["history"], paths["summary"])
    evaluate.run(
        params.evaluate,
        paths["model"],
        paths["test"],
        paths["metrics"],
        paths["per_class"],
        paths["confusion"],
        paths["figure"],
    )
    export.run(
        params.export, params.registry, paths["model"], paths["test"], paths["savedmodel"], paths["export_report"]
    )
    return paths


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict[str, Path], str]:
    from stages.params import parse_params
    from tests.conftest import TINY_OVERRIDES, merged, raw_params

    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for variable in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
            patch.delenv(variable, raising=False)
        params = parse_params(merged(raw_params(), TINY_OVERRIDES))
        paths = run_pipeline(params, tmp_path_factory.mktemp("first"))
    return params, paths, uri


def test_prepare_and_split_outputs(pipeline) -> None:
    _, paths, _ = pipeline
    statistics = artifacts.read_json(paths["statistics"])
    assert statistics["images"] == 300
    assert sum(statistics["count_per_class"].values()) == 300
    report = artifacts.read_json(paths["split_report"])
    assert {name: part["images"] for name, part in report["splits"].items()} == {
        "train": 210,
        "validation": 45,
        "test": 45,
    }
    hashes = [
        {image.tobytes() for image in artifacts.load_dataset(paths[name]).images}
        for name in ("train", "validation", "test")
    ]
    train_hashes, validation_hashes, test_hashes = hashes
    assert not train_hashes & validation_hashes
    assert not train_hashes & test_hashes
    assert not validation_hashes & test_hashes


def test_one_mlflow_run_holds_everything(pipeline) -> None:
    params, paths, uri = pipeline
    client = MlflowClient(uri)
    run_id = trained.run_id(paths["model"])
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


def test_outputs_for_dvc_metrics_and_plots(pipeline) -> None:
    _, paths, _ = pipeline
    metrics = artifacts.read_json(paths["metrics"])
    assert set(metrics) == {"accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "images"}
    assert 0 <= metrics["accuracy"] <= 1
    history = paths["history"].read_text().splitlines()
    assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate"
    assert len(history) == 3
    confusion = paths["confusion"].read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) == 46
    assert paths["figure"].read_bytes().startswith(b"\x89PNG")


def test_savedmodel_matches_keras(pipeline) -> None:
    _, paths, _ = pipeline
    report = artifacts.read_json(paths["export_report"])
    assert report["mismatched_classes"] == 0
    assert report["max_abs_difference"] <= 1e-5
    test_set = artifacts.load_dataset(paths["test"])
    outputs = serving.predict_savedmodel(paths["savedmodel"], test_set.images)
    expected = trained.load_model(paths["model"]).predict(test_set.images, verbose=0)
    assert np.array_equal(outputs["class_id"], expected.argmax(axis=1))
    assert not list(paths["savedmodel"].parent.glob(".*.tmp"))


def test_rerun_gives_identical_metrics(pipeline, tmp_path: Path) -> None:
    params, paths, _ = pipeline
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        again = run_pipeline(params, tmp_path)
    assert again["metrics"].read_text() == paths["metrics"].read_text()
    assert again["confusion"].read_text() == paths["confusion"].read_text()


def test_export_refuses_a_model_that_disagrees(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, paths, uri = pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(
        serving, "compare", lambda *_: serving.Agreement(images=45, max_abs_difference=0.25, mismatched_classes=3)
    )
    output = tmp_path / "digits" / "1"
    output.mkdir(parents=True)
    (output / "previous.txt").write_text("previous export")
    with pytest.raises(ValueError, match="disagrees with the Keras model on 45 test images: 3 different classes"):
        export.run(params.export, params.registry, paths["model"], paths["test"], output, tmp_path / "report.json")
    assert [path.name for path in output.iterdir()] == ["previous.txt"]
    assert [path.name for path in output.parent.iterdir()] == ["1"]
    assert not (tmp_path / "report.json").exists()
    run = MlflowClient(uri).get_run(trained.run_id(paths["model"]))
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("ValueError: the reloaded SavedModel disagrees")


def with_gate(params: Params, **gate: float) -> RegistryParams:
    return parse_params(merged(params.model_dump(), {"registry": gate})).registry


def test_gate_promotes_a_good_model_and_only_versions_a_weak_one(pipeline, tmp_path: Path) -> None:
    params, paths, uri = pipeline
    client = MlflowClient(uri)
    name = params.registry.model_name
    first = artifacts.read_json(paths["export_report"])
    accuracy = first["test_accuracy"]
    assert accuracy < 1.0, "the tiny model must leave room above it for the failing gate"

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        blessed = export.run(
            params.export,
            with_gate(params, min_test_accuracy=0.0, max_accuracy_drop=0.0),
            paths["model"],
            paths["test"],
            tmp_path / "blessed" / "1",
            tmp_path / "blessed.json",
        )
        assert blessed["blessed"] is True
        assert blessed["registered_version"] == first["registered_version"] + 1
        assert int(client.get_model_version_by_alias(name, "champion").version) == blessed["registered_version"]

        refused = export.run(
            params.export,
            with_gate(params, min_test_accuracy=1.0, max_accuracy_drop=1.0),
            paths["model"],
            paths["test"],
            tmp_path / "refused" / "1",
            tmp_path / "refused.json",
        )
    assert refused["blessed"] is False
    assert refused["blessed_reason"] == f"test accuracy {accuracy:.4f} is below the minimum 1.0000"
    assert refused["registered_version"] == blessed["registered_version"] + 1
    assert refused["previous_champion"] == blessed["registered_version"]
    assert artifacts.read_json(tmp_path / "refused.json") == refused
    assert (tmp_path / "refused" / "1" / "saved_model.pb").is_file()  # exported all the same
    assert int(client.get_model_version_by_alias(name, "champion").version) == blessed["registered_version"]
    version = client.get_model_version(name, str(refused["registered_version"]))
    assert version.tags["blessed"] == "false"
    assert float(version.tags["test_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    run = client.get_run(trained.run_id(paths["model"]))
    assert run.data.tags["blessed"] == "false"
    assert run.data.tags["blessed_reason"] == refused["blessed_reason"]
    assert [metric.value for metric in client.get_metric_history(run.info.run_id, "blessed")][-2:] == [1, 0]


def test_unreachable_server_stops_export_before_it_writes(pipeline, tmp_path: Path) -> None:
    params, paths, _ = pipeline
    output = tmp_path / "digits" / "1"
    output.mkdir(parents=True)
    (output / "previous.txt").write_text("previous export")
    report = tmp_path / "report.json"
    report.write_text("previous report")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        with pytest.raises(ValueError, match=f"server http://127.0.0.1:{port} cannot be reached"):
            export.run(params.export, params.registry, paths["model"], paths["test"], output, report)
    assert [path.name for path in output.iterdir()] == ["previous.txt"]
    assert report.read_text() == "previous report"
