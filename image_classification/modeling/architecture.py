"""The CNN, its optimizer, learning-rate schedule and loss, all built from `TrainParams`."""

from __future__ import annotations

import math

import keras
from keras import layers

from image_classification.config import TrainParams

# The last Dense layer's name: the training model ends here and computes its loss from these logits.
LOGITS = "logits"


def build_model(input_shape: tuple[int, int, int], num_classes: int, params: TrainParams) -> keras.Model:
    """Build the classifier with the Functional API.

    The model takes raw uint8 images and rescales them itself, so whatever serves it sees exactly
    what training saw. Each conv block doubles the filters of the previous one and halves the
    spatial size. It returns probabilities: a Dense layer named `LOGITS`, then a softmax. Train it
    through `compile_model`'s model, which ends at the logits.

    Raises:
        ValueError: when the images are too small for the requested number of blocks.
    """
    height, width, _ = input_shape
    smallest_side = min(height, width) // 2**params.conv_blocks
    if smallest_side < 1:
        raise ValueError(
            f"train.conv_blocks = {params.conv_blocks} halves {height}x{width} images to nothing; "
            f"use at most {int(math.log2(min(height, width)))} blocks for this image size"
        )
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if params.augment_translation > 0:
        x = layers.RandomTranslation(
            params.augment_translation,
            params.augment_translation,
            fill_mode="constant",
            seed=params.seed,
            name="augment_translation",
        )(x)
    for block in range(params.conv_blocks):
        filters = params.filters * 2**block
        for conv in range(params.convs_per_block):
            x = layers.Conv2D(
                filters,
                params.kernel_size,
                padding="same",
                use_bias=not params.batch_norm,
                name=f"block{block + 1}_conv{conv + 1}",
            )(x)
            if params.batch_norm:
                x = layers.BatchNormalization(
                    momentum=params.batch_norm_momentum, name=f"block{block + 1}_bn{conv + 1}"
                )(x)
            x = layers.Activation(params.activation, name=f"block{block + 1}_act{conv + 1}")(x)
        x = layers.MaxPooling2D(name=f"block{block + 1}_pool")(x)
    if params.pooling == "global_average":
        x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    if params.dense_units:
        x = layers.Dropout(params.dropout_rate, seed=params.seed, name="dense_dropout")(x)
        x = layers.Dense(params.dense_units, activation=params.activation, name="dense")(x)
    x = layers.Dropout(params.dropout_rate, seed=params.seed, name="head_dropout")(x)
    # float32 even under mixed precision: a float16 softmax rounds small probabilities to 0.
    logits = layers.Dense(num_classes, dtype="float32", name=LOGITS)(x)
    outputs = layers.Softmax(dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="image_classifier")


def learning_rate(params: TrainParams, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The constant rate, or a linear warm-up followed by cosine decay over all training steps."""
    if params.lr_schedule == "constant":
        return params.learning_rate
    warmup_steps = params.warmup_epochs * steps_per_epoch
    decay_steps = max(1, params.epochs * steps_per_epoch - warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=params.learning_rate / 10,
            decay_steps=decay_steps,
            warmup_target=params.learning_rate,
            warmup_steps=warmup_steps,
        )
    return keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps)


def compile_model(
    model: keras.Model, params: TrainParams, steps_per_epoch: int, steps_per_execution: int = 1
) -> keras.Model:
    """Compile the model that trains `model`: the same layers up to its logits, with the optimizer, loss and metric.

    The loss is computed from the logits (`from_logits=True`) on every backend. Keras' TensorFlow
    backend does so by itself behind a softmax output, but its JAX and PyTorch backends compute it
    from the probabilities clipped to [1e-7, 1 - 1e-7], where the gradient of a confidently wrong
    image is zero: on the embedded digits that cost 9 points of validation accuracy after 3 epochs.

    `steps_per_execution` is Keras' own: training steps per call of the compiled train function. The
    stages keep 1; `benchmarks.compile_options` measured more (16 halved the images per second).

    Returns:
        The compiled training model; its variables are `model`'s, so fitting it trains `model`.
    """
    rate = learning_rate(params, steps_per_epoch)
    optimizers = {
        "adam": lambda: keras.optimizers.Adam(rate),
        "adamw": lambda: keras.optimizers.AdamW(rate),
        "nadam": lambda: keras.optimizers.Nadam(rate),
        "rmsprop": lambda: keras.optimizers.RMSprop(rate),
        "sgd": lambda: keras.optimizers.SGD(rate, momentum=0.9, nesterov=True),
    }
    losses = {
        "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
        "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
        "categorical_focal_crossentropy": keras.losses.CategoricalFocalCrossentropy,
    }
    metric = (
        keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if params.loss.startswith("sparse_")
        else keras.metrics.CategoricalAccuracy(name="accuracy")
    )
    trainer = keras.Model(model.input, model.get_layer(LOGITS).output, name=f"{model.name}_logits")
    jit_compile = params.jit_compile
    if keras.backend.backend() == "jax":
        # JAX without jit runs op by op, several times slower, so it always compiles. Keras marks
        # RandomTranslation as not compilable for every backend because TensorFlow's XLA lacks its
        # image transform op; JAX's (`jax.scipy.ndimage.map_coordinates`) compiles.
        jit_compile = True
        for layer in trainer.layers:
            if isinstance(layer, layers.RandomTranslation):
                layer.supports_jit = True
    trainer.compile(
        optimizer=optimizers[params.optimizer](),
        loss=losses[params.loss](from_logits=True),
        metrics=[metric],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return trainer


def uses_one_hot_labels(params: TrainParams) -> bool:
    return not params.loss.startswith("sparse_")
