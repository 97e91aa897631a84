"""DVC stage `train`: fit the CNN on the train split and record the run in MLflow."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import mlflow
import tensorflow as tf

from stages import artifacts, cli, datasets, model, tracking, trained
from stages.params import Params, flatten, load_params

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def run(
    params: Params,
    train_path: Path,
    validation_path: Path,
    model_dir: Path,
    history_path: Path,
    summary_path: Path,
) -> dict:
    """Train the model, write it with the id of its MLflow run, its history and a summary.

    `params` is the whole file because the run records the data, split and train params that
    produced the model; only `train` and `mlflow` steer the training itself.

    Returns:
        The training summary written to `summary_path`.
    """
    tracking.configure()
    train_set = artifacts.load_dataset(train_path)
    validation_set = artifacts.load_dataset(validation_path)
    datasets.validate(train_set)
    datasets.validate(validation_set)
    if validation_set.class_names != train_set.class_names:
        raise ValueError(f"{validation_path} and {train_path} disagree on class names")
    if validation_set.images.shape[1:] != train_set.images.shape[1:]:
        raise ValueError(f"{validation_path} and {train_path} disagree on image shape")

    settings = params.train
    model.seed_everything(settings.seed)
    num_classes = len(train_set.class_names)
    classifier = model.build_model(train_set.images.shape[1:], num_classes, settings)
    steps_per_epoch = -(-len(train_set) // settings.batch_size)
    model.compile_model(classifier, settings, steps_per_epoch)
    one_hot = model.uses_one_hot_labels(settings)
    train_data = model.make_dataset(
        train_set.images, train_set.labels, num_classes, settings.batch_size, one_hot, shuffle_seed=settings.seed
    )
    validation_data = model.make_dataset(
        validation_set.images, validation_set.labels, num_classes, settings.batch_size, one_hot
    )

    data_digest = datasets.digest(train_set.images, train_set.labels, validation_set.images, validation_set.labels)
    logged_params = {
        key: value
        for key, value in flatten(params).items()
        if key.split(".")[0] in ("data", "split", "train", "mlflow")
    }
    changed = tracking.changed_params(logged_params, tracking.baseline_params(Path.cwd()))
    description = tracking.run_description(
        data_digest,
        {"train": len(train_set), "validation": len(validation_set)},
        num_classes,
        classifier.count_params(),
        changed,
    )
    with tracking.start_run(
        params.mlflow.experiment_name,
        tracking.run_tags(data_digest),
        run_name=tracking.run_name(changed),
        description=description,
    ) as run_id:
        tracking.log_params(logged_params)
        mlflow.log_metric("param_count", classifier.count_params())
        started = time.perf_counter()
        history = classifier.fit(
            train_data,
            validation_data=validation_data,
            epochs=settings.epochs,
            verbose=2,
            callbacks=_callbacks(settings.early_stopping_patience),
            shuffle=False,  # the tf.data pipeline shuffles, with the seed
        )
        train_seconds = time.perf_counter() - started
        rows = _history_rows(history.history)
        best = min(rows, key=lambda row: row["val_loss"])
        summary = {
            "param_count": classifier.count_params(),
            "epochs_run": len(rows),
            "best_epoch": best["epoch"],
            "best_val_accuracy": best["val_accuracy"],
            "train_seconds": round(train_seconds, 2),
        }
        mlflow.log_metrics({"train_seconds": summary["train_seconds"], "best_epoch": best["epoch"]})
        with artifacts.atomic_path(model_dir) as staged:
            trained.save(classifier, run_id, staged)
            mlflow.keras.log_model(
                classifier,
                name="model",
                signature=tracking.model_signature(train_set.images.shape[1:], num_classes),
                pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
            )
        artifacts.write_csv(history_path, rows, HISTORY_FIELDS)
        artifacts.write_json(summary_path, summary)
        mlflow.log_artifact(str(history_path), "training")
    return summary


class _EpochLogger(keras.callbacks.Callback):
    """Add the current learning rate to each epoch's logs and send them to the active MLflow run."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics({name: float(value) for name, value in logs.items()}, step=epoch + 1)


def _callbacks(patience: int) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [_EpochLogger()]
    if patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        )
    return callbacks


def _history_rows(history: dict[str, list[float]]) -> list[dict]:
    epochs = len(history["loss"])
    return [
        {
            "epoch": epoch + 1,
            **{name: round(float(history[name][epoch]), 6) for name in HISTORY_FIELDS[1:] if name in history},
        }
        for epoch in range(epochs)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--train", type=Path, required=True, help="train split (.npz)")
    parser.add_argument("--validation", type=Path, required=True, help="validation split (.npz)")
    parser.add_argument("--model-dir", type=Path, required=True, help="folder to write the model into")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch history to write (.csv)")
    parser.add_argument("--summary", type=Path, required=True, help="training summary to write (.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = run(params, args.train, args.validation, args.model_dir, args.history, args.summary)
    print(
        f"train: {summary['epochs_run']} epochs in {summary['train_seconds']:.1f} s, best epoch "
        f"{summary['best_epoch']} (validation accuracy {summary['best_val_accuracy']:.4f}) -> {args.model_dir}"
    )


if __name__ == "__main__":
    sys.exit(cli.execute("train", main))
