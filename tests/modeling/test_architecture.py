"""The CNN, its learning-rate schedule and its compilation, built from TrainParams."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from image_classification.config import Params, TrainParams
from image_classification.modeling import architecture


def tiny(params: Params, **changes) -> TrainParams:
    return params.train.model_copy(update=changes)


def test_model_takes_uint8_images_and_outputs_probabilities(params: Params) -> None:
    model = architecture.build_model((12, 12, 1), 3, tiny(params, conv_blocks=2))
    assert model.input.dtype == "uint8"
    probabilities = model(np.zeros((5, 12, 12, 1), np.uint8), training=False)
    assert probabilities.shape == (5, 3)
    assert np.allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-5)


def test_architecture_follows_params(params: Params) -> None:
    with_bn = architecture.build_model((16, 16, 1), 4, tiny(params, conv_blocks=3, convs_per_block=2, batch_norm=True))
    names = [layer.name for layer in with_bn.layers]
    assert sum(name.endswith(("_conv1", "_conv2")) for name in names) == 6
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in with_bn.layers) == 6
    assert with_bn.get_layer("block3_conv1").filters == params.train.filters * 4

    plain = architecture.build_model(
        (16, 16, 3), 4, tiny(params, batch_norm=False, pooling="global_average", dense_units=0, augment_translation=0)
    )
    layer_types = {type(layer) for layer in plain.layers}
    assert keras.layers.BatchNormalization not in layer_types
    assert keras.layers.GlobalAveragePooling2D in layer_types
    assert keras.layers.RandomTranslation not in layer_types
    assert "dense" not in [layer.name for layer in plain.layers]


def test_rescaling_is_inside_the_model(params: Params) -> None:
    model = architecture.build_model((12, 12, 1), 3, tiny(params))
    assert isinstance(model.get_layer("rescale"), keras.layers.Rescaling)


def test_too_many_blocks_for_the_image_size(params: Params) -> None:
    with pytest.raises(ValueError, match=r"conv_blocks = 5 halves 12x12 images to nothing; use at most 3 blocks"):
        architecture.build_model((12, 12, 1), 3, tiny(params, conv_blocks=5))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "nadam", "rmsprop", "sgd"])
def test_every_optimizer_compiles(params: Params, optimizer: str) -> None:
    model = architecture.build_model((12, 12, 1), 3, tiny(params))
    trainer = architecture.compile_model(model, tiny(params, optimizer=optimizer), steps_per_epoch=4)
    assert type(trainer.optimizer).__name__.lower() == optimizer
    assert trainer.output is model.get_layer(architecture.LOGITS).output
    assert trainer.loss.from_logits is True


def test_cosine_schedule_warms_up_then_decays(params: Params) -> None:
    settings = tiny(params, learning_rate=0.01, lr_schedule="cosine", epochs=4, warmup_epochs=1)
    schedule = architecture.learning_rate(settings, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 10, 25, 40)]
    assert rates[0] == pytest.approx(0.001)
    assert rates[1] == pytest.approx(0.01)
    assert rates[1] > rates[2] > rates[3]
    assert architecture.learning_rate(tiny(params, lr_schedule="constant", learning_rate=0.02), 10) == 0.02
