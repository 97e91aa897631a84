"""The train stage's work: fit the CNN on the train split and record the run in MLflow.

Training saves a checkpoint after every epoch outside DVC's outputs; when a run is killed, the next
`dvc repro` continues from the last completed epoch, in the same MLflow run, with the same result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from image_classification import artifacts
from image_classification import backend as backend_lib
from image_classification.config import Params, TrainParams, flatten
from image_classification.data import dataset as dataset_lib
from image_classification.data import shards, split
from image_classification.data.dataset import DataVersion
from image_classification.modeling import (
    architecture,
    checkpoints,
    distribution,
    input_pipeline,
    runtime,
    trained_model,
)
from image_classification.tracking import runs, signatures, store

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.npz"
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def train_model(
    params: Params,
    dataset_dir: Path,
    membership_path: Path,
    model_dir: Path,
    history_path: Path,
    summary_path: Path,
    timing_path: Path,
    checkpoint_dir: Path,
    data_statistics: Path | None = None,
    process_index: int = 0,
    coordinator_address: str | None = None,
) -> dict:
    """Train the model, write it with the id of its MLflow run, its history, summary and timing.

    `params` is the whole file because the run records the data, split and train params that
    produced the model; only `train` and `mlflow` steer the training itself. The train and
    validation images are streamed from the prepared shards (`dataset_dir`), the rows the split's
    membership names. `data_statistics` is the prepare stage's report: its `data_version` (the DVC
    hash of the source data, its source and size) is logged as the run's training dataset; without
    it the digest of the train and validation rows stands in.

    With `train.distribution: multi_process` every process calls this, with its `process_index` and
    the chief's `coordinator_address`; only the chief (index 0) touches MLflow, the checkpoint and
    the output paths, and the others return once it has written them. A resumed run needs the
    checkpoint folder on every process (shared, as on one machine): the chief decides the epoch to
    resume from, and the others read the same checkpoint.

    Returns:
        The training summary written to `summary_path` (on the chief; an empty dict on the others).

    Raises:
        ValueError: inconsistent inputs, a damaged shard, or a loss that became NaN or infinite.
    """
    settings = params.train
    cluster = distribution.connect(settings, process_index, coordinator_address)
    if cluster.is_chief:
        store.configure()  # a malformed or unreachable store fails here, before any heavy work
    data_version = (
        DataVersion.from_json(artifacts.read_json(data_statistics).get("data_version", {}), str(data_statistics))
        if data_statistics
        else None
    )
    with shards.open_dataset(dataset_dir, verify=True) as data:
        members = split.read_membership(membership_path, data, ("train", "validation"))
        train_rows, validation_rows = members["train"], members["validation"]
        dataset_lib.validate_labels(data.labels[train_rows], data.class_names, f"{data.folder} (train split)")
        num_classes = len(data.class_names)
        data_digest = dataset_lib.digest(
            np.frombuffer(split.split_digest(data, train_rows).encode("ascii"), dtype=np.uint8),
            np.frombuffer(split.split_digest(data, validation_rows).encode("ascii"), dtype=np.uint8),
        )
        logged_params = {
            key: value
            for key, value in flatten(params).items()
            if key.split(".")[0] in ("data", "split", "train", "mlflow")
        }
        warning = input_pipeline.few_updates_warning(len(train_rows), settings.batch_size, cluster.num_processes)
        if warning and cluster.is_chief:
            logger.warning(warning)
        checkpoint_path = checkpoint_dir / CHECKPOINT_FILE
        key = checkpoints.checkpoint_key(logged_params, data_digest)
        previous = _resume_point(checkpoint_path, key, cluster)
        model, trainer = build_compiled_model(data.image_shape, num_classes, len(train_rows), settings, cluster)
        if previous is not None:
            with cluster.scope():  # the optimizer's variables are created here, mirrored like the model's
                checkpoints.restore(trainer, previous.variables)
            logger.info("resuming from %s after epoch %d of %d", checkpoint_path, previous.epoch, settings.epochs)
        first_epoch = previous.epoch if previous is not None else 0
        if not cluster.is_chief:
            if first_epoch < settings.epochs:
                fit(trainer, data, train_rows, validation_rows, settings, _shared_callbacks(settings), first_epoch,
                    verbose=0, cluster=cluster)  # fmt: skip
            cluster.barrier("outputs written")
            return {}

        changed = runs.changed_params(logged_params, runs.baseline_params(Path.cwd()))
        description = runs.run_description(
            data_digest,
            {"train": len(train_rows), "validation": len(validation_rows)},
            num_classes,
            model.count_params(),
            changed,
        )
        name = runs.run_name(changed, runs.git_commit(Path.cwd()), data_version.digest if data_version else data_digest)
        with _mlflow_run(params, data_digest, previous, name, description) as run_id:
            runs.log_params(logged_params)
            mlflow.set_tags(backend_lib.describe(settings.backend))
            if previous is None:
                _log_dataset(data, len(train_rows), data_version, data_digest)
            mlflow.log_metric("param_count", model.count_params())
            checkpoint = previous or checkpoints.Checkpoint(key=key, run_id=run_id)
            if first_epoch < settings.epochs:
                fit(
                    trainer,
                    data,
                    train_rows,
                    validation_rows,
                    settings,
                    training_callbacks(settings, checkpoint_path, checkpoint),
                    first_epoch,
                    cluster=cluster,
                )
            rows = [_history_row(row) for row in checkpoint.history]
            best = min(rows, key=lambda row: row["val_loss"])
            summary = {
                "param_count": model.count_params(),
                "epochs_run": len(rows),
                "best_epoch": best["epoch"],
                "best_val_accuracy": best["val_accuracy"],
            }
            timing = {
                "train_seconds": round(checkpoint.seconds, 2),
                "seconds_per_epoch": round(checkpoint.seconds / len(rows), 3),
                "resumed_after_epoch": first_epoch,
            }
            mlflow.log_metrics({"train_seconds": timing["train_seconds"], "best_epoch": best["epoch"]})
            model = distribution.plain_copy(
                model, lambda: architecture.build_model(tuple(data.image_shape), num_classes, settings), cluster
            )
            with artifacts.atomic_path(model_dir) as staged:
                trained_model.save(model, run_id, staged)
                mlflow.keras.log_model(
                    model,
                    name="model",
                    signature=signatures.keras_signature(data.image_shape, num_classes),
                    pip_requirements=[
                        f"keras=={keras.__version__}",
                        # Without a local label (`+cpu`): PyPI hosts only the public version.
                        f"{backend_lib.PACKAGES[settings.backend][0]}=="
                        f"{backend_lib.version(settings.backend).split('+')[0]}",
                    ],
                )
            artifacts.write_csv(history_path, rows, HISTORY_FIELDS)
            artifacts.write_json(summary_path, summary)
            artifacts.write_json(timing_path, timing)
            mlflow.log_artifact(str(history_path), "training")
        checkpoint_path.unlink(missing_ok=True)
        cluster.barrier("outputs written")
        return summary


def _resume_point(path: Path, key: str, cluster: distribution.Cluster) -> checkpoints.Checkpoint | None:
    """The checkpoint to resume from, the chief's decision on every process; None to train from scratch.

    Raises:
        ValueError: a process other than the chief cannot read the checkpoint the chief resumes from.
    """
    previous = checkpoints.load(path, key)
    if cluster.is_chief and previous is not None and not runs.run_exists(previous.run_id):
        logger.warning("checkpoint %s names a run no longer in MLflow; training from scratch", path)
        previous = None
    epoch = cluster.broadcast(previous.epoch if previous is not None else 0)
    if epoch == 0:
        return None
    if previous is None or previous.epoch != epoch:
        raise ValueError(
            f"process {cluster.process_index} cannot read the checkpoint {path} at epoch {epoch} that process 0 "
            "resumes from; every process needs the same checkpoint folder (shared storage), or delete it to start over"
        )
    return previous


def build_compiled_model(
    image_shape: Sequence[int],
    num_classes: int,
    train_images: int,
    settings: TrainParams,
    cluster: distribution.Cluster | None = None,
) -> tuple[keras.Model, keras.Model]:
    """Configure the backend, seed it, and build the model for `train_images` images of `image_shape`.

    Returns:
        The classifier (uint8 images to probabilities), and the compiled model that trains it
        (`architecture.compile_model`: the same variables, ending at the logits).

    Raises:
        ValueError: params this machine or these images cannot honour.
    """
    runtime.configure_runtime(settings)
    runtime.seed_everything(settings.seed, deterministic_ops=not settings.jit_compile)
    cluster = cluster or distribution.Cluster()
    with cluster.scope():
        model = architecture.build_model(tuple(image_shape), num_classes, settings)
        trainer = architecture.compile_model(
            model, settings, input_pipeline.steps_per_epoch(train_images, settings.batch_size, cluster.num_processes)
        )
    return model, trainer


def training_callbacks(
    settings: TrainParams, checkpoint_path: Path, checkpoint: checkpoints.Checkpoint
) -> list[keras.callbacks.Callback]:
    """The stage's callbacks: MLflow logging, the divergence check, early stopping, the checkpoint.

    Expects an active MLflow run.
    """
    shared = _shared_callbacks(settings)
    early_stopping = next((item for item in shared if isinstance(item, keras.callbacks.EarlyStopping)), None)
    return [_EpochLogger(), *shared, checkpoints.EpochCheckpoint(checkpoint_path, checkpoint, early_stopping)]


def _shared_callbacks(settings: TrainParams) -> list[keras.callbacks.Callback]:
    """The callbacks every training process runs (the chief adds MLflow logging and the checkpoint)."""
    callbacks: list[keras.callbacks.Callback] = [_StopOnNonFiniteLoss(settings.learning_rate)]
    if settings.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=settings.early_stopping_patience, restore_best_weights=True
            )
        )
    return callbacks


def fit(
    model: keras.Model,
    data: shards.ShardedDataset,
    train_rows: np.ndarray,
    validation_rows: np.ndarray | None,
    settings: TrainParams,
    callbacks: Sequence[keras.callbacks.Callback],
    first_epoch: int = 0,
    verbose: int = 2,
    cluster: distribution.Cluster | None = None,
) -> keras.callbacks.History:
    """The stage's training loop: epochs `first_epoch` .. `settings.epochs - 1`, validated after each.

    `model` is the compiled training model (`build_compiled_model`'s second value).

    Batches of `train_rows` (and `validation_rows`) are streamed from the shards of `data`. The
    benchmark calls this too, so what it times is what `dvc repro` runs.
    """
    num_classes = len(data.class_names)
    one_hot = architecture.uses_one_hot_labels(settings)
    cluster = cluster or distribution.Cluster()
    part = {"process_index": cluster.process_index, "num_processes": cluster.num_processes}
    train_data = input_pipeline.make_training_dataset(
        data, train_rows, num_classes, settings.batch_size, settings.seed, first_epoch, settings.epochs, one_hot, **part
    )
    validation_data = None
    if validation_rows is not None:
        validation_data = input_pipeline.make_dataset(
            data, validation_rows, num_classes, settings.batch_size, one_hot, **part
        )
    return model.fit(
        train_data,
        validation_data=validation_data,
        epochs=settings.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=input_pipeline.steps_per_epoch(len(train_rows), settings.batch_size, cluster.num_processes),
        verbose=verbose,
        callbacks=list(callbacks),
        shuffle=False,  # make_training_dataset shuffles, as a function of seed and epoch
    )


@contextlib.contextmanager
def _mlflow_run(
    params: Params, data_digest: str, previous: checkpoints.Checkpoint | None, run_name: str | None, description: str
) -> Iterator[str]:
    """A new run, or the run of the checkpoint that training resumes from."""
    if previous is not None:
        with runs.resume_run(previous.run_id, source="the training checkpoint") as run_id:
            mlflow.set_tag("resumed_after_epoch", str(previous.epoch))
            yield run_id
    else:
        tags = runs.run_tags(data_digest)
        with runs.start_run(params.mlflow.experiment_name, tags, run_name=run_name, description=description) as run_id:
            yield run_id


class _EpochLogger(keras.callbacks.Callback):
    """Add the current learning rate to each epoch's logs and send them to the active MLflow run."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch + 1)


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Fail the run, before the epoch is checkpointed, when the loss is NaN or infinite."""

    def __init__(self, learning_rate: float) -> None:
        super().__init__()
        self.learning_rate = learning_rate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name in ("loss", "val_loss"):
            value = float((logs or {}).get(name, 0.0))
            if not math.isfinite(value):
                raise ValueError(
                    f"training diverged: {name} became {value} in epoch {epoch + 1}; lower "
                    f"train.learning_rate (now {self.learning_rate:g}) or turn train.batch_norm on"
                )


def _log_dataset(data: shards.ShardedDataset, images: int, version: DataVersion | None, data_digest: str) -> None:
    """Log the source data as the run's training input, with DVC's hash of it as the digest.

    MLflow is given the data's description (source, digest, schema), not its arrays
    (`mlflow.data.meta_dataset.MetaDataset`), which would need them in memory.
    """
    if version is None:
        version = DataVersion("arrays", "train split", data_digest[:32], 1, 0)
    origin = Path(version.path).resolve().as_uri() if version.local else version.path
    with warnings.catch_warnings():
        # MLflow 3.17 registers its local-file source class twice and warns that the URI is ambiguous.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(origin)
    dataset = MetaDataset(
        source, name=f"{version.source}:{version.path}", digest=version.digest,
        schema=signatures.images_input(data.image_shape),
    )  # fmt: skip
    size = {"images": str(images), "files": str(version.files), "bytes": str(version.bytes)}
    mlflow.log_input(dataset, context="training", tags={"source": version.source, **size})
    mlflow.set_tags({"data.version": version.digest, "data.source": f"{version.source}:{version.path}"})


def _history_row(row: dict[str, float]) -> dict[str, float]:
    return {"epoch": int(row["epoch"]), **{name: round(row[name], 6) for name in HISTORY_FIELDS[1:] if name in row}}
