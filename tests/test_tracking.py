from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from stages import tracking
from tests.conftest import PROJECT_ROOT, free_port, git


def test_default_store_is_absolute_sqlite_at_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(Path("/"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_default_store_without_dvc_is_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_overrides_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


def test_redact_hides_credentials() -> None:
    assert tracking.redact("https://alice:s3cret@mlflow.example.com:8443/x") == "https://***@mlflow.example.com:8443/x"
    assert tracking.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_experiment_is_created_for_model_training_with_artifacts_beside_store(mlflow_store: str) -> None:
    experiment_id = tracking.experiment_id("demo", mlflow_store)
    assert tracking.experiment_id("demo", mlflow_store) == experiment_id
    experiment = MlflowClient(mlflow_store).get_experiment(experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    store_folder = Path(mlflow_store[len("sqlite:///") :]).parent
    assert experiment.artifact_location == (store_folder / "mlruns").as_uri()


def test_deleted_experiment_is_a_clear_error(mlflow_store: str) -> None:
    client = MlflowClient(mlflow_store)
    client.delete_experiment(tracking.experiment_id("gone", mlflow_store))
    with pytest.raises(ValueError, match="'gone' is deleted"):
        tracking.experiment_id("gone", mlflow_store)


def status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def test_run_finishes(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc12")
    with tracking.start_run("demo", {"data.digest": "d1"}) as run_id:
        tracking.log_params({"train.epochs": 3, "data.max_images": None})
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "exp-abc12"
    assert run.data.params == {"train.epochs": "3", "data.max_images": "null"}
    assert run.data.tags["data.digest"] == "d1"


def test_run_tags_carry_dvc_experiment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc12")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    monkeypatch.chdir(tmp_path)
    tags = tracking.run_tags("digest")
    assert tags["dvc.exp_name"] == "exp-abc12"
    assert tags["dvc.exp_baseline_rev"] == "f" * 40
    assert "mlflow.source.git.commit" not in tags  # not a git repository


def test_failed_run_is_marked_failed_with_reason(mlflow_store: str) -> None:
    with pytest.raises(RuntimeError), tracking.start_run("demo", {}) as run_id:
        raise RuntimeError("loss is NaN")
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "RuntimeError: loss is NaN"
    assert mlflow.active_run() is None


def test_interrupted_run_is_marked_killed(mlflow_store: str) -> None:
    with pytest.raises(KeyboardInterrupt), tracking.start_run("demo", {}) as run_id:
        raise KeyboardInterrupt
    assert status(run_id) == "KILLED"


def test_resume_attaches_to_the_same_run(mlflow_store: str) -> None:
    with tracking.start_run("demo", {}) as run_id:
        tracking.log_params({"train.epochs": 3})
    with tracking.resume_run(run_id, source="models/trained/mlflow_run.json"):
        tracking.log_params({"export.version": 1, "train.epochs": 3})
        mlflow.log_metric("test_accuracy", 0.9)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.epochs": "3", "export.version": "1"}
    assert run.data.metrics["test_accuracy"] == 0.9


def test_changed_param_on_resume_is_recorded_as_a_tag(mlflow_store: str) -> None:
    with tracking.start_run("demo", {}) as run_id:
        tracking.log_params({"export.version": 1})
    with tracking.resume_run(run_id, source="run.json"):
        tracking.log_params({"export.version": 2})
    run = MlflowClient().get_run(run_id)
    assert run.data.params["export.version"] == "1"
    assert run.data.tags["param_update.export.version"] == "2"


def test_resume_of_unknown_run_names_the_source(mlflow_store: str) -> None:
    resumed = tracking.resume_run("0123abcd", source="models/trained/mlflow_run.json")
    with pytest.raises(ValueError, match=r"run 0123abcd \(from models/trained/mlflow_run.json\) is not in"):
        resumed.__enter__()


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("mlflow.db", "not a tracking URI"),
        ("localhost:5000", "not a tracking URI"),
        ("ftp://host/x", "not a tracking URI"),
        ("http://", "no host"),
        ("http://127.0.0.1:port/", "Port could not be cast to integer value"),
        ("sqlite://relative.db", "three slashes"),
        ("sqlite:////no/such/folder/mlflow.db", "folder /no/such/folder does not exist"),
    ],
)
def test_malformed_tracking_uri_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, uri: str, problem: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI = ") as caught:
        tracking.tracking_uri()
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_malformed_uri_error_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:bad/")
    with pytest.raises(ValueError, match=r"http://\*\*\*@127.0.0.1") as caught:
        tracking.tracking_uri()
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "https://mlflow.example.com"])
def test_valid_tracking_uris_pass(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.tracking_uri() == uri


def test_credentials_move_out_of_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s%40cret@mlflow.example.com:8443")
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        # Set then delete, so the monkeypatch removes what configure() sets when the test ends.
        monkeypatch.setenv(variable, "placeholder")
        monkeypatch.delenv(variable)
    checked = []
    monkeypatch.setattr(tracking, "check_server", checked.append)  # no network in tests
    try:
        assert tracking.configure() == "https://mlflow.example.com:8443"
        assert checked == ["https://mlflow.example.com:8443"]
        assert mlflow.get_tracking_uri() == "https://mlflow.example.com:8443"
        assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s@cret")
    finally:
        mlflow.set_tracking_uri(None)


def test_unreachable_server_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"server http://127\.0\.0\.1:\d+ cannot be reached") as caught:
        tracking.configure()
    assert time.monotonic() - started < 10
    assert len(str(caught.value).splitlines()) == 1


