from __future__ import annotations

import csv
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


# Variants beyond the backends: JAX with no random layer, on one process and on two (keras.distribution).
NO_RANDOM_LAYER = {"backend": "jax", "augment_translation": 0.0, "dropout_rate": 0.0}
VARIANTS = {
    "jax-one-process": NO_RANDOM_LAYER,
    "jax-two-processes": {**NO_RANDOM_LAYER, "distribution": "multi_process", "num_processes": 2},
}


def on_backend(data: tuple[Path, Path], backend: str) -> tuple[Path, Path]:
    """`data` with a params file that trains on `backend`, or as one of `VARIANTS` says."""
    root, params_file = data
    backend_params = root / f"params-{backend}.yaml"
    train = VARIANTS.get(backend, {"backend": backend})
    backend_params.write_text(yaml.safe_dump(merged(yaml.safe_load(params_file.read_text()), {"train": train})))
    return root, backend_params


_UNINTERRUPTED: dict[str, Path] = {}


def uninterrupted_run(data_root, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a training run on `backend` that nothing interrupted, run once per test module."""
    if backend not in _UNINTERRUPTED:
        workdir = tmp_path_factory.mktemp(f"uninterrupted-{backend}")
        process = train_process(on_backend(data_root, backend), workdir)
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        _UNINTERRUPTED[backend] = workdir
    return _UNINTERRUPTED[backend]


@pytest.fixture(scope="module")
def uninterrupted(request, data_root, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The backend, and the folder of a training run on it that nothing interrupted."""
    return request.param, uninterrupted_run(data_root, request.param, tmp_path_factory)


def predictions(workdir: Path, data_root) -> np.ndarray:
    root, _ = data_root
    with shards.open_dataset(root / "prepared") as data:
        images = data.read(split.read_membership(root / "membership.npz", data, ("test",))["test"])
    return trained_model.load_model(workdir / "model").predict(images, verbose=0)


@pytest.mark.slow
# SIGTERM is handled by the runner, the same way on every backend: tried on TensorFlow, and SIGKILL
# (no handler runs) on the two other backends.
@pytest.mark.parametrize(
    ("uninterrupted", "signum"),
    [("tensorflow", signal.SIGTERM), *((backend, signal.SIGKILL) for backend in BACKENDS if backend != "tensorflow")],
    ids=["tensorflow-SIGTERM", *(f"{backend}-SIGKILL" for backend in BACKENDS if backend != "tensorflow")],
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


def worker_pid(workdir: Path, index: int) -> int:
    """The process id of training process `index` of the run whose checkpoints go to `workdir`."""
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if str(workdir / "checkpoints").encode() not in arguments or b"--process-index" not in arguments:
            continue
        if arguments[arguments.index(b"--process-index") + 1] == str(index).encode():
            return int(entry.name)
    raise AssertionError(f"no training process {index} for {workdir}")


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_killed_worker(
    data_root, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """`multi_process` trains as one process; a killed worker fails the run in one line; the rerun resumes exactly."""
    one = uninterrupted_run(data_root, "jax-one-process", tmp_path_factory)
    two = uninterrupted_run(data_root, "jax-two-processes", tmp_path_factory)
    # The same global batches (the split is even, so no row is left out), the gradient averaged over
    # both processes: with no random layer, the same training up to floating-point rounding.
    histories = [list(csv.DictReader((folder / "history.csv").open())) for folder in (one, two)]
    assert len(histories[0]) == len(histories[1]) == EPOCHS
    for row_one, row_two in zip(*histories, strict=True):
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(row_one[name]) == pytest.approx(float(row_two[name]), abs=1e-4), (name, row_one, row_two)
    assert (two / "checkpoints" / "processes" / "process-1.log").is_file()

    data = on_backend(data_root, "jax-two-processes")
    process = train_process(data, tmp_path)
    while checkpointed_epoch(tmp_path) < 2:
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    os.kill(worker_pid(tmp_path, 1), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    (line,) = stderr.splitlines()
    assert line.startswith("train: error: training process 1 of 2 was killed by SIGKILL, so the others were stopped")
    assert "`dvc repro` resumes from the last completed epoch" in line
    assert not (tmp_path / "model").exists()
    done = checkpointed_epoch(tmp_path)

    resumed = train_process(data, tmp_path)
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert f"after epoch {done} of {EPOCHS}" in stderr
    assert (tmp_path / "history.csv").read_bytes() == (two / "history.csv").read_bytes()
    assert np.array_equal(predictions(tmp_path, data_root), predictions(two, data_root))
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = store.search_runs([store.get_experiment_by_name("image-classification").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.distribution"] == "multi_process"
    assert trained_model.run_id(tmp_path / "model") == run.info.run_id
