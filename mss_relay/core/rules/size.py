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


# French units, as the configuration's KiB, MiB, GiB (binary) and KB, MB, GB.
_UNITS = (
    (1024**3, "Gio"),
    (1000**3, "Go"),
    (1024**2, "Mio"),
    (1000**2, "Mo"),
    (1024, "Kio"),
    (1000, "ko"),
)


def _unit(limit: int) -> tuple[int, str]:
    """The unit a limit was written in: the largest it is a whole number of
    (20MiB is 20 Mio, 60MB 60 Mo), bytes otherwise."""
    for factor, name in _UNITS:
        if limit >= factor and limit % factor == 0:
            return factor, name
    return 1, "octets"


def _limit(limit: int) -> str:
    """A limit as configured: `20 Mio`, never a rounding of it (issue 15)."""
    factor, name = _unit(limit)
    return f"{limit // factor} {name}"


def _measured(size: int, limit: int) -> str:
    """A measured size, in the limit's unit, with the decimals that keep it
    on the right side of the limit (20.0 Mio over 20 Mio would contradict
    the refusal: 20.00001 Mio, or the bytes, instead)."""
    factor, name = _unit(limit)
    for decimals in range(1, 7):
        shown = round(size / factor, decimals)
        if (shown > limit / factor) == (size > limit) and shown != limit / factor:
            return f"{shown:.{decimals}f} {name}"
    return f"{size} octets"


def declared_size(facts: MailFacts, max_message_size: int) -> Verdict | None:
    """RFC 1870: a SIZE= above the limit is refused at MAIL, before any data."""
    limit = wire_size_limit(max_message_size)
    if facts.declared_size is None or facts.declared_size <= limit:
        return None
    return Verdict.reject(
        MESSAGE_TOO_BIG.with_text(
            "Message trop volumineux :"
            f" {_measured(facts.declared_size, max_message_size)} annoncés,"
            f" maximum {_limit(max_message_size)} de contenu"
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
                    f" {_measured(part.decoded_size, max_attachment_size)},"
                    f" maximum {_limit(max_attachment_size)} par pièce jointe",
                    (printable(part.display_name),),
                ),
                rule="attachment_size",
                reason=f"{part.decoded_size} > {max_attachment_size}",
            )
    total = facts.info.total_decoded_size
    if total > max_message_size:
        return Verdict.reject(
            MESSAGE_TOO_BIG.with_text(
                f"Message trop volumineux : {_measured(total, max_message_size)} de contenu,"
                f" maximum {_limit(max_message_size)} par message"
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
            f" ({_measured(declared, found[1])} annoncés,"
            f" maximum {_limit(found[1])} pour {found[0]})"
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
                    f" {_measured(facts.size, found[1])},"
                    f" maximum {_limit(found[1])} pour {found[0]}"
                ),
                rule="per_domain_size",
                reason=f"{facts.size} > {found[1]} for {found[0]}",
            )
    return None
