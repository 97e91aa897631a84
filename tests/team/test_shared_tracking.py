"""The pipeline against a shared tracking server: PostgreSQL behind it, its artifacts in the S3 bucket.

The server, its database and the SeaweedFS store run on 127.0.0.1 (the session's `shared_services`);
the stages run with no storage credentials of their own, as a team member's machine would.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from image_classification import artifacts
from image_classification.config import Params, parse_params
from image_classification.data import samples
from image_classification.modeling import trained_model
from image_classification.services import processes
from image_classification.services.stack import ARTIFACTS_PREFIX, Services
from image_classification.serving import savedmodel
from image_classification.tracking import registry
from tests.conftest import (
    TINY_OVERRIDES,
    forgetting_mlflow_uris,
    free_port,
    merged,
    pipeline_env,
    raw_params,
)
from tests.serving.test_export import post
from tests.stage_chain import run_stage_chain

pytestmark = pytest.mark.slow

# The gate's floor lowered so that the tiny model is blessed and the champion alias is set.
OVERRIDES = {**TINY_OVERRIDES, "registry": {"min_test_accuracy": 0.0}}
# Where an S3 client would look for credentials; a client of the shared server needs none of them.
STORAGE_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL",
)  # fmt: skip
NO_CREDENTIAL_FILES = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


def client_env(services: Services, **extra: str) -> dict[str, str]:
    """A team member's environment: the tracking URI and nothing that could open the bucket."""
    env = pipeline_env(MLFLOW_TRACKING_URI=services.tracking_uri, **NO_CREDENTIAL_FILES, **extra)
    return {key: value for key, value in env.items() if key not in STORAGE_VARIABLES}


def bucket_key(artifact_location: str) -> str:
    """The bucket key under which the server stored a proxied artifact location (`mlflow-artifacts:/...`)."""
    assert artifact_location.startswith("mlflow-artifacts:/"), artifact_location
    return ARTIFACTS_PREFIX + artifact_location.removeprefix("mlflow-artifacts:")


@pytest.fixture(scope="module")
def shared_run(shared_services: Services, tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict[str, Path]]:
    """The five stages, in-process, against the shared server, with no storage credentials in the environment."""
    with forgetting_mlflow_uris(), pytest.MonkeyPatch.context() as patch:
        for variable, value in client_env(shared_services).items():
            patch.setenv(variable, value)
        for variable in (*STORAGE_VARIABLES, "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
            patch.delenv(variable, raising=False)
        params = parse_params(merged(raw_params(), OVERRIDES))
        paths = run_stage_chain(params, tmp_path_factory.mktemp("shared"))
        assert not [variable for variable in STORAGE_VARIABLES if variable in os.environ]
    return params, paths


def test_every_stage_records_to_the_shared_server(shared_services: Services, shared_run) -> None:
    params, paths = shared_run
    client = MlflowClient(shared_services.tracking_uri)
    run = client.get_run(trained_model.run_id(paths["model"]))
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: the client never saw the bucket
    assert run.data.params["train.epochs"] == str(params.train.epochs)
    assert run.data.params["train.batch_size"] == str(params.train.batch_size)
    metrics = artifacts.read_json(paths["metrics"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == params.train.epochs

    report = artifacts.read_json(paths["export_report"])
    assert report["blessed"] is True
    champion = client.get_model_version_by_alias(params.registry.model_name, "champion")
    assert int(champion.version) == report["registered_version"]
    assert champion.run_id == run.info.run_id


def test_artifacts_land_in_the_bucket(shared_services: Services, shared_run) -> None:
    _, paths = shared_run
    client = MlflowClient(shared_services.tracking_uri)
    run = client.get_run(trained_model.run_id(paths["model"]))
    keys = shared_services.store.keys()
    run_prefix = bucket_key(run.info.artifact_uri)
    for name in ("training/history.csv", "evaluation/confusion_matrix.png", "savedmodel/digits/model_card.json"):
        assert f"{run_prefix}/{name}" in keys, name
    logged = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'")
    assert len(logged) >= 2  # the Keras model from train, the registered SavedModel from export
    for model in logged:
        model_keys = [key for key in keys if key.startswith(bucket_key(model.artifact_location) + "/")]
        assert any(key.endswith("/MLmodel") for key in model_keys), model.name
    (registered,) = [model for model in logged if model.name == registry.MODEL_ARTIFACT]
    # The SavedModel folder travels inside the registered model, under its own name.
    savedmodel_key = f"{bucket_key(registered.artifact_location)}/artifacts/{paths['savedmodel'].name}/saved_model.pb"
    assert savedmodel_key in keys


def test_mlflow_models_serve_loads_the_champion_through_the_server(
    shared_services: Services, shared_run, tmp_path: Path
) -> None:
    params, paths = shared_run
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model = f"models:/{params.registry.model_name}@champion"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = tmp_path / "serve"
    try:
        processes.start("mlflow models serve", command, server, "serve.log", lambda: processes.answers(f"{url}/ping"),
                        timeout=180, environment=client_env(shared_services))  # fmt: skip
        samples.run(paths["dataset"], paths["membership"], 4, request=tmp_path / "request.json")
        body = json.loads((tmp_path / "request.json").read_text())
        status, answer = post(f"{url}/invocations", body)
        assert status == 200, answer
        local = savedmodel.predict_savedmodel(paths["savedmodel"], np.asarray(body["instances"], np.uint8))
        assert [row["class_id"] for row in answer["predictions"]] == local["class_id"].tolist()
    finally:
        processes.stop(server)
