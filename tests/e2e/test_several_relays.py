"""Several relays, one state (issue 18): two real relay processes on one
private PostgreSQL server (tests/support/postgres.py), each with its own
submission and inbound listeners, the same operator and mailbox upstreams."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import shutil
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from mss_relay.pseudonym import load_key
from tests.conftest import PgDatabase, Pki, Stack, base_config, with_inbound
from tests.support.mail import connect, make_message, send, wire_data
from tests.support.processes import Relay, Upstream, free_port, wait_for

DR = "jean.dupont@ch-exemple.mssante.fr"
P1 = "295109912611193@patient.mssante.fr"
P2 = "185057800608491@patient.mssante.fr"
MATRICULES = ("295109912611193", "185057800608491")


@dataclass
class Pair:
    a: Relay
    b: Relay
    operator: Upstream
    mailbox: Upstream
    pki: Pki
    db: PgDatabase
    key_file: Path

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db.url) as connection:
            return list(connection.execute(sql).fetchall())

    def pseudonym(self, patient: str) -> str:
        return load_key(self.key_file, create=False).of(patient)


def professional_sends(
    relay: Relay, pki: Pki, operator: Upstream, to: str, subject: str = "Résultats"
) -> tuple[int, str]:
    content = make_message(sender=DR, to=to, subject=subject)
    with connect(Stack(relay, operator, pki), "jdupont") as client:
        _, (code, _) = send(client, DR, [to], content)
    message_id = content.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    return code, message_id


def patient_sends(relay: Relay, patient: str, in_reply_to: str) -> tuple[int, bytes]:
    content = make_message(sender=patient, to=DR, subject="Re: Résultats", body="Merci")
    head, body = content.split(b"\r\n\r\n", 1)
    head += f"\r\nIn-Reply-To: {in_reply_to}".encode()
    with smtplib.SMTP("127.0.0.1", relay.port_of("inbound"), timeout=30) as client:
        client.ehlo("mta.operateur.test")
        code, text = client.mail(patient)
        assert code == 250, text
        code, text = client.rcpt(DR)
        if code != 250:
            return code, text
        client.docmd("DATA")
        client.send(wire_data(head + b"\r\n\r\n" + body))
        return client.getreply()


def colleague_sends(relay: Relay, subject: str = "Avis") -> None:
    """A professional of another structure writes to a BAL, through the
    inbound listener: mail that needs no shared state (a refusal raises)."""
    colleague = "confrere@ch-autre.mssante.fr"
    content = make_message(sender=colleague, to=DR, subject=subject)
    with smtplib.SMTP("127.0.0.1", relay.port_of("inbound"), timeout=30) as client:
        client.ehlo("mta.operateur.test")
        client.sendmail(colleague, [DR], wire_data(content))


def relay_config(
    pki: Pki, hashes: dict[str, str], pair: tuple[Upstream, Upstream], url: str, key: Path
) -> dict[str, Any]:
    operator, mailbox = pair
    config = with_inbound(base_config(pki, hashes, operator.port), mailbox.port)
    config["state"] = {"database": url}
    config["log"]["pseudonym_key_file"] = str(key)
    return config


@contextlib.contextmanager
def two_relays(
    tmp: Path, pki: Pki, hashes: dict[str, str], db: PgDatabase, **overrides: Any
) -> Iterator[Pair]:
    operator, mailbox = Upstream(tmp / "op"), Upstream(tmp / "mb")
    operator.start()
    mailbox.start()
    key = tmp / "pseudonym.key"  # one key for all the relays on the database
    relays = []
    try:
        for name in ("a", "b"):
            (tmp / name).mkdir()
            config = relay_config(pki, hashes, (operator, mailbox), db.url, key)
            config.update(overrides)
            relay = Relay(tmp / name, config)
            relay.start()
            relays.append(relay)
        yield Pair(relays[0], relays[1], operator, mailbox, pki, db, key)
    finally:
        for relay in relays:
            relay.stop()
        operator.stop()
        mailbox.stop()


@pytest.fixture
def pair(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> Iterator[Pair]:
    with two_relays(tmp_path, pki, password_hashes, postgres_db) as relays:
        yield relays


def test_a_conversation_opened_through_a_is_answered_through_b_and_closed_for_both(
    pair: Pair,
) -> None:
    code, message_id = professional_sends(pair.a, pair.pki, pair.operator, P1)
    assert code == 250
    pair.a.wait_event("conversation_opened")
    code, text = patient_sends(pair.b, P1, message_id)
    assert code == 250, text
    assert wait_for(lambda: len(pair.mailbox.messages()) == 1)
    # [FIN] through A closes it for B too.
    code, _ = professional_sends(pair.a, pair.pki, pair.operator, P1, subject="[FIN]")
    assert code == 250
    pair.a.wait_event("conversation_closed")
    code, text = patient_sends(pair.b, P1, message_id)
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert len(pair.mailbox.messages()) == 1
    rows = pair.rows("SELECT patient, closed_at IS NOT NULL, close_reason FROM conversations")
    assert rows == [(pair.pseudonym(P1), True, "fin")]


def _cli(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    return relay.cli("conversations", *args)


def test_the_administrator_sees_and_closes_the_shared_state_from_either_configuration(
    pair: Pair,
) -> None:
    code, message_id = professional_sends(pair.a, pair.pki, pair.operator, P2)
    assert code == 250
    pair.a.wait_event("conversation_opened")
    for relay in (pair.a, pair.b):
        listed = _cli(relay, "list")
        assert listed.returncode == 0, listed.stderr
        assert pair.pseudonym(P2) in listed.stdout and "open" in listed.stdout
        assert MATRICULES[1] not in listed.stdout
    closed = _cli(pair.b, "close", DR, P2)
    assert closed.returncode == 0, closed.stderr
    assert "closed" in _cli(pair.a, "list", "--closed").stdout
    assert _cli(pair.a, "list", "--open").stdout.strip() == ""
    code, text = patient_sends(pair.a, P2, message_id)
    assert (code, text[:5]) == (550, b"5.7.1")


# 25 sessions at once on each relay, all of one user: no cap in the way.
UNTHROTTLED = {"max_connections_per_client": 100, "messages_per_minute": 0}


def test_fifty_first_messages_to_one_patient_over_both_relays_open_one_conversation(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=UNTHROTTLED) as pair:
        _fifty_first_messages(pair)


def _fifty_first_messages(pair: Pair) -> None:
    def one(i: int) -> int:
        relay = pair.a if i % 2 else pair.b
        return professional_sends(relay, pair.pki, pair.operator, P1)[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(one, range(50)))
    assert codes == [250] * 50
    assert wait_for(lambda: len(pair.operator.messages()) == 50)
    assert wait_for(lambda: pair.rows("SELECT count(*) FROM messages")[0][0] == 50, timeout=30)
    rows = pair.rows("SELECT patient, closed_at FROM conversations")
    assert rows == [(pair.pseudonym(P1), None)]
    opened = [*pair.a.events("conversation_opened"), *pair.b.events("conversation_opened")]
    assert len(opened) == 1


def test_no_matricule_in_clear_in_any_table_after_a_patient_flow(pair: Pair) -> None:
    code, message_id = professional_sends(pair.a, pair.pki, pair.operator, P1)
    assert code == 250
    pair.a.wait_event("conversation_opened")
    assert patient_sends(pair.b, P1, message_id)[0] == 250
    pair.b.wait_event("conversation_continued")
    found = []
    for (table,) in pair.rows(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    ):
        for row in pair.rows(f'SELECT * FROM "{table}"'):
            text = " ".join(str(v) for v in row)
            if any(m in text for m in MATRICULES) or re.search(
                r"(?<!ins:)\b[0-9AB]{13,15}@patient", text, re.IGNORECASE
            ):
                found.append((table, text))
    assert found == []
    assert pair.rows("SELECT count(*) FROM messages")[0][0] == 2


def _start_fails(relay: Relay) -> str:
    """A relay that must refuse to start: its one line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "mss_relay", "serve", "--config", str(relay.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=relay.workdir,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_relay_with_another_key_or_an_older_schema_refuses_to_start(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], pair: Pair
) -> None:
    other = tmp_path / "c"
    other.mkdir()
    config = relay_config(
        pki, password_hashes, (pair.operator, pair.mailbox), pair.db.url, other / "other.key"
    )
    # Its own key, made before, not the others'.
    shutil.copy(pair.key_file, other / "other.key")
    with open(other / "other.key", "r+b") as key:
        key.write(b"\x00" * 32)
    line = _start_fails(Relay(other, config))
    assert "log.pseudonym_key_file" in line and str(other / "other.key") in line
    # A key file missing: told to copy the others', none made.
    config["log"]["pseudonym_key_file"] = str(other / "missing.key")
    line = _start_fails(Relay(other, config))
    assert "log.pseudonym_key_file" in line and "copy" in line
    assert not (other / "missing.key").exists()
    # A schema newer than this relay knows.
    config["log"]["pseudonym_key_file"] = str(pair.key_file)
    pair.rows("INSERT INTO schema_version (version) VALUES (99) RETURNING version")
    line = _start_fails(Relay(other, config))
    assert "state.database" in line and "schema version 99" in line
    assert pair.db.password not in line


