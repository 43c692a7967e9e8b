"""The null reverse-path end to end (issue 13, defect 11): delivery reports,
read receipts and automatic replies travel with « MAIL FROM:<> » (RFC 5321
§4.5.5, RFC 3461, RFC 8098 §2.1, RFC 3834 §3.3). The real relay with both
listeners, the operator and the mailbox server as real upstream processes;
then a real Postfix gateway asking the relay's milter."""

from __future__ import annotations

import os
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Pki, Stack, base_config, two_sided
from tests.e2e.test_postfix import DPI, OPERATOR, documented_main_cf, needs_postfix
from tests.support.mail import connect, make_message, wire_data
from tests.support.postfix import PostfixInstance
from tests.support.processes import Relay, Upstream, free_port

DR = "jean.dupont@ch-exemple.mssante.fr"
ACCUEIL = "accueil@ch-exemple.mssante.fr"
SECRETARIAT = "secretariat@ch-exemple.mssante.fr"  # not a BAL of jdupont
P1 = "295109912611193@patient.mssante.fr"
P2 = "185057800608491@patient.mssante.fr"
DAEMON = "MAILER-DAEMON@operateur.mssante.fr"
RESERVED = b"5.7.1 Expediteur vide (<>) reserve aux avis de remise"


# Messages -------------------------------------------------------------------
def _headers(sender: str, to: str, subject: str, extra: str = "") -> str:
    mid = f"<{os.urandom(6).hex()}@test.mssante.fr>"
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
        f"Date: Mon, 2 Mar 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n{extra}"
    )


def dsn(to: str, sender: str = DAEMON, about: str = P1, attachment: bytes = b"") -> bytes:
    """A delivery status notification (RFC 3464), as the operator sends seed 004's notice."""
    extra = (
        "--b1\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="x.exe"\r\n\r\n'
        + attachment.decode("latin-1")
        + "\r\n"
        if attachment
        else ""
    )
    return (
        _headers(
            sender,
            to,
            "Non distribue",
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b1\r\n",
        )
        + "\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Le message que vous avez envoye a {about} n'a pas pu etre distribue car la"
        " messagerie Mon espace Sante de votre destinataire est cloturee.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.operateur.mssante.fr\r\n\r\n"
        f"Final-Recipient: rfc822; {about}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        + extra
        + "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {to}\r\nTo: {about}\r\nSubject: Resultats\r\n\r\n"
        "--b1--\r\n"
    ).encode()


def mdn(sender: str, to: str, original: str | None, in_reply_to: str | None = None) -> bytes:
    """A read receipt (RFC 8098): the « accusé de lecture » of seed 004."""
    head = "Content-Type: multipart/report; report-type=disposition-notification; boundary=b2\r\n"
    if in_reply_to:
        head += f"In-Reply-To: {in_reply_to}\r\n"
    field = f"Original-Message-ID: {original}\r\n" if original else ""
    return (
        _headers(sender, to, "Accuse de lecture", head)
        + "\r\n--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Votre message a ete lu.\r\n"
        "--b2\r\nContent-Type: message/disposition-notification\r\n\r\n"
        "Reporting-UA: messagerie.monespacesante.fr\r\n"
        f"Final-Recipient: rfc822; {sender}\r\n{field}"
        "Disposition: manual-action/MDN-sent-manually; displayed\r\n"
        "--b2--\r\n"
    ).encode()


def auto_reply(sender: str, to: str, value: str = "auto-replied") -> bytes:
    """An absence message (seed 002: « activer un message d'absence »), RFC 3834."""
    return (
        _headers(sender, to, "Absence", f"Auto-Submitted: {value}\r\n")
        + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Je suis absent jusqu'au 10 mars.\r\n"
    ).encode()


def plain(sender: str, to: str) -> bytes:
    return make_message(sender=sender, to=to, subject="Bonjour", body="Un message ordinaire\n")


def null_send(client: smtplib.SMTP, to: str, content: bytes) -> tuple[int, bytes]:
    """MAIL FROM:<>, RCPT, DATA: the first refusal or the final reply."""
    code, text = client.mail("")  # smtplib sends « MAIL FROM:<> »
    if code != 250:
        return code, text
    code, text = client.rcpt(to)
    if code != 250:
        client.rset()
        return code, text
    code, text = client.docmd("DATA")
    assert code == 354, (code, text)
    client.send(wire_data(content))
    return client.getreply()


