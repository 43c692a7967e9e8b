"""What the message is made of: its MIME structure and its attachments."""

from __future__ import annotations

from mss_relay.core.facts import MessageFacts
from mss_relay.core.filetypes import AttachmentRules, Found, archive_refusal, printable, refusal
from mss_relay.core.message import PartInfo
from mss_relay.core.reply import DANGEROUS_ATTACHMENT, MIME_UNREADABLE
from mss_relay.core.verdict import Verdict


def mime_structure(facts: MessageFacts) -> Verdict | None:
    """A message whose parts cannot be followed cannot be checked: refused,
    since every other rule on its content would be blind. So is a part that
    a mail client may decode otherwise than we do (data after base64 padding)."""
    why = facts.info.structure_error
    if why is not None:
        return Verdict.reject(MIME_UNREADABLE, rule="mime_structure", reason=why)
    for part in facts.info.parts:
        if part.structure_error is not None:
            text = (
                f"Partie « {printable(part.display_name)} » illisible :"
                " des données suivent la fin de son encodage base64"
            )
            return Verdict.reject(
                MIME_UNREADABLE.with_text(text, (printable(part.display_name),)),
                rule="mime_structure",
                reason=part.structure_error,
            )
    return None


def _inner(part: PartInfo, rules: AttachmentRules) -> tuple[Found, str] | None:
    """What the part holds that is refused, and the log's word for where."""
    if rules.inspect_archives and part.archive:
        found = archive_refusal(part.members, rules)
        if found is not None:
            return found, "archive member"
    if part.embedded:
        found = archive_refusal(part.embedded, rules)
        if found is not None:
            return found, "embedded file"
    return None


def dangerous_attachments(facts: MessageFacts, rules: AttachmentRules) -> Verdict | None:
    """Seeds 000 §11 and 002 §3: no executable, script, shortcut, disk image
    or macro-enabled document, by name, declared type or first bytes, nor
    inside a zip archive (and the archives in it), a TNEF winmail.dat or
    uuencoded in a text. Both directions."""
    for part in facts.info.parts:
        name = printable(part.display_name)
        why = None
        for candidate in part.names or (None,):  # each name it gives itself
            why = why or refusal(
                candidate, part.content_type, part.head, rules, attached=part.is_attachment
            )
        if why is not None:
            text = f"Pièce jointe « {name} » refusée : type de fichier interdit"
            return Verdict.reject(
                DANGEROUS_ATTACHMENT.with_text(text, (name,)),
                rule="dangerous_attachment",
                reason=why,
            )
        inner = _inner(part, rules)
        if inner is None:
            continue
        found, where = inner
        member = printable(found.member)
        if not found.checked:
            what = "contenu illisible, chiffré ou trop grand à vérifier"
            text = f"Pièce jointe « {name} » refusée : {what}"
            if member:
                text = f"Pièce jointe « {name} » refusée : « {member} », {what}"
        else:
            text = f"Pièce jointe « {name} » refusée : elle contient « {member} », type interdit"
        return Verdict.reject(
            DANGEROUS_ATTACHMENT.with_text(text, (name, member) if member else (name,)),
            rule="dangerous_attachment",
            reason=f"{where}: {found.why}",
        )
    return None
