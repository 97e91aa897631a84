from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from image_classification import artifacts
from image_classification.config import BACKENDS, Params, parse_params
from image_classification.data import prepare, shards, split
from image_classification.modeling import architecture, checkpoints, input_pipeline, trained_model
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, merged, raw_params, write_shards


def compiled(params: Params) -> keras.Model:
    classifier = architecture.build_model((12, 12, 1), 3, params.train)
    return architecture.compile_model(classifier, params.train, steps_per_epoch=4)


def test_capture_and_restore_include_optimizer_and_random_state(params: Params, tiny_dataset, tmp_path: Path) -> None:
    source = compiled(params)
    with shards.open_dataset(write_shards(tmp_path / "prepared", tiny_dataset)) as prepared:
        data = input_pipeline.make_training_dataset(prepared, np.arange(len(prepared)), 3, 16, 0, 0, 2)
        source.fit(data, epochs=2, steps_per_epoch=4, verbose=0, shuffle=False)
    values = checkpoints.capture(source)
    target = compiled(params)
    checkpoints.restore(target, values)
    assert int(target.optimizer.iterations) == 8
    seed_states = [v for v in target.variables if "seed_generator_state" in v.path]
    assert seed_states
    assert all(np.array_equal(a, b) for a, b in zip(checkpoints.capture(target), values, strict=True))


def test_restore_refuses_another_architecture(params: Params) -> None:
    values = checkpoints.capture(compiled(params))
    other = architecture.build_model((12, 12, 1), 3, params.train.model_copy(update={"dense_units": 7}))
    other = architecture.compile_model(other, params.train, steps_per_epoch=4)
    with pytest.raises(ValueError, match="different model architecture"):
        checkpoints.restore(other, values)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    checkpoint = checkpoints.Checkpoint(
        key="k1",
        run_id="run",
        epoch=3,
        history=[{"epoch": 1, "loss": 0.5}],
        variables=[np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64)],
        early_stopping={"best": 0.4, "wait": 1, "best_epoch": 1},
        best_weights=[np.ones(2)],
        seconds=1.5,
    )
    path = tmp_path / "checkpoint.npz"
    checkpoints.save(path, checkpoint)
    loaded = checkpoints.load(path, "k1")
    assert loaded is not None
    assert (loaded.run_id, loaded.epoch, loaded.history, loaded.seconds) == ("run", 3, [{"epoch": 1, "loss": 0.5}], 1.5)
    assert loaded.early_stopping == {"best": 0.4, "wait": 1, "best_epoch": 1}
    assert all(np.array_equal(a, b) for a, b in zip(loaded.variables, checkpoint.variables, strict=True))
    assert np.array_equal(loaded.best_weights[0], np.ones(2))


def test_checkpoint_of_other_training_or_corrupt_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    assert checkpoints.load(path, "k1") is None
    checkpoints.save(path, checkpoints.Checkpoint(key="k1", run_id="run"))
    assert checkpoints.load(path, "other") is None
    path.write_bytes(b"\x00garbage")
    assert checkpoints.load(path, "k1") is None


def test_key_depends_on_settings_and_data() -> None:
    key = checkpoints.checkpoint_key({"train.epochs": 3}, "digest")
    assert key == checkpoints.checkpoint_key({"train.epochs": 3}, "digest")
    assert key != checkpoints.checkpoint_key({"train.epochs": 4}, "digest")
    assert key != checkpoints.checkpoint_key({"train.epochs": 3}, "other")


# Killing a real training process.

EPOCHS = 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    overrides = merged(TINY_OVERRIDES, {"data": {"max_images": 600}, "train": {"epochs": EPOCHS}})
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(merged(raw_params(), overrides)))
    params = parse_params(yaml.safe_load(params_file.read_text()))
    image_bytes = params.data.image_height * params.data.image_width * params.data.channels
    with pytest.MonkeyPatch.context() as patch:
        # Several shards, so that training streams its batches from more than one file.
        patch.setattr(shards, "SHARD_BYTES", 100 * image_bytes)
        prepare.prepare_dataset(params.data, root / "prepared", root / "statistics.json")
    with shards.open_dataset(root / "prepared") as data:
        assert len(data.shards) == 6
    split.split_dataset(params.split, root / "prepared", root / "membership.npz", root / "split.json")
    return root, params_file


