from __future__ import annotations

import keras
import numpy as np
import pytest

from stages import model
from stages.datasets import Dataset
from stages.params import Params, TrainParams


def tiny(params: Params, **changes) -> TrainParams:
    return params.train.model_copy(update=changes)


def test_model_takes_uint8_images_and_outputs_probabilities(params: Params) -> None:
    classifier = model.build_model((12, 12, 1), 3, tiny(params, conv_blocks=2))
    assert classifier.input.dtype == "uint8"
    probabilities = classifier(np.zeros((5, 12, 12, 1), np.uint8), training=False)
    assert probabilities.shape == (5, 3)
    assert np.allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-5)


def test_architecture_follows_params(params: Params) -> None:
    with_bn = model.build_model((16, 16, 1), 4, tiny(params, conv_blocks=3, convs_per_block=2, batch_norm=True))
    names = [layer.name for layer in with_bn.layers]
    assert sum(name.endswith(("_conv1", "_conv2")) for name in names) == 6
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in with_bn.layers) == 6
    assert with_bn.get_layer("block3_conv1").filters == params.train.filters * 4

    plain = model.build_model(
        (16, 16, 3), 4, tiny(params, batch_norm=False, pooling="global_average", dense_units=0, augment_translation=0)
    )
    layer_types = {type(layer) for layer in plain.layers}
    assert keras.layers.BatchNormalization not in layer_types
    assert keras.layers.GlobalAveragePooling2D in layer_types
    assert keras.layers.RandomTranslation not in layer_types
    assert "dense" not in [layer.name for layer in plain.layers]


def test_rescaling_is_inside_the_model(params: Params) -> None:
    classifier = model.build_model((12, 12, 1), 3, tiny(params))
    assert isinstance(classifier.get_layer("rescale"), keras.layers.Rescaling)


def test_too_many_blocks_for_the_image_size(params: Params) -> None:
    with pytest.raises(ValueError, match=r"conv_blocks = 5 halves 12x12 images to nothing; use at most 3 blocks"):
        model.build_model((12, 12, 1), 3, tiny(params, conv_blocks=5))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "nadam", "rmsprop", "sgd"])
def test_every_optimizer_compiles(params: Params, optimizer: str) -> None:
    classifier = model.build_model((12, 12, 1), 3, tiny(params))
    model.compile_model(classifier, tiny(params, optimizer=optimizer), steps_per_epoch=4)
    assert type(classifier.optimizer).__name__.lower() == optimizer


def test_cosine_schedule_warms_up_then_decays(params: Params) -> None:
    settings = tiny(params, learning_rate=0.01, lr_schedule="cosine", epochs=4, warmup_epochs=1)
    schedule = model.learning_rate(settings, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 10, 25, 40)]
    assert rates[0] == pytest.approx(0.001)
    assert rates[1] == pytest.approx(0.01)
    assert rates[1] > rates[2] > rates[3]
    assert model.learning_rate(tiny(params, lr_schedule="constant", learning_rate=0.02), 10) == 0.02


def test_one_hot_pipeline(tiny_dataset: Dataset) -> None:
    data = model.make_dataset(tiny_dataset.images, tiny_dataset.labels, 3, batch_size=16, one_hot=True)
    images, labels = next(iter(data))
    assert images.shape == (16, 12, 12, 1)
    assert labels.shape == (16, 3)
    assert np.array_equal(np.argmax(labels, axis=1), tiny_dataset.labels[:16])


def batches(dataset: Dataset, first_epoch: int, epochs: int) -> list[list[int]]:
    data = model.make_training_dataset(
        dataset.images, dataset.labels, 3, 16, seed=5, first_epoch=first_epoch, epochs=epochs
    )
    return [labels.numpy().tolist() for _, labels in data]


