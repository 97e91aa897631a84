"""The tracking store: where it is, URIs refused with one line, servers checked, new stores created safely."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from image_classification.tracking import runs, store
from tests.conftest import PROJECT_ROOT, free_port


def test_default_store_is_absolute_sqlite_at_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(Path("/"))
    assert store.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_default_store_without_dvc_is_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert store.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_overrides_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.tracking_uri() == "http://127.0.0.1:5999"


def test_redact_hides_credentials() -> None:
    assert store.redact("https://alice:s3cret@mlflow.example.com:8443/x") == "https://***@mlflow.example.com:8443/x"
    assert store.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_experiment_is_created_for_model_training_with_artifacts_beside_store(mlflow_store: str) -> None:
    experiment_id = store.experiment_id("demo", mlflow_store)
    assert store.experiment_id("demo", mlflow_store) == experiment_id
    experiment = MlflowClient(mlflow_store).get_experiment(experiment_id)
    assert experiment.tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    store_folder = Path(mlflow_store[len("sqlite:///") :]).parent
    assert experiment.artifact_location == (store_folder / "mlruns").as_uri()


def test_deleted_experiment_is_a_clear_error(mlflow_store: str) -> None:
    client = MlflowClient(mlflow_store)
    client.delete_experiment(store.experiment_id("gone", mlflow_store))
    with pytest.raises(ValueError, match="'gone' is deleted"):
        store.experiment_id("gone", mlflow_store)


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
        store.tracking_uri()
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_malformed_uri_error_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:bad/")
    with pytest.raises(ValueError, match=r"http://\*\*\*@127.0.0.1") as caught:
        store.tracking_uri()
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "https://mlflow.example.com"])
def test_valid_tracking_uris_pass(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert store.tracking_uri() == uri


def test_credentials_move_out_of_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s%40cret@mlflow.example.com:8443")
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        # Set then delete, so the monkeypatch removes what configure() sets when the test ends.
        monkeypatch.setenv(variable, "placeholder")
        monkeypatch.delenv(variable)
    checked = []
    monkeypatch.setattr(store, "check_server", checked.append)  # no network in tests
    try:
        assert store.configure() == "https://mlflow.example.com:8443"
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
        store.configure()
    assert time.monotonic() - started < 10
    assert len(str(caught.value).splitlines()) == 1


def test_server_error_message_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{port}")
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(variable, "placeholder")
        monkeypatch.delenv(variable)
    with pytest.raises(ValueError, match=rf"server http://127\.0\.0\.1:{port} cannot be reached") as caught:
        store.configure()
    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)


def test_http_retry_defaults_keep_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with pytest.raises(ValueError, match="cannot be reached"):
        store.configure()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == store.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]


WORKER = """
import sys, time
from pathlib import Path
import mlflow
from image_classification.tracking import runs
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
with runs.start_run("race", {}) as run_id:
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
    found = MlflowClient(uri).search_runs([store.experiment_id("race", uri)])
    assert {run.info.run_id for run in found} == run_ids
    assert len(run_ids) == 3
    assert {run.info.status for run in found} == {"FINISHED"}


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1])
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_store_locked_by_another_process_is_waited_for_then_one_line(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.configure()
    database = mlflow_store[len("sqlite:///") :]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, database], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 1)
        started = time.monotonic()
        with pytest.raises(ValueError, match="is locked by another process") as caught:
            store.configure()
        assert time.monotonic() - started >= 1
    finally:
        holder.kill()
        holder.wait()
    assert str(caught.value) == (
        f"MLflow store {mlflow_store} is locked by another process; close what holds it (a database browser, "
        "another process writing to it) and rerun"
    )
    store.configure()  # released: usable again


def test_a_corrupt_store_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"this was never a database " * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    with pytest.raises(ValueError, match=r"^MLflow store sqlite:///.*mlflow.db is not a readable MLflow database "
                       r"\(file is not a database\); move the file aside"):  # fmt: skip
        store.configure()


def test_store_failures_inside_a_run_are_one_line(mlflow_store: str) -> None:
    from mlflow.exceptions import MlflowException

    refused = r"refused the request: RESOURCE_LIMIT: too many metrics$"
    with pytest.raises(ValueError, match=refused), runs.start_run("store-errors", {}):
        raise MlflowException("RESOURCE_LIMIT: too many metrics")
    message = store.describe_store_error(OSError("(sqlite3.OperationalError) database or disk is full"), "sqlite:///x")
    assert message == "MLflow store sqlite:///x: no space left on its disk; free some and rerun"
