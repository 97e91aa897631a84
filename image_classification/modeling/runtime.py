"""The TensorFlow runtime a training process runs in: threads, precision policy, seeds and op determinism."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import tensorflow as tf

from image_classification.config import TrainParams

logger = logging.getLogger(__name__)


def configure_runtime(params: TrainParams, gpus: Sequence[object] | None = None) -> None:
    """Apply the thread counts and the precision policy; call before building the model.

    Thread counts can only change before TensorFlow starts its runtime; a process that already ran
    TensorFlow ops keeps the counts it started with and a warning says so.

    Args:
        params: the train params.
        gpus: the GPUs to check mixed precision against; by default those TensorFlow sees.

    Raises:
        ValueError: mixed precision was asked for and no GPU is visible.
    """
    for name, setter, getter in (
        ("intra_op_threads", tf.config.threading.set_intra_op_parallelism_threads,
         tf.config.threading.get_intra_op_parallelism_threads),
        ("inter_op_threads", tf.config.threading.set_inter_op_parallelism_threads,
         tf.config.threading.get_inter_op_parallelism_threads),
    ):  # fmt: skip
        wanted = getattr(params, name)
        if wanted and getter() != wanted:
            try:
                setter(wanted)
            except RuntimeError:
                logger.warning("train.%s = %d ignored: TensorFlow already started in this process", name, wanted)
    if params.mixed_precision:
        gpus = tf.config.list_physical_devices("GPU") if gpus is None else gpus
        if not gpus:
            # On CPUs float16 arithmetic is emulated: it trains several times slower, not faster.
            raise ValueError(
                "train.mixed_precision = true needs a GPU and TensorFlow sees none; set it to false on CPUs"
            )
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        keras.mixed_precision.set_global_policy("float32")


def seed_everything(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow and, unless told otherwise, make TensorFlow ops deterministic.

    Keras turns XLA off while op determinism is on, so a run with `train.jit_compile` passes
    `deterministic_ops=False`.
    """
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    else:
        # The switch is process-wide; TensorFlow's public API can only turn it on.
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
