"""The milter listener of the real relay, driven packet by packet as Postfix
drives it (tests/support/milter_client.py): negotiation, every command the
filter handles, direction, header changes, and failures. Postfix itself, end
to end, is in test_postfix.py."""

from __future__ import annotations

import signal
import smtplib
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.conftest import Pki, base_config
from tests.support.dkim import keygen_cli, lookup
from tests.support.mail import make_message, without_id
from tests.support.milter_client import MilterClient, Reply
from tests.support.processes import Relay, Upstream, free_port

DOMAIN = "ch-exemple.mssante.fr"
SENDER = f"jean.dupont@{DOMAIN}"
DEST = "dr.martin@chu-b.mssante.fr"
PATIENT = "295109912611193@patient.mssante.fr"
DPI_ADDRESS = "192.0.2.50"


@dataclass
class Milter:
    relay: Relay
    upstream: Upstream
    pki: Pki
    records: dict[str, str]

    @property
    def port(self) -> int:
        return self.relay.port_of("milter")

    def client(self) -> MilterClient:
        client = MilterClient(self.port)
        client.negotiate()
        return client

    def session(self, address: str = "192.0.2.7") -> MilterClient:
        client = self.client()
        client.macros("C", {"j": "mx.test", "{daemon_name}": "smtpd"})
        assert client.connect(address).code == "c"
        assert client.helo().code == "c"
        return client


def config_for(tmp: Path, pki: Pki, hashes: dict[str, str], upstream_port: int) -> dict:  # type: ignore[type-arg]
    key, txt = keygen_cli(tmp, DOMAIN, "mss2026")
    config = base_config(pki, hashes, upstream_port)
    config["listeners"].append({"name": "milter", "role": "milter", "port": free_port()})
    config["dkim"] = [{"domain": DOMAIN, "selector": "mss2026", "private_key": str(key)}]
    config["trusted_clients"] = {DPI_ADDRESS: "jdupont"}
    config["bals"].append(
        {
            "address": f"pharmacie@{DOMAIN}",
            "type": "organisationnelle",
            "users": ["msecret"],
            "patients_may_initiate": True,
        }
    )
    return config | {"_records": {f"mss2026._domainkey.{DOMAIN}": txt}}


@pytest.fixture(scope="module")
def milter(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Milter]:
    tmp = tmp_path_factory.mktemp("milter")
    upstream = Upstream(tmp)
    upstream.start()
    config = config_for(tmp, pki, password_hashes, upstream.port)
    records = config.pop("_records")
    relay = Relay(tmp, config)
    relay.start()
    try:
        yield Milter(relay, upstream, pki, records)
    finally:
        relay.stop()
        upstream.stop()


def smtp_reply_for_rcpt(milter: Milter, recipient: str) -> str:
    """What the SMTP submission listener answers to the same RCPT."""
    with smtplib.SMTP("127.0.0.1", milter.relay.port, timeout=30) as client:
        client.starttls(context=milter.pki.client_context())
        client.login("jdupont", "jdupont-Secret-1")
        client.mail(SENDER)
        code, text = client.rcpt(recipient)
    return f"{code} {text.decode()}"


def applied(content: bytes, replies: list[Reply], leading_space: bool) -> bytes:
    """The message as Postfix passes it on after the milter's header changes
    (added at the end, inserted at the top, a change with no value deletes)."""
    head, _, body = content.partition(b"\r\n\r\n")
    fields = head.split(b"\r\n")
    for reply in replies:
        if reply.code in "hi":
            data = reply.data[4:] if reply.code == "i" else reply.data
            name, value, _ = data.split(b"\0")
            field = name + b":" + (value if leading_space else b" " + value)
            if reply.code == "h":
                fields.append(field)
            else:
                fields.insert(struct.unpack(">I", reply.data[:4])[0], field)
        elif reply.code == "m":
            (index,) = struct.unpack(">I", reply.data[:4])
            name, value, _ = reply.data[4:].split(b"\0")
            same = [i for i, f in enumerate(fields) if f.lower().startswith(name.lower() + b":")]
            assert value == b""
            del fields[same[index - 1]]
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def test_negotiation_asks_for_header_changes_and_values_as_sent(milter: Milter) -> None:
    with MilterClient(milter.port) as client:
        version, actions, steps = client.negotiate()
    assert version == 6
    assert actions == 0x01 | 0x10  # SMFIF_ADDHDRS | SMFIF_CHGHDRS
    assert steps & 0x100 and steps & 0x100000  # SMFIP_NOUNKNOWN, SMFIP_HDR_LEADSPC
    with MilterClient(milter.port) as client:  # an MTA without HDR_LEADSPC
        _, _, steps = client.negotiate(steps=0x1FF)
    assert not steps & 0x100000


