"""The incoming side: what the MSSanté operator delivers to the structure's BALs."""

from __future__ import annotations

from collections.abc import Container

from mss_relay.core.addresses import domain_of, normalize_address, trusted_domain
from mss_relay.core.authentication import PASS, TEMPERROR
from mss_relay.core.conversation import ConversationFacts, Status, patient_sender
from mss_relay.core.facts import MailFacts, MessageFacts, RcptFacts
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.reply import (
    CONVERSATION_CLOSED,
    CONVERSATION_NOT_OPENED,
    DKIM_REQUIRED,
    DKIM_TEMPORARY,
    MDN_NOT_OURS,
    NOT_A_REPLY,
    SENDER_NOT_TRUST_SPACE,
    SENDER_NOT_WHITELISTED,
    STATE_UNAVAILABLE,
    UNKNOWN_BAL,
    WRONG_CONVERSATION_BAL,
)
from mss_relay.core.reports import is_null_sender_mdn
from mss_relay.core.verdict import Verdict

_CLOSED_BY = {
    "fin": "close par le professionnel ([FIN])",
    "x-mss-mes": "close par le professionnel ([FIN])",
    "auto_close": "close automatiquement par la boîte aux lettres du professionnel",
    "idle": "close automatiquement après une période sans échange",
    "admin": "close par l'administrateur de la structure",
}


def sender_in_trust_space(
    facts: MailFacts, whitelist: Container[str] | None = None
) -> Verdict | None:
    """Seed 003: the trust space works both ways; only MSSanté senders come
    in. With the liste blanche (its domains): the domains it lists."""
    if trusted_domain(domain_of(facts.sender), whitelist):
        return None
    if whitelist is not None:
        return Verdict.reject(
            SENDER_NOT_WHITELISTED,
            rule="sender_trust_space",
            reason="envelope sender domain not in the liste blanche",
        )
    return Verdict.reject(
        SENDER_NOT_TRUST_SPACE,
        rule="sender_trust_space",
        reason="envelope sender outside mssante.fr",
    )


def recipient_is_bal(facts: RcptFacts, bals: BalDirectory) -> Verdict | None:
    """Only the structure's own BALs receive here: never an open relay."""
    if bals.get(facts.recipient) is not None:
        return None
    return Verdict.reject(
        UNKNOWN_BAL.with_text(f"<{facts.recipient}> : boîte aux lettres inconnue ici"),
        rule="recipient_is_bal",
        reason="recipient is not a configured BAL",
    )


def _officine_among(facts: MessageFacts, bals: BalDirectory) -> str | None:
    for recipient in facts.recipients:
        bal = bals.get(recipient)
        if bal is not None and bal.patients_may_initiate:
            return normalize_address(bal.address)
    return None


def _to_conversation(facts: MessageFacts, conv: ConversationFacts) -> bool:
    """The message goes to the conversation's BAL, or to the Reply-To the
    professional's message gave."""
    targets = {normalize_address(a) for a in (conv.bal, conv.reply_to) if a}
    return bool(targets & {normalize_address(r) for r in facts.recipients})


def patient_conversation(
    facts: MessageFacts, conversation: ConversationFacts | None, bals: BalDirectory
) -> Verdict | None:
    """Seeds 001, 003, 004: the patient can only reply, within an open
    conversation a professional started; officines accept a first message."""
    if patient_sender(facts.mail.sender, facts.info) is None:
        return None
    conv = conversation or ConversationFacts(Status.NONE)
    if conv.status is Status.UNAVAILABLE:
        # Fail closed, and temporarily: the patient's operator retries.
        return Verdict.tempfail(
            STATE_UNAVAILABLE,
            rule="patient_conversation",
            reason=f"conversation state unavailable ({conv.unavailable})",
        )
    if is_null_sender_mdn(facts.mail.sender, facts.info):
        # Seed 004: the professional asked for it. A read receipt reports on a
        # message sent to this patient (the conversation was looked up by the
        # Message-ID it reports on, among those sent to the patient), even one
        # closed since: reading comes after [FIN] too. It changes nothing. It
        # goes to the professional who asked for it, the conversation's BAL
        # (or the Reply-To it gave): a receipt is no way to reach any other.
        if conv.status is not Status.NONE:
            if _to_conversation(facts, conv):
                return None
            return Verdict.reject(
                WRONG_CONVERSATION_BAL,
                rule="patient_conversation",
                reason="read receipt to another BAL",
            )
        return Verdict.reject(
            MDN_NOT_OURS,
            rule="patient_conversation",
            reason="read receipt on no message sent to this patient",
        )
    if conv.status is Status.OPEN:
        if _to_conversation(facts, conv):
            return None
        return Verdict.reject(
            WRONG_CONVERSATION_BAL, rule="patient_conversation", reason="reply to another BAL"
        )
    if _officine_among(facts, bals) is not None:
        return None
    if conv.status is Status.CLOSED:
        how = _CLOSED_BY.get(conv.closed_how or "", "close")
        return Verdict.reject(
            CONVERSATION_CLOSED.with_text(
                f"La conversation a été {how} : le patient ne peut plus y répondre"
            ),
            rule="patient_conversation",
            reason=f"conversation closed ({conv.closed_how})",
        )
    if conv.patient_has_open:
        return Verdict.reject(
            NOT_A_REPLY, rule="patient_conversation", reason="no reference to an open conversation"
        )
    return Verdict.reject(
        CONVERSATION_NOT_OPENED,
        rule="patient_conversation",
        reason="never opened by a professional",
    )


def patient_dkim(facts: MessageFacts, required: bool) -> Verdict | None:
    """inbound.require_dkim_for_patients: a patient's message must carry a
    valid DKIM signature of its own domain (Mon espace santé signs its mail),
    so that nobody can write as a patient."""
    if not required or facts.dkim is None:
        return None
    patient = patient_sender(facts.mail.sender, facts.info)
    if patient is None:
        return None
    author = domain_of(patient)
    if any(c.result == PASS and c.aligned_with(author) for c in facts.dkim):
        return None
    found = "; ".join(str(c) for c in facts.dkim)
    if any(c.result == TEMPERROR for c in facts.dkim):
        return Verdict.tempfail(DKIM_TEMPORARY, rule="patient_dkim", reason=found)
    return Verdict.reject(
        DKIM_REQUIRED.with_text(
            f"Message patient refusé : aucune signature DKIM valide du domaine {author}"
        ),
        rule="patient_dkim",
        reason=found,
    )
