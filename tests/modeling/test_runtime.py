"""The training runtime: seeds and op determinism, XLA, mixed precision."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from image_classification.config import Params, TrainParams
from image_classification.data import shards
from image_classification.data.dataset import Dataset
from image_classification.modeling import architecture, input_pipeline, runtime
from tests.conftest import write_shards


def tiny(params: Params, **changes) -> TrainParams:
    return params.train.model_copy(update=changes)


@pytest.fixture
def tiny_shards(tmp_path: Path, tiny_dataset: Dataset) -> Iterator[shards.ShardedDataset]:
    with shards.open_dataset(write_shards(tmp_path / "prepared", tiny_dataset)) as data:
        yield data


def train_once(
    params: Params,
    data: shards.ShardedDataset,
    loss: str = "sparse_categorical_crossentropy",
    deterministic: bool = True,
) -> tuple:
    settings = tiny(params, epochs=3, batch_size=16, loss=loss, warmup_epochs=0)
    runtime.seed_everything(settings.seed, deterministic_ops=deterministic)
    model = architecture.compile_model(architecture.build_model(data.image_shape, 3, settings), settings, 4)
    one_hot = architecture.uses_one_hot_labels(settings)
    rows = np.arange(len(data))
    batches = input_pipeline.make_training_dataset(
        data, rows, 3, 16, settings.seed, first_epoch=0, epochs=settings.epochs, one_hot=one_hot
    )
    steps = input_pipeline.steps_per_epoch(len(rows), 16)
    history = model.fit(batches, epochs=settings.epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    return history.history["loss"], model.get_weights()


def test_training_learns_and_is_deterministic(params: Params, tiny_shards: shards.ShardedDataset) -> None:
    losses, weights = train_once(params, tiny_shards)
    again_losses, again_weights = train_once(params, tiny_shards)
    assert losses[-1] < losses[0]
    assert losses == again_losses
    assert all(np.array_equal(a, b) for a, b in zip(weights, again_weights, strict=True))


def test_categorical_loss_trains(params: Params, tiny_shards: shards.ShardedDataset) -> None:
    losses, _ = train_once(params, tiny_shards, loss="categorical_crossentropy")
    assert losses[-1] < losses[0]


def test_speed_params_reach_the_model(params: Params) -> None:
    settings = tiny(params, batch_norm=True, batch_norm_momentum=0.8, jit_compile=True, augment_translation=0.0)
    try:
        runtime.seed_everything(settings.seed, deterministic_ops=False)
        model = architecture.build_model((12, 12, 1), 3, settings)
        trainer = architecture.compile_model(model, settings, steps_per_epoch=4)
        assert model.get_layer("block1_bn1").momentum == pytest.approx(0.8)
        # Keras quietly turns XLA off while op determinism is on.
        assert trainer.jit_compile is True
    finally:
        runtime.seed_everything(settings.seed)


def test_xla_training_learns(params: Params, tiny_shards: shards.ShardedDataset) -> None:
    settings = tiny(params, jit_compile=True, augment_translation=0.0)
    try:
        losses, _ = train_once(params.model_copy(update={"train": settings}), tiny_shards, deterministic=False)
    finally:
        runtime.seed_everything(settings.seed)
    assert losses[-1] < losses[0]


def test_mixed_precision_without_a_gpu_is_refused(params: Params) -> None:
    with pytest.raises(ValueError, match=r"train\.mixed_precision = true needs a GPU and tensorflow sees none"):
        runtime.configure_runtime(tiny(params, mixed_precision=True), gpus=[])


def test_mixed_precision_computes_in_float16_with_float32_probabilities(params: Params) -> None:
    try:
        runtime.configure_runtime(tiny(params, mixed_precision=True), gpus=["a GPU"])
        model = architecture.build_model((12, 12, 1), 3, tiny(params))
        assert model.get_layer("block1_conv1").compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        runtime.configure_runtime(tiny(params, mixed_precision=False))
    assert keras.mixed_precision.global_policy().name == "float32"
