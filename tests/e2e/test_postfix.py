"""End to end through a real Postfix: the client speaks SMTP to Postfix, Postfix
asks the relay's milter, and relays what passes to the recording upstream.
Postfix's main.cf milter lines are the ones docs/milter.md documents."""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.conftest import PASSWORDS, Pki, base_config
from tests.support.dkim import keygen_cli, lookup
from tests.support.mail import make_message, without_id
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.processes import ROOT, Relay, Upstream, free_port

DOMAIN = "ch-exemple.mssante.fr"
SENDER = f"jean.dupont@{DOMAIN}"
DEST = "dr.martin@chu-b.mssante.fr"
PATIENT = "295109912611193@patient.mssante.fr"
# Postfix's client address decides the direction: 127.0.0.1 is the DPI
# (trusted_clients, outgoing), 127.0.0.2 the operator delivering (incoming).
DPI, OPERATOR = "127.0.0.1", "127.0.0.2"


def documented_main_cf(milter_port: int) -> dict[str, str]:
    """The main.cf block of docs/milter.md, pointed at this test's milter."""
    text = (ROOT / "docs" / "milter.md").read_text()
    block = re.search(r"```conf\n(.*?)```", text, re.S)
    assert block is not None, "docs/milter.md lost its main.cf block"
    settings = {}
    for line in block.group(1).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["smtpd_milters"] == "inet:127.0.0.1:8890"
    assert settings["milter_default_action"] == "tempfail"
    settings["smtpd_milters"] = f"inet:127.0.0.1:{milter_port}"
    return settings


@dataclass
class Gateway:
    postfix: PostfixInstance
    relay: Relay
    upstream: Upstream
    pki: Pki
    records: dict[str, str]

    def client(self, source: str = DPI) -> smtplib.SMTP:
        client = smtplib.SMTP(
            "127.0.0.1", self.postfix.port, timeout=60, source_address=(source, 0)
        )
        client.ehlo("client.test")
        return client

    def arrived(self, count: int, timeout: float = 20.0) -> list[tuple[dict, bytes]]:  # type: ignore[type-arg]
        """Postfix delivers from its queue: wait for the upstream to have them."""
        deadline = time.monotonic() + timeout
        while len(messages := self.upstream.messages()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return messages


def needs_postfix() -> None:
    reason = postfix_available()
    if reason:
        # scripts/test.sh installs Postfix: in CI a missing one is a failure.
        if os.environ.get("CI"):
            pytest.fail(f"Postfix is required in CI: {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def gateway_for(
    tmp: Path, pki: Pki, password_hashes: dict[str, str], **overrides: Any
) -> Iterator[Gateway]:
    """The relay (its configuration: base_config and overrides) behind a
    Postfix configured as docs/milter.md says."""
    needs_postfix()
    upstream = Upstream(tmp)
    upstream.start()
    key, txt = keygen_cli(tmp, DOMAIN, "mss2026")
    config = base_config(pki, password_hashes, upstream.port, **overrides)
    milter_port = free_port()
    config["listeners"].append({"name": "milter", "role": "milter", "port": milter_port})
    config["dkim"] = [{"domain": DOMAIN, "selector": "mss2026", "private_key": str(key)}]
    config["trusted_clients"] = {DPI: "jdupont"}
    relay = Relay(tmp, config)
    postfix = PostfixInstance(
        tmp,
        smtp_port=free_port(),
        relay_port=upstream.port,
        milter=None,
        # Postfix adds a missing Message-ID itself for « local » clients, and
        # 127.0.0.1 is local by default: here it is not, as a DPI elsewhere.
        extra=documented_main_cf(milter_port) | {"local_header_rewrite_clients": ""},
    )
    try:
        relay.start()
        postfix.start()
        yield Gateway(postfix, relay, upstream, pki, {f"mss2026._domainkey.{DOMAIN}": txt})
    finally:
        postfix.stop()
        relay.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Gateway]:
    with gateway_for(tmp_path_factory.mktemp("gateway"), pki, password_hashes) as gateway:
        yield gateway


