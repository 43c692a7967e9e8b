"""What the message is made of: its MIME structure and its attachments."""

from __future__ import annotations

from mss_relay.core.facts import MessageFacts
from mss_relay.core.reply import MIME_UNREADABLE
from mss_relay.core.verdict import Verdict


def mime_structure(facts: MessageFacts) -> Verdict | None:
    """A message whose parts cannot be followed cannot be checked: refused,
    since every other rule on its content would be blind."""
    why = facts.info.structure_error
    if why is None:
        return None
    return Verdict.reject(MIME_UNREADABLE, rule="mime_structure", reason=why)
