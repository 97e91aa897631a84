"""The export stage's work: write the TF Serving SavedModel, prove it matches Keras, register it, gate it, describe it.

Each job is one function below; `export_model` runs them in order inside the model's MLflow run.
The test accuracy the gate and the model card use is the one the evaluate stage wrote: one figure,
one source.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np

from image_classification import artifacts
from image_classification.config import ExportParams, Params, RegistryParams, flatten
from image_classification.data import shards, split
from image_classification.data.dataset import DataVersion
from image_classification.modeling import trained_model
from image_classification.serving import parity, savedmodel
from image_classification.serving.contract import ENDPOINT
from image_classification.tracking import gate, registry, runs, signatures, store


@dataclass(frozen=True)
class SplitRows:
    """The test rows of the prepared dataset, read a batch at a time."""

    data: shards.ShardedDataset
    rows: np.ndarray

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.data.class_names

    def __len__(self) -> int:
        return len(self.rows)


def export_model(
    params: Params,
    model_dir: Path,
    dataset_dir: Path,
    membership_path: Path,
    metrics_path: Path,
    statistics_path: Path,
    output: Path,
    card_path: Path,
    report_path: Path,
    fresh_process: parity.FreshProcessCheck | None = None,
) -> dict:
    """Export the trained model to `output`, verify it, register it, promote it if it passes the gate, and describe it.

    Args:
        params: the whole params file; the model card records the sections that produced the model.
        model_dir: the train stage's folder (the Keras model and its MLflow run id).
        dataset_dir: the prepared dataset (`shards`); the SavedModel is checked on its test rows.
        membership_path: the split's membership (`split.write_membership`), naming the test rows.
        metrics_path: the evaluate stage's metrics (.json); its `accuracy` is the gate's test accuracy.
        statistics_path: the prepare stage's statistics (.json), for the data version.
        output: the SavedModel version folder to write, `<base>/<model_name>/<integer version>`.
        card_path: the model card to write (.json).
        report_path: the export report to write (.json).
        fresh_process: the parity check's process, already started on the same model, dataset and
            membership (the export stage starts it before importing TensorFlow); None starts one here.

    Returns:
        The export report written to `report_path`.

    Raises:
        ValueError: the tracking store is unusable, an input report is missing or describes another
            test set, or the reloaded SavedModel disagrees with the Keras model.
        OSError: the SavedModel cannot be written.
    """
    store.configure()  # a malformed or unreachable store fails here, before any heavy work
    export, registry_params = params.export, params.registry
    with contextlib.ExitStack() as stack:
        if fresh_process is None:
            fresh_process = stack.enter_context(
                parity.FreshProcessCheck(
                    params.train.backend, params.train.intra_op_threads, model_dir, dataset_dir, membership_path
                )
            )
        data = stack.enter_context(shards.open_dataset(dataset_dir, verify=True))
        test_set = SplitRows(data, split.read_membership(membership_path, data, ("test",))["test"])
        model = trained_model.load_model(model_dir)
        run_id = trained_model.run_id(model_dir)
        test_metrics = read_report(metrics_path, "evaluate")
        test_accuracy = evaluated_accuracy(test_metrics, len(test_set), metrics_path)
        data_version = DataVersion.from_json(
            read_report(statistics_path, "prepare").get("data_version", {}), str(statistics_path)
        )
        test_digest = split.split_digest(test_set.data, test_set.rows)
        with runs.resume_run(run_id, source=trained_model.run_file(model_dir)):
            runs.log_params({**flatten(export, prefix="export."), **flatten(registry_params, prefix="registry.")})
            agreement, contract = write_verified_savedmodel(
                model, fresh_process, params.train.backend, test_set, output, export.tolerance
            )
            report = register_and_describe(
                params, output, run_id, test_set, test_metrics, test_accuracy, test_digest, data_version,
                agreement, contract, card_path, report_path,
            )  # fmt: skip
        return report


def register_and_describe(
    params: Params, output: Path, run_id: str, test_set: SplitRows, test_metrics: dict, test_accuracy: float,
    test_digest: str, data_version: DataVersion, agreement: savedmodel.Agreement, contract: dict, card_path: Path,
    report_path: Path,
) -> dict:  # fmt: skip
    """Log the verified SavedModel, register it, apply the gate, write the model card and the report.

    Expects the model's MLflow run to be active.
    """
    export, registry_params = params.export, params.registry
    mlflow.log_artifacts(str(output), f"savedmodel/{export.model_name}/{export.version}")
    current = registry.champion(registry_params.model_name)
    decision = judge(test_accuracy, test_digest, current, registry_params)
    version = register_version(output, registry_params.model_name, test_set, test_accuracy, test_digest, decision)
    if decision.blessed:
        registry.promote(registry_params.model_name, version)
    report = {
        "model_name": export.model_name,
        "version": export.version,
        "checked_against": params.train.backend,
        "images_checked": agreement.images,
        "mismatched_classes": agreement.mismatched_classes,
        "max_abs_difference": agreement.max_abs_difference,
        "test_accuracy": round(test_accuracy, 6),
        "registered_model": registry_params.model_name,
        "registered_version": version,
        "previous_champion": current.version if current else None,
        "blessed": decision.blessed,
        "blessed_reason": decision.reason,
    }
    log_outcome(output, export, version, agreement, decision)
    card = model_card(params, contract, test_set, data_version, test_metrics, test_digest, run_id, version)
    artifacts.write_json(card_path, card)
    mlflow.log_artifact(str(card_path), f"savedmodel/{export.model_name}")
    artifacts.write_json(report_path, report)
    return report


def read_report(path: Path, stage: str) -> dict:
    """Read the JSON report an earlier stage wrote.

    Raises:
        ValueError: the file is missing or unreadable; the message names the stage to rerun.
    """
    try:
        return artifacts.read_json(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the {stage} stage's report ({error}); run `dvc repro {stage}`") from None


def evaluated_accuracy(test_metrics: dict, test_images: int, metrics_path: Path) -> float:
    """The test accuracy evaluate wrote, checked to be about this test split.

    Raises:
        ValueError: the metrics lack the accuracy or count another number of test images.
    """
    if not isinstance(test_metrics.get("accuracy"), int | float) or test_metrics.get("images") != test_images:
        raise ValueError(
            f"{metrics_path}: holds no test accuracy for the {test_images} images of the test split "
            f"(accuracy {test_metrics.get('accuracy')!r} on {test_metrics.get('images')!r} images); "
            "run `dvc repro evaluate`"
        )
    return float(test_metrics["accuracy"])


def write_verified_savedmodel(
    model: keras.Model,
    fresh_process: parity.FreshProcessCheck,
    training_backend: str,
    test_set: SplitRows,
    output: Path,
    tolerance: float,
) -> tuple[savedmodel.Agreement, dict]:
    """Write the SavedModel to `output` only once a fresh process has reloaded it and it agrees with Keras.

    The SavedModel is written from `model` (Keras on TensorFlow). `fresh_process`, on the backend that
    trained the model, runs the test rows through the reloaded SavedModel and through the `.keras`
    model (`parity.FreshProcessCheck`). Agreement means identical classes and class names on every
    test image and probabilities within `tolerance`. Nothing is left at `output` when the check fails.

    Returns:
        The agreement measured, and the SavedModel's signature as plain data (`savedmodel.signature`).

    Raises:
        ValueError: the reloaded SavedModel disagrees with the Keras model.
        OSError: the SavedModel cannot be written (a full disk, for example).
    """
    with artifacts.atomic_path(output) as staged:
        try:
            savedmodel.export_savedmodel(model, test_set.class_names, staged)
        except OSError as error:
            raise OSError(f"cannot write the SavedModel to {output}: {error}") from error
        reloaded = fresh_process.check(staged)
        if len(reloaded["expected"]) != len(test_set):
            raise ValueError(
                f"the parity check ran {len(reloaded['expected'])} test images, the test split has {len(test_set)}"
            )
        agreement = savedmodel.compare(reloaded["expected"], reloaded["probabilities"])
        names_match = bool(
            [name.decode("utf-8") for name in reloaded["class_name"]]
            == [test_set.class_names[class_id] for class_id in reloaded["class_id"]]
        )
        if agreement.mismatched_classes or agreement.max_abs_difference > tolerance or not names_match:
            raise ValueError(
                f"the reloaded SavedModel disagrees with the Keras model on {training_backend} on {agreement.images} "
                f"test images: {agreement.mismatched_classes} different classes, largest probability difference "
                f"{agreement.max_abs_difference:.3g} (export.tolerance = {tolerance:g}), "
                f"class names {'match' if names_match else 'do not match'}"
            )
        contract = savedmodel.signature(staged)
    return agreement, contract


def judge(
    test_accuracy: float, test_digest: str, current: registry.Champion | None, registry_params: RegistryParams
) -> gate.Decision:
    """Apply the quality gate against the current champion, noting when it was measured on another test set."""
    decision = gate.decide(
        test_accuracy,
        current.test_accuracy if current else None,
        registry_params.min_test_accuracy,
        registry_params.max_accuracy_drop,
    )
    if current and current.test_digest != test_digest:
        reason = f"{decision.reason} (champion version {current.version} was measured on another test set)"
        return gate.Decision(decision.blessed, reason)
    return decision


def register_version(
    output: Path, name: str, test_set: SplitRows, test_accuracy: float, test_digest: str, decision: gate.Decision
) -> int:
    """Add the SavedModel at `output` as a new version of registered model `name`, tagged with the gate's verdict.

    Returns:
        The new version number.
    """
    return registry.register(
        output,
        name,
        signatures.serving_signature(test_set.data.image_shape),
        test_set.data.read(test_set.rows[:1]),
        {
            registry.ACCURACY_TAG: str(test_accuracy),
            registry.TEST_DIGEST_TAG: test_digest,
            "blessed": str(decision.blessed).lower(),
            "blessed_reason": decision.reason,
        },
    )


def log_outcome(
    output: Path, export: ExportParams, version: int, agreement: savedmodel.Agreement, decision: gate.Decision
) -> None:
    """Record the parity check, the registered version and the gate's verdict on the active run."""
    mlflow.log_metrics({"export_max_abs_difference": agreement.max_abs_difference, "blessed": int(decision.blessed)})
    mlflow.set_tags(
        {
            "export.path": str(output),
            "export.version": str(export.version),
            "registry.version": str(version),
            "blessed": str(decision.blessed).lower(),
            "blessed_reason": decision.reason,
        }
    )


def model_card(
    params: Params,
    contract: dict,
    test_set: SplitRows,
    data_version: DataVersion,
    test_metrics: dict,
    test_digest: str,
    run_id: str,
    registered_version: int,
) -> dict:
    """The model card: format, signature, class names, data version, test metrics, MLflow run and params."""
    return {
        "model_name": params.export.model_name,
        "version": params.export.version,
        "format": "TensorFlow SavedModel",
        "endpoints": [ENDPOINT, "serving_default"],
        **contract,
        "class_names": list(test_set.class_names),
        "data": {
            "source": data_version.source,
            "digest": data_version.digest,
            "test_images": len(test_set),
            "test_digest": test_digest,
        },
        "test_metrics": test_metrics,
        "mlflow": {
            "run_id": run_id,
            "registered_model": params.registry.model_name,
            "registered_version": registered_version,
        },
        "params": {
            section: getattr(params, section).model_dump(mode="json")
            for section in ("data", "split", "train", "export")
        },
    }
