"""`dvc exp` sweeps on the team's shared tracking server, under concurrency; another live server and an unreachable one.

One tiny project is built once for the module; the tests run in file order and each leaves the
workspace as a committed baseline plus experiments. Its stages record to the session's shared
server (`mlflow server` on PostgreSQL, artifacts in the S3 store), as a team's would; concurrent
stages on a SQLite store are tested in tests/tracking/test_store.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from image_classification.modeling import trained_model
from image_classification.services.stack import Services
from tests.conftest import free_port, git, make_project, mlflow_server, pipeline_env

pytestmark = pytest.mark.slow

# The article's comparison: the baseline trains on TensorFlow, the queue on the two other backends.
GRID = {"train.backend": ["jax", "torch"]}


# The shared server's tracking URI, for every `dvc` command of the module (set by `baseline`).
SERVER: dict[str, str] = {}


def dvc(project: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    env = {"MLFLOW_TRACKING_URI": SERVER["uri"], **env}
    result = subprocess.run(
        ["dvc", *args], cwd=project, env=pipeline_env(**env), capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def server_client() -> MlflowClient:
    return MlflowClient(SERVER["uri"])


def runs_named(client: MlflowClient, exp_name: str) -> list:
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`dvc.exp_name` = '{exp_name}'")


def experiments_shown(project: Path) -> dict[str, dict]:
    """`dvc exp show --json`, as {experiment name: its workspace-like record}."""
    shown = {}
    for baseline in json.loads(dvc(project, "exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            (revision,) = experiment["revs"]
            shown[experiment["name"]] = revision["data"]
    return shown


@pytest.fixture(scope="module")
def baseline(shared_services: Services, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project after one `dvc repro` against the shared server, committed as the experiments' baseline."""
    SERVER["uri"] = shared_services.tracking_uri
    root = make_project(tmp_path_factory.mktemp("exp"))
    dvc(root, "repro")
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "--message", "baseline")
    return root


@pytest.fixture(scope="module")
def queued(baseline: Path) -> dict[str, str]:
    """A 2-point grid queued and run by two workers at once, recording to the server; {experiment name: backend}."""
    dvc(baseline, "exp", "run", "--queue", "-S", f"train.backend={','.join(GRID['train.backend'])}")
    dvc(baseline, "queue", "start", "--jobs", "2")
    deadline = time.monotonic() + 900
    while any(word in dvc(baseline, "queue", "status").stdout for word in ("Queued", "Running")):
        assert time.monotonic() < deadline, dvc(baseline, "queue", "status").stdout
        time.sleep(2)
    dvc(baseline, "queue", "stop")
    status = dvc(baseline, "queue", "status").stdout
    assert "Failed" not in status, status
    shown = experiments_shown(baseline)
    return {name: str(data["params"]["params.yaml"]["data"]["train"]["backend"]) for name, data in shown.items()}


