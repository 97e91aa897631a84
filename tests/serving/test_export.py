"""The export stage's function on the session's stage chain: parity, model card, registry, gate, serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from image_classification import artifacts, runner
from image_classification.config import Params, parse_params
from image_classification.data import samples, shards, split
from image_classification.modeling import trained_model
from image_classification.serving import savedmodel
from tests.conftest import free_port, merged, split_images, store_copy
from tests.stage_chain import copy_outputs, export_run, snapshot

pytestmark = pytest.mark.slow


def test_savedmodel_matches_keras(pipeline) -> None:
    params, paths, _ = pipeline
    report = artifacts.read_json(paths["export_report"])
    assert report["mismatched_classes"] == 0
    assert report["max_abs_difference"] <= 1e-5
    assert report["checked_against"] == params.train.backend == "tensorflow"
    test_set = split_images(paths, "test")
    outputs = savedmodel.predict_savedmodel(paths["savedmodel"], test_set.images)
    expected = trained_model.load_model(paths["model"]).predict(test_set.images, verbose=0)
    assert np.array_equal(outputs["class_id"], expected.argmax(axis=1))
    # Streamed from the shards a batch at a time, as export checks it: the same outputs.
    with shards.open_dataset(paths["dataset"]) as data:
        rows = split.read_membership(paths["membership"], data, ("test",))["test"]
    streamed = savedmodel.predict_shards(paths["savedmodel"], paths["dataset"], rows)
    assert all(np.array_equal(streamed[name], outputs[name]) for name in outputs)
    assert not list(paths["savedmodel"].parent.glob(".*.tmp"))


def test_model_card_describes_the_export(pipeline) -> None:
    params, paths, uri = pipeline
    card = artifacts.read_json(paths["card"])
    report = artifacts.read_json(paths["export_report"])
    statistics = artifacts.read_json(paths["statistics"])
    test_set = split_images(paths, "test")
    assert card["model_name"] == "digits"
    assert card["version"] == 1
    assert card["input"] == {"name": "images", "dtype": "uint8", "shape": [None, 28, 28, 1]}
    assert card["outputs"]["probabilities"] == {"dtype": "float32", "shape": [None, 10]}
    assert card["class_names"] == list(test_set.class_names)
    assert card["data"]["digest"] == statistics["data_version"]["digest"]
    assert card["data"]["test_images"] == 45
    # The test digest names the prepared dataset's content and the test rows, as split reported it.
    assert card["data"]["test_digest"] == artifacts.read_json(paths["split_report"])["splits"]["test"]["digest"]
    with shards.open_dataset(paths["dataset"]) as data:
        rows = split.read_membership(paths["membership"], data, ("test",))["test"]
        assert card["data"]["test_digest"] == split.split_digest(data, rows)
    run = MlflowClient(uri).get_run(trained_model.run_id(paths["model"]))
    assert run.data.tags["data.test_digest"] == card["data"]["test_digest"]
    assert card["test_metrics"] == artifacts.read_json(paths["metrics"])
    assert card["mlflow"] == {
        "run_id": trained_model.run_id(paths["model"]),
        "registered_model": "digits",
        "registered_version": report["registered_version"],
    }
    assert parse_params({**params.model_dump(), **card["params"]}) == params
    assert not list(paths["card"].parent.glob(".*.tmp"))
    logged = {item.path for item in MlflowClient(uri).list_artifacts(card["mlflow"]["run_id"], "savedmodel/digits")}
    assert "savedmodel/digits/model_card.json" in logged


def test_export_refuses_a_model_that_disagrees(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, paths, uri = pipeline
    uri = store_copy(uri, tmp_path / "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(
        savedmodel, "compare", lambda *_: savedmodel.Agreement(images=45, max_abs_difference=0.25, mismatched_classes=3)
    )
    output = tmp_path / "digits" / "1"
    output.mkdir(parents=True)
    (output / "previous.txt").write_text("previous export")
    with pytest.raises(
        ValueError, match="disagrees with the Keras model on tensorflow on 45 test images: 3 different classes"
    ):
        export_run(params, paths, output, tmp_path / "report.json")
    assert [path.name for path in output.iterdir()] == ["previous.txt"]
    assert [path.name for path in output.parent.iterdir()] == ["1"]
    assert not (tmp_path / "report.json").exists()
    run = MlflowClient(uri).get_run(trained_model.run_id(paths["model"]))
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("ValueError: the reloaded SavedModel disagrees")


def test_full_disk_during_export_is_one_clear_line(pipeline, tmp_path: Path, capsys) -> None:
    import subprocess

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
            patch.setenv("MLFLOW_TRACKING_URI", store_copy(uri, tmp_path / "store"))
            code = runner.execute(
                "export",
                lambda argv: export_run(params, paths, previous, tmp_path / "r.json", tmp_path / "card.json"),
            )
        assert code == runner.EXIT_ERROR
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
    run = client.get_run(trained_model.run_id(paths["model"]))
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

    samples.run(paths["dataset"], paths["membership"], 3, request=tmp_path / "request.json")  # as the README builds it
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

        samples.run(paths["dataset"], paths["membership"], 5, request=tmp_path / "request.json")
        body = json.loads((tmp_path / "request.json").read_text())
        status, answer = post(f"{url}/invocations", body)
        assert status == 200, answer
        local = savedmodel.predict_savedmodel(paths["savedmodel"], np.asarray(body["instances"], np.uint8))
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


# Runs last in this file: it adds a registry version, which the gate test above counts.
def test_gate_and_model_card_use_the_test_accuracy_evaluate_wrote(pipeline, tmp_path: Path) -> None:
    params, paths, uri = pipeline
    metrics = artifacts.read_json(paths["metrics"])
    edited = tmp_path / "metrics.json"
    artifacts.write_json(edited, {**metrics, "accuracy": 0.5})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        report = export_run(params, {**paths, "metrics": edited}, tmp_path / "digits" / "1", tmp_path / "report.json")
    assert report["test_accuracy"] == 0.5
    assert report["blessed"] is False
    assert report["blessed_reason"].startswith("test accuracy 0.5000 is below the minimum 0.9800")
    assert artifacts.read_json(tmp_path / "digits" / "model_card.json")["test_metrics"]["accuracy"] == 0.5
    version = MlflowClient(uri).get_model_version(params.registry.model_name, str(report["registered_version"]))
    assert version.tags["test_accuracy"] == "0.5"


@pytest.mark.parametrize(
    ("change", "shown"),
    [({"images": 44}, "accuracy 0.[0-9]+ on 44 images"), ({"accuracy": None}, "accuracy None on 45 images")],
)
def test_metrics_of_another_test_set_stop_export_before_it_writes(
    pipeline, tmp_path: Path, change: dict, shown: str
) -> None:
    params, paths, uri = pipeline
    edited = tmp_path / "metrics.json"
    artifacts.write_json(edited, {**artifacts.read_json(paths["metrics"]), **change})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(
            ValueError, match=rf"holds no test accuracy for the 45 images of the test split \({shown}\)"
        ):
            export_run(params, {**paths, "metrics": edited}, tmp_path / "digits" / "1", tmp_path / "report.json")
    assert not (tmp_path / "digits").exists()
    assert not (tmp_path / "report.json").exists()
