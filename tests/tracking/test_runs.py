"""MLflow runs: finished, failed or killed, resumed, tagged, named and described."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from image_classification.tracking import runs
from tests.conftest import git


def status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def test_run_finishes(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc12")
    with runs.start_run("demo", {"data.digest": "d1"}) as run_id:
        runs.log_params({"train.epochs": 3, "data.max_images": None})
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "exp-abc12"
    assert run.data.params == {"train.epochs": "3", "data.max_images": "null"}
    assert run.data.tags["data.digest"] == "d1"


def test_run_tags_carry_dvc_experiment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc12")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    monkeypatch.chdir(tmp_path)
    tags = runs.run_tags("digest")
    assert tags["dvc.exp_name"] == "exp-abc12"
    assert tags["dvc.exp_baseline_rev"] == "f" * 40
    assert "mlflow.source.git.commit" not in tags  # not a git repository


def test_failed_run_is_marked_failed_with_reason(mlflow_store: str) -> None:
    with pytest.raises(RuntimeError), runs.start_run("demo", {}) as run_id:
        raise RuntimeError("loss is NaN")
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "RuntimeError: loss is NaN"
    assert mlflow.active_run() is None


def test_interrupted_run_is_marked_killed(mlflow_store: str) -> None:
    with pytest.raises(KeyboardInterrupt), runs.start_run("demo", {}) as run_id:
        raise KeyboardInterrupt
    assert status(run_id) == "KILLED"


def test_resume_attaches_to_the_same_run(mlflow_store: str) -> None:
    with runs.start_run("demo", {}) as run_id:
        runs.log_params({"train.epochs": 3})
    with runs.resume_run(run_id, source="models/trained/mlflow_run.json"):
        runs.log_params({"export.version": 1, "train.epochs": 3})
        mlflow.log_metric("test_accuracy", 0.9)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.epochs": "3", "export.version": "1"}
    assert run.data.metrics["test_accuracy"] == 0.9


def test_changed_param_on_resume_is_recorded_as_a_tag(mlflow_store: str) -> None:
    with runs.start_run("demo", {}) as run_id:
        runs.log_params({"export.version": 1})
    with runs.resume_run(run_id, source="run.json"):
        runs.log_params({"export.version": 2})
    run = MlflowClient().get_run(run_id)
    assert run.data.params["export.version"] == "1"
    assert run.data.tags["param_update.export.version"] == "2"


def test_resume_of_unknown_run_names_the_source(mlflow_store: str) -> None:
    resumed = runs.resume_run("0123abcd", source="models/trained/mlflow_run.json")
    with pytest.raises(ValueError, match=r"run 0123abcd \(from models/trained/mlflow_run.json\) is not in"):
        resumed.__enter__()


def test_changed_params_against_the_baseline_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  learning_rate: 1e-3\n  epochs: 2\ndata:\n  max_images: null\n")
    git(tmp_path, "init", "--quiet")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "--quiet", "--message", "baseline")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    baseline = runs.baseline_params(tmp_path)
    assert baseline == {"train.learning_rate": 0.001, "train.epochs": 2, "data.max_images": None}
    current = {"train.learning_rate": 0.01, "train.epochs": 2, "data.max_images": None, "train.seed": 1}
    assert runs.changed_params(current, baseline) == {"train.learning_rate": "0.01", "train.seed": "1"}
    assert runs.changed_params(current, None) == {}
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert runs.baseline_params(tmp_path) is None  # an unknown commit


def test_run_name_prefers_the_experiment_then_the_changes_then_commit_and_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert runs.run_name({}, "3f2a9c1e0b", "5d41402abc4b2a76.dir") == "3f2a9c1 data 5d41402a"
    assert runs.run_name({}, None, "5d41402abc4b2a76.dir") == "no commit data 5d41402a"
    assert runs.run_name({"train.epochs": "3", "train.seed": "1"}, "3f2a9c1", "5d4") == "train.epochs=3, train.seed=1"
    long_name = runs.run_name({f"train.key{index}": "value" for index in range(20)}, "3f2a9c1", "5d4")
    assert len(long_name) == 80
    assert long_name.endswith("...")
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    assert runs.run_name({"train.epochs": "3"}, "3f2a9c1", "5d4") == "lr-sweep-1"


def test_metric_keys_take_any_folder_name_mlflow_would_refuse() -> None:
    from mlflow.utils.validation import _validate_metric_name

    names = ["c++", "rock & roll (live)", "Ñandú", "猫", "Größe groß", "c__", "T-shirt/top", "..", " a "]
    keys = runs.metric_keys("test_f1.", names)
    assert keys == [
        "test_f1.c__", "test_f1.rock _ roll _live_", "test_f1.Ñandú", "test_f1.猫", "test_f1.Größe groß",
        "test_f1.c___2", "test_f1.T-shirt_top", "test_f1...", "test_f1.a",
    ]  # fmt: skip
    for key in keys:
        _validate_metric_name(key)  # raises for a key MLflow refuses


def test_a_resumed_run_that_finishes_loses_its_failure_reason(mlflow_store: str) -> None:
    with pytest.raises(KeyboardInterrupt), runs.start_run("resume-test", {}) as run_id:
        raise KeyboardInterrupt
    assert MlflowClient().get_run(run_id).data.tags["failure_reason"] == "interrupted"
    with runs.resume_run(run_id, source="a checkpoint"):
        pass
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "failure_reason" not in run.data.tags


def test_run_description_names_data_version_and_model_size() -> None:
    description = runs.run_description(
        "ab" * 32, {"train": 210, "validation": 45}, 10, 12345, {"train.learning_rate": "0.01"}
    )
    assert description.splitlines()[0] == "Data abababababab: 210 train, 45 validation images, 10 classes."
    assert "Model: 12,345 parameters." in description
    assert "Changed from the baseline: train.learning_rate=0.01" in description
