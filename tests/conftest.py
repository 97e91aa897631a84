"""Shared fixtures: tiny generated datasets, the project's params, and a shrunken copy of the project."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml

from image_classification.config import Params, parse_params
from image_classification.data.dataset import Dataset, content_hashes
from image_classification.data.shards import ShardWriter, open_dataset
from image_classification.data.split import read_membership
from image_classification.services import processes
from image_classification.services.processes import free_port

if TYPE_CHECKING:
    from image_classification.services.stack import Services

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Small enough that `dvc repro` spends its time on imports, big enough that every split of every
# class has images: 300 images, 2 epochs.
TINY_OVERRIDES = {
    "data": {"max_images": 300},
    "train": {"epochs": 2, "warmup_epochs": 0, "filters": 8, "dense_units": 32, "batch_size": 32},
}


def make_images(classes: int = 3, per_class: int = 20, size: int = 12, channels: int = 1, seed: int = 0) -> Dataset:
    """Generate a learnable dataset: each class is a bright bar at its own position, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(classes * per_class, size, size, channels), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    band = max(1, size // classes)
    for row, label in enumerate(labels):
        images[row, label * band : (label + 1) * band, :, :] = 220
    order = rng.permutation(len(labels))
    return Dataset(images[order], labels[order].astype(np.int64), tuple(f"class_{index}" for index in range(classes)))


def write_shards(folder: Path, dataset: Dataset) -> Path:
    """Write `dataset` as a prepared dataset (shards) at `folder`, as the prepare stage would; returns `folder`."""
    with ShardWriter(folder, dataset.images.shape[1:], dataset.class_names) as writer:
        writer.add(dataset.images, dataset.labels, content_hashes(dataset.images))
    return folder


def split_images(paths: dict[str, Path], name: str) -> Dataset:
    """The images and labels of split `name` ("train", "validation" or "test") of a pipeline's outputs, in row order."""
    with open_dataset(paths["dataset"]) as data:
        rows = read_membership(paths["membership"], data)[name]
        return Dataset(data.read(rows), data.labels[rows], data.class_names)


@contextlib.contextmanager
def forgetting_mlflow_uris() -> Iterator[None]:
    """Undo what in-process stages leave behind: MLflow's process-wide tracking and registry URIs.

    `mlflow.set_registry_uri` also exports `MLFLOW_REGISTRY_URI`, which would send a later test's
    registry calls (an `MlflowClient` given only a tracking URI among them) to an earlier test's store.
    """
    registry_variable = os.environ.get("MLFLOW_REGISTRY_URI")
    try:
        yield
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        if registry_variable is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = registry_variable


@pytest.fixture(autouse=True)
def _forget_mlflow_uris() -> Iterator[None]:
    with forgetting_mlflow_uris():
        yield


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_images()


def raw_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def merged(base: dict, overrides: dict) -> dict:
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in overrides.items():
        result[section] = {**result.get(section, {}), **values}
    return result


@pytest.fixture
def params() -> Params:
    """The project's params, shrunk to tiny sizes."""
    return parse_params(merged(raw_params(), TINY_OVERRIDES))


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway SQLite tracking store; the project's own store is never touched by tests."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for variable in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        monkeypatch.delenv(variable, raising=False)
    return uri


def tracked_files() -> list[str]:
    """The project's files as git sees them (committed or not, ignored ones excluded)."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if (PROJECT_ROOT / line).is_file()]


def store_copy(uri: str, folder: Path) -> str:
    """A SQLite tracking URI for a copy of the store at `uri`, in `folder`.

    For a test whose stage fails inside the run of a shared fixture's model: the failure marks the
    run FAILED, and the copy keeps that from the other tests, in whatever order they run.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(uri.removeprefix("sqlite:///"), folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def pipeline_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would have after activating .venv, with no tracking URI set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def make_project(parent: Path) -> Path:
    """Copy the project into its own git repository under `parent`, with tiny params committed.

    Only files git knows about are copied, as a fresh clone would have them: no .venv, no MLflow
    store, no DVC cache or outputs.
    """
    root = parent / "project"
    for name in tracked_files():
        if name.startswith("dvc.lock") or name.startswith("reports/"):
            continue  # outputs of the committed reference run; the copy makes its own
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    (root / "params.yaml").write_text(yaml.safe_dump(merged(raw_params(), TINY_OVERRIDES), sort_keys=False))
    git(root, "init", "--quiet", "--initial-branch", "main")
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "--message", "tiny project")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def wait_until_up(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or `timeout` passes."""
    try:
        processes.wait_until_ready(url, lambda: processes.answers(url), log_path, timeout, process.pid)
    except processes.ServiceError as error:
        raise AssertionError(f"{error}:\n{log_path.read_text()}") from None


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """Run `mlflow server` in its own process with its own SQLite store on a free localhost port."""
    from image_classification.services import tracking_server

    try:
        yield tracking_server.start(
            folder, free_port(), f"sqlite:///{folder / 'server.db'}", str(folder / "artifacts"), workers=1
        )
    finally:
        tracking_server.stop(folder)


@pytest.fixture(scope="session")
def shared_services() -> Iterator[Services]:
    """PostgreSQL, the SeaweedFS S3 store and an MLflow server on free ports, started once by the services package.

    A service that cannot start skips the tests that need it, with the reason; with CI=true it fails them.
    """
    from image_classification.services import stack

    # Under the system's temporary folder, whose parents every user may enter: started by root,
    # PostgreSQL runs as the postgres user and must reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="pipeline-services-"))
    folder.chmod(0o755)
    try:
        services = stack.start(folder / "services", stack.Ports.free())
    except (ImportError, OSError) as error:
        reason = f"the shared tracking services did not start: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield services
    stack.stop(services.folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict[str, Path], str]:
    """The five stage functions run once, in-process, on tiny params: (params, output paths, tracking URI)."""
    from tests.stage_chain import run_stage_chain

    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    # Session-scoped, so set up before any test's own fixtures: it must clean up after itself.
    with forgetting_mlflow_uris(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for variable in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
            patch.delenv(variable, raising=False)
        params = parse_params(merged(raw_params(), TINY_OVERRIDES))
        paths = run_stage_chain(params, tmp_path_factory.mktemp("first"))
    # The store as the chain left it, for tests of what the stages recorded: later tests export and
    # register again in the store itself, in an order that depends on the pytest worker.
    shutil.copy2(store / "mlflow.db", store / CHAIN_SNAPSHOT)
    return params, paths, uri


CHAIN_SNAPSHOT = "after-chain.db"


def chain_snapshot(uri: str) -> str:
    """The tracking URI of the `pipeline` fixture's store as its stage chain left it."""
    return uri.replace("/mlflow.db", f"/{CHAIN_SNAPSHOT}")
