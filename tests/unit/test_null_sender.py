"""The null reverse-path (issue 13, defect 11): what an automatic message is,
what the rules decide for « MAIL FROM:<> » on each side, and what it changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mss_relay.core.changes import inbound_change, outgoing_changes
from mss_relay.core.conversation import Change, ConversationFacts, Status
from mss_relay.core.facts import MailFacts, MessageFacts, SessionFacts
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.message import MessageInfo, inspect_message
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.reply import ascii_text
from mss_relay.core.reports import Automatic, automatic_kind, reported_ids
from mss_relay.front.smtp import null_path
from mss_relay.state.conversations import ConversationStore
from tests.support.keys import TEST_PSEUDONYMS

DR = "jean.dupont@ch.mssante.fr"
OFFICINE = "officine@ph.mssante.fr"
P = "295109912611193@patient.mssante.fr"
BALS = BalDirectory(
    [
        Bal(DR, BalType.NOMINATIVE, frozenset({"jd"})),
        Bal(OFFICINE, BalType.ORGANISATIONNELLE, frozenset({"ph"}), patients_may_initiate=True),
    ]
)
POLICY = Policy(Limits(20 * 2**20, 60 * 2**20, 5), BALS)
RESERVED = "Expediteur vide (<>) reserve aux avis de remise"


def _info(
    author: str = DR,
    report_type: str | None = None,
    auto_submitted: str | None = None,
    original: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
) -> MessageInfo:
    return MessageInfo(
        (),
        "<n@x>",
        "Objet",
        (author,),
        in_reply_to,
        references,
        5,
        from_addresses=(author,),
        report_type=report_type,
        auto_submitted=auto_submitted,
        original_message_id=original,
    )


def _mail(role: str, sender: str = "", user: str | None = "jd") -> MailFacts:
    return MailFacts(SessionFacts("127.0.0.1", "h", True, user, role), sender, None)


def _facts(
    role: str,
    info: MessageInfo,
    sender: str = "",
    to: str = DR,
    conversation: ConversationFacts | None = None,
) -> MessageFacts:
    return MessageFacts(_mail(role, sender), (to,), 100, info, conversation)


# What an automatic message is -----------------------------------------------------
@pytest.mark.parametrize(
    ("report_type", "auto_submitted", "kind"),
    [
        ("delivery-status", None, Automatic.DSN),
        ("disposition-notification", None, Automatic.MDN),
        ("disposition-notification", "auto-replied", Automatic.MDN),
        (None, "auto-replied", Automatic.AUTO_REPLY),
        (None, "Auto-Replied ; owner-email=x@ch.mssante.fr", Automatic.AUTO_REPLY),
        (None, "auto-generated", Automatic.AUTO_GENERATED),
        (None, "auto-notified", Automatic.AUTO_GENERATED),
        (None, "no", None),
        (None, " NO ", None),
        (None, "", None),
        (None, None, None),
        ("feedback-report", None, None),  # RFC 5965: a report, not a notification of ours
    ],
)
def test_automatic_kind(
    report_type: str | None, auto_submitted: str | None, kind: Automatic | None
) -> None:
    assert automatic_kind(_info(report_type=report_type, auto_submitted=auto_submitted)) is kind


@pytest.mark.parametrize(
    ("original", "in_reply_to", "references", "ids"),
    [
        ("<o@x>", "<r@x>", None, ["<o@x>"]),  # the field it reports on decides
        (None, "<r@x>", "<a@x> <r@x>", ["<r@x>", "<a@x>"]),
        ("garbage", "<r@x>", None, ["<r@x>"]),
        (None, None, None, []),
    ],
)
def test_reported_ids(
    original: str | None, in_reply_to: str | None, references: str | None, ids: list[str]
) -> None:
    assert (
        reported_ids(_info(original=original, in_reply_to=in_reply_to, references=references))
        == ids
    )


def _report(content_type: str, second: bytes, wrap: bool = False) -> bytes:
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nlu\r\n--b\r\n" + second + b"\r\n--b--\r\n"
    head = b"Content-Type: " + content_type.encode() + b"; boundary=b\r\n"
    if wrap:  # the report inside a multipart/mixed: not a report (RFC 6522 §3)
        body = b"--w\r\n" + head + b"\r\n" + body + b"--w--\r\n"
        head = b"Content-Type: multipart/mixed; boundary=w\r\n"
    return b"From: " + P.encode() + b"\r\nAuto-Submitted: auto-replied\r\n" + head + b"\r\n" + body


_MDN_PART = (
    b"Content-Type: message/disposition-notification\r\n\r\n"
    b"Reporting-UA: ui.example\r\nOriginal-Message-ID: <sent@ch.mssante.fr>\r\n"
    b"Disposition: manual-action/MDN-sent-manually; displayed\r\n"
)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    ("raw", "report_type", "original"),
    [
        (
            _report("multipart/report; report-type=disposition-notification", _MDN_PART),
            "disposition-notification",
            "<sent@ch.mssante.fr>",
        ),
        (
            _report('multipart/report; report-type="Delivery-Status"', _MDN_PART),
            "delivery-status",
            "<sent@ch.mssante.fr>",
        ),
        (
            _report(
                "multipart/report; report-type=disposition-notification",
                b"Content-Type: text/plain\r\n\r\nOriginal-Message-ID: <sent@ch.mssante.fr>",
            ),
            "disposition-notification",
            None,  # no machine part: the text is no field
        ),
        (
            _report("multipart/report; report-type=disposition-notification", _MDN_PART, True),
            None,
            None,
        ),
        (_report("multipart/report", _MDN_PART), None, "<sent@ch.mssante.fr>"),
    ],
)
def test_inspection_reads_the_report(
    raw: bytes, report_type: str | None, original: str | None, fast: bool
) -> None:
    info = inspect_message(raw, fast=fast)
    assert info.structure_error is None
    assert (info.report_type, info.original_message_id) == (report_type, original)
    assert info.auto_submitted == "auto-replied"


def test_inspection_of_a_delivery_status_part_counts_its_parts() -> None:
    raw = _report(
        "multipart/report; report-type=delivery-status",
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.x\r\n\r\n"
        b"Final-Recipient: rfc822; a@b.mssante.fr\r\nAction: failed\r\nStatus: 5.1.1\r\n",
    )
    info = inspect_message(raw)
    assert info.structure_error is None and info.report_type == "delivery-status"
    assert not info.attachments


# The rules, at MAIL -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "user", "reply"),
    [
        ("submission", "jd", None),  # decided at the end of DATA
        ("submission", None, (553, "5.7.1")),
        ("inbound", None, None),  # no sender to check in the trust space
    ],
)
def test_null_sender_at_mail(role: str, user: str | None, reply: tuple[int, str] | None) -> None:
    verdict = POLICY.evaluate_mail(_mail(role, "", user))
    got = (verdict.reply.code, verdict.reply.enhanced) if verdict.reply else None
    assert got == reply
    if verdict.reply is not None:
        assert "<>" in verdict.reply.text and "<<>>" not in verdict.reply.text
    else:
        assert "null_sender" in (verdict.reason or "")


# The rules, at the end of DATA --------------------------------------------------------
DSN = {"report_type": "delivery-status"}
MDN = {"report_type": "disposition-notification", "original": "<sent@x>"}
AUTO = {"auto_submitted": "auto-replied"}
GENERATED = {"auto_submitted": "auto-generated"}
OPEN = ConversationFacts(Status.OPEN, bal=DR, patient_has_open=True)
CLOSED = ConversationFacts(Status.CLOSED, bal=DR, closed_how="fin")
NONE = ConversationFacts(Status.NONE)


@pytest.mark.parametrize(
    ("role", "author", "kind", "to", "conversation", "refused"),
    [
        # Outgoing: reports and automatic replies from a BAL of the user.
        ("submission", DR, DSN, P, None, None),
        ("submission", DR, MDN, P, None, None),
        ("submission", DR, AUTO, P, None, None),
        ("submission", DR, GENERATED, P, None, RESERVED),
        ("submission", DR, {}, P, None, RESERVED),
        ("submission", OFFICINE, MDN, P, None, "L'en-tete From: <officine@ph.mssante.fr>"),
        # Incoming, from the trust space: any notification.
        ("inbound", "mailer-daemon@op.mssante.fr", DSN, DR, None, None),
        ("inbound", "mailer-daemon@op.mssante.fr", GENERATED, DR, None, None),
        ("inbound", "dr.x@chu.mssante.fr", AUTO, DR, None, None),
        ("inbound", "dr.x@chu.mssante.fr", MDN, DR, None, None),
        ("inbound", "dr.x@chu.mssante.fr", {}, DR, None, RESERVED),
        # ... but from the trust space only: <> is no way in for anyone else.
        ("inbound", "mailer-daemon@gmail.com", DSN, DR, None, "hors de l'espace de confiance"),
        ("inbound", "x@evilmssante.fr", AUTO, DR, None, "hors de l'espace de confiance"),
        # Incoming, a patient's read receipt: on a message sent to them, even closed since.
        ("inbound", P, MDN, DR, OPEN, None),
        ("inbound", P, MDN, DR, CLOSED, None),
        # ... to the professional who asked for it, no other BAL.
        ("inbound", P, MDN, OFFICINE, OPEN, "pas adressee a la boite aux lettres"),
        ("inbound", P, MDN, OFFICINE, CLOSED, "pas adressee a la boite aux lettres"),
        ("inbound", P, MDN, DR, NONE, "Accuse de lecture refuse"),
        ("inbound", P, MDN, DR, None, "Accuse de lecture refuse"),
        ("inbound", P, MDN, OFFICINE, NONE, "Accuse de lecture refuse"),  # never a first message
        # A patient's other notifications follow the conversation rules.
        ("inbound", P, AUTO, DR, OPEN, None),
        ("inbound", P, DSN, DR, CLOSED, "close par le professionnel"),
        ("inbound", P, AUTO, DR, NONE, "Aucune conversation ouverte"),
        ("inbound", P, {}, DR, OPEN, RESERVED),
    ],
)
def test_null_sender_at_end_of_data(
    role: str,
    author: str,
    kind: dict[str, str],
    to: str,
    conversation: ConversationFacts | None,
    refused: str | None,
) -> None:
    info = _info(author, **kind)
    verdict = POLICY.evaluate_message(_facts(role, info, to=to, conversation=conversation))
    if refused is None:
        assert verdict.accepted, verdict
        assert "null_sender" in (verdict.reason or "")
        return
    assert verdict.reply is not None
    assert refused in ascii_text(verdict.reply.text), verdict.reply.text
    expected = (553, "5.7.1") if refused == RESERVED or "From:" in refused else (550, "5.7.1")
    assert (verdict.reply.code, verdict.reply.enhanced) == expected


# What it changes: nothing ---------------------------------------------------------------
def test_null_sender_messages_open_and_continue_nothing() -> None:
    for kind in (MDN, DSN, AUTO):
        facts = _facts("inbound", _info(P, **kind), conversation=OPEN)
        assert inbound_change(facts, OPEN, BALS) is None
        facts = _facts("inbound", _info(P, **kind), to=OFFICINE, conversation=NONE)
        assert inbound_change(facts, NONE, BALS) is None
        outgoing = _facts("submission", _info(DR, **kind), to=P)
        assert outgoing_changes(BALS.get(DR), outgoing, "<m@x>") == []  # type: ignore[arg-type]
    # The same messages with a sender do (the patient's reply; the professional's message).
    assert inbound_change(_facts("inbound", _info(P), P, conversation=OPEN), OPEN, BALS)
    outgoing = _facts("submission", _info(DR), DR, to=P)
    assert outgoing_changes(BALS.get(DR), outgoing, "<m@x>")  # type: ignore[arg-type]


def test_lookup_of_sent_message_ids_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await ConversationStore.open(tmp_path / "s.db", pseudonyms=TEST_PSEUDONYMS)
        try:
            await store.apply(Change(DR, P, "<sent@x>", "out"), "jd")
            await store.apply(Change(DR, P, "<own@x>", "in"), "patient")
            await store.apply(Change(DR, P, "<fin@x>", "out", close="fin"), "jd")
            found = await store.lookup(P, ["<sent@x>"], sent_only=True)
            assert (found.status, found.bal) == (Status.CLOSED, DR)
            # The patient's own message is no message sent to the patient.
            assert (await store.lookup(P, ["<own@x>"], sent_only=True)).status is Status.NONE
            assert (await store.lookup(P, ["<own@x>"])).status is Status.CLOSED
            other = "185057800608491@patient.mssante.fr"
            assert (await store.lookup(other, ["<sent@x>"], sent_only=True)).status is Status.NONE
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("address", "path"),
    [("<>", ""), (" <> ", ""), ("", ""), ("a@b.mssante.fr", "a@b.mssante.fr")],
)
def test_null_path(address: str, path: str) -> None:
    assert null_path(address) == path
