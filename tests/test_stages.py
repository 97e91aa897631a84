"""The stage functions chained in-process on tiny data, as DVC would chain their files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from stages import artifacts, evaluate, export, prepare, samples, serving, split, train, trained
from stages.params import Params, parse_params
from tests.conftest import free_port, merged

pytestmark = pytest.mark.slow


def run_pipeline(params: Params, root: Path) -> dict[str, Path]:
    paths = {
        "dataset": root / "data/prepared/dataset.npz",
        "statistics": root / "reports/data/statistics.json",
        "train": root / "data/split/train.npz",
        "validation": root / "data/split/validation.npz",
        "test": root / "data/split/test.npz",
        "split_report": root / "reports/data/split.json",
        "model": root / "models/trained",
        "history": root / "reports/train/history.csv",
        "summary": root / "reports/train/summary.json",
        "timing": root / "reports/train/timing.json",
        "checkpoints": root / "checkpoints/train",
        "metrics": root / "reports/evaluate/metrics.json",
        "per_class": root / "reports/evaluate/per_class.csv",
        "confusion": root / "reports/evaluate/confusion.csv",
        "figure": root / "reports/evaluate/confusion_matrix.png",
        "savedmodel": root / "models/serving/digits/1",
        "card": root / "models/serving/digits/model_card.json",
        "export_report": root / "reports/export/report.json",
    }
    prepare.run(params.data, paths["dataset"], paths["statistics"])
    split.run(
        params.split,
        paths["dataset"],
        {name: paths[name] for name in ("train", "validation", "test")},
        paths["split_report"],
    )
    train.run(
        params,
        paths["train"],
        paths["validation"],
        paths["model"],
        paths["history"],
        paths["summary"],
        paths["timing"],
        paths["checkpoints"],
    )
    evaluate.run(
        params.evaluate,
        paths["model"],
        paths["test"],
        paths["metrics"],
        paths["per_class"],
        paths["confusion"],
        paths["figure"],
    )
    export_run(params, paths, paths["savedmodel"], paths["export_report"], paths["card"])
    return paths


def export_run(params: Params, paths: dict[str, Path], output: Path, report: Path, card: Path | None = None) -> dict:
    """The export stage on the pipeline's model, test split and reports, writing to `output`."""
    return export.run(
        params,
        paths["model"],
        paths["test"],
        paths["metrics"],
        paths["statistics"],
        output,
        card or output.parent / "model_card.json",
        report,
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict[str, Path], str]:
    from stages.params import parse_params
    from tests.conftest import TINY_OVERRIDES, merged, raw_params

    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for variable in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
            patch.delenv(variable, raising=False)
        params = parse_params(merged(raw_params(), TINY_OVERRIDES))
        paths = run_pipeline(params, tmp_path_factory.mktemp("first"))
    return params, paths, uri


def test_prepare_and_split_outputs(pipeline) -> None:
    _, paths, _ = pipeline
    statistics = artifacts.read_json(paths["statistics"])
    assert statistics["images"] == 300
    assert sum(statistics["count_per_class"].values()) == 300
    report = artifacts.read_json(paths["split_report"])
    assert {name: part["images"] for name, part in report["splits"].items()} == {
        "train": 210,
        "validation": 45,
        "test": 45,
    }
    hashes = [
        {image.tobytes() for image in artifacts.load_dataset(paths[name]).images}
        for name in ("train", "validation", "test")
    ]
    train_hashes, validation_hashes, test_hashes = hashes
    assert not train_hashes & validation_hashes
    assert not train_hashes & test_hashes
    assert not validation_hashes & test_hashes


