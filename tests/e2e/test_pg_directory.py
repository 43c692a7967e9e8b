"""End to end: the Annuaire Santé on a shared PostgreSQL state (the private
server of tests/support/postgres.py): « mss-relay directory import » loads
it into PostgreSQL, show and search read it there, each import replaces the
previous one (whose rows are removed), a failed or shrinking import keeps the
previous one current; a relay on that database looks recipients up in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.conftest import PgDatabase, Pki, Stack, base_config
from tests.e2e.test_directory import BALS, HOMONYM, LISTED, UNLISTED, decision, mss_relay, rcpt
from tests.support.extraction import generated, write
from tests.support.processes import Relay, Upstream, free_port


def pg_config(tmp_path: Path, db: PgDatabase) -> Path:
    """A command-line configuration whose state is the test's database."""
    config = tmp_path / "pg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listeners": [{"name": "m", "role": "milter", "port": free_port()}],
                "state": {"database": db.url, "directory": str(tmp_path / "var")},
                "log": {"file": "-"},
                # No relay running: the import's poke of the control socket finds none.
                "control": {"socket": str(tmp_path / "var" / "control.sock")},
            }
        )
    )
    return config


def imports(db: PgDatabase) -> list[tuple[Any, ...]]:
    """(status, rows, addresses, rows stored) of each generation, in order."""
    with psycopg.connect(db.url) as connection:
        return connection.execute(
            "SELECT status, rows, addresses, (SELECT count(*) FROM directory_entries e"
            " WHERE e.generation = i.generation) FROM directory_imports i ORDER BY generation"
        ).fetchall()


def stored(db: PgDatabase) -> int:
    with psycopg.connect(db.url) as connection:
        row = connection.execute("SELECT count(*) FROM directory_entries").fetchone()
        assert row is not None
        return int(row[0])


def test_import_show_search_then_a_second_import_replaces_it(
    tmp_path: Path, postgres_db: PgDatabase
) -> None:
    config = pg_config(tmp_path, postgres_db)
    done = mss_relay(config, "show", LISTED)
    assert (done.returncode, done.stderr) == (
        1,
        f"mss-relay: {LISTED}: no extraction imported yet\n",
    )
    done = mss_relay(config, "import", str(write(tmp_path / "e", BALS, zipped=True)))
    assert done.returncode == 0, done.stderr
    assert "5 rows, 4 distinct addresses, 1 duplicate rows, 2 lines skipped" in done.stdout
    assert imports(postgres_db) == [("current", 5, 4, 5)]

    done = mss_relay(config, "show", "DR.MARTIN@chu-b.mssante.fr")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "PER | dr.martin@chu-b.mssante.fr | DR Zoé Martin | Médecin | CHU B | 69003 LYON\n"
    )
    done = mss_relay(config, "show", HOMONYM)  # the duplicate row too, in file order
    assert (
        done.stdout.splitlines()
        == [f"PER | {HOMONYM} | Hélène Lefèvre | Infirmier | Clinique C | 75013 PARIS"] * 2
    )
    for text in ("Hélène LEFÈVRE", "helene lefevre", "lefe hele"):
        done = mss_relay(config, "search", *text.split())
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 3, (text, lines)
        # By Nom, Prénom, then address, in byte order as on SQLite (a locale's
        # order would put helene.lefevre@ before h.lefevre@).
        assert lines == sorted(lines, key=lambda line: line.split(" | ")[1]), lines
    done = mss_relay(config, "search", "universitaire")
    assert done.stdout.startswith("ORG | accueil@chu-b.mssante.fr | - | - | Centre Hosp")
    done = mss_relay(config, "show", UNLISTED)
    assert done.returncode == 1 and "not in the Annuaire Santé" in done.stderr
    assert mss_relay(config, "search", "personne").returncode == 1

    # A second import becomes current; the first one's rows are gone.
    second = [*BALS[1:4], *generated(5, duplicates_every=0)]
    done = mss_relay(config, "import", "--force", str(write(tmp_path / "second.txt", second)))
    assert done.returncode == 0, done.stderr
    assert imports(postgres_db) == [("current", 8, 8, 8)]
    assert stored(postgres_db) == 8
    assert mss_relay(config, "show", LISTED).returncode == 1  # not in the second one
    assert mss_relay(config, "show", "bal4@hopital-4.mssante.fr").returncode == 0


