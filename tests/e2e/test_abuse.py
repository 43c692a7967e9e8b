"""End to end: authenticity and abuse resistance (header alignment, throttling,
dangerous attachments), on the real relay process with smtplib."""

from __future__ import annotations

import base64
import select
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS, Pki, Stack, _stack
from tests.support import files
from tests.support.mail import connect, make_message, send, wire_data

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


def test_from_header_spoofing_is_553_and_nothing_goes_upstream(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    # The envelope sender is jdupont's own BAL; the From: header is msecret's.
    spoofed = make_message(sender="secretariat@ch-exemple.mssante.fr")
    with connect(shared_stack, "jdupont") as client:
        _, (code, text) = send(client, SENDER, [DEST], spoofed)
        assert (code, text[:5]) == (553, b"5.7.1"), text
        assert b"secretariat@ch-exemple.mssante.fr" in text
        # Two From: fields: one for the eye, one for the filters.
        doubled = b"From: " + SENDER.encode() + b"\r\n" + make_message()
        _, (code, text) = send(client, SENDER, [DEST], doubled)
        assert (code, text[:5]) == (550, b"5.6.0"), text
        # The same user, an organisationnelle BAL in From: and himself in Sender: passes.
        shared = make_message(sender="accueil@ch-exemple.mssante.fr").replace(
            b"\r\nTo:", f"\r\nSender: {SENDER}\r\nTo:".encode(), 1
        )
        _, (code, text) = send(client, SENDER, [DEST], shared)
        assert code == 250, text
    assert len(shared_stack.upstream.messages()) == before + 1
    decisions = [e for e in shared_stack.relay.events("decision") if e["stage"] == "data"]
    assert [d["rule"] for d in decisions[-3:]] == ["from_aligned", "single_from", "data"]


@pytest.fixture
def throttled(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Stack]:
    yield from _stack(
        tmp_path,
        pki,
        password_hashes,
        throttle={
            "auth_max_failures_per_user": 3,
            "auth_max_failures_per_client": 6,
            "auth_failure_delay": 0,
            "messages_per_minute": 2,
            "recipients_per_hour": 3,
            "max_connections": 6,
            "max_connections_per_client": 4,
            "max_concurrent_messages": 1,
        },
        timeouts={"idle": 1, "data": 2, "busy_wait": 0.5},
    )


@pytest.fixture
def one_slot(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Stack]:
    """One message received at a time. The idle and DATA timeouts stay long:
    with throttled's 1 s, a session left waiting while the other's AUTH was
    verified (scrypt, slow on a loaded machine) was cut before its turn."""
    yield from _stack(
        tmp_path,
        pki,
        password_hashes,
        throttle={"max_concurrent_messages": 1},
        timeouts={"busy_wait": 0.5},
    )


def _login(stack: Stack, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would try PLAIN, then LOGIN)."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    with connect(stack, user=None) as client:
        return client.docmd("AUTH", f"PLAIN {token}")


def test_repeated_bad_passwords_lock_the_user_out_then_the_client(throttled: Stack) -> None:
    for _ in range(3):
        assert _login(throttled, "jdupont", "guess")[0] == 535
    # Locked: even the right password is not looked at.
    code, text = _login(throttled, "jdupont", PASSWORDS["jdupont"])
    assert (code, text[:5]) == (454, b"4.7.0"), text
    # Another user from the same address still gets in...
    assert _login(throttled, "msecret", PASSWORDS["msecret"])[0] == 235
    # ...until the address itself has failed too often, whatever the names tried.
    for name in ("alice", "bob", "carol"):
        assert _login(throttled, name, "guess")[0] == 535
    code, text = _login(throttled, "msecret", PASSWORDS["msecret"])
    assert (code, text[:5]) == (454, b"4.7.0"), text
    lockouts = throttled.relay.wait_event("auth_lockout", 2)
    assert [(e["locked"], e["user"]) for e in lockouts] == [
        ("user", "jdupont"),
        ("client", "carol"),
    ]
    results = [e["result"] for e in throttled.relay.events("auth")]
    assert results.count("locked") == 2
    assert "guess" not in throttled.relay.log_text()


def test_sending_rates_per_user(throttled: Stack) -> None:
    with connect(throttled, "jdupont") as client:
        for i in range(2):
            _, (code, text) = send(client, SENDER, [DEST], make_message())
            assert code == 250, (i, text)
        code, text = client.mail(SENDER)
        assert (code, text[:5]) == (450, b"4.7.1"), text
    with connect(throttled, "msecret") as client:  # another user has their own budget
        sender = "secretariat@ch-exemple.mssante.fr"
        code, _ = client.mail(sender)
        assert code == 250
        replies = [client.rcpt(f"dest{i}@chu-b.mssante.fr")[0] for i in range(3)]
        assert replies == [250, 250, 250]
        code, text = client.rcpt("dest4@chu-b.mssante.fr")
        assert (code, text[:5]) == (450, b"4.7.1"), text
    rules = [e["rule"] for e in throttled.relay.events("decision") if e["verdict"] == "tempfail"]
    assert rules == ["messages_per_minute", "recipients_per_hour"]


def _open(stack: Stack, source: str) -> socket.socket:
    # Any 127.0.0.0/8 address is this machine: other « clients » without a network.
    return socket.create_connection(("127.0.0.1", stack.relay.port), source_address=(source, 0))


def test_connection_caps(throttled: Stack) -> None:
    # The start-up readiness probe is a connection too: let the relay see it go.
    assert throttled.relay.wait_event("disconnect")
    held = [_open(throttled, "127.0.0.1") for _ in range(4)]
    try:
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"220 ")
        with _open(throttled, "127.0.0.1") as extra:  # a fifth from the same address
            reply = extra.makefile("rb").readline()
            assert reply.startswith(b"421 4.7.0 "), reply
            assert extra.recv(100) == b""  # and closed
        held += [_open(throttled, "127.0.0.2") for _ in range(2)]  # six in all
        for sock in held[4:]:
            assert sock.makefile("rb").readline().startswith(b"220 ")
        with _open(throttled, "127.0.0.3") as extra:  # a seventh, from anywhere
            assert extra.makefile("rb").readline().startswith(b"421 4.7.0 ")
    finally:
        for sock in held:
            sock.close()
    refused = throttled.relay.wait_event("connection_refused", 2)
    assert [e["rule"] for e in refused] == ["max_connections_per_client", "max_connections"]


