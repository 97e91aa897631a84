"""DVC stage `export`: write the TF Serving SavedModel and prove it matches the Keras model."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mlflow
import numpy as np

from stages import artifacts, cli, datasets, gate, registry, serving, tracking, trained
from stages.params import Params, flatten, load_params


def run(
    params: Params,
    model_dir: Path,
    test_path: Path,
    metrics_path: Path,
    statistics_path: Path,
    output: Path,
    card_path: Path,
    report_path: Path,
) -> dict:
    """Export the trained model to `output`, verify it, register it, promote it if it passes the gate, and describe it.

    The SavedModel is written beside `output` and moved into place only after it has been reloaded
    with `tf.saved_model.load` in a separate process and agrees with the Keras model on every test
    image: identical classes and probabilities within `export.tolerance`. Every verified model
    becomes a new version of the registered model; the `champion` alias moves to it only when the
    quality gate blesses it. The model card at `card_path` records the signature, class names, data
    version, test metrics (from `metrics_path`), MLflow run and the params that produced the model.

    Returns:
        The export report written to `report_path`.

    Raises:
        ValueError: the tracking server is unreachable, an input report is missing, or the reloaded
            SavedModel disagrees with the Keras model.
    """
    export, registry_params = params.export, params.registry
    tracking.configure()  # a malformed or unreachable store fails here, before any heavy work
    classifier = trained.load_model(model_dir)
    run_id = trained.run_id(model_dir)
    test_set = artifacts.load_dataset(test_path)
    datasets.validate(test_set)
    expected = classifier.predict(test_set.images, batch_size=256, verbose=0)
    test_accuracy = float((expected.argmax(axis=1) == test_set.labels).mean())
    test_digest = datasets.digest(test_set.images, test_set.labels)
    test_metrics = _read_report(metrics_path, "evaluate")
    data_version = _read_report(statistics_path, "prepare").get("data_version", {})

    with tracking.resume_run(run_id, source=trained.run_file(model_dir)):
        tracking.log_params({**flatten(export, prefix="export."), **flatten(registry_params, prefix="registry.")})
        with artifacts.atomic_path(output) as staged:
            try:
                serving.export_savedmodel(classifier, test_set.class_names, staged)
            except OSError as error:
                raise OSError(f"cannot write the SavedModel to {output}: {error}") from error
            reloaded = _predict_in_fresh_process(staged, test_set.images)
            agreement = serving.compare(expected, reloaded["probabilities"])
            names_match = bool(
                np.array_equal(
                    reloaded["class_name"].astype(str), np.asarray(test_set.class_names)[reloaded["class_id"]]
                )
            )
            if agreement.mismatched_classes or agreement.max_abs_difference > export.tolerance or not names_match:
                raise ValueError(
                    f"the reloaded SavedModel disagrees with the Keras model on {agreement.images} test images: "
                    f"{agreement.mismatched_classes} different classes, largest probability difference "
                    f"{agreement.max_abs_difference:.3g} (export.tolerance = {export.tolerance:g}), "
                    f"class names {'match' if names_match else 'do not match'}"
                )
            contract = serving.signature(staged)
            mlflow.log_artifacts(str(staged), f"savedmodel/{export.model_name}/{export.version}")
        current = registry.champion(registry_params.model_name)
        decision = gate.decide(
            test_accuracy,
            current.test_accuracy if current else None,
            registry_params.min_test_accuracy,
            registry_params.max_accuracy_drop,
        )
        reason = decision.reason
        if current and current.test_digest != test_digest:
            reason += f" (champion version {current.version} was measured on another test set)"
        version = registry.register(
            output,
            registry_params.model_name,
            registry.signature(test_set.images.shape[1:], serving.INPUT_NAME),
            test_set.images[:1],
            {
                registry.ACCURACY_TAG: str(test_accuracy),
                registry.TEST_DIGEST_TAG: test_digest,
                "blessed": str(decision.blessed).lower(),
                "blessed_reason": reason,
            },
        )
        if decision.blessed:
            registry.promote(registry_params.model_name, version)
        report = {
            "model_name": export.model_name,
            "version": export.version,
            "images_checked": agreement.images,
            "mismatched_classes": agreement.mismatched_classes,
            "max_abs_difference": agreement.max_abs_difference,
            "test_accuracy": round(test_accuracy, 6),
            "registered_model": registry_params.model_name,
            "registered_version": version,
            "previous_champion": current.version if current else None,
            "blessed": decision.blessed,
            "blessed_reason": reason,
        }
        mlflow.log_metrics(
            {"export_max_abs_difference": agreement.max_abs_difference, "blessed": int(decision.blessed)}
        )
        mlflow.set_tags(
            {
                "export.path": str(output),
                "export.version": str(export.version),
                "registry.version": str(version),
                "blessed": str(decision.blessed).lower(),
                "blessed_reason": reason,
            }
        )
        card = {
            "model_name": export.model_name,
            "version": export.version,
            "format": "TensorFlow SavedModel",
            "endpoints": [serving.ENDPOINT, "serving_default"],
            **contract,
            "class_names": list(test_set.class_names),
            "data": {
                "source": data_version.get("source"),
                "digest": data_version.get("digest"),
                "test_images": len(test_set),
                "test_digest": test_digest,
            },
            "test_metrics": test_metrics,
            "mlflow": {"run_id": run_id, "registered_model": registry_params.model_name, "registered_version": version},
            "params": {
                section: getattr(params, section).model_dump(mode="json")
                for section in ("data", "split", "train", "export")
            },
        }
        artifacts.write_json(card_path, card)
        mlflow.log_artifact(str(card_path), f"savedmodel/{export.model_name}")
        artifacts.write_json(report_path, report)
    return report


def _read_report(path: Path, stage: str) -> dict:
    try:
        return artifacts.read_json(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the {stage} stage's report ({error}); run `dvc repro {stage}`") from None


def _predict_in_fresh_process(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    # A fresh interpreter proves the SavedModel stands alone: nothing from this process's Keras
    # objects, custom layers or graph can leak into the reload.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(serving.predict_savedmodel, str(path), images).result()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.export", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by the train stage")
    parser.add_argument("--test", type=Path, required=True, help="test split (.npz) to verify the export on")
    parser.add_argument("--metrics", type=Path, required=True, help="test metrics written by evaluate (.json)")
    parser.add_argument("--data-statistics", type=Path, required=True, help="statistics written by prepare (.json)")
    parser.add_argument("--output", type=Path, required=True, help="SavedModel version folder to write")
    parser.add_argument("--card", type=Path, required=True, help="model card to write (.json)")
    parser.add_argument("--report", type=Path, required=True, help="export report to write (.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    report = run(
        params, args.model_dir, args.test, args.metrics, args.data_statistics, args.output, args.card, args.report
    )
    print(
        f"export: SavedModel -> {args.output}; reloaded in a fresh process, {report['images_checked']} test "
        f"images agree (max probability difference {report['max_abs_difference']:.2g})"
    )
    verdict = "blessed, now champion" if report["blessed"] else "not blessed, champion unchanged"
    print(
        f"export: registered {report['registered_model']} version {report['registered_version']}: "
        f"{verdict}: {report['blessed_reason']}"
    )


if __name__ == "__main__":
    sys.exit(cli.execute("export", main))
