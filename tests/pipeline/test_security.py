from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from image_classification import artifacts
from image_classification.modeling import trained_model
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, merged, mlflow_server, raw_params

SECRET = "s3cret-Pa55"


def test_no_pickle_in_the_data_path() -> None:
    offenders = []
    for path in sorted(
        [*(PROJECT_ROOT / "stages").glob("*.py"), *(PROJECT_ROOT / "image_classification").rglob("*.py")]
    ):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if any(name.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib") for name in names):
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} imports a pickle library")
            allows_pickle = not (isinstance(getattr(node, "value", None), ast.Constant) and node.value.value is False)
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and allows_pickle:
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} allow_pickle is not False")
    assert offenders == []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("server")) as uri:
        yield uri


@pytest.mark.slow
def test_credentials_in_tracking_uri_never_leak(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog
) -> None:
    from image_classification.config import parse_params
    from tests.stage_chain import run_stage_chain

    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.setenv(variable, "placeholder")
        monkeypatch.delenv(variable)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.replace("http://", f"http://alice:{SECRET}@"))
    caplog.set_level("DEBUG")
    params = parse_params(merged(raw_params(), TINY_OVERRIDES))
    paths = run_stage_chain(params, tmp_path)

    output = capfd.readouterr()
    # MLflow echoes run URLs to stdout; that is where credentials in the URI would have shown.
    assert f"at: {server}/#/experiments/" in output.out
    assert SECRET not in output.out + output.err
    assert SECRET not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    client = MlflowClient(server)
    run = client.get_run(trained_model.run_id(paths["model"]))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(
        artifacts.read_json(paths["metrics"])["accuracy"], abs=1e-6
    )
    recorded = [*run.data.params.items(), *run.data.tags.items(), *run.data.metrics]
    assert not [item for item in recorded if SECRET in str(item)]
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
