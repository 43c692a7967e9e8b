"""Helpdesk (issue 15): refusals quote an id, `mss-relay why` tells the story
of a transaction from the log, smtplib's PLAIN-then-LOGIN is one failure, a
graceful stop answers 421 4.3.2, a port in use exits 1. Real relay process,
real smtplib clients, the recording upstream."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import PASSWORDS, Pki, Stack, _stack, base_config, relay_with
from tests.support import files
from tests.support.mail import connect, make_message, send, wire_data
from tests.support.processes import ROOT, Relay, free_port

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
QUOTED = re.compile(rb"\(id ([0-9A-F]{12})\)$")


def quoted(text: bytes) -> str:
    """The id a reply quotes at its end."""
    found = QUOTED.search(text)
    assert found is not None, text
    return found.group(1).decode()


def why(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mss_relay", "why", *args, "--config", str(relay.config_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def desk(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory.mktemp("desk"), pki, password_hashes)


def test_refusals_quote_their_transaction_and_why_tells_it(desk: Stack) -> None:
    relay = desk.relay
    with connect(desk) as client:
        # MAIL: a BAL this user may not send from.
        code, text = client.mail("secretariat@ch-exemple.mssante.fr")
        assert (code, text[:5]) == (553, b"5.7.1"), text
        mail_id = quoted(text)
        # RCPT, then DATA with no recipient: one transaction, one id.
        assert client.mail(SENDER)[0] == 250
        code, text = client.rcpt("someone@gmail.com")
        assert (code, text[:5]) == (550, b"5.7.1"), text
        rcpt_id = quoted(text)
        code, text = client.docmd("DATA")
        assert (code, text[:5]) == (503, b"5.5.1"), text
        assert quoted(text) == rcpt_id
        client.rset()
        # End of DATA.
        message = make_message(attachments={"facture.exe": files.exe()})
        _, (code, text) = send(client, SENDER, [DEST], message)
        assert (code, text[:5]) == (550, b"5.7.1"), text
        data_id = quoted(text)
    assert len({mail_id, rcpt_id, data_id}) == 3
    # The reply logged is the reply sent, id included.
    decisions = relay.wait_event("decision", where=lambda e: e["txid"] == data_id)
    assert decisions[-1]["reply"].endswith(f"(id {data_id})")
    relay.wait_event("transaction", where=lambda e: e["txid"] == data_id)

    told = why(relay, mail_id)
    assert told.returncode == 0, told.stderr
    assert f"Transaction {mail_id}" in told.stdout
    assert "[MAIL FROM] refusé" in told.stdout and "secretariat@" in told.stdout
    assert f"(id {mail_id})" in told.stdout  # the reply as sent
    told = why(relay, rcpt_id, "--lang", "en")
    assert told.returncode == 0, told.stderr
    lines = told.stdout.splitlines()
    assert next(ln for ln in lines if "[MAIL FROM]" in ln).count("accepted") == 1
    assert "[RCPT TO] refused" in told.stdout and "someone@gmail.com" in told.stdout
    told = why(relay, data_id.lower())  # as a user may type it
    assert told.returncode == 0, told.stderr
    steps = told.stdout.splitlines()[1:]
    # A step's line: its time, then its [name] (a masked file name is no step).
    assert [s.split("]")[0].split("[")[-1] for s in steps if "  [" in s] == [
        "MAIL FROM",
        "RCPT TO",
        "fin du DATA",
    ], told.stdout
    # The log never held the file's name (issue 17): why cannot tell it.
    assert "refusé" in steps[2] and "[nom masque]" in steps[2] and "facture" not in steps[2]
    assert steps[-1].strip().split("  ", 1)[1].startswith("Résultat: refusé"), told.stdout


def test_a_refusal_before_any_transaction_quotes_the_session(desk: Stack) -> None:
    with connect(desk, user=None) as client:
        code, text = client.docmd("AUTH", "PLAIN AG5vYm9keQB3cm9uZw==")  # nobody / wrong
        assert (code, text[:5]) == (535, b"5.7.8"), text
        session = quoted(text)
    relay = desk.relay
    auth = relay.wait_event("auth", where=lambda e: e["session"] == session)
    assert auth and auth[-1]["result"] == "failure"
    told = why(relay, session)
    assert told.returncode == 0, told.stderr
    assert told.stdout.startswith(f"Session {session}")
    assert "[authentification] failure" in told.stdout and "nobody" in told.stdout


def test_why_finds_a_message_by_its_message_id(desk: Stack) -> None:
    message = make_message()
    message_id = re.search(rb"Message-ID: (<[^>]+>)", message)
    assert message_id is not None
    with connect(desk) as client:
        _, (code, text) = send(client, SENDER, [DEST], message)
    assert code == 250, text
    txid = quoted(text)
    desk.relay.wait_event("transaction", where=lambda e: e["txid"] == txid)
    told = why(desk.relay, message_id.group(1).decode())
    assert told.returncode == 0, told.stderr
    assert told.stdout.startswith(f"Transaction {txid}")
    assert "Résultat: transmis à l'opérateur" in told.stdout
    assert "queued as UP" in told.stdout  # the upstream's reply


def test_why_on_an_unknown_id_says_so_and_exits_1(desk: Stack) -> None:
    told = why(desk.relay, "0123456789AB")
    assert told.returncode == 1
    assert told.stdout == ""
    assert told.stderr.startswith("mss-relay: why: aucune ligne du journal pour 0123456789AB")
    assert len(told.stderr.splitlines()) == 1


@pytest.fixture
def guarded(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Stack]:
    yield from _stack(
        tmp_path,
        pki,
        password_hashes,
        throttle={
            "auth_max_failures_per_user": 3,
            "auth_max_failures_per_client": 100,
            "auth_failure_delay": 0,
        },
    )


def _smtplib_login(stack: Stack, password: str) -> int:
    """smtplib's login(): PLAIN, then LOGIN when PLAIN fails. Its code."""
    with connect(stack, user=None) as client:
        try:
            client.login("jdupont", password)
        except smtplib.SMTPAuthenticationError as error:
            return error.smtp_code
        return 235


