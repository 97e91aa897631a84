"""The MLflow tracking server every client talks to: `mlflow server` on 127.0.0.1, its stores given to it alone.

The backend store URI (with its password) and the artifact store's credentials reach the server
through its environment, never its command line, so `ps` does not show them. Artifacts are proxied
(`--serve-artifacts`, MLflow 3's default): clients upload and download through the server and need no
storage credentials of their own.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from image_classification.services import processes
from image_classification.services.processes import HOST

NAME = "MLflow tracking server"
LOG_FILE = "mlflow-server.log"
# MLflow 3's job runner serves its GenAI features (scorers, trace roll-ups), which this pipeline does
# not use; left on, it starts seven more worker processes beside the server.
SERVER_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start(
    folder: Path,
    port: int,
    backend_store_uri: str,
    artifacts_destination: str,
    environment: Mapping[str, str] | None = None,
    workers: int = 2,
    timeout: float = 120,
) -> str:
    """Start `mlflow server` on 127.0.0.1:`port` in `folder` and wait until `/health` answers.

    Args:
        folder: the server's working folder, log and process-id file.
        port: the TCP port it listens on.
        backend_store_uri: runs and registry: `postgresql://...` or `sqlite:///...`.
        artifacts_destination: where proxied artifacts go: `s3://BUCKET/PREFIX` or a local folder.
        environment: more variables for the server, such as the S3 endpoint and key pair.
        workers: request-handling processes.
        timeout: seconds to wait for `/health`; a new PostgreSQL store's tables are created first.

    Returns:
        The tracking URI, `http://127.0.0.1:PORT`.

    Raises:
        ServiceError: `port` is in use, or the server exited or did not answer within `timeout` seconds;
            names its log file.
    """
    uri = f"http://{HOST}:{port}"
    variables = {
        **SERVER_DEFAULTS,
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination,
        **(environment or {}),
    }
    command = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    processes.start(
        NAME,
        command,
        folder,
        LOG_FILE,
        lambda: processes.answers(f"{uri}/health"),
        timeout,
        processes.server_environment(variables),
        ports=[port],
    )
    return uri


def stop(folder: Path, timeout: float = 30) -> None:
    """Stop the server started in `folder` and its workers; nothing when it does not run."""
    processes.stop(folder, timeout)


def running(folder: Path) -> bool:
    """Whether the server started in `folder` runs."""
    return processes.server_pid(folder) is not None
