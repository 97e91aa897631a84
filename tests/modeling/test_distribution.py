"""Training across devices and processes: the data each process feeds, the params, the supervisor, MirroredStrategy.

Two JAX processes training like one, and resuming after a killed worker, are in test_checkpoints.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from image_classification.config import ParamsError, parse_params
from image_classification.modeling import input_pipeline
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, make_images, merged, pipeline_env, raw_params, write_shards


@pytest.mark.parametrize(("count", "batch_size", "num_processes"), [(10, 4, 2), (11, 4, 2), (23, 6, 3), (5, 8, 1)])
def test_process_rows_split_every_global_batch_evenly(count: int, batch_size: int, num_processes: int) -> None:
    """Process k's batch j, over all k, is global batch j of the order; at most num_processes - 1 rows left out."""
    order = np.random.default_rng(0).permutation(count)
    kept = order[: count - count % num_processes]
    steps = input_pipeline.steps_per_epoch(count, batch_size, num_processes)
    parts = [input_pipeline.process_rows(order, index, num_processes) for index in range(num_processes)]
    assert len({len(part) for part in parts}) == 1
    local = batch_size // num_processes
    for step in range(steps):
        global_batch = kept[step * batch_size : (step + 1) * batch_size]
        pieces = [part[step * local : (step + 1) * local] for part in parts]
        assert len({len(piece) for piece in pieces}) == 1
        assert sorted(np.concatenate(pieces)) == sorted(global_batch)
    assert sum(len(part) for part in parts) == len(kept) >= count - num_processes + 1
    # The tf.data pipeline takes the same rows from a tensor.
    assert np.array_equal(input_pipeline.process_rows(tf.constant(order), 1 % num_processes, num_processes),
                          parts[1 % num_processes])  # fmt: skip


def test_training_dataset_of_each_process_is_its_part_of_the_global_batches(tmp_path: Path) -> None:
    dataset = make_images(classes=2, per_class=11)
    data_dir = write_shards(tmp_path / "prepared", dataset)
    from image_classification.data import shards

    rows = np.arange(22)
    with shards.open_dataset(data_dir) as data:
        whole = [labels.numpy() for _, labels in input_pipeline.make_training_dataset(data, rows, 2, 8, 7, 0, 2)]
        parts = [
            [
                labels.numpy()
                for _, labels in input_pipeline.make_training_dataset(data, rows, 2, 8, 7, 0, 2, False, k, 2)
            ]
            for k in range(2)
        ]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 2 * input_pipeline.steps_per_epoch(22, 8, 2)
    for global_batch, first, second in zip(whole, *parts, strict=True):
        assert sorted(np.concatenate([first, second])) == sorted(global_batch)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"distribution": "multi_process"}, "distribution = multi_process needs backend = jax, not tensorflow"),
        ({"distribution": "mirrored", "backend": "torch"}, "distribution = mirrored needs backend = tensorflow"),
        ({"distribution": "multi_process", "backend": "jax", "num_processes": 3, "batch_size": 64},
         "batch_size = 64 must be a multiple of num_processes = 3"),
        ({"num_processes": 1}, "num_processes"),
        ({"coordinator_address": "10.0.0.1"}, "coordinator_address = '10.0.0.1' must be HOST:PORT, or null"),
    ],
)  # fmt: skip
def test_distribution_params_are_checked(train: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params(merged(raw_params(), {"train": train}))


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_replicas(tmp_path: Path) -> None:
    """`mirrored` through the train stage, on a CPU split into two logical devices (as two GPUs would be)."""
    params = merged(raw_params(), merged(TINY_OVERRIDES, {"train": {"distribution": "mirrored", "epochs": 2}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_shards(tmp_path / "prepared", make_images(classes=3, per_class=40))
    from image_classification.data import split

    split.split_dataset(parse_params(params).split, tmp_path / "prepared", tmp_path / "membership.npz",
                        tmp_path / "split.json")  # fmt: skip
    script = textwrap.dedent("""
        import sys
        from image_classification import native_logs, runner
        native_logs.install()
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from stages import train
        sys.exit(runner.execute("train", train.main, sys.argv[1:]))
    """)
    arguments = [
        "--params", "params.yaml", "--dataset", "prepared", "--membership", "membership.npz",
        "--model-dir", "model", "--history", "history.csv", "--summary", "summary.json",
        "--timing", "timing.json", "--checkpoint-dir", "checkpoints",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=pipeline_env(PYTHONPATH=str(PROJECT_ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "train: MirroredStrategy over /device:CPU:0, /device:CPU:1" in result.stderr
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) == 3
    assert float(rows[-1].split(",")[4]) > 0.6  # validation accuracy on three learnable classes
    from image_classification.modeling import trained_model

    model = trained_model.load_model(tmp_path / "model")
    assert model.predict(make_images(classes=3, per_class=2).images, verbose=0).shape == (6, 3)