def submission_reply(gateway: Gateway, recipient: str) -> tuple[int, bytes]:
    """The SMTP listener's answer to the same RCPT, for comparison."""
    with smtplib.SMTP("127.0.0.1", gateway.relay.port, timeout=30) as client:
        client.starttls(context=gateway.pki.client_context())
        client.login("jdupont", PASSWORDS["jdupont"])
        client.mail(SENDER)
        return client.rcpt(recipient)


def test_gmail_recipient_refused_at_rcpt_as_by_the_smtp_listener(gateway: Gateway) -> None:
    expected = submission_reply(gateway, "someone@gmail.com")
    assert expected[0] == 550 and expected[1].startswith(b"5.7.1 ")
    with gateway.client() as client:
        assert client.mail(SENDER)[0] == 250
        code, text = client.rcpt("someone@gmail.com")
        # The same text, each quoting its own transaction's id (issue 15).
        assert (code, without_id(text)) == (expected[0], without_id(expected[1]))
        client.rset()


def test_oversized_attachment_is_refused(gateway: Gateway) -> None:
    before = len(gateway.upstream.messages())
    content = make_message(sender=SENDER, attachments={"irm.dcm": os.urandom(21 * 1024**2)})
    with gateway.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(SENDER, [DEST], content)
    assert refused.value.smtp_code == 552
    assert refused.value.smtp_error.startswith(b"5.3.4 Piece jointe"), refused.value.smtp_error
    assert b"irm.dcm" in refused.value.smtp_error
    assert len(gateway.upstream.messages()) == before


def test_patients_unsolicited_message_is_refused(gateway: Gateway) -> None:
    before = len(gateway.upstream.messages())
    logged = len(gateway.relay.events("patient_message"))
    content = make_message(sender=PATIENT, to=SENDER, subject="Question", body="Bonjour")
    with gateway.client(OPERATOR) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(PATIENT, [SENDER], content)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 "), refused.value.smtp_error
    assert gateway.relay.wait_event("patient_message", logged + 1)[-1]["result"] == "refused"
    assert len(gateway.upstream.messages()) == before


def test_valid_message_arrives_with_added_headers_and_a_verifying_signature(
    gateway: Gateway,
) -> None:
    before = len(gateway.upstream.messages())
    logged = len(gateway.relay.events("transaction"))
    content = make_message(sender=SENDER, to=DEST, subject="Compte rendu opératoire")
    # No Message-ID: the relay adds one, as its SMTP listener does.
    content = re.sub(rb"Message-ID: [^\r\n]*\r\n", b"", content)
    with gateway.client() as client:
        refused = client.sendmail(SENDER, [DEST], content)
    assert refused == {}
    messages = gateway.arrived(before + 1)
    assert len(messages) == before + 1
    envelope, received = messages[-1]
    assert envelope["mail_from"] == SENDER and envelope["rcpt_tos"] == [DEST]
    headers = BytesParser(policy=default_policy).parsebytes(received)
    assert headers["Message-ID"].endswith("@relay.ch-exemple.mssante.fr>")
    assert received.startswith(b"DKIM-Signature:") or b"\nDKIM-Signature:" in received
    assert dkim.DKIM(received).verify(dnsfunc=lookup(gateway.records))
    # Postfix's queue id ties the relay's log line to Postfix's own log.
    outcome = gateway.relay.wait_event("transaction", logged + 1)[-1]
    assert outcome["outcome"] == "accepted" and outcome["queue_id"]
    assert gateway.postfix.wait_log(re.escape(outcome["queue_id"]) + r": .*status=sent")


def test_relay_stopped_postfix_tempfails(tmp_path: Path) -> None:
    """mss-relay down: Postfix answers 4xx, and nothing goes anywhere unchecked."""
    needs_postfix()
    upstream = Upstream(tmp_path)
    upstream.start()
    postfix = PostfixInstance(
        tmp_path,
        smtp_port=free_port(),
        relay_port=upstream.port,
        milter=None,
        extra=documented_main_cf(free_port()),  # nothing listens there
    )
    try:
        postfix.start()
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
            client.ehlo("client.test")
            code, text = client.mail(SENDER)
            if code == 250:
                code, text = client.rcpt(DEST)
        assert 400 <= code < 500, (code, text)
        assert postfix.queued() == []
        assert upstream.messages() == []
    finally:
        postfix.stop()
        upstream.stop()
