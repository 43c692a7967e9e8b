"""Three refusals that no test reached before issue 14, each end to end on the
real relay: the incoming side's DKIM temperror (451 4.4.3), a message dkimpy
cannot sign on the SMTP listener (550 5.6.0), and the milter's wire_size
(552 5.3.4) while the message comes."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest

from tests.conftest import Pki, Stack, _stack, two_sided
from tests.e2e.test_milter import SENDER, config_for
from tests.support.dkim import keygen_cli, new_key
from tests.support.mail import connect, make_message, send, wire_data, without_id
from tests.support.milter_client import MilterClient
from tests.support.processes import Relay

DOMAIN = "ch-exemple.mssante.fr"
PATIENT = "295109912611193@patient.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
PATIENT_KEY = new_key("patient.mssante.fr", "mes1")


def test_a_dkim_key_look_up_that_times_out_tempfails_a_patient_message(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    # Real DNS look-ups (no dkim_dns_file), given no time to answer: every
    # look-up times out before a query is even sent (hermetic), as one to a
    # resolver that does not answer would.
    inbound = {"require_dkim_for_patients": True, "dns_timeout": 1e-9}
    with two_sided(tmp_path, pki, password_hashes, inbound=inbound) as (relay, _, mailbox):
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = PATIENT, SENDER, "Question"
        msg["Date"], msg["Message-ID"] = "Mon, 23 Nov 2026 10:00:00 +0100", "<q1@x>"
        msg.set_content("Bonjour docteur.\n")
        content = PATIENT_KEY.sign(msg.as_bytes(policy=SMTP_POLICY))
        with smtplib.SMTP("127.0.0.1", relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mta.operateur.test")
            assert client.mail(PATIENT)[0] == 250
            assert client.rcpt(SENDER)[0] == 250
            client.docmd("DATA")
            client.send(wire_data(content))
            code, text = client.getreply()
        # Temporary: the patient's operator retries; never the permanent 5.7.20.
        assert (code, without_id(text)) == (
            451,
            b"4.4.3 Verification DKIM impossible pour le moment (DNS), reessayez plus tard",
        )
        decided = relay.wait_event("decision", where=lambda e: e.get("stage") == "data")
        assert decided[-1]["rule"] == "patient_dkim"
        assert decided[-1]["dkim"] == ["temperror d=patient.mssante.fr s=mes1 a=rsa-sha256"]
        assert mailbox.messages() == []


@pytest.fixture(scope="module")
def signing(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("unsignable")
    key, _ = keygen_cli(tmp, DOMAIN, "mss2026")
    dkim = [{"domain": DOMAIN, "selector": "mss2026", "private_key": str(key)}]
    yield from _stack(tmp, pki, password_hashes, dkim=dkim)


def test_a_message_dkimpy_cannot_sign_is_refused_550_560(signing: Stack) -> None:
    # A header field with an empty name: the email package reads it (no
    # structure error), dkimpy's header parser does not.
    good = make_message()
    head, _, body = good.partition(b"\r\n\r\n")
    unsignable = head + b"\r\n: sans nom\r\n\r\n" + body
    with connect(signing) as client:
        _, (code, text) = send(client, SENDER, [DEST], unsignable)
        assert (code, without_id(text)) == (
            550,
            b"5.6.0 Message mal forme : impossible de le signer (DKIM)",
        )
        # The session goes on, and a message that can be signed still is.
        _, (code, text) = send(client, SENDER, [DEST], good)
        assert code == 250, text
    relay = signing.relay
    errors = relay.wait_event("dkim_sign_error")
    assert errors[-1]["error"] == "MessageFormatError"
    outcomes = relay.wait_event("transaction", count=2)
    refused = next(e for e in outcomes if e["txid"] == errors[-1]["txid"])
    assert refused["outcome"] == "rejected" and refused["rule"] == "dkim_signable"
    assert refused["reply"].startswith("550 5.6.0 ")
    # Nothing but the signable message reached the upstream.
    delivered = [m for _, m in signing.upstream.messages()]
    assert len(delivered) == 1 and b"sans nom" not in delivered[0]


def test_the_milter_refuses_a_message_over_the_wire_size_as_it_comes(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    config = config_for(tmp_path, pki, password_hashes, 1)
    config.pop("_records")
    # The wire limit: the base64 of 1 KB of content plus 1 MiB of headers.
    config["limits"] = config["limits"] | {"max_message_size": "1KB", "max_attachment_size": "1KB"}
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        body = b"x" * 76 + b"\r\n"
        content = make_message() + body * (1_100_000 // len(body))
        with MilterClient(relay.port_of("milter")) as client:
            client.negotiate()
            client.connect()
            client.helo()
            assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"
            assert client.rcpt(DEST).code == "c"
            replies = client.message(content)
        # Refused at the body chunk that went over, not at the end of message.
        assert [(r.code, without_id(r.text)) for r in replies] == [
            ("y", "552 5.3.4 Message trop volumineux")
        ]
        decided = relay.wait_event("decision", where=lambda e: e.get("rule") == "wire_size")
        assert decided[-1]["verdict"] == "reject" and decided[-1]["size"] > 1_049_980
        outcome = relay.wait_event("transaction")[-1]
        assert outcome["outcome"] == "rejected" and outcome["reply"].startswith("552 5.3.4")
    finally:
        relay.stop()
