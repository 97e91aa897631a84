"""The MLflow server: secrets only in its environment, no job runner, a busy port refused."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from image_classification.services import processes, tracking_server
from image_classification.services.stack import Services


def test_secrets_stay_off_every_command_line(shared_services: Services) -> None:
    leader = psutil.Process(processes.server_pid(shared_services.folder / "mlflow"))
    group = [leader, *leader.children(recursive=True)]
    command_lines = " ".join(" ".join(process.cmdline()) for process in group)
    assert shared_services.database.password not in command_lines
    assert shared_services.store.secret_access_key not in command_lines
    assert "huey" not in command_lines  # MLflow's job runner is off
    assert processes.answers(f"{shared_services.tracking_uri}/health")


def test_a_busy_port_stops_start(shared_services: Services, tmp_path: Path) -> None:
    port = shared_services.store.port
    with pytest.raises(processes.ServiceError, match=f"^MLflow tracking server: port {port} on 127.0.0.1 is in use"):
        tracking_server.start(tmp_path, port, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    assert not tracking_server.running(tmp_path)
