"""Background servers: free ports, starting one in its own folder with its own log, waiting for it, stopping it.

Each server started here gets a folder of its own: its working folder, its log and the file with its
process id. A process is taken for that server only while its working folder is that folder, so a
stale id that the system gave to another program since is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"
PID_FILE = "server.pid"
POLL_SECONDS = 0.25
# Variables a server must not inherit from the caller's shell: another tracking URI or store, or
# another cloud account's credentials and profile.
PRIVATE_PREFIXES = ("MLFLOW_", "AWS_")


class ServiceError(OSError):
    """A service did not start or stop: one line naming the service and its log file, or the port in use."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (another program may still take it first)."""
    return free_ports(1)[0]


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """`count` different TCP ports on 127.0.0.1 that nothing listens on right now, none of them in `avoid`."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            probe = stack.enter_context(socket.socket())
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports


def port_is_free(port: int) -> bool:
    """Whether nothing listens on TCP `port` of 127.0.0.1 right now (False for a port above 65535).

    Connections a stopped server left in TIME_WAIT do not count: servers bind with SO_REUSEADDR too.
    """
    if port > 65535:
        return False
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def check_ports(name: str, ports: Collection[int]) -> None:
    """Raise `ServiceError` naming `name` and the first of `ports` something already listens on."""
    for port in ports:
        if not port_is_free(port):
            raise ServiceError(f"{name}: port {port} on {HOST} is in use; stop what listens there or use other ports")


def answers(url: str) -> bool:
    """Whether `url` answers HTTP 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def server_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without MLflow and AWS settings, plus `extra`."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(PRIVATE_PREFIXES)}
    environment.update(extra)
    return environment


def start(
    name: str,
    command: Sequence[str],
    folder: Path,
    log_name: str,
    ready: Callable[[], bool],
    timeout: float,
    environment: Mapping[str, str] | None = None,
    ports: Collection[int] = (),
) -> int:
    """Start `command` in the background in `folder`, then wait until `ready()` is true.

    The server runs in a session of its own and outlives this process (`make services` returns while
    it runs); its output goes to `folder/log_name`, its process id to `folder/server.pid`. The `ports`
    it will listen on must be free first, so that another program answering on them is never taken
    for it.

    Returns:
        The server's process id.

    Raises:
        ServiceError: one of `ports` is in use, the server exited, or `ready()` stayed false for
            `timeout` seconds; the server is stopped and the message names `name` and the log file.
    """
    check_ports(name, ports)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / log_name
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            cwd=folder,
            env=dict(environment) if environment is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (folder / PID_FILE).write_text(f"{process.pid}\n")
    try:
        wait_until_ready(name, ready, log_path, timeout, process.pid)
    except BaseException:
        stop(folder)
        raise
    return process.pid


def wait_until_ready(name: str, ready: Callable[[], bool], log_path: Path, timeout: float, pid: int) -> None:
    """Poll `ready()` until it is true.

    Raises:
        ServiceError: process `pid` exited first, or `timeout` seconds passed; names `name` and `log_path`.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if not running(pid):
            raise ServiceError(f"{name} exited while starting; see {log_path}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} did not answer within {timeout:.0f} s; see {log_path}")
        time.sleep(POLL_SECONDS)


def running(pid: int) -> bool:
    """Whether process `pid` is alive; a child of this process that has exited is reaped, not counted."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_pid(folder: Path) -> int | None:
    """The process id of the server started in `folder`, or None when it is not running."""
    try:
        pid = int((folder / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not running(pid):
        return None
    try:
        working_folder = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return pid if not Path("/proc/self").exists() else None
    return pid if working_folder == folder.resolve() else None


def stop(folder: Path, timeout: float = 30, signal_number: int = signal.SIGTERM) -> None:
    """Stop the server started in `folder` and every process of its session; nothing when none runs.

    `signal_number` goes to the whole session first; whatever still runs after `timeout` seconds is killed.
    """
    pid = server_pid(folder)
    if pid is not None:
        _signal_group(pid, signal_number)
        deadline = time.monotonic() + timeout
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pid, signal.SIGKILL)
        while running(pid):
            time.sleep(0.05)
    (folder / PID_FILE).unlink(missing_ok=True)


def _signal_group(pid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal_number)
