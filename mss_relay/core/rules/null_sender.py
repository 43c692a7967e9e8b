"""The null reverse-path (« MAIL FROM:<> »): notifications only (RFC 5321 §4.5.5).

At MAIL nothing tells yet whether the message is one: the outgoing side lets an
authenticated (or trusted) user's <> through and decides at the end of DATA;
the incoming side has no sender to check in the trust space (the recipient must
still be a BAL, and the content decides). Every other rule applies as to any
message; who sends a patient's read receipt is judged by patient_conversation.
"""

from __future__ import annotations

from collections.abc import Container

from mss_relay.core.addresses import domain_of, trusted_domain
from mss_relay.core.facts import MailFacts, MessageFacts
from mss_relay.core.reply import (
    NULL_SENDER_RESERVED,
    NULL_SENDER_UNAUTHENTICATED,
    SENDER_NOT_TRUST_SPACE,
)
from mss_relay.core.reports import OUTGOING, automatic_kind
from mss_relay.core.verdict import Verdict


def null_sender_at_mail(facts: MailFacts, inbound: bool) -> Verdict | None:
    """The outgoing side takes <> from a user it knows only (seed 000 §10:
    every message is some user's); whether it is a notification is for later."""
    if inbound or facts.session.user is not None:
        return None
    return Verdict.reject(
        NULL_SENDER_UNAUTHENTICATED, rule="null_sender", reason="null sender without AUTH"
    )


def null_sender_at_data(
    facts: MessageFacts, inbound: bool, whitelist: Container[str] | None = None
) -> Verdict | None:
    """With <>, only a delivery report, a read receipt or an automatic reply
    (the incoming side: any message Auto-Submitted says is automatic, such as
    the operator's notice of a closed patient mailbox, seed 004)."""
    kind = automatic_kind(facts.info)
    if kind is not None and inbound:
        return _author_in_trust_space(facts, whitelist)
    if kind in OUTGOING:
        return None
    what = kind.value if kind else "plain message"
    return Verdict.reject(
        NULL_SENDER_RESERVED, rule="null_sender", reason=f"null sender for no notification: {what}"
    )


def _author_in_trust_space(facts: MessageFacts, whitelist: Container[str] | None) -> Verdict | None:
    """Seed 003's trust space, on the one sender a notice names: its From:
    (single_from ran first). The operator's reports, a professional's
    absence message and a patient's read receipt all come from mssante.fr;
    without it, <> and an Auto-Submitted header would open the incoming side
    to anyone. With the liste blanche (its domains): the domains it lists."""
    author = facts.info.from_addresses[0]
    if trusted_domain(domain_of(author), whitelist):
        return None
    return Verdict.reject(
        SENDER_NOT_TRUST_SPACE.with_text(
            f"Avis sans expéditeur (<>) de <{author}>, hors de l'espace de confiance MSSanté"
        ),
        rule="null_sender",
        reason="From: of a null-sender message outside mssante.fr",
    )