# Both listeners ---------------------------------------------------------------
@dataclass
class Sides:
    relay: Relay
    operator: Upstream  # outgoing mail goes there
    mailbox: Upstream  # incoming mail is delivered there
    pki: Pki

    def incoming(self, to: str, content: bytes) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mx.operateur.mssante.fr")
            return null_send(client, to, content)

    def outgoing(self, to: str, content: bytes, user: str | None = "jdupont") -> tuple[int, bytes]:
        with connect(Stack(self.relay, self.operator, self.pki), user) as client:
            return null_send(client, to, content)

    def professional_sends(self, to: str, subject: str = "Resultats") -> str:
        content = make_message(sender=DR, to=to, subject=subject)
        with connect(Stack(self.relay, self.operator, self.pki)) as client:
            assert client.sendmail(DR, [to], content) == {}
        return content.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()

    def patient_replies(self, patient: str, in_reply_to: str) -> tuple[int, bytes]:
        content = make_message(sender=patient, to=DR, subject="Re: Resultats", body="Merci")
        head, body = content.split(b"\r\n\r\n", 1)
        content = head + f"\r\nIn-Reply-To: {in_reply_to}\r\n\r\n".encode() + body
        with smtplib.SMTP("127.0.0.1", self.relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mx.operateur.mssante.fr")
            client.mail(patient)
            client.rcpt(DR)
            client.docmd("DATA")
            client.send(wire_data(content))
            return client.getreply()

    def conversations(self) -> list[tuple[str, str | None, int]]:
        """(patient, close_reason, messages) of every conversation. The state
        holds pseudonyms (issue 17): shown by the address they stand for."""
        address = {self.relay.pseudonym(p): p for p in (P1, P2)}
        with sqlite3.connect(self.relay.workdir / "var" / "state.sqlite3") as db:
            return [
                (address.get(patient, patient), how, count)
                for patient, how, count in db.execute(
                    "SELECT c.patient, c.close_reason, (SELECT count(*) FROM messages m"
                    " WHERE m.conversation_id = c.id) FROM conversations c ORDER BY c.id"
                )
            ]


@pytest.fixture(scope="module")
def sides(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Sides]:
    with two_sided(tmp_path_factory.mktemp("null"), pki, password_hashes) as (
        relay,
        operator,
        mailbox,
    ):
        yield Sides(relay, operator, mailbox, pki)


# The incoming side ------------------------------------------------------------
def test_incoming_delivery_report_reaches_the_bal(sides: Sides) -> None:
    before = len(sides.mailbox.messages())
    assert sides.incoming(DR, dsn(DR))[0] == 250
    envelope, received = sides.mailbox.messages()[-1]
    assert len(sides.mailbox.messages()) == before + 1
    assert envelope["mail_from"] in ("", "<>") and envelope["rcpt_tos"] == [DR]
    assert b"report-type=delivery-status" in received


def test_incoming_automatic_notice_reaches_the_bal(sides: Sides) -> None:
    """Seed 004's « messagerie clôturée » notice, as a plain automatic message."""
    assert sides.incoming(DR, auto_reply(DAEMON, DR, "auto-generated"))[0] == 250
    assert sides.incoming(ACCUEIL, auto_reply("dr.martin@chu-b.mssante.fr", ACCUEIL))[0] == 250


def test_incoming_null_sender_still_needs_a_bal(sides: Sides) -> None:
    code, text = sides.incoming("quelquun@ailleurs.mssante.fr", dsn("x@ailleurs.mssante.fr"))
    assert (code, text[:5]) == (550, b"5.1.1")


def test_incoming_null_sender_content_rules_still_apply(sides: Sides) -> None:
    before = len(sides.mailbox.messages())
    code, text = sides.incoming(DR, dsn(DR, attachment=b"MZ\x90\x00 executable"))
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert b"x.exe" in text
    assert len(sides.mailbox.messages()) == before


def test_incoming_notification_from_outside_the_trust_space_is_refused(sides: Sides) -> None:
    before = len(sides.mailbox.messages())
    code, text = sides.incoming(DR, dsn(DR, sender="mailer-daemon@gmail.com"))
    assert (code, text[:5]) == (550, b"5.7.1") and b"<mailer-daemon@gmail.com>" in text
    assert len(sides.mailbox.messages()) == before


def test_incoming_plain_message_with_null_sender_is_refused(sides: Sides) -> None:
    before = len(sides.mailbox.messages())
    code, text = sides.incoming(DR, plain("dr.martin@chu-b.mssante.fr", DR))
    assert code == 553 and text.startswith(RESERVED), text
    assert b"<<>>" not in text
    assert len(sides.mailbox.messages()) == before


def test_patients_read_receipt_even_after_fin_changes_nothing(sides: Sides) -> None:
    first = sides.professional_sends(P1)
    assert sides.patient_replies(P1, first)[0] == 250
    assert sides.incoming(DR, mdn(P1, DR, first))[0] == 250
    assert sides.conversations()[-1] == (P1, None, 2)  # the receipt is no message of it
    sides.professional_sends(P1, subject="[FIN]")
    assert sides.conversations()[-1] == (P1, "fin", 3)
    before = len(sides.mailbox.messages())
    # Read after the end of the conversation: the receipt still arrives...
    assert sides.incoming(DR, mdn(P1, DR, first))[0] == 250
    # ... and one that names the message in In-Reply-To only, too.
    assert sides.incoming(DR, mdn(P1, DR, None, in_reply_to=first))[0] == 250
    assert len(sides.mailbox.messages()) == before + 2
    # It reopened nothing: the patient still cannot write.
    assert sides.conversations()[-1] == (P1, "fin", 3)
    code, text = sides.patient_replies(P1, first)
    assert (code, text[:5]) == (550, b"5.7.1") and b"close" in text


def test_patients_read_receipt_on_an_unknown_message_is_refused(sides: Sides) -> None:
    sent = sides.professional_sends(P2)
    before = len(sides.mailbox.messages())
    for content in (
        mdn(P2, DR, "<jamais-envoye@ch-exemple.mssante.fr>"),
        mdn(P2, DR, None),  # names no message at all
        mdn(P1, DR, sent),  # a message sent to another patient
    ):
        code, text = sides.incoming(DR, content)
        assert (code, text[:5]) == (550, b"5.7.1"), text
        assert b"Accuse de lecture refuse" in text
    assert len(sides.mailbox.messages()) == before


def test_patients_null_sender_message_that_is_no_receipt_is_refused(sides: Sides) -> None:
    sent = sides.professional_sends(P2)
    code, text = sides.incoming(DR, plain(P2, DR))
    assert code == 553 and text.startswith(RESERVED), text
    # A patient's automatic reply keeps to the conversation rules: outside an
    # open one it is refused, inside one it arrives without continuing it.
    code, text = sides.incoming(ACCUEIL, auto_reply(P1, ACCUEIL))
    assert (code, text[:5]) == (550, b"5.7.1"), text
    count = [c for c in sides.conversations() if c[0] == P2][-1][2]
    reply = auto_reply(P2, DR).replace(b"\r\n\r\n", f"\r\nIn-Reply-To: {sent}\r\n\r\n".encode(), 1)
    assert sides.incoming(DR, reply)[0] == 250
    assert [c for c in sides.conversations() if c[0] == P2][-1][2] == count


# The outgoing side --------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(mdn(DR, P1, "<question@patient.mssante.fr>"), id="read-receipt"),
        pytest.param(dsn("dr.martin@chu-b.mssante.fr", sender=DR), id="delivery-report"),
        pytest.param(auto_reply(ACCUEIL, P1), id="absence-message"),
    ],
)
def test_outgoing_notification_from_the_users_bal(sides: Sides, content: bytes) -> None:
    to = content.split(b"To: ", 1)[1].split(b"\r\n", 1)[0].decode()
    before = len(sides.operator.messages())
    conversations = sides.conversations()
    assert sides.outgoing(to, content)[0] == 250
    envelope, received = sides.operator.messages()[-1]
    assert len(sides.operator.messages()) == before + 1
    assert envelope["mail_from"] in ("", "<>") and envelope["rcpt_tos"] == [to]
    assert received.endswith(content.split(b"\r\n\r\n", 1)[1])
    # A notification to a patient opens no conversation.
    assert sides.conversations() == conversations


