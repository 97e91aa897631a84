"""PostgreSQL for MLflow's backend store: a cluster of its own in a folder, run by `pg_ctl` on 127.0.0.1.

The cluster listens on TCP at 127.0.0.1 only (no Unix socket) and asks for a password
(scram-sha-256). PostgreSQL refuses to run as root; started by root, it runs as the `postgres`
system user, which then owns the folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from image_classification.services import processes
from image_classification.services.processes import HOST, ServiceError

NAME = "PostgreSQL"
DATABASE = "mlflow"
USER = "mlflow"
LOG_FILE = "postgres.log"
SYSTEM_USER = "postgres"
INSTALL_HINT = "install PostgreSQL's server (`make install-team`, or `apt-get install postgresql` on Debian)"


@dataclass(frozen=True)
class Database:
    """Where MLflow's backend store lives: a database on a PostgreSQL server, and the login to reach it."""

    port: int
    password: str
    host: str = HOST
    name: str = DATABASE
    user: str = USER

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI, password included (SQLAlchemy 2.1 reads `postgresql://` as psycopg 3)."""
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@{self.host}:{self.port}/{self.name}"


def server_binaries() -> Path:
    """The folder that holds `pg_ctl` and `initdb`: the one on PATH, else the newest /usr/lib/postgresql/*/bin.

    Raises:
        ServiceError: PostgreSQL's server is not installed.
    """
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent  # a link on PATH leads to the folder with initdb and postgres
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: _version_key(path.parent.parent.name)
    )
    if not installed:
        raise ServiceError(f"{NAME}: pg_ctl not found; {INSTALL_HINT}")
    return installed[-1].parent


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def start(folder: Path, database: Database, timeout: float = 60) -> None:
    """Create a cluster under `folder` on first use, start it on `database.port` and create the database.

    A cluster created earlier keeps its data, user and password: `database.password` must be the one
    it was created with.

    Raises:
        ServiceError: PostgreSQL is missing, `database.port` is in use, the `postgres` user cannot write
            `folder` (started by root), the server did not start within `timeout` seconds, or the database
            cannot be created; the message names the log file.
    """
    processes.check_ports(NAME, [database.port])
    folder.mkdir(parents=True, exist_ok=True)
    _hand_over(folder)
    log_path = folder / LOG_FILE
    log_path.touch()
    _hand_over(log_path)
    data = folder / "data"
    if not (data / "PG_VERSION").is_file():
        _initialize(folder, data, database, log_path)
    result = _run(
        "pg_ctl", "start", "--pgdata", str(data), "--log", str(log_path), "--wait", "--timeout", str(int(timeout)),
        "-o", f"-p {database.port}",
    )  # fmt: skip
    if result.returncode != 0:
        raise ServiceError(f"{NAME} did not start on {database.host}:{database.port}; see {log_path}")
    _create_database(database, log_path)


def stop(folder: Path, timeout: float = 60) -> None:
    """Stop the cluster under `folder` (fast shutdown: open sessions are closed); nothing when it does not run.

    Raises:
        ServiceError: the server did not stop within `timeout` seconds.
    """
    if not running(folder):
        return
    result = _run("pg_ctl", "stop", "--pgdata", str(folder / "data"), "--mode", "fast", "--wait",
                  "--timeout", str(int(timeout)))  # fmt: skip
    if result.returncode != 0:
        raise ServiceError(f"{NAME} did not stop; see {folder / LOG_FILE}")


def running(folder: Path) -> bool:
    """Whether the cluster under `folder` runs."""
    if not (folder / "data" / "PG_VERSION").is_file():
        return False
    return _run("pg_ctl", "status", "--pgdata", str(folder / "data")).returncode == 0


def _initialize(folder: Path, data: Path, database: Database, log_path: Path) -> None:
    """`initdb` with `database.user` as the superuser, its password, and password logins from 127.0.0.1 only."""
    password_file = folder / "initdb-password"
    password_file.write_text(database.password + "\n")
    password_file.chmod(0o600)
    _hand_over(password_file)
    try:
        result = _run(
            "initdb", "--pgdata", str(data), "--username", database.user, "--pwfile", str(password_file),
            "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C",
        )  # fmt: skip
    finally:
        password_file.unlink(missing_ok=True)
    with log_path.open("a") as log:
        log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise ServiceError(f"{NAME}: initdb failed in {data}; see {log_path}")
    with (data / "postgresql.conf").open("a") as settings:
        settings.write("\n# Set by image_classification.services.postgres\n")
        settings.write(f"listen_addresses = '{database.host}'\nunix_socket_directories = ''\n")


def _create_database(database: Database, log_path: Path) -> None:
    import psycopg

    try:
        with psycopg.connect(
            host=database.host, port=database.port, user=database.user, password=database.password,
            dbname="postgres", autocommit=True, connect_timeout=10,
        ) as connection:  # fmt: skip
            found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database.name,)).fetchone()
            if found is None:
                connection.execute(f'CREATE DATABASE "{database.name}"')
    except psycopg.Error as error:
        reason = " ".join(str(error).split())[:200]
        raise ServiceError(f"{NAME}: cannot create database {database.name} ({reason}); see {log_path}") from None


def _as_root() -> bool:
    return os.geteuid() == 0


def _hand_over(path: Path) -> None:
    """Give `path` to the `postgres` user when running as root, and check that it can reach it.

    Raises:
        ServiceError: the `postgres` user cannot write `path` (a parent folder closed to other users).
    """
    if not _as_root():
        return
    shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
    if path.is_dir():
        path.chmod(0o700)
        check = subprocess.run(["runuser", "-u", SYSTEM_USER, "--", "test", "-w", str(path)], check=False)
        if check.returncode != 0:
            raise ServiceError(
                f"{NAME} runs as the {SYSTEM_USER} user when started by root, and that user cannot write {path}; "
                "use a folder whose parents other users may enter"
            )


def _run(program: str, *args: str) -> subprocess.CompletedProcess:
    """Run one of PostgreSQL's server programs, as the `postgres` user when this process is root."""
    command = [str(server_binaries() / program), *args]
    if _as_root():
        command = ["runuser", "-u", SYSTEM_USER, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, check=False)