def test_idle_and_data_timeouts_say_421_and_lose_nothing(throttled: Stack) -> None:
    with socket.create_connection(("127.0.0.1", throttled.relay.port)) as sock:
        lines = sock.makefile("rb")
        assert lines.readline().startswith(b"220 ")
        # Silence: the relay gives up after timeouts.idle, saying so.
        assert lines.readline().startswith(b"421 4.4.2 ")
    before = len(throttled.upstream.messages())
    with connect(throttled, "jdupont") as client:
        # A line every 0.3 s: never idle, but the message never ends.
        _drip_until_cut(client, b"X-Drip: still here\r\n", 0.3)
    assert len(throttled.upstream.messages()) == before
    assert [e["phase"] for e in throttled.relay.wait_event("timeout", 2)] == ["idle", "data"]


def _drip_until_cut(client: smtplib.SMTP, line: bytes, every: float) -> None:
    """Start a DATA and send it a line at a time until the relay gives up on
    it: a 421 4.4.2, then the connection closed."""
    client.mail(SENDER)
    client.rcpt(DEST)
    assert client.docmd("DATA")[0] == 354
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        for _ in range(300):
            client.send(line)
            time.sleep(every)  # drives the client only; nothing is timed here
            if client.sock is not None and select.select([client.sock], [], [], 0)[0]:
                break
        code, text = client.getreply()
        assert (code, text[:5]) == (421, b"4.4.2"), text
        client.noop()


def test_a_full_relay_answers_451_and_the_message_goes_later(one_slot: Stack) -> None:
    first = connect(one_slot, "jdupont")
    second = connect(one_slot, "msecret")
    try:
        first.mail(SENDER)
        first.rcpt(DEST)
        assert first.docmd("DATA")[0] == 354  # holds the only message slot
        first.send(b"From: " + SENDER.encode() + b"\r\n")
        second.mail("secretariat@ch-exemple.mssante.fr")
        second.rcpt(DEST)
        code, text = second.docmd("DATA")
        assert (code, text[:5]) == (451, b"4.3.2"), text
        rest = make_message().split(b"\r\n", 1)[1]
        first.send(wire_data(rest))
        assert first.getreply()[0] == 250
        _, (code, text) = send(
            second,
            "secretariat@ch-exemple.mssante.fr",
            [DEST],
            make_message(sender="secretariat@ch-exemple.mssante.fr"),
        )
        assert code == 250, text
    finally:
        first.close()
        second.close()


