"""The private PostgreSQL harness itself (tests/support/postgres.py): what the
relay's end-to-end tests against PostgreSQL rely on."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import PgDatabase


def test_a_fresh_database_takes_a_table(postgres_db: PgDatabase) -> None:
    with psycopg.connect(postgres_db.url, connect_timeout=10) as connection:
        connection.execute("CREATE TABLE note (id integer PRIMARY KEY, body text NOT NULL)")
        connection.execute("INSERT INTO note VALUES (1, %s)", ("été ✓",))
        connection.commit()
        rows = connection.execute("SELECT id, body, current_user FROM note").fetchall()
    assert rows == [(1, "été ✓", postgres_db.user)]
    # The role owns its database and nothing more.
    assert postgres_db.server.sql(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
        params=(postgres_db.name,),
    ) == [(postgres_db.user,)]


def test_a_wrong_password_is_refused(postgres_db: PgDatabase) -> None:
    server = postgres_db.server
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            server.url(postgres_db.user, postgres_db.name, "not-the-password"), connect_timeout=10
        )
    # No password at all over TCP: SCRAM asks for one, libpq has none to give.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres_db.url_without_password, connect_timeout=10)
    # The right one, given apart from the URL, is accepted.
    with psycopg.connect(
        postgres_db.url_without_password, password=postgres_db.password, connect_timeout=10
    ) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
    # The role's password is stored as a SCRAM verifier, not in clear or MD5.
    [(stored,)] = server.sql(
        "SELECT rolpassword FROM pg_authid WHERE rolname = %s", params=(postgres_db.user,)
    )
    assert str(stored).startswith("SCRAM-SHA-256$")


def test_restart_and_kill_keep_data_and_port(postgres_db: PgDatabase) -> None:
    server = postgres_db.server
    port = server.port
    with psycopg.connect(postgres_db.url, autocommit=True, connect_timeout=10) as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before')")

    server.restart()
    assert server.running
    assert server.port == port
    with psycopg.connect(postgres_db.url, autocommit=True, connect_timeout=10) as connection:
        assert connection.execute("SELECT value FROM kept").fetchall() == [("before",)]

    # A client connected while the postmaster is killed loses its connection.
    victim = psycopg.connect(postgres_db.url, autocommit=True, connect_timeout=10)
    try:
        victim.execute("INSERT INTO kept VALUES ('committed')")
        server.kill()
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
    finally:
        victim.close()

    server.start()  # crash recovery, same port
    assert server.running
    assert server.port == port
    with psycopg.connect(postgres_db.url, autocommit=True, connect_timeout=10) as connection:
        rows = connection.execute("SELECT value FROM kept ORDER BY value").fetchall()
    assert rows == [("before",), ("committed",)]


def test_terminate_connections_kills_a_transaction(postgres_db: PgDatabase) -> None:
    server = postgres_db.server
    with psycopg.connect(postgres_db.url, autocommit=True, connect_timeout=10) as setup:
        setup.execute("CREATE TABLE t (value integer)")
    victim = psycopg.connect(postgres_db.url, connect_timeout=10)
    try:
        victim.execute("INSERT INTO t VALUES (1)")  # a transaction left open
        assert server.terminate_connections(postgres_db.name) == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("INSERT INTO t VALUES (2)")
    finally:
        victim.close()
    # The open transaction was rolled back; the server still serves.
    assert server.sql("SELECT count(*) FROM t", database=postgres_db.name) == [(0,)]
