"""`dvc repro` for real, in a fresh git copy of the project with tiny params."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from image_classification.modeling import trained_model
from image_classification.serving import savedmodel
from tests.conftest import git, make_project, pipeline_env, split_images

pytestmark = pytest.mark.slow

STAGES = ["prepare", "split", "train", "evaluate", "export"]


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["dvc", *args], cwd=project, env=pipeline_env(), capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def repro(project: Path, *args: str) -> list[str]:
    """Run `dvc repro` and return the stages whose commands actually ran, in order."""
    output = dvc(project, "repro", *args).stdout
    return re.findall(r"Running stage '([a-z]+)'", output)


def set_param(project: Path, section: str, key: str, value) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project after one full `dvc repro`."""
    root = make_project(tmp_path_factory.mktemp("dvc"))
    assert repro(root) == STAGES
    return root


def test_outputs_exist(built: Path) -> None:
    for path in [
        "data/prepared/manifest.json",
        "data/prepared/images-00000.npy",
        "data/split/membership.npz",
        "models/trained/model.keras",
        "models/trained/mlflow_run.json",
        "models/serving/digits/1/saved_model.pb",
        "reports/evaluate/metrics.json",
        "reports/evaluate/confusion_matrix.png",
        "reports/train/history.csv",
        "mlflow.db",
    ]:
        assert (built / path).exists(), path
    # DVC tracks the prepared dataset as one folder and the split as one membership file.
    lock = yaml.safe_load((built / "dvc.lock").read_text())["stages"]
    assert [out["path"] for out in lock["prepare"]["outs"]] == ["data/prepared", "reports/data/statistics.json"]
    assert lock["prepare"]["outs"][0]["md5"].endswith(".dir")
    assert [out["path"] for out in lock["split"]["outs"]] == ["data/split/membership.npz", "reports/data/split.json"]
    for stage in ("train", "evaluate", "export"):
        assert {"data/prepared", "data/split/membership.npz"} <= {dep["path"] for dep in lock[stage]["deps"]}, stage


def test_mlflow_run_in_project_store(built: Path) -> None:
    client = MlflowClient(f"sqlite:///{built / 'mlflow.db'}")
    run_id = trained_model.run_id(built / "models/trained")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((built / "mlruns").resolve().as_uri())
    params = run.data.params
    assert params["train.epochs"] == "2"
    assert params["data.max_images"] == "300"
    assert {key.split(".")[0] for key in params} == {
        "data",
        "split",
        "train",
        "mlflow",
        "evaluate",
        "export",
        "registry",
    }
    assert [metric.step for metric in client.get_metric_history(run_id, "val_loss")] == [1, 2]
    assert [metric.step for metric in client.get_metric_history(run_id, "accuracy")] == [1, 2]
    metrics = json.loads((built / "reports/evaluate/metrics.json").read_text())
    for name in ("accuracy", "loss", "f1_macro", "precision_macro", "recall_macro"):
        assert run.data.metrics[f"test_{name}"] == pytest.approx(metrics[name], abs=1e-6)
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == git(built, "rev-parse", "HEAD").strip()
    assert len(tags["data.digest"]) == 64
    assert "dvc.exp_name" not in tags  # plain `dvc repro` is not an experiment
    logged = {item.path for item in client.list_artifacts(run_id)}
    assert {"evaluation", "savedmodel", "training"} <= logged
    assert client.list_artifacts(run_id, "savedmodel/digits/1")


def test_savedmodel_reloads_and_matches(built: Path) -> None:
    test_set = split_images(
        {"dataset": built / "data/prepared", "membership": built / "data/split/membership.npz"}, "test"
    )
    outputs = savedmodel.predict_savedmodel(built / "models/serving/digits/1", test_set.images)
    expected = trained_model.load_model(built / "models/trained").predict(test_set.images, verbose=0)
    assert np.array_equal(outputs["class_id"], expected.argmax(axis=1))
    assert np.abs(outputs["probabilities"] - expected).max() <= 1e-5


def test_dvc_metrics_and_plots_show(built: Path) -> None:
    (workspace,) = json.loads(dvc(built, "metrics", "show", "--json").stdout).values()
    shown = workspace["data"]["reports/evaluate/metrics.json"]["data"]
    assert shown == json.loads((built / "reports/evaluate/metrics.json").read_text())
    assert "param_count" in workspace["data"]["reports/train/summary.json"]["data"]
    assert "train_seconds" in workspace["data"]["reports/train/timing.json"]["data"]
    plots = json.loads(dvc(built, "plots", "show", "--json").stdout)["data"]
    assert set(plots) == {
        "Loss",
        "Accuracy",
        "reports/train/history.csv",
        "reports/evaluate/confusion.csv",
        "reports/evaluate/per_class.csv",
        "reports/evaluate/confusion_matrix.png",
    }
    (confusion,) = plots["reports/evaluate/confusion.csv"]
    assert confusion["content"]["data"]["values"][0].keys() >= {"actual", "predicted"}


def test_second_repro_runs_nothing_and_readme_changes_run_nothing(built: Path) -> None:
    assert repro(built) == []
    (built / "README.md").write_text((built / "README.md").read_text() + "\nA note.\n")
    assert repro(built) == []


def test_epochs_change_reruns_train_evaluate_export(built: Path) -> None:
    first_metrics = (built / "reports/evaluate/metrics.json").read_text()
    first_run = trained_model.run_id(built / "models/trained")
    set_param(built, "train", "epochs", 3)
    assert repro(built) == ["train", "evaluate", "export"]
    longer_run = trained_model.run_id(built / "models/trained")
    longer_metrics = (built / "reports/evaluate/metrics.json").read_text()
    assert longer_run != first_run
    assert longer_metrics != first_metrics

    # DVC's run cache restores an earlier result without running anything; the restored model
    # still names the MLflow run that produced it, and that run holds its metrics. (Training again
    # from scratch gives identical metrics: tests/pipeline/test_stage_chain.py.)
    set_param(built, "train", "epochs", 2)
    assert repro(built) == []
    assert trained_model.run_id(built / "models/trained") == first_run
    assert (built / "reports/evaluate/metrics.json").read_text() == first_metrics
    run = MlflowClient(f"sqlite:///{built / 'mlflow.db'}").get_run(first_run)
    assert run.data.params["train.epochs"] == "2"
    assert run.data.metrics["test_accuracy"] == pytest.approx(json.loads(first_metrics)["accuracy"], abs=1e-6)


def test_split_seed_change_reruns_split_and_after(built: Path) -> None:
    set_param(built, "split", "seed", 7)
    assert repro(built) == ["split", "train", "evaluate", "export"]


def test_experiment_in_temp_copy_lands_in_project_store(built: Path) -> None:
    git(built, "add", "--all")
    git(built, "commit", "--quiet", "--message", "baseline")
    dvc(built, "exp", "run", "--temp", "--name", "tiny-lr", "-S", "train.learning_rate=0.01")
    client = MlflowClient(f"sqlite:///{built / 'mlflow.db'}")
    runs = client.search_runs(
        [exp.experiment_id for exp in client.search_experiments()], "tags.`dvc.exp_name` = 'tiny-lr'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-lr"
    assert run.data.params["train.learning_rate"] == "0.01"
    assert run.data.tags["dvc.exp_baseline_rev"] == git(built, "rev-parse", "HEAD").strip()
    assert "test_accuracy" in run.data.metrics
    assert not list(built.glob(".dvc/tmp/**/mlflow.db"))