def test_dangerous_attachments_are_refused_naming_them(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    cases = {
        "facture.exe": ({"facture.exe": files.exe()}, b"facture.exe"),
        "archive": (
            {"dossier.zip": files.zip_of({"cr.pdf": files.pdf(), "setup.exe": files.exe()})},
            b"dossier.zip",
        ),
        "renamed": ({"rapport.pdf": files.exe()}, b"rapport.pdf"),
        "macros": ({"lettre.docx": files.docm()}, b"lettre.docx"),
    }
    with connect(shared_stack, "jdupont") as client:
        for case, (attachments, named) in cases.items():
            _, (code, text) = send(client, SENDER, [DEST], make_message(attachments=attachments))
            assert (code, text[:5]) == (550, b"5.7.1"), (case, text)
            assert named in text, (case, text)
        # What health mail carries goes through, in one message.
        harmless = {
            "IHE_XDM.zip": files.ihe_xdm(),
            "cr.pdf": files.pdf(),
            "cr.xml": files.cda(),
            "resultats.hl7": files.hl7(),
            "irm.dcm": files.dicom(),
            "photo.png": files.png(),
            "lettre.docx": files.docx(),
        }
        _, (code, text) = send(client, SENDER, [DEST], make_message(attachments=harmless))
        assert code == 250, text
    assert len(shared_stack.upstream.messages()) == before + 1
    reasons = [
        e["reason"]
        for e in shared_stack.relay.events("decision")
        if e["rule"] == "dangerous_attachment"
    ]
    assert reasons[-4:] == [
        "extension .exe",
        "archive member: extension .exe",
        "Windows executable (MZ)",
        "archive member: macro-enabled Office document (vbaProject.bin)",
    ]


def test_slow_forwarding_is_not_cut_by_the_idle_timeout(throttled: Stack) -> None:
    # timeouts.idle is 1 s here; the operator takes 2 s to accept the message.
    throttled.upstream.control(data_delay=2)
    with connect(throttled, "jdupont") as client:
        _, (code, text) = send(client, SENDER, [DEST], make_message())
        assert code == 250, text
    assert len(throttled.upstream.messages()) == 1


def test_a_trusted_client_sends_as_its_user_without_auth(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    for stack in _stack(tmp_path, pki, password_hashes, trusted_clients={"127.0.0.2": "jdupont"}):
        for source, expected in (("127.0.0.2", 250), ("127.0.0.1", 530)):
            with smtplib.SMTP(
                "127.0.0.1", stack.relay.port, timeout=30, source_address=(source, 0)
            ) as client:
                client.ehlo("dpi.test")
                client.starttls(context=stack.pki.client_context())
                client.ehlo("dpi.test")
                code, text = client.mail(SENDER)
                assert code == expected, (source, text)
                if code == 250:
                    # ...and the rules of its user still apply.
                    assert client.rcpt("x@gmail.com")[0] == 550
                    assert client.rcpt(DEST)[0] == 250
                    client.rset()
                    assert client.mail("secretariat@ch-exemple.mssante.fr")[0] == 553
        assert stack.relay.wait_event("auth")[0]["result"] == "trusted_client"


def test_a_trickling_client_loses_its_message_slot(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    timeouts = {"idle": 10, "data": 600, "data_rate_grace": 1, "min_data_rate": "10KB"}
    for stack in _stack(tmp_path, pki, password_hashes, timeouts=timeouts):
        with connect(stack, "jdupont") as client:
            _, (code, text) = send(client, SENDER, [DEST], make_message())
            assert code == 250, text  # a normal client is far above the rate
            _drip_until_cut(client, b"X-Drip: " + b"x" * 90 + b"\r\n", 0.1)  # 1 kB/s
        assert [e["phase"] for e in stack.relay.wait_event("timeout")] == ["data_rate"]
        assert len(stack.upstream.messages()) == 1
