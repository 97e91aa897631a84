"""The SeaweedFS S3 store: one key pair opens it, every port on 127.0.0.1, telemetry off, a busy port refused."""

from __future__ import annotations

import stat
from pathlib import Path

import psutil
import pytest

from image_classification.services import object_store, processes
from image_classification.services.stack import Services


def test_only_the_key_pair_opens_the_bucket(shared_services: Services) -> None:
    from botocore.exceptions import ClientError  # the team extra; the fixture has skipped without it

    store = shared_services.store
    store.client().put_object(Bucket=store.bucket, Key="probe/b.txt", Body=b"b")
    store.client().put_object(Bucket=store.bucket, Key="probe/a.txt", Body=b"a")
    assert store.keys("probe/") == ["probe/a.txt", "probe/b.txt"]
    impostor = object_store.S3Store(store.port, store.access_key_id, "not-the-secret")
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        impostor.keys()
    anonymous = object_store.S3Store(store.port, "", "")
    with pytest.raises(ClientError):
        anonymous.keys()


def test_every_port_is_on_localhost_and_telemetry_is_off(shared_services: Services) -> None:
    folder = shared_services.folder / "objects"
    process = psutil.Process(processes.server_pid(folder))
    listening = [connection.laddr for connection in process.net_connections("tcp") if connection.status == "LISTEN"]
    assert {address.port for address in listening} >= {shared_services.store.port}
    assert {address.ip for address in listening} == {"127.0.0.1"}
    assert "-master.telemetry=false" in process.cmdline()
    assert stat.S_IMODE((folder / "s3.json").stat().st_mode) == 0o600


def test_internal_ports_leave_room_for_the_admin_grpc_port() -> None:
    ports = object_store.free_internal_ports()
    assert set(ports) == set(object_store.DEFAULT_INTERNAL_PORTS)
    assert len(object_store.ports_in_use(ports)) == len(ports) + 1
    assert processes.port_is_free(ports["admin.port"] + object_store.ADMIN_GRPC_OFFSET)


def test_a_busy_s3_port_stops_start(shared_services: Services, tmp_path: Path) -> None:
    store = shared_services.store
    with pytest.raises(processes.ServiceError, match=f"^SeaweedFS S3 store: port {store.port} on 127.0.0.1 is in use"):
        object_store.start(tmp_path, store, object_store.free_internal_ports(), timeout=10)
    assert not object_store.running(tmp_path)