def test_one_mlflow_run_holds_everything(pipeline) -> None:
    params, paths, uri = pipeline
    client = MlflowClient(uri)
    run_id = trained.run_id(paths["model"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params["train.learning_rate"] == str(params.train.learning_rate)
    assert run.data.params["split.seed"] == str(params.split.seed)
    assert run.data.params["evaluate.batch_size"] == str(params.evaluate.batch_size)
    assert run.data.params["export.model_name"] == "digits"
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [metric.step for metric in history] == [1, 2]
    metrics = artifacts.read_json(paths["metrics"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert run.data.metrics["test_f1_macro"] == pytest.approx(metrics["f1_macro"], abs=1e-6)
    assert len(run.data.tags["data.digest"]) == 64
    artifacts_logged = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts_logged
    logged_models = client.search_logged_models([run.info.experiment_id])
    assert sorted(logged.name for logged in logged_models) == ["model", "registered_model"]
    assert {logged.source_run_id for logged in logged_models} == {run_id}
    assert run.data.params["registry.model_name"] == params.registry.model_name
    description = run.data.tags["mlflow.note.content"]
    assert f"Data {run.data.tags['data.digest'][:12]}: 210 train, 45 validation images, 10 classes." in description
    assert f"Model: {artifacts.read_json(paths['summary'])['param_count']:,} parameters." in description
    assert {item.path for item in client.list_artifacts(run_id, "savedmodel/digits/1")} >= {
        "savedmodel/digits/1/saved_model.pb",
        "savedmodel/digits/1/variables",
    }


def test_outputs_for_dvc_metrics_and_plots(pipeline) -> None:
    _, paths, _ = pipeline
    metrics = artifacts.read_json(paths["metrics"])
    assert set(metrics) == {"accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "images"}
    assert 0 <= metrics["accuracy"] <= 1
    history = paths["history"].read_text().splitlines()
    assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate"
    assert len(history) == 3
    confusion = paths["confusion"].read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) == 46
    assert paths["figure"].read_bytes().startswith(b"\x89PNG")


def test_checkpoint_is_removed_after_success(pipeline) -> None:
    _, paths, _ = pipeline
    assert not (paths["checkpoints"] / train.CHECKPOINT_FILE).exists()
    timing = artifacts.read_json(paths["timing"])
    assert timing["train_seconds"] > 0
    assert timing["resumed_after_epoch"] == 0


def test_savedmodel_matches_keras(pipeline) -> None:
    _, paths, _ = pipeline
    report = artifacts.read_json(paths["export_report"])
    assert report["mismatched_classes"] == 0
    assert report["max_abs_difference"] <= 1e-5
    test_set = artifacts.load_dataset(paths["test"])
    outputs = serving.predict_savedmodel(paths["savedmodel"], test_set.images)
    expected = trained.load_model(paths["model"]).predict(test_set.images, verbose=0)
    assert np.array_equal(outputs["class_id"], expected.argmax(axis=1))
    assert not list(paths["savedmodel"].parent.glob(".*.tmp"))


def test_rerun_gives_identical_metrics(pipeline, tmp_path: Path) -> None:
    params, paths, _ = pipeline
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        again = run_pipeline(params, tmp_path)
    for name in ("statistics", "split_report", "history", "summary", "metrics", "per_class", "confusion"):
        assert again[name].read_bytes() == paths[name].read_bytes(), name
    test_images = artifacts.load_dataset(paths["test"]).images
    assert np.array_equal(
        serving.predict_savedmodel(again["savedmodel"], test_images)["probabilities"],
        serving.predict_savedmodel(paths["savedmodel"], test_images)["probabilities"],
    )
    # The model card differs only in the MLflow run it names.
    card, card_again = artifacts.read_json(paths["card"]), artifacts.read_json(again["card"])
    assert card["mlflow"]["run_id"] != card_again["mlflow"]["run_id"]
    assert {key: value for key, value in card.items() if key != "mlflow"} == {
        key: value for key, value in card_again.items() if key != "mlflow"
    }


def test_model_card_describes_the_export(pipeline) -> None:
    params, paths, uri = pipeline
    card = artifacts.read_json(paths["card"])
    report = artifacts.read_json(paths["export_report"])
    statistics = artifacts.read_json(paths["statistics"])
    test_set = artifacts.load_dataset(paths["test"])
    assert card["model_name"] == "digits"
    assert card["version"] == 1
    assert card["input"] == {"name": "images", "dtype": "uint8", "shape": [None, 28, 28, 1]}
    assert card["outputs"]["probabilities"] == {"dtype": "float32", "shape": [None, 10]}
    assert card["class_names"] == list(test_set.class_names)
    assert card["data"]["digest"] == statistics["data_version"]["digest"]
    assert card["data"]["test_images"] == 45
    assert card["test_metrics"] == artifacts.read_json(paths["metrics"])
    assert card["mlflow"] == {
        "run_id": trained.run_id(paths["model"]),
        "registered_model": "digits",
        "registered_version": report["registered_version"],
    }
    assert parse_params({**params.model_dump(), **card["params"]}) == params
    assert not list(paths["card"].parent.glob(".*.tmp"))
    logged = {item.path for item in MlflowClient(uri).list_artifacts(card["mlflow"]["run_id"], "savedmodel/digits")}
    assert "savedmodel/digits/model_card.json" in logged


def test_export_refuses_a_model_that_disagrees(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, paths, uri = pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(
        serving, "compare", lambda *_: serving.Agreement(images=45, max_abs_difference=0.25, mismatched_classes=3)
    )
    output = tmp_path / "digits" / "1"
    output.mkdir(parents=True)
    (output / "previous.txt").write_text("previous export")
    with pytest.raises(ValueError, match="disagrees with the Keras model on 45 test images: 3 different classes"):
        export_run(params, paths, output, tmp_path / "report.json")
    assert [path.name for path in output.iterdir()] == ["previous.txt"]
    assert [path.name for path in output.parent.iterdir()] == ["1"]
    assert not (tmp_path / "report.json").exists()
    run = MlflowClient(uri).get_run(trained.run_id(paths["model"]))
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("ValueError: the reloaded SavedModel disagrees")


def test_non_finite_loss_fails_the_run_with_a_reason(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    from stages import model

    params, paths, _ = pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    build = model.build_model

    def diverging(input_shape, num_classes, settings):
        classifier = build(input_shape, num_classes, settings)
        outputs = keras.layers.Lambda(lambda probabilities: probabilities * float("nan"))(classifier.output)
        return keras.Model(classifier.input, outputs)

    monkeypatch.setattr(model, "build_model", diverging)
    outputs = {name: tmp_path / name for name in ("model", "history.csv", "summary.json", "timing.json")}
    with pytest.raises(ValueError, match=r"training diverged: loss became nan in epoch 1; lower train.learning_rate"):
        train.run(
            params,
            paths["train"],
            paths["validation"],
            outputs["model"],
            outputs["history.csv"],
            outputs["summary.json"],
            outputs["timing.json"],
            tmp_path / "checkpoints",
        )
    assert not any(path.exists() for path in outputs.values())
    assert not (tmp_path / "checkpoints" / train.CHECKPOINT_FILE).exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(params.mlflow.experiment_name).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("ValueError: training diverged: loss became nan")


# Failing partway: every stage leaves the previous outputs and no half-written file.

STAGE_OUTPUTS = {
    "prepare": ("dataset", "statistics"),
    "split": ("train", "validation", "test", "split_report"),
    "train": ("model", "history", "summary", "timing"),
    "evaluate": ("metrics", "per_class", "confusion", "figure"),
    "export": ("savedmodel", "card", "export_report"),
}


def copy_outputs(paths: dict[str, Path], names: tuple[str, ...], root: Path) -> dict[str, Path]:
    """Copy some of a finished pipeline's outputs under `root`, as the previous outputs of a rerun."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    copies = {}
    for name in names:
        source, target = paths[name], root / f"{name}{paths[name].suffix}"
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        copies[name] = target
    return copies


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def fail_after_writing(real):
    """Wrap a writer: let it write its temporary file, then fail as a full disk would."""

    def writer(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(28, "No space left on device")

    return writer


def rerun(stage: str, params: Params, paths: dict[str, Path], outputs: dict[str, Path], scratch: Path) -> None:
    if stage == "prepare":
        prepare.run(params.data, outputs["dataset"], outputs["statistics"])
    elif stage == "split":
        splits = {name: outputs[name] for name in ("train", "validation", "test")}
        split.run(params.split, paths["dataset"], splits, outputs["split_report"])
    elif stage == "train":
        train.run(params, paths["train"], paths["validation"], outputs["model"], outputs["history"],
                  outputs["summary"], outputs["timing"], scratch / "checkpoints")  # fmt: skip
    elif stage == "evaluate":
        evaluate.run(params.evaluate, paths["model"], paths["test"], outputs["metrics"], outputs["per_class"],
                     outputs["confusion"], outputs["figure"])  # fmt: skip
    else:
        export_run(params, paths, outputs["savedmodel"], outputs["export_report"], outputs["card"])


@pytest.mark.parametrize("stage", list(STAGE_OUTPUTS))
def test_failing_stage_leaves_previous_outputs_whole(
    stage: str, pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras
    from matplotlib.figure import Figure

    params, paths, uri = pipeline
    # Evaluate and export attach to the run that trained the model, which lives in the pipeline's store.
    own_store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri if stage in ("evaluate", "export") else own_store)
    outputs = copy_outputs(paths, STAGE_OUTPUTS[stage], tmp_path / "outputs")
    before = snapshot(tmp_path / "outputs")
    writer = {
        "prepare": (np, "savez"),
        "split": (np, "savez"),
        "train": (keras.Model, "save"),
        "evaluate": (Figure, "savefig"),
        # ExportArchive() builds a backend-specific subclass, which has its own write_out.
        "export": (type(keras.export.ExportArchive()), "write_out"),
    }[stage]
    monkeypatch.setattr(*writer, fail_after_writing(getattr(*writer)))
    with pytest.raises(OSError, match="No space left on device"):
        rerun(stage, params, paths, outputs, tmp_path)
    assert snapshot(tmp_path / "outputs") == before
    assert sorted(path.name for path in (tmp_path / "outputs").iterdir()) == sorted(
        path.name for path in outputs.values()
    )


def test_full_disk_during_export_is_one_clear_line(pipeline, tmp_path: Path, capsys) -> None:
    import subprocess

    from stages import cli

    params, paths, uri = pipeline
    disk = tmp_path / "disk"
    disk.mkdir()
    # The previous export fits; a second copy beside it (atomic writes stage next to the target) does not.
    size_kib = sum(len(data) for data in snapshot(paths["savedmodel"]).values()) // 1024 + 64
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.strip()}")
    try:
        previous = copy_outputs(paths, ("savedmodel",), disk)["savedmodel"]
        before = snapshot(previous)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", uri)
            code = cli.execute(
                "export",
                lambda argv: export_run(params, paths, previous, tmp_path / "r.json", tmp_path / "card.json"),
            )
        assert code == cli.EXIT_ERROR
        error = capsys.readouterr().err.strip().splitlines()
        assert error == [f"export: error: cannot write the SavedModel to {previous}: No space left on device"]
        assert snapshot(previous) == before
        assert [path.name for path in disk.iterdir()] == [previous.name]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def with_gate(params: Params, **gate: float) -> Params:
    return parse_params(merged(params.model_dump(), {"registry": gate}))


def test_gate_promotes_a_good_model_and_only_versions_a_weak_one(pipeline, tmp_path: Path) -> None:
    params, paths, uri = pipeline
    client = MlflowClient(uri)
    name = params.registry.model_name
    first = artifacts.read_json(paths["export_report"])
    accuracy = first["test_accuracy"]
    assert accuracy < 1.0, "the tiny model must leave room above it for the failing gate"

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        blessed = export_run(
            with_gate(params, min_test_accuracy=0.0, max_accuracy_drop=0.0),
            paths,
            tmp_path / "blessed" / "1",
            tmp_path / "blessed.json",
        )
        assert blessed["blessed"] is True
        assert blessed["registered_version"] == first["registered_version"] + 1
        assert int(client.get_model_version_by_alias(name, "champion").version) == blessed["registered_version"]

        refused = export_run(
            with_gate(params, min_test_accuracy=1.0, max_accuracy_drop=1.0),
            paths,
            tmp_path / "refused" / "1",
            tmp_path / "refused.json",
        )
    assert refused["blessed"] is False
    assert refused["blessed_reason"] == f"test accuracy {accuracy:.4f} is below the minimum 1.0000"
    assert refused["registered_version"] == blessed["registered_version"] + 1
    assert refused["previous_champion"] == blessed["registered_version"]
    assert artifacts.read_json(tmp_path / "refused.json") == refused
    assert (tmp_path / "refused" / "1" / "saved_model.pb").is_file()  # exported all the same
    assert int(client.get_model_version_by_alias(name, "champion").version) == blessed["registered_version"]
    version = client.get_model_version(name, str(refused["registered_version"]))
    assert version.tags["blessed"] == "false"
    assert float(version.tags["test_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    run = client.get_run(trained.run_id(paths["model"]))
    assert run.data.tags["blessed"] == "false"
    assert run.data.tags["blessed_reason"] == refused["blessed_reason"]
    assert [metric.value for metric in client.get_metric_history(run.info.run_id, "blessed")][-2:] == [1, 0]


def test_unreachable_server_stops_export_before_it_writes(pipeline, tmp_path: Path) -> None:
    params, paths, _ = pipeline
    output = tmp_path / "digits" / "1"
    output.mkdir(parents=True)
    (output / "previous.txt").write_text("previous export")
    report = tmp_path / "report.json"
    report.write_text("previous report")
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        with pytest.raises(ValueError, match=f"server http://127.0.0.1:{port} cannot be reached"):
            export_run(params, paths, output, report)
    assert [path.name for path in output.iterdir()] == ["previous.txt"]
    assert report.read_text() == "previous report"


# Using the model: the layout TF Serving reads, and the REST endpoint `mlflow models serve` gives.


def test_tf_serving_layout_and_request_body(pipeline, tmp_path: Path) -> None:
    import json

    import tensorflow as tf

    _, paths, _ = pipeline
    base = paths["savedmodel"].parent
    entries = sorted(path.name for path in base.iterdir())
    # TF Serving loads the highest folder whose name is an integer and skips every other name.
    assert [name for name in entries if name.isdigit()] == ["1"]
    assert [name for name in entries if not name.isdigit()] == ["model_card.json"]
    assert (base / "1" / "saved_model.pb").is_file()
    assert (base / "1" / "variables" / "variables.index").is_file()
    signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    assert set(signature.structured_outputs) == {"probabilities", "class_id", "class_name"}
    (input_name, spec), *_ = signature.structured_input_signature[1].items()

    samples.run(paths["test"], 3, request=tmp_path / "request.json")  # as the README builds it
    body = json.loads((tmp_path / "request.json").read_text())
    # One named input: TF Serving maps the instances onto it, row by row.
    assert list(body) == ["instances"]
    instances = np.asarray(body["instances"])
    assert instances.dtype == np.int64
    assert instances.min() >= 0
    assert instances.max() <= 255
    batch = tf.constant(instances.astype(np.uint8))
    assert (input_name, spec.dtype) == ("images", tf.uint8)
    assert spec.is_compatible_with(batch)
    assert signature(**{input_name: batch})["class_id"].shape == (3,)


def post(url: str, body: object) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_serves_the_registered_version_over_rest(pipeline, tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess

    from tests.conftest import VENV_BIN, pipeline_env, wait_until_up

    params, paths, uri = pipeline
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    version = artifacts.read_json(paths["export_report"])["registered_version"]
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{params.registry.model_name}/{version}",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log_path.open("w") as log:
        # Its own session, so that the server and the workers it starts are stopped together.
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                  env=pipeline_env(MLFLOW_TRACKING_URI=uri), start_new_session=True)  # fmt: skip
    try:
        wait_until_up(f"{url}/ping", server, log_path, timeout=180)

        samples.run(paths["test"], 5, request=tmp_path / "request.json")
        body = json.loads((tmp_path / "request.json").read_text())
        status, answer = post(f"{url}/invocations", body)
        assert status == 200, answer
        local = serving.predict_savedmodel(paths["savedmodel"], np.asarray(body["instances"], np.uint8))
        predictions = answer["predictions"]
        assert [row["class_id"] for row in predictions] == local["class_id"].tolist()
        assert [row["class_name"] for row in predictions] == local["class_name"].astype(str).tolist()
        served = np.asarray([row["probabilities"] for row in predictions], np.float32)
        assert np.array_equal(served, local["probabilities"])

        images = np.asarray(body["instances"])
        bad_requests = {
            "wrong image size": {"instances": images[:, :20].tolist()},
            "wrong rank": {"instances": images[:, :, :, 0].tolist()},
            "not numbers": {"instances": [[["white"] * 28] * 28]},
            "not uint8": {"instances": (images + 300).tolist()},
            "neither instances nor inputs": {"images": images.tolist()},
        }
        for problem, bad in bad_requests.items():
            status, error = post(f"{url}/invocations", bad)
            assert 400 <= status < 500, problem
            assert error["message"], problem
        status, again = post(f"{url}/invocations", body)
        assert (status, again) == (200, answer), "the server keeps serving after bad requests"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
