"""Patient conversations (Mon espace santé), as facts and decisions.

Seeds 001, 003 and 004: only a professional starts a conversation with a
patient; the patient can only reply; the professional ends it with the subject
« [FIN] » (exactly that, case respected, no other character), and closing can be
automatic; officines are the exception where the patient writes first (a
digital prescription). The state itself lives in mss_relay/state; here are the
pure parts: what a message says, and what it changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses
from enum import Enum

from mss_relay.core.addresses import is_patient_address, normalize_address
from mss_relay.core.message import MessageInfo

FIN_SUBJECT = "[FIN]"
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


class Status(Enum):
    NONE = "none"  # no conversation matches
    OPEN = "open"
    CLOSED = "closed"
    # The state could not answer (database locked, lost, a write still pending
    # for this patient): nothing can be decided, the sender retries later.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class ConversationFacts:
    """What the state knows about the patient message being decided."""

    status: Status  # of the conversation the message replies to (NONE: it replies to none)
    bal: str | None = None  # that conversation's BAL
    reply_to: str | None = None  # the Reply-To the professional's message gave
    closed_how: str | None = None  # fin, x-mss-mes, auto_close, idle, admin
    patient_has_open: bool = False  # some conversation with this patient is open
    unavailable: str | None = None  # why the state could not answer (UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class Change:
    """A change to apply once the message has been delivered, never before."""

    bal: str
    patient: str
    message_id: str | None
    direction: str  # "out" (professional -> patient) or "in" (patient -> BAL)
    close: str | None = None  # how it closes the conversation, if it does
    reply_to: str | None = None
    opened_by_patient: bool = False


def message_ids(value: str | None) -> list[str]:
    return _MESSAGE_ID.findall(value or "")


def references(info: MessageInfo) -> list[str]:
    """The Message-IDs a message replies to, most direct first (RFC 5322 §3.6.4)."""
    seen: list[str] = []
    for mid in message_ids(info.in_reply_to) + message_ids(info.references)[::-1]:
        if mid not in seen:
            seen.append(mid)
    return seen


def closing(info: MessageInfo) -> str | None:
    """How a professional's message closes the conversation, if it does: the
    decoded subject is exactly « [FIN] » (white space around it ignored), or the
    header « X-MSS-MES: FIN » that the MSSanté client specification prefers."""
    if info.subject is not None and info.subject.strip() == FIN_SUBJECT:
        return "fin"
    if info.x_mss_mes is not None and info.x_mss_mes.strip().upper() == "FIN":
        return "x-mss-mes"
    return None


def _addresses(values: tuple[str, ...]) -> list[str]:
    return [addr for _, addr in getaddresses(list(values)) if "@" in addr]


def patient_sender(envelope_sender: str, info: MessageInfo) -> str | None:
    """The patient a message comes from: its envelope sender or its From:."""
    if is_patient_address(envelope_sender):
        return normalize_address(envelope_sender)
    for address in _addresses(info.from_headers):
        if is_patient_address(address):
            return normalize_address(address)
    return None


def reply_to_address(info: MessageInfo) -> str | None:
    found = _addresses(info.reply_to)
    return normalize_address(found[0]) if found else None
