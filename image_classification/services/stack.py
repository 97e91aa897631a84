"""The local stack for shared tracking: PostgreSQL, the S3 store and the MLflow server, started and stopped together.

    python -m image_classification.services.stack start|stop|status [--folder .services]   (`make services`)

Everything lives in one folder (`.services/` at the project root, ignored by git): each service's
data and log, `state.json` (ports), and `credentials.json` (the generated PostgreSQL password and S3
key pair, readable by its owner only). A restart keeps the data and the credentials.
"""

from __future__ import annotations

import argparse
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from image_classification.services import object_store, postgres, processes, tracking_server

DEFAULT_FOLDER = Path(".services")
STATE_FILE = "state.json"
CREDENTIALS_FILE = "credentials.json"
ARTIFACTS_PREFIX = "mlflow-artifacts"


@dataclass(frozen=True)
class Ports:
    """The TCP ports on 127.0.0.1: fixed defaults for `make services`, free ones for tests (`Ports.free()`)."""

    mlflow: int = 5010
    postgres: int = 5433
    s3: int = 8333
    seaweedfs: dict[str, int] = field(default_factory=lambda: dict(object_store.DEFAULT_INTERNAL_PORTS))

    @classmethod
    def free(cls) -> Ports:
        """Ports nothing listens on right now."""
        seaweedfs = object_store.free_internal_ports()
        mlflow, database, s3 = processes.free_ports(3, avoid=object_store.ports_in_use(seaweedfs))
        return cls(mlflow, database, s3, seaweedfs)


@dataclass(frozen=True)
class Services:
    """A running stack: the tracking URI clients use, the database behind it and the S3 store of its artifacts."""

    folder: Path
    tracking_uri: str
    database: postgres.Database
    store: object_store.S3Store

    @property
    def artifacts_destination(self) -> str:
        """Where the server puts artifacts: `s3://BUCKET/mlflow-artifacts`."""
        return f"s3://{self.store.bucket}/{ARTIFACTS_PREFIX}"


def start(folder: Path = DEFAULT_FOLDER, ports: Ports | None = None, timeout: float = 120) -> Services:
    """Start PostgreSQL, the S3 store and the MLflow server with their state in `folder`.

    Ports default to those of the previous start in `folder`, else to `Ports()`. A stack already
    running in `folder` is stopped first. Whatever started is stopped again when a later service fails.

    Returns:
        The running stack.

    Raises:
        ServiceError: a service did not start; one line naming it and its log file.
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stop(folder)
    ports = ports or _saved_ports(folder) or Ports()
    (folder / STATE_FILE).write_text(json.dumps({"ports": asdict(ports)}, indent=2) + "\n")
    services = _describe(folder, ports, _credentials(folder))
    try:
        postgres.start(folder / "postgres", services.database, timeout)
        object_store.start(folder / "objects", services.store, ports.seaweedfs, timeout)
        tracking_server.start(
            folder / "mlflow",
            ports.mlflow,
            services.database.uri,
            services.artifacts_destination,
            {"MLFLOW_S3_ENDPOINT_URL": services.store.endpoint, **services.store.credentials()},
            timeout=timeout,
        )
    except BaseException:
        stop(folder)
        raise
    return services


def stop(folder: Path = DEFAULT_FOLDER) -> None:
    """Stop the stack started in `folder`, the MLflow server first; nothing for what does not run.

    Raises:
        ServiceError: PostgreSQL did not stop.
    """
    folder = folder.resolve()
    tracking_server.stop(folder / "mlflow")
    object_store.stop(folder / "objects")
    postgres.stop(folder / "postgres")


def status(folder: Path = DEFAULT_FOLDER) -> dict[str, bool]:
    """Which of the three services run, by name."""
    folder = folder.resolve()
    return {
        postgres.NAME: postgres.running(folder / "postgres"),
        object_store.NAME: object_store.running(folder / "objects"),
        tracking_server.NAME: tracking_server.running(folder / "mlflow"),
    }


def describe(folder: Path = DEFAULT_FOLDER) -> Services | None:
    """The stack last started in `folder` (whether it runs or not), or None when none was."""
    folder = folder.resolve()
    ports = _saved_ports(folder)
    if ports is None or not (folder / CREDENTIALS_FILE).is_file():
        return None
    return _describe(folder, ports, _credentials(folder))


def _describe(folder: Path, ports: Ports, credentials: dict[str, str]) -> Services:
    return Services(
        folder=folder,
        tracking_uri=f"http://{processes.HOST}:{ports.mlflow}",
        database=postgres.Database(ports.postgres, credentials["postgres_password"]),
        store=object_store.S3Store(ports.s3, credentials["s3_access_key_id"], credentials["s3_secret_access_key"]),
    )


def _saved_ports(folder: Path) -> Ports | None:
    try:
        return Ports(**json.loads((folder / STATE_FILE).read_text())["ports"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _credentials(folder: Path) -> dict[str, str]:
    """The stack's generated secrets, created on first use and kept: the database was initialised with them."""
    path = folder / CREDENTIALS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    credentials = {
        "postgres_password": secrets.token_urlsafe(24),
        "s3_access_key_id": "pipeline" + secrets.token_hex(6),
        "s3_secret_access_key": secrets.token_urlsafe(30),
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(credentials, indent=2) + "\n")
    return credentials


def summary(services: Services) -> list[str]:
    """A few lines that say where each service listens and what to point the project at."""
    store = services.store
    return [
        f"PostgreSQL      {services.database.host}:{services.database.port}, database {services.database.name}",
        f"S3 store        {store.endpoint}, bucket {store.bucket} (SeaweedFS)",
        f"MLflow server   {services.tracking_uri}, artifacts in {services.artifacts_destination}",
        f"Use it:         export MLFLOW_TRACKING_URI={services.tracking_uri}",
        f"S3 key pair (a DVC remote on this store): {services.folder / CREDENTIALS_FILE}; logs under {services.folder}",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m image_classification.services.stack", description=__doc__)
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="state folder (default: .services)")
    args = parser.parse_args(argv)
    if args.command == "start":
        for line in summary(start(args.folder)):
            print(line)
    elif args.command == "stop":
        stop(args.folder)
        print(f"services: stopped ({args.folder})")
    else:
        states = status(args.folder)
        for name, running in states.items():
            print(f"{name:<24} {'running' if running else 'stopped'}")
        described = describe(args.folder)
        if described is not None and any(states.values()):
            print(f"MLFLOW_TRACKING_URI={described.tracking_uri}")


if __name__ == "__main__":
    from image_classification import runner

    runner.run("services", main)
