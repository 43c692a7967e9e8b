"""Implicit TLS on the listener, STARTTLS with a private CA to the upstream, and a
stop that lets the transaction under way finish."""

from __future__ import annotations

import signal
import smtplib
from pathlib import Path

from tests.conftest import PASSWORDS, Pki, Stack, base_config
from tests.support.mail import connect, make_message, send
from tests.support.processes import Relay, Upstream

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


def test_implicit_tls_listener_and_starttls_upstream(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    ca_file = tmp_path / "ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca_file))
    upstream = Upstream(tmp_path, tls=(pki.cert, pki.key))
    upstream.start()
    config = base_config(pki, password_hashes, upstream.port)
    config["listeners"][0]["tls"] = "implicit"
    config["upstream"].update(tls="starttls", ca_file=str(ca_file), host="localhost")
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        with smtplib.SMTP_SSL(
            "127.0.0.1", relay.port, context=pki.client_context(), timeout=30
        ) as client:
            client.ehlo("client.test")
            assert client.has_extn("auth") and not client.has_extn("starttls")
            client.login("jdupont", PASSWORDS["jdupont"])
            _, (code, text) = send(client, SENDER, [DEST], make_message())
        assert code == 250, text
        meta, _ = upstream.messages()[-1]
        assert meta["tls"] is True
    finally:
        relay.stop()
        upstream.stop()


def test_untrusted_upstream_certificate_is_a_4xx(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    upstream = Upstream(tmp_path, tls=(pki.cert, pki.key))
    upstream.start()
    config = base_config(pki, password_hashes, upstream.port)
    config["upstream"].update(tls="starttls", host="localhost")  # system CAs only
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        with connect(Stack(relay, upstream, pki)) as client:
            code, text = client.mail(SENDER)
        assert code == 451 and text.startswith(b"4.4.1"), text
        assert upstream.messages() == []
    finally:
        relay.stop()
        upstream.stop()


def test_sigterm_tells_a_client_still_sending_data_421(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    # Issue 15 changed this: a client before its final dot is no longer
    # waited for (it was answered 250 once it sent the rest), it is told
    # 421 4.3.2 at once and keeps its message. A message past its final dot
    # still finishes: tests/e2e/test_helpdesk.py.
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = Relay(tmp_path, base_config(pki, password_hashes, upstream.port))
    relay.start()
    try:
        client = connect(Stack(relay, upstream, pki))
        client.mail(SENDER)
        client.rcpt(DEST)
        code, _ = client.docmd("DATA")
        assert code == 354
        assert relay.process.proc is not None
        relay.process.proc.send_signal(signal.SIGTERM)
        assert relay.wait_event("stopping")
        code, text = client.getreply()
        client.close()
        assert (code, text[:5]) == (421, b"4.3.2"), text
        assert relay.process.proc.wait(timeout=30) == 0
        assert upstream.messages() == []
        stopped = relay.wait_event("stopped")
        assert stopped and stopped[0]["interrupted_transactions"] == 0
    finally:
        relay.stop()
        upstream.stop()
