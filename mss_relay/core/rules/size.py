from __future__ import annotations

import math
from collections.abc import Mapping

from mss_relay.core.addresses import domain_of
from mss_relay.core.facts import MailFacts, MessageFacts, RcptFacts
from mss_relay.core.filetypes import printable
from mss_relay.core.reply import ATTACHMENT_TOO_BIG, MESSAGE_TOO_BIG
from mss_relay.core.verdict import Verdict

# Room for headers and MIME boundaries on top of the encoded body.
HEADER_ALLOWANCE = 1024 * 1024


def wire_size_limit(max_decoded: int) -> int:
    """The size on the wire of max_decoded bytes sent in base64, as mail clients
    do for attachments: 57 bytes become a 76-character line plus CRLF."""
    return math.ceil(max_decoded / 57) * 78 + HEADER_ALLOWANCE


def wire_size(received: int, limit: int) -> Verdict | None:
    """The milter: more octets of the message than the wire limit, refused as
    they come, before the rest is held in memory (the SMTP listener has
    aiosmtpd's data_size_limit, the same limit)."""
    if received <= limit:
        return None
    return Verdict.reject(
        MESSAGE_TOO_BIG, rule="wire_size", reason=f"more than {limit} bytes received"
    )


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} Mo"


def declared_size(facts: MailFacts, max_message_size: int) -> Verdict | None:
    """RFC 1870: a SIZE= above the limit is refused at MAIL, before any data."""
    limit = wire_size_limit(max_message_size)
    if facts.declared_size is None or facts.declared_size <= limit:
        return None
    return Verdict.reject(
        MESSAGE_TOO_BIG.with_text(
            f"Message trop volumineux : {_mb(facts.declared_size)} annoncés,"
            f" maximum {_mb(max_message_size)} de contenu"
        ),
        rule="declared_size",
        reason=f"SIZE={facts.declared_size} > {limit}",
    )


def attachment_sizes(
    facts: MessageFacts, max_attachment_size: int, max_message_size: int
) -> Verdict | None:
    """Seeds 000 §12 and 002: 20 Mo per attachment and 60 Mo per message,
    measured on the decoded content. Every part over the limit counts, an
    attachment or not: a 25 MB part is a file to its recipient whether it has
    a name, a type other than text, or neither (named by its type if unnamed)."""
    for part in facts.info.parts:
        if part.decoded_size > max_attachment_size:
            return Verdict.reject(
                ATTACHMENT_TOO_BIG.with_text(
                    f"Pièce jointe « {printable(part.display_name)} » trop volumineuse :"
                    f" {_mb(part.decoded_size)}, maximum {_mb(max_attachment_size)}"
                    " par pièce jointe"
                ),
                rule="attachment_size",
                reason=f"{part.decoded_size} > {max_attachment_size}",
            )
    total = facts.info.total_decoded_size
    if total > max_message_size:
        return Verdict.reject(
            MESSAGE_TOO_BIG.with_text(
                f"Message trop volumineux : {_mb(total)} de contenu,"
                f" maximum {_mb(max_message_size)} par message"
            ),
            rule="message_size",
            reason=f"{total} > {max_message_size}",
        )
    return None


def _domain_limit(domain: str, per_domain: Mapping[str, int]) -> tuple[str, int] | None:
    for key, limit in per_domain.items():
        if domain == key or domain.endswith("." + key):
            return key, limit
    return None


def per_domain_declared_size(facts: RcptFacts, per_domain: Mapping[str, int]) -> Verdict | None:
    """A destination's own limit (Mon espace santé takes about 25 Mo): refuse at
    once what it would bounce hours later."""
    found = _domain_limit(domain_of(facts.recipient), per_domain)
    declared = facts.mail.declared_size
    if found is None or declared is None or declared <= found[1]:
        return None
    return Verdict.reject(
        MESSAGE_TOO_BIG.with_text(
            f"<{facts.recipient}> : message trop volumineux pour ce destinataire"
            f" ({_mb(declared)} annoncés, maximum {_mb(found[1])} pour {found[0]})"
        ),
        rule="per_domain_size",
        reason=f"SIZE={declared} > {found[1]} for {found[0]}",
    )


def per_domain_size(facts: MessageFacts, per_domain: Mapping[str, int]) -> Verdict | None:
    for recipient in facts.recipients:
        found = _domain_limit(domain_of(recipient), per_domain)
        if found is not None and facts.size > found[1]:
            return Verdict.reject(
                MESSAGE_TOO_BIG.with_text(
                    f"Message trop volumineux pour <{recipient}> :"
                    f" {_mb(facts.size)}, maximum {_mb(found[1])} pour {found[0]}"
                ),
                rule="per_domain_size",
                reason=f"{facts.size} > {found[1]} for {found[0]}",
            )
    return None
