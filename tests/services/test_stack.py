"""The local stack: ports, state and credentials in one folder, status, and a start that fails in one line."""

from __future__ import annotations

import json
import stat
from dataclasses import asdict
from pathlib import Path

import pytest

from image_classification import runner
from image_classification.services import object_store, stack
from image_classification.services.stack import Services


def test_free_ports_never_repeat() -> None:
    ports = stack.Ports.free()
    every = [ports.mlflow, ports.postgres, ports.s3, *object_store.ports_in_use(ports.seaweedfs)]
    assert len(set(every)) == len(every)


def test_the_running_stack_describes_itself(shared_services: Services) -> None:
    folder = shared_services.folder
    assert stack.status(folder) == dict.fromkeys(("PostgreSQL", "SeaweedFS S3 store", "MLflow tracking server"), True)
    assert stack.describe(folder) == shared_services
    assert stat.S_IMODE((folder / stack.CREDENTIALS_FILE).stat().st_mode) == 0o600
    lines = stack.summary(shared_services)
    assert f"Use it:         export MLFLOW_TRACKING_URI={shared_services.tracking_uri}" in lines
    assert not [line for line in lines if shared_services.store.secret_access_key in line]


def test_status_of_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.execute("services", stack.main, ["status", "--folder", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "PostgreSQL               stopped",
        "SeaweedFS S3 store       stopped",
        "MLflow tracking server   stopped",
    ]
    assert stack.describe(tmp_path) is None
    stack.stop(tmp_path)


def test_a_failed_start_is_one_line_and_leaves_nothing_running(
    shared_services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = shared_services.database.port
    ports = stack.Ports(**{**asdict(stack.Ports.free()), "postgres": busy})
    (tmp_path / stack.STATE_FILE).write_text(json.dumps({"ports": asdict(ports)}))
    assert runner.execute("services", stack.main, ["start", "--folder", str(tmp_path)]) == runner.EXIT_ERROR
    error = capsys.readouterr().err.splitlines()
    assert error == [f"services: error: PostgreSQL: port {busy} on 127.0.0.1 is in use; stop what listens there "
                     "or use other ports"]  # fmt: skip
    assert not any(stack.status(tmp_path).values())