def train_process(data: tuple[Path, Path], workdir: Path) -> subprocess.Popen:
    root, params_file = data
    command = [
        sys.executable, "-m", "stages.train", "--params", str(params_file),
        "--dataset", str(root / "prepared"), "--membership", str(root / "membership.npz"),
        "--model-dir", str(workdir / "model"), "--history", str(workdir / "history.csv"),
        "--summary", str(workdir / "summary.json"), "--timing", str(workdir / "timing.json"),
        "--checkpoint-dir", str(workdir / "checkpoints"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    for variable in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        env.pop(variable, None)
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def checkpointed_epoch(workdir: Path) -> int:
    try:
        with np.load(workdir / "checkpoints" / "checkpoint.npz", allow_pickle=False) as archive:
            return json.loads(str(archive["meta"]))["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def kill_after_epoch(process: subprocess.Popen, workdir: Path, epoch: int, signum: int) -> int:
    deadline = time.monotonic() + 300
    while checkpointed_epoch(workdir) < epoch:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training never reached the epoch"
        time.sleep(0.02)
    process.send_signal(signum)
    process.communicate(timeout=120)
    return checkpointed_epoch(workdir)


def on_backend(data: tuple[Path, Path], backend: str) -> tuple[Path, Path]:
    """`data` with a params file that trains on `backend`."""
    root, params_file = data
    backend_params = root / f"params-{backend}.yaml"
    backend_params.write_text(
        yaml.safe_dump(merged(yaml.safe_load(params_file.read_text()), {"train": {"backend": backend}}))
    )
    return root, backend_params


@pytest.fixture(scope="module")
def uninterrupted(request, data_root, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The backend, and the folder of a training run on it that nothing interrupted."""
    workdir = tmp_path_factory.mktemp(f"uninterrupted-{request.param}")
    process = train_process(on_backend(data_root, request.param), workdir)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return request.param, workdir


def predictions(workdir: Path, data_root) -> np.ndarray:
    root, _ = data_root
    with shards.open_dataset(root / "prepared") as data:
        images = data.read(split.read_membership(root / "membership.npz", data, ("test",))["test"])
    return trained_model.load_model(workdir / "model").predict(images, verbose=0)


@pytest.mark.slow
# SIGTERM is handled by the runner, the same way on every backend; SIGKILL is tried on each backend.
@pytest.mark.parametrize(
    ("uninterrupted", "signum"),
    [("tensorflow", signal.SIGTERM), *((backend, signal.SIGKILL) for backend in BACKENDS)],
    ids=["tensorflow-SIGTERM", *(f"{backend}-SIGKILL" for backend in BACKENDS)],
    indirect=["uninterrupted"],
)
def test_killed_training_resumes_to_the_same_result(data_root, uninterrupted, tmp_path: Path, signum) -> None:
    """On every backend: the killed run's epochs, and the epochs after the resume, equal an uninterrupted run's."""
    backend, uninterrupted = uninterrupted
    data_root = on_backend(data_root, backend)
    process = train_process(data_root, tmp_path)
    done = kill_after_epoch(process, tmp_path, 2, signum)
    assert 2 <= done < EPOCHS
    assert process.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 130)
    assert not (tmp_path / "model").exists()
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (killed_run,) = store.search_runs([store.get_experiment_by_name("image-classification").experiment_id])
    # SIGKILL cannot be caught, so the run stays RUNNING until the resumed process ends it.
    assert killed_run.info.status == ("RUNNING" if signum == signal.SIGKILL else "KILLED")

    resumed = train_process(data_root, tmp_path)
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert f"after epoch {done} of {EPOCHS}" in stderr
    assert (tmp_path / "history.csv").read_bytes() == (uninterrupted / "history.csv").read_bytes()
    assert (tmp_path / "summary.json").read_bytes() == (uninterrupted / "summary.json").read_bytes()
    assert np.array_equal(predictions(tmp_path, data_root), predictions(uninterrupted, data_root))
    assert artifacts.read_json(tmp_path / "timing.json")["resumed_after_epoch"] == done
    assert not (tmp_path / "checkpoints" / "checkpoint.npz").exists()

    run = store.get_run(killed_run.info.run_id)
    assert trained_model.run_id(tmp_path / "model") == run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_after_epoch"] == str(done)
    assert (run.data.params["train.backend"], run.data.tags["keras.backend"]) == (backend, backend)
    steps = {metric.step for metric in store.get_metric_history(run.info.run_id, "val_loss")}
    assert steps == set(range(1, EPOCHS + 1))