def test_server_error_message_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{port}")
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(variable, "placeholder")
        monkeypatch.delenv(variable)
    with pytest.raises(ValueError, match=rf"server http://127\.0\.0\.1:{port} cannot be reached") as caught:
        tracking.configure()
    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)


def test_http_retry_defaults_keep_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with pytest.raises(ValueError, match="cannot be reached"):
        tracking.configure()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == tracking.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]


WORKER = """
import sys, time
from pathlib import Path
import mlflow
from stages import tracking
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
with tracking.start_run("race", {}) as run_id:
    mlflow.log_metrics({"loss": 1.0, "accuracy": 0.5})
print(run_id)
"""


def test_concurrent_stages_on_a_new_sqlite_store_lose_no_run(tmp_path: Path) -> None:
    # Without the lock, processes that create the tables of a new store at the same moment fail
    # with `duplicate column` or `table already exists`.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(PROJECT_ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(go)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    time.sleep(4)  # let every worker finish importing MLflow, so they hit the new store together
    go.touch()
    results = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], [stderr[-2000:] for _, stderr in results]
    run_ids = {stdout.strip() for stdout, _ in results}
    runs = MlflowClient(uri).search_runs([tracking.experiment_id("race", uri)])
    assert {run.info.run_id for run in runs} == run_ids
    assert len(run_ids) == 3
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_changed_params_against_the_baseline_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  learning_rate: 1e-3\n  epochs: 2\ndata:\n  max_images: null\n")
    git(tmp_path, "init", "--quiet")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "--quiet", "--message", "baseline")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    baseline = tracking.baseline_params(tmp_path)
    assert baseline == {"train.learning_rate": 0.001, "train.epochs": 2, "data.max_images": None}
    current = {"train.learning_rate": 0.01, "train.epochs": 2, "data.max_images": None, "train.seed": 1}
    assert tracking.changed_params(current, baseline) == {"train.learning_rate": "0.01", "train.seed": "1"}
    assert tracking.changed_params(current, None) == {}
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert tracking.baseline_params(tmp_path) is None  # an unknown commit


def test_run_name_prefers_the_experiment_then_the_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert tracking.run_name({}) is None
    assert tracking.run_name({"train.epochs": "3", "train.seed": "1"}) == "train.epochs=3, train.seed=1"
    long_name = tracking.run_name({f"train.key{index}": "value" for index in range(20)})
    assert len(long_name) == 80
    assert long_name.endswith("...")
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    assert tracking.run_name({"train.epochs": "3"}) == "lr-sweep-1"


def test_run_description_names_data_version_and_model_size() -> None:
    description = tracking.run_description(
        "ab" * 32, {"train": 210, "validation": 45}, 10, 12345, {"train.learning_rate": "0.01"}
    )
    assert description.splitlines()[0] == "Data abababababab: 210 train, 45 validation images, 10 classes."
    assert "Model: 12,345 parameters." in description
    assert "Changed from the baseline: train.learning_rate=0.01" in description