def test_training_batches_depend_only_on_seed_and_epoch(tiny_dataset: Dataset) -> None:
    full = batches(tiny_dataset, 0, 3)
    steps = model.steps_per_epoch(len(tiny_dataset), 16)
    assert len(full) == 3 * steps
    assert [len(batch) for batch in full[:steps]] == [16, 16, 16, 12]
    assert batches(tiny_dataset, 2, 3) == full[2 * steps :]
    assert full[:steps] != full[steps : 2 * steps]  # reshuffled every epoch
    for epoch in range(3):
        epoch_labels = sorted(label for batch in full[epoch * steps : (epoch + 1) * steps] for label in batch)
        assert epoch_labels == sorted(tiny_dataset.labels.tolist())


def train_once(
    params: Params, dataset: Dataset, loss: str = "sparse_categorical_crossentropy", deterministic: bool = True
) -> tuple:
    settings = tiny(params, epochs=3, batch_size=16, loss=loss, warmup_epochs=0)
    model.seed_everything(settings.seed, deterministic_ops=deterministic)
    classifier = model.build_model(dataset.images.shape[1:], 3, settings)
    model.compile_model(classifier, settings, steps_per_epoch=4)
    one_hot = model.uses_one_hot_labels(settings)
    data = model.make_training_dataset(
        dataset.images, dataset.labels, 3, 16, settings.seed, first_epoch=0, epochs=settings.epochs, one_hot=one_hot
    )
    steps = model.steps_per_epoch(len(dataset), 16)
    history = classifier.fit(data, epochs=settings.epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    return history.history["loss"], classifier.get_weights()


def test_training_learns_and_is_deterministic(params: Params, tiny_dataset: Dataset) -> None:
    losses, weights = train_once(params, tiny_dataset)
    again_losses, again_weights = train_once(params, tiny_dataset)
    assert losses[-1] < losses[0]
    assert losses == again_losses
    assert all(np.array_equal(a, b) for a, b in zip(weights, again_weights, strict=True))


def test_categorical_loss_trains(params: Params, tiny_dataset: Dataset) -> None:
    losses, _ = train_once(params, tiny_dataset, loss="categorical_crossentropy")
    assert losses[-1] < losses[0]


def test_speed_params_reach_the_model(params: Params) -> None:
    settings = tiny(params, batch_norm=True, batch_norm_momentum=0.8, jit_compile=True, augment_translation=0.0)
    try:
        model.seed_everything(settings.seed, deterministic_ops=False)
        classifier = model.build_model((12, 12, 1), 3, settings)
        model.compile_model(classifier, settings, steps_per_epoch=4)
        assert classifier.get_layer("block1_bn1").momentum == pytest.approx(0.8)
        # Keras quietly turns XLA off while op determinism is on.
        assert classifier.jit_compile is True
    finally:
        model.seed_everything(settings.seed)


def test_xla_training_learns(params: Params, tiny_dataset: Dataset) -> None:
    settings = tiny(params, jit_compile=True, augment_translation=0.0)
    try:
        losses, _ = train_once(params.model_copy(update={"train": settings}), tiny_dataset, deterministic=False)
    finally:
        model.seed_everything(settings.seed)
    assert losses[-1] < losses[0]


def test_mixed_precision_without_a_gpu_is_refused(params: Params) -> None:
    with pytest.raises(ValueError, match=r"train\.mixed_precision = true needs a GPU and TensorFlow sees none"):
        model.configure_runtime(tiny(params, mixed_precision=True), gpus=[])


def test_mixed_precision_computes_in_float16_with_float32_probabilities(params: Params) -> None:
    try:
        model.configure_runtime(tiny(params, mixed_precision=True), gpus=["a GPU"])
        classifier = model.build_model((12, 12, 1), 3, tiny(params))
        assert classifier.get_layer("block1_conv1").compute_dtype == "float16"
        assert classifier.output.dtype == "float32"
    finally:
        model.configure_runtime(tiny(params, mixed_precision=False))
    assert keras.mixed_precision.global_policy().name == "float32"
