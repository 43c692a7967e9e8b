from __future__ import annotations

from mss_relay.core.facts import MailFacts, MessageFacts
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.reply import BAD_FROM_HEADER, SENDER_NOT_OWNED
from mss_relay.core.verdict import Verdict


def sender_owned(facts: MailFacts, bals: BalDirectory) -> Verdict | None:
    """Seed 000 §10 (« chaque compte est strictement personnel ») and seed 001:
    the envelope sender must be a BAL given to the authenticated user."""
    if bals.may_send_as(facts.session.user, facts.sender):
        return None
    known = bals.get(facts.sender) is not None
    return Verdict.reject(
        SENDER_NOT_OWNED.with_text(
            f"Vous n'êtes pas autorisé à envoyer depuis la boîte aux lettres <{facts.sender}>"
        ),
        rule="sender_owned",
        reason="BAL not given to this user" if known else "sender is not a configured BAL",
    )


def single_from(facts: MessageFacts) -> Verdict | None:
    """RFC 5322 §3.6: exactly one From: field. With several, or several
    addresses in it, mail clients show one author and DKIM signs another."""
    info = facts.info
    if len(info.from_headers) == 1 and len(info.from_addresses) == 1 and info.from_addresses[0]:
        return None
    if not info.from_headers:
        why = "no From: header"
    elif len(info.from_headers) > 1:
        why = f"{len(info.from_headers)} From: headers"
    else:
        why = "From: header without exactly one readable address"
    return Verdict.reject(BAD_FROM_HEADER, rule="single_from", reason=why)


def from_aligned(facts: MessageFacts, bals: BalDirectory) -> Verdict | None:
    """Seed 000 §10 again, on the headers the recipient reads: From: (and
    Sender:, when present) must be BALs the authenticated user may use,
    not only the envelope sender."""
    user = facts.mail.session.user
    author = facts.info.from_addresses[0]
    if not bals.may_send_as(user, author):
        return Verdict.reject(
            SENDER_NOT_OWNED.with_text(
                f"L'en-tête From: <{author}> n'est pas une boîte aux lettres"
                " que vous pouvez utiliser"
            ),
            rule="from_aligned",
            reason="From: is not a BAL of this user",
        )
    info = facts.info
    if not info.sender_headers:
        return None
    if len(info.sender_headers) > 1 or len(info.sender_addresses) != 1:
        return Verdict.reject(
            BAD_FROM_HEADER.with_text("Le message doit comporter au plus un en-tête Sender:"),
            rule="from_aligned",
            reason="several Sender: headers or addresses",
        )
    agent = info.sender_addresses[0]
    if bals.may_send_as(user, agent):
        return None
    return Verdict.reject(
        SENDER_NOT_OWNED.with_text(
            f"L'en-tête Sender: <{agent}> n'est pas une boîte aux lettres que vous pouvez utiliser"
        ),
        rule="from_aligned",
        reason="Sender: is not a BAL of this user",
    )
