"""DKIM signing of outgoing mail (RFC 6376): which domain signs, and the
refusal of a message that cannot be signed."""

from __future__ import annotations

from mss_relay.core.addresses import domain_of
from mss_relay.core.facts import MessageFacts
from mss_relay.core.reply import UNSIGNABLE
from mss_relay.core.verdict import Verdict


def signing_domain(facts: MessageFacts, incoming: bool) -> str | None:
    """Outgoing mail is signed for the domain of its (aligned) From: BAL, the
    envelope sender's when it has no From: (the signer then takes that domain's
    keys, or its nearest parent's). The incoming side signs nothing."""
    if incoming:
        return None
    info, sender = facts.info, facts.mail.sender
    author = info.from_addresses[0] if info.from_addresses else sender
    return domain_of(author or sender)


def dkim_signable(failure: str | None) -> Verdict | None:
    """A message dkimpy cannot sign (its header block unreadable to it):
    refused, rather than sent unsigned from a domain that signs. failure
    names dkimpy's error (mss_relay.signing.Signed), None when signed."""
    if failure is None:
        return None
    return Verdict.reject(UNSIGNABLE, rule="dkim_signable", reason=f"dkimpy: {failure}")
