from __future__ import annotations

import pytest

from mss_relay.core.conversation import (
    Change,
    ConversationFacts,
    Status,
    closing,
    patient_sender,
    references,
)
from mss_relay.core.facts import MailFacts, MessageFacts, SessionFacts
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.message import MessageInfo
from mss_relay.core.rules.inbound import patient_conversation

P = "295109912611193@patient.mssante.fr"
DR = "dr@ch.mssante.fr"
BALS = BalDirectory(
    [
        Bal(DR, BalType.NOMINATIVE, frozenset({"dr"})),
        Bal("officine@ph.mssante.fr", BalType.ORGANISATIONNELLE, frozenset(), True),
    ]
)


def _info(subject: str | None = None, x_mss_mes: str | None = None, **kw: object) -> MessageInfo:
    fields: dict[str, object] = dict(
        parts=(),
        message_id="<m@x>",
        subject=subject,
        from_headers=(),
        in_reply_to=None,
        references=None,
        header_count=3,
        x_mss_mes=x_mss_mes,
    )
    fields.update(kw)
    return MessageInfo(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("subject", "x_mss_mes", "how"),
    [
        ("[FIN]", None, "fin"),
        ("  [FIN]\t", None, "fin"),
        ("RE: [FIN]", None, None),
        ("[fin]", None, None),
        ("[FIN] merci", None, None),
        ("[ FIN ]", None, None),
        ("FIN", None, None),
        (None, None, None),
        ("Suivi", "FIN", "x-mss-mes"),
        ("Suivi", "fin", "x-mss-mes"),
        ("Suivi", "NOFIN", None),
    ],
)
def test_closing(subject: str | None, x_mss_mes: str | None, how: str | None) -> None:
    assert closing(_info(subject, x_mss_mes)) == how


def test_references_most_direct_first() -> None:
    info = _info(in_reply_to="<c@x>", references="<a@x> <b@x>\r\n <c@x>")
    assert references(info) == ["<c@x>", "<b@x>", "<a@x>"]
    assert references(_info(in_reply_to="garbage")) == []


def test_patient_sender_from_envelope_or_header() -> None:
    assert patient_sender(P.upper(), _info()) == P.lower()
    assert (
        patient_sender("relay@operateur.mssante.fr", _info(from_headers=(f"Patient <{P}>",))) == P
    )
    assert patient_sender(DR, _info(from_headers=(DR,))) is None


def _facts(recipients: tuple[str, ...] = (DR,), sender: str = P) -> MessageFacts:
    mail = MailFacts(SessionFacts("127.0.0.1", "h", True, None, "inbound"), sender, None)
    return MessageFacts(mail, recipients, 10, _info())


@pytest.mark.parametrize(
    ("conversation", "recipients", "refused_with"),
    [
        (ConversationFacts(Status.OPEN, bal=DR, patient_has_open=True), (DR,), None),
        (
            ConversationFacts(Status.OPEN, bal=DR, reply_to="sec@ch.mssante.fr"),
            ("sec@ch.mssante.fr",),
            None,
        ),
        (ConversationFacts(Status.OPEN, bal=DR), ("autre@ch.mssante.fr",), "n'est pas adressée"),
        (ConversationFacts(Status.CLOSED, bal=DR, closed_how="fin"), (DR,), "[FIN]"),
        (ConversationFacts(Status.CLOSED, bal=DR, closed_how="admin"), (DR,), "administrateur"),
        (ConversationFacts(Status.NONE), (DR,), "Aucune conversation ouverte"),
        (ConversationFacts(Status.NONE, patient_has_open=True), (DR,), "ne répond à aucun message"),
        (ConversationFacts(Status.NONE), ("officine@ph.mssante.fr",), None),
        (ConversationFacts(Status.CLOSED, closed_how="fin"), ("officine@ph.mssante.fr",), None),
        (None, (DR,), "Aucune conversation ouverte"),
    ],
)
def test_patient_conversation_rule(
    conversation: ConversationFacts | None, recipients: tuple[str, ...], refused_with: str | None
) -> None:
    verdict = patient_conversation(_facts(recipients), conversation, BALS)
    if refused_with is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.reply is not None
        assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.7.1")
        assert refused_with in verdict.reply.text


def test_professional_mail_is_not_a_patient_message() -> None:
    assert patient_conversation(_facts(sender="x@chu.mssante.fr"), None, BALS) is None


def test_change_is_frozen() -> None:
    change = Change(DR, P, "<m@x>", "out")
    with pytest.raises(AttributeError):
        change.close = "fin"  # type: ignore[misc]
