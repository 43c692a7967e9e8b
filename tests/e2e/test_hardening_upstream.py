"""An upstream that hangs or closes, and a client that vanishes (issue 13, items
4 and 9): one upstream timeout is the answer, a message whose client was told
451 is not completed behind its back, a 421 ends the client's connection, and
a client gone during the 221 leaves no traceback."""

from __future__ import annotations

import base64
import smtplib
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORDS, Pki, Stack, relay_with
from tests.support.mail import connect, make_message, send
from tests.support.processes import Upstream

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


def events_of(journal: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in journal if e["event"] == event]


def test_a_hung_upstream_is_waited_for_once_with_a_full_pool(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    # pool_idle: the pooled connections must outlive the old behaviour's 8 waits.
    options = {"pool_size": 8, "timeout": 1.5, "pool_idle": 120}
    with relay_with(tmp_path, pki, password_hashes, **options) as stack:
        # Eight sessions at once: eight upstream connections, pooled at QUIT.
        clients = [connect(stack) for _ in range(8)]
        for client in clients:
            _, (code, text) = send(client, SENDER, [DEST], make_message())
            assert code == 250, text
        for client in clients:
            client.quit()
        pooled = {e["peer_port"] for e in events_of(stack.upstream.journal(), "DATA")}
        assert len(pooled) == 8
        stack.upstream.control(hang="mail")
        with connect(stack) as client:
            code, text = client.mail(SENDER)
        assert (code, text[:5]) == (451, b"4.4.2"), text
        hung = events_of(stack.upstream.journal(), "hang")
        # One upstream connection tried, a pooled one: one timeout, not eight.
        assert len(hung) == 1, hung
        assert hung[0]["peer_port"] in pooled


def test_a_message_given_up_on_after_its_dot_is_reset_not_completed(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with relay_with(tmp_path, pki, password_hashes, timeout=1.5) as stack:
        stack.upstream.control(hang="data")
        with connect(stack) as client:
            _, (code, text) = send(client, SENDER, [DEST], make_message())
            assert (code, text[:5]) == (451, b"4.4.2"), text
        (hung,) = events_of(stack.upstream.journal(), "hang")
        port = hung["peer_port"]

        def lost(journal: list[dict[str, Any]]) -> bool:
            return any(e["peer_port"] == port for e in events_of(journal, "lost"))

        journal = stack.upstream.wait_journal(lost)
        mine = [e for e in journal if e["peer_port"] == port]
        assert [e["event"] for e in mine if e["event"] == "QUIT"] == []
        assert [e["reset"] for e in mine if e["event"] == "lost"] == [True], mine
        # The upstream wakes up: it must know the client is gone.
        stack.upstream.control()

        def decided(journal: list[dict[str, Any]]) -> bool:
            return any(
                e["peer_port"] == port and e["event"] in ("committed", "dropped") for e in journal
            )

        journal = stack.upstream.wait_journal(decided)
        assert [e["event"] for e in journal if e["peer_port"] == port][-1] == "dropped"
        assert stack.upstream.messages() == []


def _set_421(upstream: Upstream, stage: str) -> None:
    reply = "421 4.3.2 Service shutting down"
    if stage == "rcpt":
        upstream.control(rcpt={DEST: reply})
    else:
        upstream.control(**{stage: reply})


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_an_upstream_421_is_passed_on_and_closes_the_client_connection(
    stack: Stack, stage: str
) -> None:
    """RFC 5321 §3.8: after a 421, the connection is closed."""
    _set_421(stack.upstream, stage)
    with connect(stack) as client:
        if stage == "mail":
            code, text = client.mail(SENDER)
        elif stage == "rcpt":
            assert client.mail(SENDER)[0] == 250
            code, text = client.rcpt(DEST)
        else:
            _, (code, text) = send(client, SENDER, [DEST], make_message())
        assert (code, text[:5]) == (421, b"4.3.2"), text
        with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
            client.noop()
            client.noop()  # the first may still reach a socket not yet closed
    assert stack.upstream.messages() == []


def _quit_and_vanish(port: int, reset: bool, transaction: Pki | None = None) -> None:
    """QUIT and close at once, without reading the 221; with an RST if reset."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn: socket.socket = sock
    reader = sock.makefile("rb")

    def command(line: bytes) -> None:
        conn.sendall(line + b"\r\n")
        while (reply := reader.readline())[3:4] == b"-":
            pass
        assert reply[:1] in (b"2", b"3"), reply

    while reader.readline()[3:4] == b"-":  # the greeting
        pass
    command(b"EHLO client.test")
    if transaction is not None:  # an upstream session to close at QUIT
        command(b"STARTTLS")
        conn = transaction.client_context().wrap_socket(sock, server_hostname="localhost")
        reader = conn.makefile("rb")
        command(b"EHLO client.test")
        token = base64.b64encode(b"\0jdupont\0" + PASSWORDS["jdupont"].encode())
        command(b"AUTH PLAIN " + token)
        command(b"MAIL FROM:<" + SENDER.encode() + b">")
    conn.sendall(b"QUIT\r\n")
    if reset:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reader.close()
    conn.close()


def test_a_client_gone_before_the_221_leaves_no_traceback(stack: Stack) -> None:
    for _ in range(60):
        _quit_and_vanish(stack.relay.port, reset=False)
        _quit_and_vanish(stack.relay.port, reset=True)
    for _ in range(10):
        _quit_and_vanish(stack.relay.port, reset=True, transaction=stack.pki)
    # Every session is over once each disconnect is logged.
    stack.relay.wait_event("disconnect", count=130, timeout=30)
    stack.relay.stop()  # and a task left unretrieved is reported by then
    stderr = stack.relay.process.stderr()
    assert "never retrieved" not in stderr and "Traceback" not in stderr, stderr[-3000:]
