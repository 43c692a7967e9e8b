"""Frozen facts handed to the policy at each SMTP stage.

Front ends (SMTP listener, milter) build these from the bytes they receive; the
policy never sees a socket.
"""

from __future__ import annotations

from dataclasses import dataclass

from mss_relay.core.authentication import DkimCheck
from mss_relay.core.conversation import ConversationFacts
from mss_relay.core.message import MessageInfo


@dataclass(frozen=True, slots=True)
class SessionFacts:
    client_address: str
    helo: str
    tls: bool
    user: str | None
    role: str  # "submission" (outgoing) or "inbound"


@dataclass(frozen=True, slots=True)
class MailFacts:
    session: SessionFacts
    sender: str
    declared_size: int | None  # the MAIL FROM SIZE= parameter, if any


@dataclass(frozen=True, slots=True)
class RcptFacts:
    mail: MailFacts
    recipient: str
    accepted_so_far: int  # recipients already accepted in this transaction


@dataclass(frozen=True, slots=True)
class MessageFacts:
    mail: MailFacts
    recipients: tuple[str, ...]
    size: int  # bytes on the wire, after dot-unstuffing
    info: MessageInfo
    # For a patient's message on the incoming side: the conversation it replies to.
    conversation: ConversationFacts | None = None
    # Incoming side: the DKIM signatures' outcomes (None when not checked).
    dkim: tuple[DkimCheck, ...] | None = None
