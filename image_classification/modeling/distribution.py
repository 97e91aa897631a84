"""Training on more than one device or process, through the engines Keras supports (`train.distribution`).

- `none`: one process on the backend's default device.
- `mirrored`: `tf.distribute.MirroredStrategy` over every GPU TensorFlow sees on this machine (over
  its CPU devices when there is none), on the TensorFlow backend. Keras' `fit` splits each global
  batch of `train.batch_size` images across the replicas and sums their gradients.
- `multi_process`: `keras.distribution.DataParallel` across `train.num_processes` processes, on
  the JAX backend (`keras.distribution.initialize`, which starts `jax.distributed`: process 0 is the
  coordinator; on CPUs the gradients are all-reduced over Gloo). Every process feeds its own
  `batch_size / num_processes` images of each global batch (`input_pipeline.process_rows`) and
  holds a full copy of the variables.

In both, `train.batch_size` stays the global batch and the optimizer sees the mean gradient over
it, so one step is the step single-process training takes on that batch and the learning rate is
not scaled. Only the chief (process 0) writes outputs, logs to MLflow and checkpoints.

Multi-process TensorFlow (`MultiWorkerMirroredStrategy`) is not offered: Keras 3's `fit` fails
inside its trainer with it (keras-team/keras#20585).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from image_classification.config import TrainParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: its index among `num_processes`, and the strategy or mesh it trains under.

    `process_index` 0 is the chief. A run with `distribution: none` or `mirrored` is one process.
    """

    distribution: str = "none"
    process_index: int = 0
    num_processes: int = 1
    strategy: object | None = None  # the tf.distribute strategy for `mirrored`

    @property
    def is_chief(self) -> bool:
        return self.process_index == 0

    @property
    def replicas(self) -> int:
        """Model replicas that share each global batch (devices for `mirrored`, processes for `multi_process`)."""
        if self.strategy is not None:
            return int(self.strategy.num_replicas_in_sync)
        return self.num_processes

    def scope(self) -> contextlib.AbstractContextManager:
        """The context to build and compile the model in (the strategy's scope for `mirrored`)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def broadcast(self, value: int) -> int:
        """The chief's `value`, on every process (an integer the chief alone can decide, such as the resume epoch)."""
        if self.num_processes == 1:
            return value
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.int32(value), is_source=self.is_chief))

    def barrier(self, name: str) -> None:
        """Wait until every process reaches the barrier called `name`."""
        if self.num_processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)


def connect(settings: TrainParams, process_index: int = 0, coordinator_address: str | None = None) -> Cluster:
    """Join the training cluster `settings.distribution` asks for; call before building the model.

    Args:
        settings: the train params.
        process_index: this process' index, 0 for the chief (`multi_process` only).
        coordinator_address: HOST:PORT of process 0 (`multi_process` only).

    Raises:
        ValueError: `multi_process` without a coordinator address.
    """
    if settings.distribution == "mirrored":
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
        logger.info("MirroredStrategy over %s", ", ".join(device.name for device in devices))
        return Cluster("mirrored", strategy=strategy)
    if settings.distribution == "multi_process":
        if not coordinator_address:
            raise ValueError("distribution = multi_process needs the coordinator's HOST:PORT")
        import jax

        keras.distribution.initialize(
            job_addresses=coordinator_address, num_processes=settings.num_processes, process_id=process_index
        )
        # Each process feeds its own part of every global batch; Keras must not shard the dataset again.
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
        )
        return Cluster("multi_process", process_index, settings.num_processes)
    return Cluster()


@contextlib.contextmanager
def undistributed() -> Iterator[None]:
    """Build models outside any distribution inside this block (for the copy that is saved and logged)."""
    previous = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if previous is not None:
        keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        if previous is not None:
            keras.distribution.set_distribution(previous)


def plain_copy(model: keras.Model, build: Callable[[], keras.Model], cluster: Cluster) -> keras.Model:
    """`model` itself for one undistributed process; else a copy built outside the distribution, same weights.

    A model whose variables are replicated across processes cannot be saved by the chief alone
    (Keras would gather them from every process); its copy holds ordinary single-device variables.

    Args:
        model: the trained classifier.
        build: a function of no arguments that builds the same architecture.
        cluster: the cluster `model` was trained in.
    """
    if cluster.distribution == "none":
        return model
    weights: Sequence[np.ndarray] = model.get_weights()  # a replicated variable reads from this process' copy
    with undistributed():
        copy = build()
    copy.set_weights(weights)
    return copy
