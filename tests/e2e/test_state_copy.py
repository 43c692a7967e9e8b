"""« mss-relay state copy »: a SQLite state moved into a real PostgreSQL
(the postgres_db fixture), by the real command, as an operator runs it."""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from mss_relay.pseudonym import Pseudonyms, load_key
from mss_relay.state.conversations import ConversationStore
from mss_relay.state.copy import KINDS
from tests.conftest import PgDatabase, Pki, base_config, two_sided
from tests.support.mail import make_message, wire_data
from tests.support.processes import ROOT, free_port, wait_for

DR = "jean.dupont@ch-exemple.mssante.fr"
BALS = (DR, "accueil@ch-exemple.mssante.fr", "secretariat@ch-exemple.mssante.fr")
P1 = "295109912611193@patient.mssante.fr"  # an older version's row: INS in clear
P3 = "253072B07300470@patient.mssante.fr"
MANY = 100_000
# A matricule INS standing alone (13 characters, or 15 with its key; 2A/2B
# for Corsica), in PostgreSQL's regular expressions.
MATRICULE = r"(^|[^0-9A-Za-z])[0-9]{5}([0-9]{2}|2[ABab])[0-9]{6}([0-9]{2})?([^0-9A-Za-z]|$)"
PATIENT_LOCAL = re.compile(r"([^\s<>\"'@,;]*)@patient\.mssante\.fr", re.IGNORECASE)


@dataclass
class Installation:
    """A relay's folder: its configuration (SQLite), key and state file."""

    folder: Path
    config: Path
    pseudonyms: Pseudonyms

    @property
    def database(self) -> Path:
        return self.folder / "var" / "state.sqlite3"

    def copy(
        self, target: str, *args: str, config: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mss_relay",
                "state",
                "copy",
                "--from",
                "sqlite:var/state.sqlite3",  # relative to the current folder
                "--to",
                target,
                "--config",
                str(config or self.config),
                *args,
            ],
            cwd=self.folder,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == list(KINDS)
    return {kind: int(n) for kind, n in (line.split(": ") for line in lines)}


def refusal(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def installation(folder: Path, pki: Pki, hashes: dict[str, str]) -> Installation:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "relay.yaml"
    config.write_text(yaml.safe_dump(base_config(pki, hashes, free_port())))
    pseudonyms = load_key(folder / "var" / "pseudonym.key", create=True)
    return Installation(folder, config, pseudonyms)


def fill(place: Installation, conversations: int, *, older_rows: bool = True) -> None:
    """The schema and key check made by the store, then rows written straight
    into the file (100,000 conversations in a few seconds): each with a
    message out and the patient's reply, a third of them closed; a BAL's
    activity, lifecycle and an Annuaire import. older_rows: a few rows as a
    version before pseudonyms wrote them, INS in clear, and no key check."""

    async def create() -> None:
        store = await ConversationStore.open(place.database, pseudonyms=place.pseudonyms)
        await store.close()

    asyncio.run(create())
    of = place.pseudonyms.of
    at = "2025-03-01T10:00:00.000Z"
    rows, messages = [], []
    for i in range(1, conversations + 1):
        closed = i % 3 == 0
        patient = of(f"1{i:014d}@patient.mssante.fr")
        rows.append(
            (
                i,
                BALS[i % 3],
                patient,
                at,
                "jdupont",
                at,
                at if closed else None,
                "jdupont" if closed else None,
                "fin" if closed else None,
            )
        )
        messages.append((f"<m{i}.out@ch-exemple.mssante.fr>", i, "out", None, at))
        messages.append((f"<m{i}.in@patient.example>", i, "in", patient, at))
    db = sqlite3.connect(place.database)
    with db:
        db.executemany("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", messages)
        db.execute("INSERT INTO user_activity VALUES ('jdupont', ?)", [at])
        db.execute(
            "INSERT INTO bal_activity VALUES (?, '2025-01-01T00:00:00.000Z', ?, NULL)", [DR, at]
        )
        db.execute(
            "INSERT INTO bal_lifecycle VALUES (?, 'inactive_90', ?, ?, NULL, NULL)",
            [BALS[1], at, at],
        )
        for generation, status in ((1, "old"), (2, "current")):
            db.execute(
                "INSERT INTO directory_imports VALUES (?, ?, ?, ?, 2, 2)",
                [
                    generation,
                    f"2025-0{generation}-01T00:00:00.000Z",
                    f"import{generation}.zip",
                    status,
                ],
            )
            db.executemany(
                "INSERT INTO directory_entries VALUES (?, ?, 'PER', 'M', 'DUPONT', 'Jean',"
                " 'Médecin', '', 'CH', '', '', '75001', 'Paris', ?)",
                [(generation, a, f"dupont jean {a}") for a in BALS[:2]],
            )
        if older_rows:
            n = conversations + 1
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, 'jdupont', ?, NULL, NULL, NULL)",
                [n, DR, P1, at, at],
            )
            db.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
                [
                    (f"<{P1}>", n, "out", None, at),
                    ("<x.253072B07300470@ch-exemple.mssante.fr>", n, "out", None, at),
                    ("<reply.1@patient.example>", n, "in", P1, at),
                ],
            )
            db.execute("DELETE FROM pseudonym_key")
    db.close()