def test_outgoing_plain_message_with_null_sender_is_refused(sides: Sides) -> None:
    before = len(sides.operator.messages())
    code, text = sides.outgoing(
        "dr.martin@chu-b.mssante.fr", plain(DR, "dr.martin@chu-b.mssante.fr")
    )
    assert code == 553 and text.startswith(RESERVED), text
    assert b"<<>>" not in text
    # « auto-generated » is not an automatic reply: a DPI's sending has its BAL as sender.
    code, text = sides.outgoing(P1, auto_reply(DR, P1, "auto-generated"))
    assert code == 553 and text.startswith(RESERVED), text
    assert len(sides.operator.messages()) == before


def test_outgoing_notification_from_a_bal_not_the_users_is_refused(sides: Sides) -> None:
    code, text = sides.outgoing(P1, mdn(SECRETARIAT, P1, "<q@patient.mssante.fr>"))
    assert (code, text[:5]) == (553, b"5.7.1") and SECRETARIAT.encode() in text


def test_outgoing_null_sender_needs_authentication(sides: Sides) -> None:
    code, text = sides.outgoing(P1, mdn(DR, P1, "<q@patient.mssante.fr>"), user=None)
    assert (code, text[:5]) == (530, b"5.7.0"), text


# Through the milter, with a real Postfix ----------------------------------------
@dataclass
class Gateway:
    postfix: PostfixInstance
    relay: Relay
    upstream: Upstream

    def send(self, source: str, to: str, content: bytes) -> tuple[int, bytes]:
        with smtplib.SMTP(
            "127.0.0.1", self.postfix.port, timeout=60, source_address=(source, 0)
        ) as client:
            client.ehlo("mx.operateur.mssante.fr")
            return null_send(client, to, content)

    def arrived(self, count: int, timeout: float = 20.0) -> list[tuple[dict, bytes]]:  # type: ignore[type-arg]
        """Postfix delivers from its queue: wait for the upstream to have them."""
        deadline = time.monotonic() + timeout
        while len(messages := self.upstream.messages()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return messages


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Gateway]:
    needs_postfix()
    tmp = tmp_path_factory.mktemp("null-gateway")
    upstream = Upstream(tmp)
    upstream.start()
    config = base_config(pki, password_hashes, upstream.port)
    milter_port = free_port()
    config["listeners"].append({"name": "milter", "role": "milter", "port": milter_port})
    config["trusted_clients"] = {DPI: "jdupont"}
    relay = Relay(tmp, config)
    postfix = PostfixInstance(
        tmp,
        smtp_port=free_port(),
        relay_port=upstream.port,
        milter=None,
        extra=documented_main_cf(milter_port) | {"local_header_rewrite_clients": ""},
    )
    try:
        relay.start()
        postfix.start()
        yield Gateway(postfix, relay, upstream)
    finally:
        postfix.stop()
        relay.stop()
        upstream.stop()