def test_shrinking_and_failed_imports_keep_the_previous_one(
    tmp_path: Path, postgres_db: PgDatabase
) -> None:
    config = pg_config(tmp_path, postgres_db)
    big = [*BALS[:1], *generated(99, duplicates_every=0)]
    last = big[-1].address
    assert mss_relay(config, "import", str(write(tmp_path / "big.txt", big))).returncode == 0
    small = write(tmp_path / "small.txt", big[:70])  # a cut download: 30 % of the BALs gone
    done = mss_relay(config, "import", str(small))
    assert done.returncode == 1
    assert done.stderr == (
        f"mss-relay: directory import: {small}: 70 distinct addresses where the current"
        " import has 100 (would remove 30%; more than 20% needs --force): the previous"
        " import is kept\n"
    )
    assert imports(postgres_db) == [("current", 100, 100, 100)]  # the refused one removed
    assert mss_relay(config, "show", last).returncode == 0

    # A file that fails after some batches were loaded: a Latin-1 line after
    # 12,000 good rows (two batches committed, then the error).
    bad = write(tmp_path / "bad.txt", [*big, *generated(12_000)])
    with bad.open("ab") as out:
        out.write(BALS[0].line().replace("Zoé", "Zoë").encode("latin-1") + b"\r\n")
    done = mss_relay(config, "import", str(bad))
    assert done.returncode == 1
    assert done.stderr == f"mss-relay: directory import: {bad}: not UTF-8 (line 12102)\n"
    assert imports(postgres_db) == [("current", 100, 100, 100)]
    assert stored(postgres_db) == 100
    assert mss_relay(config, "show", last).returncode == 0

    # A cut ZIP: not readable; the previous import is kept.
    cut = write(tmp_path / "whole", big, zipped=True)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    done = mss_relay(config, "import", str(cut))
    assert done.returncode == 1
    assert done.stderr.startswith(f"mss-relay: directory import: {cut}: "), done.stderr
    assert imports(postgres_db) == [("current", 100, 100, 100)]

    # What an import killed half-way left ('loading' rows) is removed by the next.
    with psycopg.connect(postgres_db.url) as connection:
        row = connection.execute(
            "INSERT INTO directory_imports (imported_at, source, status, rows, addresses)"
            " VALUES ('2024-01-01T00:00:00.000Z', 'killed', 'loading', 0, 0)"
            " RETURNING generation"
        ).fetchone()
        assert row is not None
        connection.execute(
            "INSERT INTO directory_entries (generation, address, kind, civility, last_name,"
            " first_name, profession, specialty, structure, sign, service, postal_code, town,"
            " search) SELECT %s, 'x' || n || '@y.fr', 'PER', '', '', '', '', '', '', '', '',"
            " '', '', '' FROM generate_series(1, 50) n",
            [row[0]],
        )
    assert [status for status, *_ in imports(postgres_db)] == ["current", "loading"]
    done = mss_relay(config, "import", "--force", str(small))
    assert done.returncode == 0, done.stderr
    assert imports(postgres_db) == [("current", 70, 70, 70)]
    assert stored(postgres_db) == 70
    assert mss_relay(config, "show", last).returncode == 1


def test_a_server_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "pg.yaml"
    port = free_port()
    config.write_text(
        yaml.safe_dump(
            {
                "listeners": [{"name": "m", "role": "milter", "port": free_port()}],
                "state": {
                    "database": f"postgresql://nobody@127.0.0.1:{port}/none",
                    "directory": str(tmp_path / "var"),
                    "connect_timeout": 2,
                },
                "log": {"file": "-"},
            }
        )
    )
    for args in (("show", LISTED), ("search", "x"), ("import", str(tmp_path / "none.txt"))):
        done = mss_relay(config, *args)
        assert done.returncode == 1, args
        assert done.stderr.startswith("mss-relay: state database: "), done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_relay_on_postgresql_looks_recipients_up_there(
    tmp_path: Path, postgres_db: PgDatabase, pki: Pki, password_hashes: dict[str, str]
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    state = {"database": postgres_db.url, "directory": str(tmp_path / "var")}
    relay = Relay(
        tmp_path,
        base_config(pki, password_hashes, upstream.port, directory={"mode": "refuse"}, state=state),
    )
    try:
        relay.start()
        stack = Stack(relay, upstream, pki)
        code, text = rcpt(stack, LISTED)  # never imported: fail closed
        assert (code, text[:5]) == (451, b"4.3.0"), text
        # Imported by the command line with the relay's own configuration.
        done = mss_relay(relay.config_path, "import", str(write(tmp_path / "e.txt", BALS)))
        assert done.returncode == 0, done.stderr
        assert "in force in the running relay" in done.stdout
        code, _ = rcpt(stack, LISTED.upper())
        assert code == 250
        assert decision(stack, LISTED.upper())["directory"] == "listed"
        code, text = rcpt(stack, UNLISTED)
        assert code == 550, text
        assert text.startswith(
            f"5.1.1 <{UNLISTED}> : adresse absente de l'Annuaire Sante (id ".encode()
        ), text
        assert decision(stack, UNLISTED)["directory"] == "unlisted"
    finally:
        relay.stop()
        upstream.stop()
