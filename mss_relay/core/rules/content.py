"""What the message is made of: its MIME structure and its attachments."""

from __future__ import annotations

from mss_relay.core.facts import MessageFacts
from mss_relay.core.filetypes import AttachmentRules, archive_refusal, refusal
from mss_relay.core.reply import DANGEROUS_ATTACHMENT, MIME_UNREADABLE
from mss_relay.core.verdict import Verdict


def mime_structure(facts: MessageFacts) -> Verdict | None:
    """A message whose parts cannot be followed cannot be checked: refused,
    since every other rule on its content would be blind."""
    why = facts.info.structure_error
    if why is None:
        return None
    return Verdict.reject(MIME_UNREADABLE, rule="mime_structure", reason=why)


def dangerous_attachments(facts: MessageFacts, rules: AttachmentRules) -> Verdict | None:
    """Seeds 000 §11 and 002 §3: no executable, script, shortcut, disk image
    or macro-enabled document, by name, declared type or first bytes, nor
    inside a zip archive (one level deep). Both directions."""
    for part in facts.info.parts:
        name = part.display_name
        why = None
        for candidate in part.names or (None,):  # each name it gives itself
            why = why or refusal(
                candidate, part.content_type, part.head, rules, attached=part.is_attachment
            )
        inner = None
        if why is None and rules.inspect_archives and part.archive:
            found = archive_refusal(part.members, rules)
            if found is not None:
                inner, why = found
        if why is None:
            continue
        if inner is None:
            text = f"Pièce jointe « {name} » refusée : type de fichier interdit"
        elif inner:
            text = f"Pièce jointe « {name} » refusée : elle contient « {inner} », type interdit"
        else:
            text = f"Pièce jointe « {name} » refusée : archive illisible ou trop grande à vérifier"
        return Verdict.reject(
            DANGEROUS_ATTACHMENT.with_text(text),
            rule="dangerous_attachment",
            reason=why if inner is None else f"archive member: {why}",
        )
    return None