def pg(database: PgDatabase, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(database.url, autocommit=True) as connection:
        return list(connection.execute(query, params).fetchall())


def no_ins_in_clear(database: PgDatabase) -> None:
    """Every text column of every table: no matricule standing alone, no
    patient address whose local part is not a pseudonym."""
    columns = pg(
        database,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type IN ('text', 'character varying')",
    )
    assert ("conversations", "patient") in columns and ("messages", "message_id") in columns
    for table, column in columns:
        name = f'"{table}"."{column}"'
        found = pg(database, f'SELECT {name} FROM "{table}" WHERE {name} ~ %s', [MATRICULE])
        assert found == [], (table, column, found[:3])
        texts = pg(
            database, f"SELECT {name} FROM \"{table}\" WHERE {name} ILIKE '%%@patient.mssante.fr%%'"
        )
        for (text,) in texts:
            for local in PATIENT_LOCAL.findall(text):
                assert re.fullmatch(r"ins:[0-9a-f]{16}", local), (table, column, text)


@pytest.fixture
def place(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Installation:
    return installation(tmp_path / "relay", pki, password_hashes)


def test_copies_100000_conversations_once(place: Installation, postgres_db: PgDatabase) -> None:
    fill(place, MANY)
    started = time.monotonic()
    first = counts(place.copy(postgres_db.url))
    elapsed = time.monotonic() - started
    print(f"\nstate copy of {MANY} conversations: {elapsed:.1f} s")
    assert elapsed < 60
    assert first == {
        "pseudonym_key": 1,
        "conversations": MANY + 1,
        "messages": 2 * MANY + 3,
        "user_activity": 1,
        "bal_activity": 1,
        "bal_lifecycle": 1,
        "directory_imports": 1,  # the current import only
        "directory_entries": 2,
    }
    # The rows as the source has them, its ids kept.
    source = sqlite3.connect(place.database)
    expected = source.execute("SELECT * FROM conversations ORDER BY id").fetchall()
    assert pg(postgres_db, "SELECT * FROM conversations ORDER BY id") == expected
    expected_messages = source.execute("SELECT * FROM messages ORDER BY 2, 1").fetchall()
    assert pg(postgres_db, "SELECT * FROM messages ORDER BY 2, 1") == expected_messages
    # The current import, under the target's own generation number.
    assert pg(postgres_db, "SELECT status, source FROM directory_imports") == [
        ("current", "import2.zip")
    ]
    assert pg(
        postgres_db,
        "SELECT count(*) FROM directory_entries WHERE generation ="
        " (SELECT generation FROM directory_imports WHERE status = 'current')",
    ) == [(2,)]
    (check,) = source.execute("SELECT fingerprint FROM pseudonym_key").fetchone()
    assert pg(postgres_db, "SELECT fingerprint FROM pseudonym_key") == [(check,)]
    source.close()
    assert check == place.pseudonyms.check()
    # The older version's rows went through the pseudonyms: the INS nowhere.
    patient = place.pseudonyms.of(P1)
    assert pg(postgres_db, "SELECT count(*) FROM conversations WHERE patient = %s", [patient]) == [
        (1,)
    ]
    no_ins_in_clear(postgres_db)
    # The next conversation a relay opens takes an id past the copied ones.
    assert pg(postgres_db, "SELECT nextval(pg_get_serial_sequence('conversations', 'id'))") == [
        (MANY + 2,)
    ]
    # Again: nothing copied, nothing doubled.
    second = counts(place.copy(postgres_db.url))
    assert second == dict.fromkeys(KINDS, 0)
    assert pg(postgres_db, "SELECT count(*) FROM conversations") == [(MANY + 1,)]
    assert pg(postgres_db, "SELECT count(*) FROM messages") == [(2 * MANY + 3,)]


def test_a_copy_killed_half_way_completes_when_run_again(
    place: Installation, postgres_db: PgDatabase
) -> None:
    fill(place, 30_000, older_rows=False)
    command = [
        sys.executable,
        "-m",
        "mss_relay",
        "state",
        "copy",
        "--from",
        f"sqlite:{place.database}",
        "--to",
        postgres_db.url,
        "--config",
        str(place.config),
    ]
    process = subprocess.Popen(
        command, env={"PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    def copying() -> bool:
        rows = postgres_db.server.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'COPY%%'"
            " AND state = 'active'",
            params=(postgres_db.name,),
        )
        return bool(rows[0][0]) or process.poll() is not None

    assert wait_for(copying, timeout=60)
    if process.poll() is not None:
        pytest.skip("the copy ended before it could be killed half-way")
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()  # type: ignore[union-attr]
    process.stderr.close()  # type: ignore[union-attr]
    # Nothing of it stays (one transaction), and the next run copies it all.
    assert wait_for(lambda: postgres_db.server.backends(postgres_db.name) == 0, timeout=30)
    assert pg(postgres_db, "SELECT count(*) FROM conversations") == [(0,)]
    again = counts(place.copy(postgres_db.url))
    assert again["conversations"] == 30_000 and again["messages"] == 60_000


def test_the_target_of_another_key_or_installation_is_refused(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    first = installation(tmp_path / "a", pki, password_hashes)
    fill(first, 10, older_rows=False)
    assert counts(first.copy(postgres_db.url))["conversations"] == 10
    # Another relay's state, under another key: refused, naming the key's setting.
    other = installation(tmp_path / "b", pki, password_hashes)
    fill(other, 10, older_rows=False)
    line = refusal(other.copy(postgres_db.url))
    assert "log.pseudonym_key_file" in line and "another key" in line
    # The same key but other conversations at the same ids: refused too.
    (other.folder / "var" / "pseudonym.key").write_bytes(
        (first.folder / "var" / "pseudonym.key").read_bytes()
    )
    third = installation(tmp_path / "b", pki, password_hashes)  # the key read again
    third.database.unlink()
    for extra in ("state.sqlite3.marker", "state.sqlite3-wal", "state.sqlite3-shm"):
        (third.folder / "var" / extra).unlink(missing_ok=True)
    fill(third, 5, older_rows=False)
    sqlite = sqlite3.connect(third.database)
    with sqlite:
        sqlite.execute("UPDATE conversations SET opened_at = '2024-01-01T00:00:00.000Z'")
    sqlite.close()
    line = refusal(third.copy(postgres_db.url))
    assert "did not come from this source" in line
    assert pg(postgres_db, "SELECT count(*) FROM conversations") == [(10,)]
    # The source itself under a key that did not make it.
    (first.folder / "var" / "pseudonym.key").write_bytes(b"k" * 32)
    line = refusal(first.copy(postgres_db.url))
    assert "log.pseudonym_key_file" in line and "another key" in line


def test_refusals_are_one_line(place: Installation, postgres_db: PgDatabase) -> None:
    line = refusal(place.copy(postgres_db.url))  # no state file yet
    assert "no such SQLite state file" in line
    assert not place.database.exists()  # not created by the attempt
    fill(place, 3, older_rows=False)
    port = free_port()  # nothing listens there
    line = refusal(place.copy(f"postgresql://u:secret@127.0.0.1:{port}/db"))
    assert f"127.0.0.1:{port}" in line and "secret" not in line
    line = refusal(
        place.copy(
            f"postgresql://{postgres_db.user}:wrong@127.0.0.1:{postgres_db.server.port}/{postgres_db.name}"
        )
    )
    assert "password authentication failed" in line and "wrong" not in line
    assert "--to" in refusal(place.copy("mysql://x@y/z"), code=2)
    assert "--to" in refusal(place.copy("postgresql://u@127.0.0.1/db?nosuchoption=1"), code=2)
    result = place.copy(postgres_db.url, config=place.folder / "missing.yaml")
    assert "configuration" in refusal(result)
    bad_from = subprocess.run(
        [
            sys.executable,
            "-m",
            "mss_relay",
            "state",
            "copy",
            "--from",
            "var/state.sqlite3",
            "--to",
            postgres_db.url,
            "--config",
            str(place.config),
        ],
        cwd=place.folder,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "sqlite:PATH" in refusal(bad_from, code=2)
    missing = subprocess.run(
        [sys.executable, "-m", "mss_relay", "state", "copy", "--from", "sqlite:x"],
        cwd=place.folder,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "--to" in missing.stderr


def pg_config(folder: Path, relay_config: dict[str, Any], database: PgDatabase) -> Path:
    """The relay's configuration with the state on PostgreSQL, its password
    in a file: the same folder, so the same key (var/pseudonym.key)."""
    password = folder / "pg.password"
    password.write_text(database.password + "\n")
    password.chmod(0o600)
    config = {
        **relay_config,
        "state": {
            "database": database.url_without_password,
            "password_file": str(password),
            "directory": "var",
        },
    }
    path = folder / "relay-pg.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_the_password_file_of_the_configuration(
    place: Installation, postgres_db: PgDatabase
) -> None:
    """--to naming the configuration's state.database: its password_file."""
    fill(place, 3, older_rows=False)
    config = pg_config(place.folder, yaml.safe_load(place.config.read_text()), postgres_db)
    assert counts(place.copy(postgres_db.url_without_password, config=config))["conversations"] == 3


@pytest.fixture
def moved(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> Iterator[tuple[str, Any]]:
    """A relay on SQLite that sent a professional's message to a patient,
    stopped: its Message-ID, and the relay's configuration."""
    with two_sided(tmp_path, pki, password_hashes) as (relay, operator, mailbox):
        content = make_message(sender=DR, to=P3, subject="Résultats")
        from tests.conftest import Stack
        from tests.support.mail import connect, send

        with connect(Stack(relay, operator, pki), "jdupont") as client:
            _, (code, _) = send(client, DR, [P3], content)
        assert code == 250
        message_id = content.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
        yield message_id, (relay, mailbox)


def test_a_patient_reply_is_accepted_through_postgresql(
    moved: tuple[str, Any], postgres_db: PgDatabase
) -> None:
    message_id, (relay, mailbox) = moved
    relay.stop()
    place = Installation(
        relay.workdir,
        relay.config_path,
        load_key(relay.workdir / "var" / "pseudonym.key", create=False),
    )
    copied = counts(place.copy(postgres_db.url))
    assert copied["conversations"] == 1 and copied["messages"] == 1
    config = pg_config(relay.workdir, relay.config, postgres_db)
    relay.process.args[relay.process.args.index(str(relay.config_path))] = str(config)
    relay.start()
    head, body = make_message(sender=P3, to=DR, subject="Re: Résultats", body="Merci").split(
        b"\r\n\r\n", 1
    )
    head += f"\r\nIn-Reply-To: {message_id}".encode()
    with smtplib.SMTP("127.0.0.1", relay.port_of("inbound"), timeout=30) as client:
        client.ehlo("mta.operateur.test")
        assert client.mail(P3)[0] == 250
        assert client.rcpt(DR)[0] == 250
        client.docmd("DATA")
        client.send(wire_data(head + b"\r\n\r\n" + body))
        code, text = client.getreply()
    assert code == 250, text
    assert wait_for(lambda: len(mailbox.messages()) == 1)
    assert mailbox.messages()[0][0]["rcpt_tos"] == [DR]