def test_recipient_outside_trust_space_same_reply_as_smtp(milter: Milter) -> None:
    expected = smtp_reply_for_rcpt(milter, "someone@gmail.com")
    assert expected.startswith("550 5.7.1 ")
    with milter.session() as client:
        assert client.mail(SENDER, **{"{auth_authen}": "jdupont", "i": "4Q1"}).code == "c"
        reply = client.rcpt("someone@gmail.com")
        # The same text, each quoting its own transaction's id (issue 15).
        assert (reply.code, without_id(reply.text)) == ("y", without_id(expected))
        assert client.rcpt(DEST).code == "c"  # per recipient: the next one passes
    decision = [e for e in milter.relay.wait_event("decision", 3) if e["stage"] == "rcpt"]
    assert decision[0]["rule"] == "trust_space" and decision[0]["recipient"] == "someone@gmail.com"


def test_sender_must_be_a_bal_of_the_authenticated_user(milter: Milter) -> None:
    with milter.session() as client:
        reply = client.mail(f"secretariat@{DOMAIN}", **{"{auth_authen}": "jdupont"})
    assert reply.code == "y" and reply.text.startswith("553 5.7.1 "), reply


def test_valid_outgoing_message_gets_headers_and_a_verifying_signature(milter: Milter) -> None:
    before = len(milter.relay.events("transaction"))
    content = make_message(sender=SENDER, to=DEST)
    # Without Message-ID and Date: the milter adds them, as the SMTP listener does.
    content = b"\r\n".join(
        line for line in content.split(b"\r\n") if not line.startswith((b"Message-ID:", b"Date:"))
    )
    with milter.session() as client:
        assert client.mail(SENDER, "SIZE=1000", **{"{auth_authen}": "jdupont"}).code == "c"
        assert client.rcpt(DEST).code == "c"
        replies = client.message(content)
        leading = client.leading_space
    assert replies[-1].code == "c", replies
    added = {r.data.split(b"\0")[0] for r in replies if r.code == "h"}
    assert added == {b"Message-ID", b"Date"}
    inserted = [r for r in replies if r.code == "i"]
    assert [r.data[4:].split(b"\0")[0] for r in inserted] == [b"DKIM-Signature"]
    assert replies.index(inserted[0]) > max(i for i, r in enumerate(replies) if r.code == "h")
    final = applied(content, replies, leading)
    assert dkim.DKIM(final).verify(dnsfunc=lookup(milter.records))
    # The signature covers what it must: one changed byte of the body breaks it.
    tampered = final.replace(b"compte rendu", b"Compte rendu")
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(tampered).verify(dnsfunc=lookup(milter.records))
    outcome = milter.relay.wait_event("transaction", before + 1)[-1]
    assert outcome["outcome"] == "accepted" and outcome["user"] == "jdupont"
    assert outcome["dkim"] == [f"d={DOMAIN} s=mss2026 a=rsa-sha256"], outcome["dkim"]
    assert not milter.upstream.messages()  # Postfix delivers, not the relay


def test_trusted_client_is_outgoing_without_auth(milter: Milter) -> None:
    with milter.session(DPI_ADDRESS) as client:
        assert client.mail(SENDER).code == "c"
        reply = client.rcpt("someone@gmail.com")
    assert reply.code == "y" and reply.text.startswith("550 5.7.1 ")


def test_unauthenticated_session_is_incoming(milter: Milter) -> None:
    with milter.session() as client:
        # The incoming side: the sender must be in the trust space...
        reply = client.mail("someone@gmail.com")
        assert reply.code == "y" and reply.text.startswith("550 "), reply
        # ...and the recipient one of our BALs.
        assert client.mail("dr.martin@chu-b.mssante.fr").code == "c"
        reply = client.rcpt("nobody@chu-b.mssante.fr")
        assert reply.code == "y" and reply.text.startswith("550 "), reply
        assert client.rcpt(SENDER).code == "c"


def test_unsolicited_patient_message_is_refused(milter: Milter) -> None:
    before = len(milter.relay.events("patient_message"))
    content = make_message(sender=PATIENT, to=SENDER, subject="Question", body="Bonjour")
    with milter.session() as client:
        assert client.mail(PATIENT).code == "c"
        assert client.rcpt(SENDER).code == "c"
        replies = client.message(content)
    assert replies[-1].code == "y" and replies[-1].text.startswith("550 5.7.1 "), replies
    event = milter.relay.wait_event("patient_message", before + 1)[-1]
    assert event["result"] == "refused"