def test_an_unreachable_server_is_one_line_naming_the_key(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    operator, mailbox = Upstream(tmp_path / "op"), Upstream(tmp_path / "mb")
    url = postgres_db.url.replace(postgres_db.password, "wrong-password")
    config = relay_config(pki, password_hashes, (operator, mailbox), url, tmp_path / "k.key")
    line = _start_fails(Relay(tmp_path, config))
    assert line.count("state.database") == 1 and "password authentication failed" in line
    assert "wrong-password" not in line


def _fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Sender:
    """A client that retries what it is told to retry (4xx), as an MTA or a
    mail client does: each message has its own Message-ID, sent until 250."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.replies: list[tuple[int, bytes]] = []
        self.delivered: list[str] = []

    def attempt(self, relay: Relay, message_id: str) -> int:
        content = make_message(sender=DR, to=P1, subject="Résultats")
        content = re.sub(rb"Message-ID: <[^>]*>", f"Message-ID: {message_id}".encode(), content)
        try:
            with connect(Stack(relay, self.pair.operator, self.pair.pki), "jdupont") as client:
                code, text = client.mail(DR)
                if code == 250:
                    code, text = client.rcpt(P1)
                if code == 250:
                    code, text = client.docmd("DATA")
                    assert code == 354, (code, text)
                    client.send(wire_data(content))
                    code, text = client.getreply()
        except smtplib.SMTPResponseException as error:  # AUTH refused: 451 too
            code, text = error.smtp_code, error.smtp_error
        self.replies.append((code, text))
        if code == 250:
            self.delivered.append(message_id)
        return code


def test_the_server_stopped_gives_451_and_the_relays_recover_without_a_restart(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    metrics = free_port()
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=UNTHROTTLED) as pair:
        pair.a.config["metrics"] = {"port": metrics}  # read at start: restart A with it
        pair.a.stop()
        pair.a.config_path.write_text(yaml.safe_dump(pair.a.config, sort_keys=False))
        pair.a.start()
        sender = Sender(pair)
        assert sender.attempt(pair.a, "<first@ch-exemple.mssante.fr>") == 250
        assert wait_for(lambda: pair.rows("SELECT count(*) FROM messages")[0][0] == 1)
        assert _fetch(metrics, "/healthz") == (200, "ok\n")

        postgres_db.server.stop()
        # Within the probe's second: patient mail is told to come back later.
        assert wait_for(lambda: sender.attempt(pair.a, "<during-a@ch-exemple.mssante.fr>") != 250)
        assert wait_for(lambda: sender.attempt(pair.b, "<during-b@ch-exemple.mssante.fr>") != 250)
        assert wait_for(
            lambda: patient_sends(pair.b, P1, "<first@ch-exemple.mssante.fr>")[0] != 250
        )
        code, text = patient_sends(pair.a, P1, "<first@ch-exemple.mssante.fr>")
        assert (code, text[:5]) == (451, b"4.3.0"), text
        refusals = [(c, t) for c, t in sender.replies if c != 250]
        assert refusals and all(c == 451 and t.startswith(b"4.3.0") for c, t in refusals)
        status, body = _fetch(metrics, "/healthz")
        assert status == 503 and "database unreachable" in body
        # Mail that needs no state (no AUTH, no rate, no conversation: a
        # colleague's message to a BAL) keeps flowing during the outage.
        colleague_sends(pair.b, "Avis pendant la panne")
        assert wait_for(
            lambda: any(b"Avis pendant la panne" in data for _, data in pair.mailbox.messages())
        )
        assert postgres_db.password not in body

        postgres_db.server.start()
        # The same relays, not restarted: within seconds every retried message goes.
        for message_id in ("<during-a@ch-exemple.mssante.fr>", "<during-b@ch-exemple.mssante.fr>"):
            relay = pair.a if message_id.startswith("<during-a") else pair.b
            if message_id not in sender.delivered:
                assert wait_for(lambda r=relay, m=message_id: sender.attempt(r, m) == 250)
        assert wait_for(
            lambda: patient_sends(pair.b, P1, "<first@ch-exemple.mssante.fr>")[0] == 250
        )
        assert wait_for(lambda: _fetch(metrics, "/healthz") == (200, "ok\n"))
        # Nothing lost, nothing twice: each Message-ID once at the operator
        # and in the shared state.
        sent = sorted(set(sender.delivered))
        assert wait_for(lambda: len(pair.operator.messages()) == len(sender.delivered))
        at_operator = sorted(
            m.group(0).decode()
            for _, data in pair.operator.messages()
            if (m := re.search(rb"<[^>]*@ch-exemple\.mssante\.fr>", data.split(b"\r\n\r\n")[0]))
        )
        assert at_operator == sent
        assert wait_for(
            lambda: (
                pair.rows("SELECT count(*) FROM messages WHERE direction = 'out'")[0][0]
                == len(sent)
            ),
            timeout=30,
        )
    for relay in (pair.a, pair.b):
        assert "Traceback" not in relay.log_text() + relay.process.stderr()


def test_connections_killed_mid_transaction_lose_nothing(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=UNTHROTTLED) as pair:
        sender = Sender(pair)
        ids = [f"<kill-{i}@ch-exemple.mssante.fr>" for i in range(30)]

        def deliver(i: int) -> None:
            relay = pair.a if i % 2 else pair.b
            while sender.attempt(relay, ids[i]) != 250:
                pass

        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(deliver, i) for i in range(len(ids))]
            for _ in range(10):
                if all(f.done() for f in futures):
                    break
                postgres_db.server.terminate_connections(postgres_db.name)
                # Paces the faults (a kill every 0.5 s), asserts nothing on time.
                time.sleep(0.5)
            for future in futures:
                future.result()
        assert sorted(sender.delivered) == sorted(ids)
        assert wait_for(lambda: len(pair.operator.messages()) == len(ids))
        assert wait_for(
            lambda: pair.rows("SELECT count(*) FROM messages")[0][0] == len(ids), timeout=30
        )
        assert pair.rows("SELECT count(*) FROM conversations") == [(1,)]
        refusals = [(c, t[:5]) for c, t in sender.replies if c != 250]
        assert all(r == (451, b"4.3.0") for r in refusals), refusals
