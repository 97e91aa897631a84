"""PostgreSQL for the backend store: password logins on 127.0.0.1 only, and the ways a start fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from image_classification.services import postgres, processes
from image_classification.services.stack import Services


def test_database_uri_quotes_the_password() -> None:
    database = postgres.Database(5432, "p@ss/word:x")
    assert database.uri == "postgresql://mlflow:p%40ss%2Fword%3Ax@127.0.0.1:5432/mlflow"


def test_the_database_takes_its_password_on_localhost_only(shared_services: Services) -> None:
    import psycopg

    database = shared_services.database
    assert postgres.running(shared_services.folder / "postgres")
    with psycopg.connect(host=database.host, port=database.port, user=database.user, password=database.password,
                         dbname=database.name) as connection:  # fmt: skip
        assert connection.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert connection.execute("SHOW unix_socket_directories").fetchone() == ("",)
        tables = {row[0] for row in connection.execute("SELECT tablename FROM pg_tables")}
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables  # MLflow's, created by the server
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=database.host, port=database.port, user=database.user, password="wrong",
                        dbname=database.name)  # fmt: skip


def test_a_busy_port_stops_start_with_one_line(shared_services: Services, tmp_path: Path) -> None:
    port = shared_services.database.port
    with pytest.raises(processes.ServiceError, match=f"^PostgreSQL: port {port} on 127.0.0.1 is in use; "):
        postgres.start(tmp_path / "postgres", postgres.Database(port, "secret"))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the folder to the postgres user")
def test_a_folder_the_postgres_user_cannot_reach_is_named(shared_services: Services, tmp_path: Path) -> None:
    # pytest's temporary folders sit under a folder only their owner may enter.
    folder = tmp_path / "postgres"
    with pytest.raises(processes.ServiceError, match=f"and that user cannot write {folder};"):
        postgres.start(folder, postgres.Database(processes.free_port(), "secret"))


def test_stop_and_status_of_a_folder_without_a_cluster(tmp_path: Path) -> None:
    assert not postgres.running(tmp_path)
    postgres.stop(tmp_path)
