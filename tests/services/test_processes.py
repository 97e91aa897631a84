"""Background servers: free ports, start and wait, stop the whole session, and every way a start fails."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from image_classification.services import processes


def test_free_ports_are_different_free_and_avoid_what_they_are_told() -> None:
    ports = processes.free_ports(6)
    assert len(set(ports)) == 6
    assert all(processes.port_is_free(port) for port in ports)
    assert not set(processes.free_ports(3, avoid=ports)) & set(ports)


def test_a_listening_port_is_not_free() -> None:
    with socket.socket() as listener:
        listener.bind((processes.HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not processes.port_is_free(port)
        with pytest.raises(processes.ServiceError, match=f"^thing: port {port} on 127.0.0.1 is in use; "):
            processes.check_ports("thing", [port])
    assert not processes.port_is_free(70000)


def test_servers_get_no_tracking_or_cloud_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere")
    monkeypatch.setenv("AWS_PROFILE", "someone")
    environment = processes.server_environment({"AWS_ACCESS_KEY_ID": "mine"})
    assert "MLFLOW_TRACKING_URI" not in environment
    assert "AWS_PROFILE" not in environment
    assert environment["AWS_ACCESS_KEY_ID"] == "mine"
    assert environment["PATH"] == os.environ["PATH"]


def test_start_waits_until_the_server_answers_and_stop_ends_it(tmp_path: Path) -> None:
    port = processes.free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", processes.HOST]
    url = f"http://{processes.HOST}:{port}/"
    pid = processes.start("web", command, tmp_path, "web.log", lambda: processes.answers(url), 30, ports=[port])
    assert processes.answers(url)
    assert processes.server_pid(tmp_path) == pid
    processes.stop(tmp_path)
    assert not processes.running(pid)
    assert processes.server_pid(tmp_path) is None
    assert not (tmp_path / processes.PID_FILE).exists()
    assert processes.port_is_free(port)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('cannot bind'); sys.exit(3)"]
    with pytest.raises(processes.ServiceError, match=f"^web exited while starting; see {tmp_path / 'web.log'}$"):
        processes.start("web", command, tmp_path, "web.log", lambda: False, 30)
    assert "cannot bind" in (tmp_path / "web.log").read_text()
    assert not (tmp_path / processes.PID_FILE).exists()


def test_a_server_that_never_answers_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(processes.ServiceError, match=r"^web did not answer within 1 s; see .*web\.log$"):
        processes.start("web", command, tmp_path, "web.log", lambda: False, 1)
    assert processes.server_pid(tmp_path) is None


def test_a_busy_port_stops_start_before_anything_runs(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind((processes.HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(processes.ServiceError, match=f"port {port} on 127.0.0.1 is in use"):
            processes.start("web", [sys.executable, "-c", "pass"], tmp_path / "web", "web.log", lambda: True, 5,
                            ports=[port])  # fmt: skip
    assert not (tmp_path / "web").exists()


def test_a_stale_process_id_never_signals_another_program(tmp_path: Path) -> None:
    # This test's own process runs in another folder: the id is taken for a recycled one.
    (tmp_path / processes.PID_FILE).write_text(f"{os.getpid()}\n")
    assert processes.server_pid(tmp_path) is None
    processes.stop(tmp_path)
    assert processes.running(os.getpid())