def test_two_workers_give_one_finished_run_per_experiment(
    baseline: Path, queued: dict[str, str], tmp_path: Path
) -> None:
    assert sorted(queued.values()) == GRID["train.backend"]
    client = server_client()
    head = git(baseline, "rev-parse", "HEAD").strip()
    for name, backend in queued.items():
        runs = runs_named(client, name)
        assert len(runs) == 1, name
        (run,) = runs
        assert run.info.status == "FINISHED"
        assert run.info.run_name == name
        assert run.data.tags["dvc.exp_baseline_rev"] == head
        assert run.data.params["train.backend"] == run.data.tags["keras.backend"] == backend
        assert run.data.tags["keras.backend_version"] == importlib.metadata.version(backend)
        assert "Changed from the baseline: train.backend=" in run.data.tags["mlflow.note.content"]
        # The TensorFlow SavedModel reproduces this backend's own predictions.
        assert run.data.metrics["export_max_abs_difference"] <= 1e-5
        (keras_model,) = [
            model
            for model in client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'")
            if model.name == "model"
        ]
        requirements = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{keras_model.artifact_location}/requirements.txt",
            dst_path=str(tmp_path / name),
            tracking_uri=SERVER["uri"],
        )
        # A version PyPI hosts: no local label such as +cpu.
        pinned = f"{backend}=={importlib.metadata.version(backend).split('+')[0]}"
        assert pinned in Path(requirements).read_text().splitlines()
        assert {"test_accuracy", "test_loss", "test_f1_macro", "param_count", "train_seconds", "blessed"} <= set(
            run.data.metrics
        )
        assert run.data.tags["blessed"] in ("true", "false")
        (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        assert version.name == "digits"
    # Nothing went to a SQLite store: not the project's, nor one in a queue worker's temporary copy.
    assert not (baseline / "mlflow.db").exists()
    assert not list(baseline.glob(".dvc/tmp/**/mlflow.db"))


def test_dvc_compares_experiments_on_the_headline_columns(baseline: Path, queued: dict[str, str]) -> None:
    first, second = sorted(queued)
    for data in experiments_shown(baseline).values():
        metrics = {path: entry["data"] for path, entry in data["metrics"].items()}
        assert {"accuracy", "loss", "f1_macro"} <= set(metrics["reports/evaluate/metrics.json"])
        assert "param_count" in metrics["reports/train/summary.json"]
        assert "train_seconds" in metrics["reports/train/timing.json"]
        assert isinstance(metrics["reports/export/report.json"]["blessed"], bool)
    params_diff = json.loads(dvc(baseline, "params", "diff", first, second, "--json").stdout)
    assert set(params_diff["params.yaml"]) == {"train.backend"}
    metrics_diff = json.loads(dvc(baseline, "metrics", "diff", first, second, "--all", "--json").stdout)
    assert "accuracy" in metrics_diff["reports/evaluate/metrics.json"]
    plots = json.loads(dvc(baseline, "plots", "diff", first, second, "--json").stdout)["data"]
    assert {"Loss", "Accuracy", "reports/evaluate/confusion.csv", "reports/evaluate/per_class.csv"} <= set(plots)


def test_run_cache_restore_makes_no_new_run_and_points_at_the_original(baseline: Path, queued: dict[str, str]) -> None:
    # The same params as a queued experiment: DVC restores every stage from its run cache.
    (original, backend) = next(iter(queued.items()))
    client = server_client()
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    output = dvc(baseline, "exp", "run", "--name", "restored", "-S", f"train.backend={backend}").stdout
    assert "Running stage 'train'" not in output
    assert "Running stage 'export'" not in output
    assert runs_named(client, "restored") == []
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs_before
    (original_run,) = runs_named(client, original)
    assert trained_model.run_id(baseline / "models/trained") == original_run.info.run_id
    metrics = json.loads((baseline / "reports/evaluate/metrics.json").read_text())
    assert original_run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    git(baseline, "checkout", "--quiet", "--", ".")
    dvc(baseline, "checkout")


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[str]:
    with mlflow_server(tmp_path) as uri:
        yield uri


def test_pipeline_logs_to_a_live_tracking_server(baseline: Path, live_server: str) -> None:
    dvc(baseline, "exp", "run", "--temp", "--name", "served", "-S", "train.seed=7", MLFLOW_TRACKING_URI=live_server)
    client = MlflowClient(live_server)
    (run,) = runs_named(client, "served")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.seed"] == "7"
    assert {"test_accuracy", "test_f1_macro", "val_loss"} <= set(run.data.metrics)
    assert {item.path for item in client.list_artifacts(run.info.run_id)} >= {"evaluation", "savedmodel", "training"}
    (version,) = client.search_model_versions("name = 'digits'")
    assert version.run_id == run.info.run_id
    assert runs_named(server_client(), "served") == []


def test_unreachable_server_fails_fast_and_dvc_keeps_the_previous_outputs(baseline: Path) -> None:
    lock = (baseline / "dvc.lock").read_text()
    run_file = (baseline / "models/trained/mlflow_run.json").read_text()
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = dvc(baseline, "repro", "--force", "--single-item", "train", check=False, MLFLOW_TRACKING_URI=uri)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 30
    errors = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    assert errors == [
        f"train: error: MLflow tracking server {uri} cannot be reached (ConnectionError); "
        "start it, or unset MLFLOW_TRACKING_URI to use the project's SQLite store"
    ]
    assert (baseline / "dvc.lock").read_text() == lock
    # DVC removes a stage's outputs before running its command, so they are gone from the
    # workspace; its run cache still holds them, and `dvc repro` puts them back without running
    # anything, with the server still unreachable.
    assert not (baseline / "models/trained").exists()
    restored = dvc(baseline, "repro", MLFLOW_TRACKING_URI=uri).stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in restored
    assert "Running stage" not in restored
    assert (baseline / "models/trained/mlflow_run.json").read_text() == run_file
    assert (baseline / "dvc.lock").read_text() == lock
    assert git(baseline, "status", "--porcelain") == ""