def test_milter_incoming_bounce_reaches_the_bal(gateway: Gateway) -> None:
    before = len(gateway.upstream.messages())
    assert gateway.send(OPERATOR, DR, dsn(DR))[0] == 250
    messages = gateway.arrived(before + 1)
    assert len(messages) == before + 1
    envelope, received = messages[-1]
    assert envelope["mail_from"] in ("", "<>") and envelope["rcpt_tos"] == [DR]
    assert b"report-type=delivery-status" in received


def test_milter_null_sender_plain_message_is_refused(gateway: Gateway) -> None:
    before = len(gateway.upstream.messages())
    code, text = gateway.send(OPERATOR, DR, plain("dr.martin@chu-b.mssante.fr", DR))
    assert code == 553 and text.startswith(RESERVED), text
    code, text = gateway.send(DPI, "dr.martin@chu-b.mssante.fr", plain(DR, "x@chu-b.mssante.fr"))
    assert code == 553 and text.startswith(RESERVED), text
    assert len(gateway.upstream.messages()) == before


def test_milter_outgoing_read_receipt_from_a_trusted_client(gateway: Gateway) -> None:
    before = len(gateway.upstream.messages())
    assert gateway.send(DPI, P1, mdn(DR, P1, "<q@patient.mssante.fr>"))[0] == 250
    assert len(gateway.arrived(before + 1)) == before + 1


def test_local_postfix_bounce_of_a_refused_recipient_goes_out(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """A DPI's local Postfix relays through the submission listener: the relay
    refuses a recipient, Postfix bounces it to the BAL with « MAIL FROM:<> »,
    through the relay again. Before, that bounce was refused too (553 <<>>) and
    Postfix double-bounced. Its From: (MAILER-DAEMON of the Postfix host) must
    be a BAL of the trusted client's user, as any From: on the outgoing side."""
    needs_postfix()
    upstream = Upstream(tmp_path)
    upstream.start()
    config = base_config(pki, password_hashes, upstream.port)
    local_port = free_port()
    config["listeners"].append(
        {
            "name": "local",
            "role": "submission",
            "host": "127.0.0.1",
            "port": local_port,
            "tls": "none",
        }
    )
    config["trusted_clients"] = {DPI: "jdupont"}
    daemon = "MAILER-DAEMON@mx.ch-exemple.mssante.fr"  # the harness's myhostname
    config["bals"].append({"address": daemon, "type": "applicative", "users": ["jdupont"]})
    relay = Relay(tmp_path, config)
    postfix = PostfixInstance(tmp_path, smtp_port=free_port(), relay_port=local_port, milter=None)
    try:
        relay.start()
        postfix.start()
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
            client.ehlo("dpi.ch-exemple.mssante.fr")
            content = make_message(sender=DR, to="someone@gmail.com")
            assert client.sendmail(DR, ["someone@gmail.com"], content) == {}
        deadline = time.monotonic() + 30
        while not (messages := upstream.messages()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(messages) == 1, postfix.log_text()
        envelope, received = messages[0]
        assert envelope["mail_from"] in ("", "<>") and envelope["rcpt_tos"] == [DR]
        assert b"report-type=delivery-status" in received
        assert b"someone@gmail.com" in received
        refused = relay.wait_event("decision", where=lambda e: e["rule"] == "trust_space")
        assert refused and refused[0]["verdict"] == "reject"
    finally:
        postfix.stop()
        relay.stop()
        upstream.stop()
