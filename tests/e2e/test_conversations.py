"""Patient conversations end to end: the real relay with a submission and an
inbound listener, the operator and the structure's mailbox server as two real
upstream processes, the real SQLite file."""

from __future__ import annotations

import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mss_relay.pseudonym import load_key
from tests.conftest import Pki, Stack, two_sided
from tests.support import files
from tests.support.mail import connect, make_message, send, wire_data
from tests.support.processes import ROOT, Relay, Upstream

DR = "jean.dupont@ch-exemple.mssante.fr"
NO_REPLY = "no_reply@ch-exemple.mssante.fr"
PHARMACY = "pharmacie@officine-exemple.mssante.fr"
P1 = "295109912611193@patient.mssante.fr"
P2 = "185057800608491@patient.mssante.fr"
P3 = "253072B07300470@patient.mssante.fr"
P4 = "253072A07300443@patient.mssante.fr"


@dataclass
class Conversations:
    relay: Relay
    operator: Upstream  # where professionals' mail goes
    mailbox: Upstream  # inbound_delivery: the structure's mailbox server
    pki: Pki

    @property
    def submission(self) -> Stack:
        return Stack(self.relay, self.operator, self.pki)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.relay.workdir / "var" / "state.sqlite3")

    def pseudonym(self, patient: str) -> str:
        """How the log and the state show a patient (issue 17), under the
        relay's key (made at its first start beside the state database)."""
        return load_key(self.relay.workdir / "var" / "pseudonym.key", create=False).of(patient)

    def professional_sends(
        self, to: str, subject: str = "Résultats", sender: str = DR, **headers: str
    ) -> tuple[int, str]:
        content = make_message(sender=sender, to=to, subject=subject)
        if headers:
            head, body = content.split(b"\r\n\r\n", 1)
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
            content = head + b"\r\n" + extra + b"\r\n" + body
        user = "msecret" if sender == PHARMACY else "jdupont"
        with connect(self.submission, user) as client:
            _, (code, _) = send(client, sender, [to], content)
        message_id = content.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
        return code, message_id

    def patient_sends(
        self,
        patient: str,
        to: str = DR,
        in_reply_to: str | None = None,
        references: str | None = None,
    ) -> tuple[int, bytes]:
        content = make_message(sender=patient, to=to, subject="Re: Résultats", body="Merci docteur")
        head, body = content.split(b"\r\n\r\n", 1)
        if in_reply_to:
            head += f"\r\nIn-Reply-To: {in_reply_to}".encode()
        if references:
            head += f"\r\nReferences: {references}".encode()
        with smtplib.SMTP("127.0.0.1", self.relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mta.operateur.test")
            code, text = client.mail(patient)
            assert code == 250, text
            code, text = client.rcpt(to)
            if code != 250:
                return code, text
            client.docmd("DATA")
            client.send(wire_data(head + b"\r\n\r\n" + body))
            return client.getreply()


@pytest.fixture
def conv(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Conversations]:
    extra_bals = [
        {"address": NO_REPLY, "type": "applicative", "users": ["jdupont"], "auto_close": True},
        {
            "address": PHARMACY,
            "type": "organisationnelle",
            "users": ["msecret"],
            "patients_may_initiate": True,
        },
    ]
    with two_sided(
        tmp_path,
        pki,
        password_hashes,
        bals=lambda bals: bals + extra_bals,
        conversations={"close_after_days": 30, "retention_days": 92, "purge_interval": 0.2},
    ) as (relay, operator, mailbox):
        yield Conversations(relay, operator, mailbox, pki)


def test_patient_cannot_start_a_conversation(conv: Conversations) -> None:
    code, text = conv.patient_sends(P1)
    assert (code, text[:5]) == (550, b"5.7.1")
    assert b"Aucune conversation ouverte par un professionnel" in text
    assert conv.mailbox.messages() == []
    refused = conv.relay.wait_event("patient_message")
    assert refused[-1]["result"] == "refused" and refused[-1]["conversation"] == "none"


def test_professional_opens_and_patient_replies(conv: Conversations) -> None:
    code, mid = conv.professional_sends(P1)
    assert code == 250
    assert conv.operator.messages()[-1][0]["rcpt_tos"] == [P1]
    code, text = conv.patient_sends(P1, in_reply_to=mid)
    assert code == 250, text
    delivered = conv.mailbox.messages()
    assert len(delivered) == 1 and delivered[0][0]["rcpt_tos"] == [DR]
    assert conv.operator.messages()[-1][0]["rcpt_tos"] == [P1]  # not sent the other way
    # References instead of In-Reply-To work as well.
    code, _ = conv.patient_sends(P1, references=f"<older@x> {mid}")
    assert code == 250
    # A patient message with no reference is refused, even with a conversation open.
    code, text = conv.patient_sends(P1)
    assert (code, text[:5]) == (550, b"5.7.1") and b"ne repond a aucun message" in text
    # Another patient cannot use this conversation's Message-ID.
    code, _ = conv.patient_sends(P2, in_reply_to=mid)
    assert code == 550
    assert len(conv.mailbox.messages()) == 2
    events = [e["event"] for e in conv.relay.events() if e["event"].startswith("conversation_")]
    assert events[:2] == ["conversation_opened", "conversation_continued"]


@pytest.mark.parametrize("subject", ["RE: [FIN]", "[fin]", "[FIN] merci", "[FIN]."])
def test_fin_lookalikes_leave_the_conversation_open(conv: Conversations, subject: str) -> None:
    conv.professional_sends(P1)
    code, mid = conv.professional_sends(P1, subject=subject)
    assert code == 250
    code, text = conv.patient_sends(P1, in_reply_to=mid)
    assert code == 250, text


@pytest.mark.parametrize(
    ("subject", "headers"),
    [
        ("[FIN]", {}),
        ("  [FIN] ", {}),
        ("=?UTF-8?Q?=5BFIN=5D?=", {}),
        ("Fin de prise en charge", {"X-MSS-MES": "FIN"}),
    ],
)
def test_fin_closes_and_the_patient_is_told(
    conv: Conversations, subject: str, headers: dict[str, str]
) -> None:
    _, first = conv.professional_sends(P1)
    code, fin = conv.professional_sends(P1, subject=subject, **headers)
    assert code == 250
    for reference in (fin, first):
        code, text = conv.patient_sends(P1, in_reply_to=reference)
        assert (code, text[:5]) == (550, b"5.7.1"), text
        assert b"close par le professionnel ([FIN])" in text
    assert conv.mailbox.messages() == []
    closed = conv.relay.wait_event("conversation_closed")
    assert closed[-1]["how"] in {"fin", "x-mss-mes"} and closed[-1]["by"] == "jdupont"


def test_undelivered_messages_open_and_close_nothing(conv: Conversations) -> None:
    conv.operator.control(data="554 5.6.0 refused by the operator")
    code, mid = conv.professional_sends(P3)
    assert code == 554
    code, text = conv.patient_sends(P3, in_reply_to=mid)
    assert code == 550 and b"Aucune conversation ouverte" in text
    conv.operator.control()
    code, mid = conv.professional_sends(P3)
    assert code == 250
    conv.operator.control(data="451 4.3.0 try later")
    code, _ = conv.professional_sends(P3, subject="[FIN]")
    assert code == 451
    code, text = conv.patient_sends(P3, in_reply_to=mid)
    assert code == 250, text


def test_officine_accepts_a_patients_first_message(conv: Conversations) -> None:
    code, text = conv.patient_sends(P2, to=PHARMACY)
    assert code == 250, text
    assert conv.mailbox.messages()[-1][0]["rcpt_tos"] == [PHARMACY]
    # The pharmacist replies and closes as usual.
    code, _ = conv.professional_sends(P2, sender=PHARMACY, subject="Votre ordonnance")
    assert code == 250
    code, _ = conv.professional_sends(P2, sender=PHARMACY, subject="[FIN]")
    assert code == 250
    # The log shows the patient by pseudonym (issue 17).
    shown = conv.pseudonym(P2)
    opened = [e for e in conv.relay.events("conversation_opened") if e["patient"] == shown]
    assert opened[0]["opened_by"] == "patient"
    # An ordinary BAL still refuses the same patient.
    code, _ = conv.patient_sends(P2, to=DR)
    assert code == 550


def test_auto_close_bal(conv: Conversations) -> None:
    code, mid = conv.professional_sends(P1, sender=NO_REPLY, subject="Votre compte rendu")
    assert code == 250
    code, text = conv.patient_sends(P1, to=NO_REPLY, in_reply_to=mid)
    assert code == 550 and b"close automatiquement" in text


def test_idle_conversations_close_after_days(conv: Conversations) -> None:
    code, mid = conv.professional_sends(P1)
    assert code == 250
    # Time is moved, not slept: the stored activity goes 31 days back.
    back = (datetime.now(UTC) - timedelta(days=31)).isoformat(timespec="milliseconds")
    with conv.db() as db:
        db.execute("UPDATE conversations SET last_activity_at = ?", [back.replace("+00:00", "Z")])
    code, text = conv.patient_sends(P1, in_reply_to=mid)
    assert code == 550 and b"periode sans echange" in text
    closed = conv.relay.wait_event("conversations_auto_closed")
    assert closed and closed[-1]["count"] == 1


def test_state_survives_restart_and_kill_9(conv: Conversations) -> None:
    _, mid1 = conv.professional_sends(P1)
    conv.relay.stop()
    conv.relay.start()
    code, text = conv.patient_sends(P1, in_reply_to=mid1)
    assert code == 250, text
    _, mid2 = conv.professional_sends(P4)
    conv.relay.stop(signal.SIGKILL)
    conv.relay.start()
    code, text = conv.patient_sends(P4, in_reply_to=mid2)
    assert code == 250, text
    with conv.db() as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_retention_purge(conv: Conversations) -> None:
    conv.professional_sends(P1)
    conv.professional_sends(P1, subject="[FIN]")
    conv.professional_sends(P2)
    old = (datetime.now(UTC) - timedelta(days=93)).isoformat(timespec="milliseconds")
    with conv.db() as db:
        db.execute("UPDATE conversations SET closed_at = ? WHERE closed_at IS NOT NULL", [old])
    purged = conv.relay.wait_event("conversations_purged")
    assert purged and purged[-1]["conversations"] == 1 and purged[-1]["message_ids"] == 2
    with conv.db() as db:
        # Stored by pseudonym (issue 17).
        patients = [r[0] for r in db.execute("SELECT patient FROM conversations")]
        assert patients == [conv.pseudonym(P2)]


def _cli(conv: Conversations, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mss_relay",
            "conversations",
            *args,
            "--config",
            str(conv.relay.config_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_admin_cli_while_the_relay_runs(conv: Conversations) -> None:
    _, mid = conv.professional_sends(P1)
    conv.professional_sends(P2)
    conv.professional_sends(P2, subject="[FIN]")
    listing = _cli(conv, "list", "--open")
    assert listing.returncode == 0, listing.stderr
    # Listed by pseudonym (issue 17), never by INS; show and close take the address.
    s1, s2 = conv.pseudonym(P1), conv.pseudonym(P2)
    assert s1 in listing.stdout and s2 not in listing.stdout and P1 not in listing.stdout
    assert s2 in _cli(conv, "list", "--closed").stdout
    assert s1 in _cli(conv, "list", "--bal", DR).stdout
    shown = _cli(conv, "show", P1)
    assert shown.returncode == 0 and mid in shown.stdout
    closed = _cli(conv, "close", DR, P1)
    assert closed.returncode == 0, closed.stderr
    assert _cli(conv, "close", DR, P1).returncode == 1  # nothing open any more
    code, text = conv.patient_sends(P1, in_reply_to=mid)
    assert code == 550 and b"administrateur" in text
    admin = [e for e in conv.relay.events("conversation_closed") if e["how"] == "admin"]
    assert admin and admin[0]["by"].startswith("admin:")


def test_per_domain_limit_for_patients(conv: Conversations) -> None:
    with connect(conv.submission) as client:
        client.docmd("MAIL", f"FROM:<{DR}> SIZE=30000000")
        code, text = client.rcpt(P1)
        assert (code, text[:5]) == (552, b"5.3.4")
        code, _ = client.rcpt("dr.martin@chu-b.mssante.fr")
        assert code == 250
        client.rset()
    big = make_message(to=P1, attachments={"scanner.pdf": b"\x01" * (19 * 1024 * 1024)})
    with connect(conv.submission) as client:
        _, (code, text) = send(client, DR, [P1], big)
    assert (code, text[:5]) == (552, b"5.3.4")
    assert conv.operator.messages() == []


def test_message_id_and_date_are_added_when_missing(conv: Conversations) -> None:
    bare = f"From: {DR}\r\nTo: {P1}\r\nSubject: x\r\n\r\nbonjour\r\n".encode()
    with connect(conv.submission) as client:
        _, (code, _) = send(client, DR, [P1], bare)
    assert code == 250
    received = conv.operator.messages()[-1][1]
    head = received.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"\r\nMessage-ID: <") == 1 and head.count(b"\r\nDate: ") == 1
    assert received.endswith(bare)
    mid = head.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    code, text = conv.patient_sends(P1, in_reply_to=mid)
    assert code == 250, text


def test_inbound_is_never_an_open_relay(conv: Conversations) -> None:
    with smtplib.SMTP("127.0.0.1", conv.relay.port_of("inbound"), timeout=30) as client:
        client.ehlo("mta.test")
        assert not client.has_extn("auth")
        code, text = client.mail("someone@gmail.com")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, _ = client.mail("dr.martin@chu-b.mssante.fr")
        assert code == 250
        code, text = client.rcpt("x@chu-b.mssante.fr")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt("x@gmail.com")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, _ = client.rcpt(DR)
        assert code == 250
        client.docmd("DATA")
        client.send(wire_data(make_message(sender="dr.martin@chu-b.mssante.fr", to=DR)))
        code, _ = client.getreply()
        assert code == 250
    assert conv.mailbox.messages()[-1][0]["rcpt_tos"] == [DR]
    assert conv.operator.messages() == []


def test_dangerous_attachments_are_refused_coming_in_too(conv: Conversations) -> None:
    code, mid = conv.professional_sends(P1)
    assert code == 250
    for sender, attachments in (
        (P1, {"ordonnance.pdf.exe": files.exe()}),
        ("dr.martin@chu-b.mssante.fr", {"dossier.zip": files.zip_of({"run.bat": b"@echo off"})}),
    ):
        content = make_message(sender=sender, to=DR, attachments=attachments)
        head, body = content.split(b"\r\n\r\n", 1)
        content = head + f"\r\nIn-Reply-To: {mid}".encode() + b"\r\n\r\n" + body
        with smtplib.SMTP("127.0.0.1", conv.relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mta.operateur.test")
            assert client.mail(sender)[0] == 250
            assert client.rcpt(DR)[0] == 250
            client.docmd("DATA")
            client.send(wire_data(content))
            code, text = client.getreply()
        assert (code, text[:5]) == (550, b"5.7.1"), text
        assert next(iter(attachments)).encode() in text
    assert conv.mailbox.messages() == []


def test_a_client_gone_after_its_final_dot_still_gets_its_message_delivered(
    conv: Conversations,
) -> None:
    conv.mailbox.control(data_delay=1)  # the message is on its way when the client goes
    content = make_message(sender="dr.martin@chu-b.mssante.fr", to=DR)
    with socket.create_connection(("127.0.0.1", conv.relay.port_of("inbound"))) as sock:
        sock.sendall(
            b"EHLO mta.operateur.test\r\nMAIL FROM:<dr.martin@chu-b.mssante.fr>\r\n"
            + f"RCPT TO:<{DR}>\r\n".encode()
        )
        replies = sock.makefile("rb")
        while not replies.readline().startswith(b"250 2.1.5"):
            pass
        sock.sendall(b"DATA\r\n")
        assert replies.readline().startswith(b"354")
        sock.sendall(wire_data(content) + b"QUIT\r\n")
        sock.shutdown(socket.SHUT_WR)
        replies.read()
    # Delivered once, and logged as such (not « abandoned »): the forwarding
    # that had begun was not cut short by the client's departure.
    transactions = conv.relay.wait_event("transaction")
    assert [e["outcome"] for e in transactions] == ["delivered"]
    assert len(conv.mailbox.messages()) == 1
