"""The runtime a training process runs in: threads, precision policy, seeds and op determinism, on any backend.

Keras' backend is already chosen when this module is imported (`image_classification.backend.use`);
each function acts on that backend only and imports it lazily, so a JAX or PyTorch process never
loads TensorFlow's runtime settings and the other way round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras

from image_classification.config import TrainParams

logger = logging.getLogger(__name__)


def configure_runtime(params: TrainParams, gpus: Sequence[object] | None = None) -> None:
    """Apply the thread counts and the precision policy; call before building the model.

    Thread counts can only change before the backend starts its runtime; a process that already ran
    ops keeps the counts it started with and a warning says so. JAX took its thread count at import
    (`backend.use`).

    Args:
        params: the train params.
        gpus: the GPUs to check mixed precision against; by default those the backend sees.

    Raises:
        ValueError: mixed precision was asked for and no GPU is visible.
    """
    name = keras.backend.backend()
    if name == "tensorflow":
        _tensorflow_threads(params)
    elif name == "torch":
        _torch_threads(params)
    if params.mixed_precision:
        gpus = visible_gpus() if gpus is None else gpus
        if not gpus:
            # On CPUs float16 arithmetic is emulated: it trains several times slower, not faster.
            raise ValueError(f"train.mixed_precision = true needs a GPU and {name} sees none; set it to false on CPUs")
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        keras.mixed_precision.set_global_policy("float32")


def visible_gpus() -> list[object]:
    """The GPUs the current backend can run on (an empty list on a CPU-only machine)."""
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return list(tf.config.list_physical_devices("GPU"))
    if name == "jax":
        import jax

        return [device for device in jax.devices() if device.platform == "gpu"]
    import torch

    return list(range(torch.cuda.device_count()))


def seed_everything(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy and the backend and, unless told otherwise, make the backend's ops deterministic.

    TensorFlow: op determinism, which Keras turns XLA off for, so a run with `train.jit_compile` passes
    `deterministic_ops=False`. PyTorch: `torch.use_deterministic_algorithms`. JAX on a CPU is
    deterministic already; on a GPU set `XLA_FLAGS=--xla_gpu_deterministic_ops=true`.
    """
    keras.utils.set_random_seed(seed)
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        if deterministic_ops:
            tf.config.experimental.enable_op_determinism()
        else:
            # The switch is process-wide; TensorFlow's public API can only turn it on.
            from tensorflow.python.framework import config as tf_config

            tf_config.disable_op_determinism()
    elif name == "torch":
        import torch

        torch.use_deterministic_algorithms(deterministic_ops)


def _tensorflow_threads(params: TrainParams) -> None:
    import tensorflow as tf

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


def _torch_threads(params: TrainParams) -> None:
    import torch

    if params.intra_op_threads:
        torch.set_num_threads(params.intra_op_threads)
    if params.inter_op_threads and torch.get_num_interop_threads() != params.inter_op_threads:
        try:
            torch.set_num_interop_threads(params.inter_op_threads)
        except RuntimeError:
            # PyTorch fixes the inter-op pool at its first parallel op.
            logger.warning(
                "train.inter_op_threads = %d ignored: PyTorch already started in this process", params.inter_op_threads
            )
