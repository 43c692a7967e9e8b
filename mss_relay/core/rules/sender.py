from __future__ import annotations

from mss_relay.core.facts import MailFacts
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.reply import SENDER_NOT_OWNED
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