def test_smtplib_plain_then_login_counts_one_failure(guarded: Stack) -> None:
    # Two connections, one wrong password each: two failures, not four.
    assert _smtplib_login(guarded, "wrong") == 535
    assert _smtplib_login(guarded, "wrong") == 535
    assert _smtplib_login(guarded, PASSWORDS["jdupont"]) == 235
    # The third connection reaches auth_max_failures_per_user with its PLAIN:
    # its LOGIN, and the right password after it, meet the lockout.
    assert _smtplib_login(guarded, "wrong") == 454
    assert _smtplib_login(guarded, PASSWORDS["jdupont"]) == 454
    relay = guarded.relay
    assert len(relay.wait_event("auth_lockout")) == 1
    failures = [e for e in relay.events("auth") if e["result"] == "failure"]
    assert [bool(e.get("repeated")) for e in failures] == [False, True, False, True, False]


def test_sigterm_answers_421_and_lets_a_message_past_its_dot_finish(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    # The upstream's timeout is long: its DATA is held until the test releases it.
    with relay_with(tmp_path, pki, password_hashes, timeout=60) as stack:
        relay, upstream = stack.relay, stack.upstream
        idle = connect(stack)
        middle = connect(stack)
        assert middle.mail(SENDER)[0] == 250 and middle.rcpt(DEST)[0] == 250
        assert middle.docmd("DATA")[0] == 354
        middle.send(b"Subject: x\r\n\r\nla moitie du message\r\n")  # no final dot
        upstream.control(hang="data")
        past = connect(stack)
        assert past.mail(SENDER)[0] == 250 and past.rcpt(DEST)[0] == 250
        assert past.docmd("DATA")[0] == 354
        past.send(wire_data(make_message()))
        upstream.wait_journal(lambda j: any(e["event"] == "hang" for e in j))

        process = relay.process.proc
        assert process is not None
        process.send_signal(signal.SIGTERM)
        draining = relay.wait_event("draining", timeout=30)
        assert draining and draining[0]["finishing"] == 1, draining
        # Still sending DATA: told at once, not waited for.
        code, text = middle.getreply()
        assert (code, text[:5]) == (421, b"4.3.2"), text
        assert b"Arret du relais en cours" in text
        cut = text
        # Idle: its next command.
        code, text = idle.docmd("NOOP")
        assert (code, text[:5]) == (421, b"4.3.2"), text
        # Past its final dot: delivered, and answered.
        upstream.control()
        code, text = past.getreply()
        assert code == 250, text
        assert len(upstream.messages()) == 1
        assert process.wait(timeout=60) == 0
        for client in (idle, middle, past):
            client.close()
    stopped = relay.events("stopped")
    assert stopped and stopped[0]["interrupted_transactions"] == 0
    abandoned = [e for e in relay.events("transaction") if e["outcome"] == "abandoned"]
    stopping = [e for e in abandoned if e["reply"] == "relay stopping during DATA"]
    assert len(stopping) == 1, abandoned
    # The 421 quotes the transaction it cut, as every refusal in a transaction.
    assert cut.endswith(f"(id {stopping[0]['txid']})".encode()), cut


@pytest.mark.parametrize("where", ["listeners[0]", "metrics"])
def test_a_port_in_use_exits_1_with_one_line(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], where: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = base_config(pki, password_hashes, free_port())
        if where == "metrics":
            config["metrics"] = {"host": "127.0.0.1", "port": port}
        else:
            config["listeners"][0]["port"] = port
        path = tmp_path / "relay.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [sys.executable, "-m", "mss_relay", "serve", "--config", str(path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"mss-relay: cannot listen on 127.0.0.1:{port} ({where}): address already in use"
    ]


def test_the_readme_smtplib_snippet_prints_the_refusal(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("or with Python's `smtplib`:", 1)[1].split("```python\n", 1)[1]
    snippet = snippet.split("```", 1)[0]
    (tmp_path / "config").mkdir()
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    demo["listeners"][0]["port"] = free_port()
    demo["log"]["file"] = "../var/log.jsonl"
    relay = Relay(tmp_path / "config", demo)
    relay.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", snippet.replace("10587", str(relay.port))],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        assert relay.stop() == 0
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert len(printed) == 1, done.stdout
    assert printed[0].startswith("x@gmail.com 550 5.7.1 <x@gmail.com> : destinataire hors"), printed
    txid = quoted(printed[0].encode())
    assert len(list((tmp_path / "var" / "capture").glob("*.eml"))) == 1
    assert any(e.get("txid") == txid for e in relay.events("decision"))