def test_pharmacy_accepts_a_patients_first_message_and_forged_results_go(milter: Milter) -> None:
    earlier = len(milter.relay.events("conversation_opened"))  # the relay is shared
    content = make_message(sender=PATIENT, to=f"pharmacie@{DOMAIN}", subject="Ordonnance")
    forged = b"Authentication-Results: relay.ch-exemple.mssante.fr; dkim=pass\r\n"
    other = b"Authentication-Results: mx.other.example; dkim=pass\r\n"
    content = other + forged + content
    with milter.session() as client:
        assert client.mail(PATIENT).code == "c"
        assert client.rcpt(f"pharmacie@{DOMAIN}").code == "c"
        replies = client.message(content)
        leading = client.leading_space
    assert replies[-1].code == "c", replies
    deleted = [r for r in replies if r.code == "m"]
    assert [struct.unpack(">I", r.data[:4])[0] for r in deleted] == [2]
    final = applied(content, replies, leading)
    results = [line for line in final.split(b"\r\n") if line.startswith(b"Authentication-Results")]
    assert results[0].startswith(b"Authentication-Results: relay.ch-exemple.mssante.fr;")
    assert b"dkim=none" in results[0]
    assert results[1:] == [other.rstrip()]
    opened = milter.relay.wait_event("conversation_opened", earlier + 1)
    # The log shows the patient by pseudonym (issue 17).
    shown = milter.relay.pseudonym(PATIENT)
    assert opened[-1]["patient"] == shown and opened[-1]["opened_by"] == "patient"


def test_oversized_attachment_is_refused(milter: Milter) -> None:
    content = make_message(sender=SENDER, attachments={"scanner.bin": b"\0" * (21 * 1024**2)})
    with milter.session() as client:
        assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"
        assert client.rcpt(DEST).code == "c"
        replies = client.message(content)
    assert replies[-1].code == "y" and replies[-1].text.startswith("552 5.3.4 "), replies


def test_abort_and_a_new_session_on_the_same_connection(milter: Milter) -> None:
    def refused_gmail(event: dict[str, Any]) -> bool:
        return event["stage"] == "rcpt" and event["recipient"] == "someone@gmail.com"

    # The relay is shared: other tests' lines for this recipient come before.
    earlier = len([e for e in milter.relay.events("decision") if refused_gmail(e)])
    with milter.session() as client:
        assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"
        client.abort()
        client.send("K")  # QUIT_NC: the next SMTP session, unauthenticated
        client.macros("C", {"j": "mx.test"})
        assert client.connect().code == "c"
        assert client.mail(DEST).code == "c"
        assert client.rcpt("someone@gmail.com").code == "y"
        client.quit()
    # Incoming now: the incoming rules.
    decisions = milter.relay.wait_event("decision", earlier + 1, where=refused_gmail)
    assert decisions[-1]["rule"] == "recipient_is_bal"
    abandoned = [e for e in milter.relay.events("transaction") if e["outcome"] == "abandoned"]
    assert any(e["reason"] is None and e["user"] == "jdupont" for e in abandoned)


def test_broken_stream_ends_the_session_not_the_relay(milter: Milter) -> None:
    with MilterClient(milter.port) as client:
        client.sock.sendall(struct.pack(">I", 1 << 30) + b"B")
        assert client.sock.recv(10) == b""  # closed
    with MilterClient(milter.port) as client:
        client.sock.sendall(struct.pack(">I", 1) + b"Z")
        assert client.sock.recv(10) == b""
    assert milter.relay.wait_event("milter_protocol_error", 2)
    with milter.session() as client:  # still serving
        assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"


def test_internal_error_tempfails(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    config = config_for(tmp_path, pki, password_hashes, 1)
    config.pop("_records")
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        # The conversation table goes away under the relay: looking up a
        # patient's conversation fails (since issue 13, a planned failure:
        # the state is unavailable, the patient's message tempfailed).
        with sqlite3.connect(tmp_path / "var/state.sqlite3") as db:
            db.execute("DROP TABLE conversations")
        content = make_message(sender=PATIENT, to=SENDER, subject="Question")
        with MilterClient(relay.port_of("milter")) as client:
            client.negotiate()
            client.connect()
            client.helo()
            assert client.mail(PATIENT).code == "c"
            assert client.rcpt(SENDER).code == "c"
            replies = client.message(content)
        assert replies[-1].code == "y" and replies[-1].text.startswith("451 4.3.0 "), replies
        decided = relay.wait_event("decision", where=lambda e: e.get("stage") == "data")
        assert "conversation state unavailable" in decided[-1]["reason"]
        assert "Traceback" not in relay.process.stderr()
    finally:
        relay.stop()


def test_unix_socket_listener(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> None:
    config = config_for(tmp_path, pki, password_hashes, 1)
    config.pop("_records")
    socket_path = tmp_path / "run" / "milter.sock"
    socket_path.parent.mkdir()
    config["listeners"][1] = {"name": "milter", "role": "milter", "path": "run/milter.sock"}
    relay = Relay(tmp_path, config)
    for run in (1, 2):  # the second start finds the first one's socket and replaces it
        relay.start()
        try:
            assert len(relay.wait_event("started", count=run)) == run
            with MilterClient(str(socket_path)) as client:
                client.negotiate()
                assert client.connect().code == "c"
                assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"
                reply = client.rcpt("someone@gmail.com")
                assert reply.code == "y" and reply.text.startswith("550 5.7.1 ")
        finally:
            relay.stop(signal.SIGKILL)  # no clean-up: the socket file stays behind
        assert socket_path.is_socket()
