"""End to end: the real relay process, a real upstream process, smtplib."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl

import pytest

from tests.conftest import PASSWORDS, Stack
from tests.support.mail import connect, make_message, send

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3} ")


def test_ehlo_advertises_extensions_and_no_auth_before_tls(shared_stack: Stack) -> None:
    with smtplib.SMTP("127.0.0.1", shared_stack.relay.port, timeout=30) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        assert client.has_extn("enhancedstatuscodes")
        assert client.has_extn("size") and client.has_extn("8bitmime")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN AGpkdXBvbnQAamR1cG9udC1TZWNyZXQtMQ==")
        assert code == 530 and text.startswith(b"5.7.0"), text
        code, text = client.docmd("MAIL", f"FROM:<{SENDER}>")
        assert code == 530 and text.startswith(b"5.7.0"), text


def test_mail_before_auth_is_530(shared_stack: Stack) -> None:
    with connect(shared_stack, user=None) as client:
        assert client.has_extn("auth")
        code, text = client.mail(SENDER)
        assert (code, text[:5]) == (530, b"5.7.0")


def test_bad_password_is_535(shared_stack: Stack) -> None:
    with connect(shared_stack, user=None) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("jdupont", "not-the-password")
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error.startswith(b"5.7.8")
    with (
        connect(shared_stack, user=None) as client,
        pytest.raises(smtplib.SMTPAuthenticationError),
    ):
        client.login("nobody", PASSWORDS["jdupont"])
    log = shared_stack.relay.log_text()
    assert "not-the-password" not in log and PASSWORDS["jdupont"] not in log


def test_sending_as_another_users_bal_is_553(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    with connect(shared_stack, "jdupont") as client:
        code, text = client.mail("secretariat@ch-exemple.mssante.fr")
        assert (code, text[:5]) == (553, b"5.7.1")
        code, text = client.mail("inconnu@ch-exemple.mssante.fr")
        assert (code, text[:5]) == (553, b"5.7.1")
        # A shared (organisationnelle) BAL given to this user is fine.
        code, _ = client.mail("accueil@ch-exemple.mssante.fr")
        assert code == 250
        client.rset()
    assert len(shared_stack.upstream.messages()) == before


def test_accepted_message_arrives_intact(shared_stack: Stack) -> None:
    content = make_message(attachments={"cr.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 40})
    before = len(shared_stack.upstream.messages())
    with connect(shared_stack) as client:
        rcpts, (code, text) = send(client, SENDER, [DEST], content)
    assert rcpts == [(250, rcpts[0][1])]
    assert code == 250 and text.startswith(b"2.0.0"), text
    messages = shared_stack.upstream.messages()
    assert len(messages) == before + 1
    meta, received = messages[-1]
    assert meta["mail_from"] == SENDER and meta["rcpt_tos"] == [DEST]
    assert received.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    header_end = received.index(b"\r\n", received.index(b"id ")) + 2
    trace, rest = received[:header_end], received[header_end:]
    assert trace.count(b"Received:") == 1
    assert rest.split(b"\r\n", 1)[0].startswith(b"\t")  # the date line of our header
    assert rest.split(b"\r\n", 1)[1] == content


def test_gmail_refused_while_mssante_recipient_delivered(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    with connect(shared_stack) as client:
        rcpts, (code, _) = send(
            client, SENDER, ["someone@gmail.com", DEST, "x@evilmssante.fr"], make_message()
        )
    assert rcpts[0][0] == 550 and rcpts[0][1].startswith(b"5.7.1")
    assert b"espace de confiance MSSante" in rcpts[0][1]
    assert rcpts[1][0] == 250
    assert rcpts[2][0] == 550
    assert code == 250
    messages = shared_stack.upstream.messages()
    assert len(messages) == before + 1
    assert messages[-1][0]["rcpt_tos"] == [DEST]


@pytest.mark.parametrize(
    ("recipient", "code", "enhanced"),
    [
        ("295109912611193@patient.mssante.fr", 250, b"2.1.5"),
        ("253072B07300470@patient.mssante.fr", 250, b"2.1.5"),
        ("295109912611199@patient.mssante.fr", 553, b"5.1.3"),  # wrong key
        ("2951099126111@patient.mssante.fr", 553, b"5.1.3"),  # too short
        ("2 95 10 99 126 111 93@patient.mssante.fr", 553, b"5.1.3"),
        ("x@mssante.fr.example.com", 550, b"5.7.1"),
        ("DR.MARTIN@CHU-B.MSSANTE.FR.", 250, b"2.1.5"),
    ],
)
def test_recipient_rules_at_rcpt(
    shared_stack: Stack, recipient: str, code: int, enhanced: bytes
) -> None:
    with connect(shared_stack) as client:
        client.mail(SENDER)
        got, text = client.docmd("RCPT", f"TO:<{recipient}>")
        client.rset()
    assert (got, text[:5]) == (code, enhanced), text


def test_too_many_recipients_is_452(shared_stack: Stack) -> None:
    with connect(shared_stack) as client:
        client.mail(SENDER)
        replies = [client.rcpt(f"dest{i}@chu-b.mssante.fr") for i in range(6)]
        client.rset()
    assert [c for c, _ in replies] == [250] * 5 + [452]
    assert replies[5][1].startswith(b"4.5.3")


def test_dsn_parameters_are_tolerated(shared_stack: Stack) -> None:
    with connect(shared_stack) as client:
        code, _ = client.docmd("MAIL", f"FROM:<{SENDER}> RET=HDRS ENVID=abc123")
        assert code == 250
        code, text = client.docmd("RCPT", f"TO:<{DEST}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{DEST}")
        assert code == 250, text
        client.rset()


def test_declared_size_above_limit_is_552_at_mail(shared_stack: Stack) -> None:
    with connect(shared_stack) as client:
        advertised = int(client.esmtp_features["size"])
        # 60 MiB of content, base64-encoded, fits under what is advertised.
        assert advertised > 60 * 1024 * 1024 * 4 // 3
        code, text = client.docmd("MAIL", f"FROM:<{SENDER}> SIZE={advertised + 1}")
        assert (code, text[:5]) == (552, b"5.3.4")
        code, _ = client.docmd("MAIL", f"FROM:<{SENDER}> SIZE=1000")
        assert code == 250
        client.rset()


def test_21_mib_attachment_is_552_and_never_upstream(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    content = make_message(attachments={"irm-genou.dcm": b"\x00" * (21 * 1024 * 1024)})
    with connect(shared_stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], content)
    assert (code, text[:5]) == (552, b"5.3.4")
    assert b"irm-genou.dcm" in text
    assert len(shared_stack.upstream.messages()) == before


def test_every_reply_carries_an_enhanced_code(shared_stack: Stack) -> None:
    with connect(shared_stack) as client:
        replies = [
            client.docmd("NOOP"),
            client.docmd("FOO"),
            client.docmd("RCPT", f"TO:<{DEST}>"),
            client.docmd("MAIL", "FROM:"),
            client.docmd("VRFY", DEST),
            client.docmd("RSET"),
            client.docmd("DATA"),
        ]
    for code, text in replies:
        assert ENHANCED.match(text), (code, text)
        assert text.isascii()


def test_transaction_log_has_the_fields_and_no_health_data(shared_stack: Stack) -> None:
    subject, body = "Resultat IRM patient Lefebvre", "Lesion du menisque interne, tres confidentiel"
    content = make_message(subject=subject, body=body)
    with connect(shared_stack) as client:
        _, (code, text) = send(client, SENDER, [DEST, "x@gmail.com"], content)
    assert code == 250
    txid = re.search(rb"id ([0-9A-F]+)", text)
    assert txid is not None
    # Its own line (written by the log thread, it may come after the reply).
    events = shared_stack.relay.wait_event(
        "transaction", where=lambda e: e["txid"] == txid.group(1).decode()
    )
    line = events[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert line["client"] == "127.0.0.1" and line["user"] == "jdupont"
    assert line["sender"] == SENDER and line["recipients"] == [DEST]
    assert line["message_id"].startswith("<") and line["size"] == len(content)
    assert len(line["sha256"]) == 64 and line["outcome"] == "delivered"
    assert line["upstream"].startswith("250") and line["duration_ms"] >= 0
    decisions = [e for e in shared_stack.relay.events("decision") if e.get("txid") == line["txid"]]
    assert {d["stage"] for d in decisions} == {"mail", "rcpt", "data"}
    assert any(d["rule"] == "trust_space" and d["verdict"] == "reject" for d in decisions)
    log = shared_stack.relay.log_text()
    assert subject not in log and body not in log


def test_bare_lf_cannot_smuggle_a_second_message(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    smuggled = (
        b"From: "
        + SENDER.encode()
        + b"\r\nSubject: a\r\n\r\nfirst\n.\nMAIL FROM:<"
        + SENDER.encode()
        + b">\nRCPT TO:<"
        + DEST.encode()
        + b">\nDATA\nsmuggled\r.\r\n"
        b"x\n.\r\nend\r\n.\r\n"
    )
    with connect(shared_stack) as client:
        client.mail(SENDER)
        client.rcpt(DEST)
        client.docmd("DATA")
        client.send(smuggled)
        code, _ = client.getreply()
        assert code == 250
        code, _ = client.docmd("NOOP")  # exactly one reply came for that DATA
        assert code == 250
    messages = shared_stack.upstream.messages()
    assert len(messages) == before + 1
    assert b"smuggled" in messages[-1][1]


def test_upstream_refusals_are_passed_on(stack: Stack) -> None:
    stack.upstream.control(rcpt={DEST: "550 5.1.1 User unknown"})
    with connect(stack) as client:
        client.mail(SENDER)
        code, text = client.rcpt(DEST)
        assert (code, text[:5]) == (550, b"5.1.1")
        client.rset()
    stack.upstream.control(data="554 5.6.0 Content refused")
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], make_message())
        assert (code, text[:5]) == (554, b"5.6.0")
    stack.upstream.control(data="452 4.3.1 Insufficient storage")
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], make_message())
        assert (code, text[:5]) == (452, b"4.3.1")
    assert stack.upstream.messages() == []
    outcomes = [e["outcome"] for e in stack.relay.wait_event("transaction", count=2)]
    assert "delivered" not in outcomes


def test_upstream_down_is_4xx_then_delivered_when_back(stack: Stack) -> None:
    stack.upstream.stop()
    with connect(stack) as client:
        code, text = client.mail(SENDER)
        assert code == 451 and text.startswith(b"4.4.1"), text
    stack.upstream.start()
    with connect(stack) as client:
        _, (code, _) = send(client, SENDER, [DEST], make_message())
        assert code == 250
    assert len(stack.upstream.messages()) == 1


def test_upstream_vanishing_mid_transaction_is_4xx(stack: Stack) -> None:
    with connect(stack) as client:
        client.mail(SENDER)
        client.rcpt(DEST)
        stack.upstream.stop()
        code, text = client.docmd("DATA")
        if code == 354:
            client.send(make_message() + b"\r\n.\r\n")
            code, text = client.getreply()
        assert 400 <= code < 500, (code, text)
    assert stack.upstream.messages() == []
    events = stack.relay.wait_event("transaction")
    assert events and events[-1]["outcome"] == "tempfailed"


def test_upstream_silent_past_timeout_is_451(stack: Stack) -> None:
    stack.upstream.control(data_delay=30)  # the relay's upstream timeout is 5 s
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], make_message())
    assert code == 451 and text.startswith(b"4.4.2"), text


def test_tls_handshake_with_wrong_trust_fails_cleanly(shared_stack: Stack) -> None:
    with smtplib.SMTP("127.0.0.1", shared_stack.relay.port, timeout=30) as client:
        client.ehlo("client.test")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, OSError)):
            client.starttls(context=ssl.create_default_context())
    # The relay is still up for the next client.
    with socket.create_connection(("127.0.0.1", shared_stack.relay.port), timeout=10) as s:
        assert s.recv(100).startswith(b"220 ")
