"""Frozen facts handed to the policy at each SMTP stage.

Front ends (SMTP listener, milter) build these from the bytes they receive; the
policy never sees a socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mss_relay.core.authentication import DkimCheck
from mss_relay.core.conversation import ConversationFacts
from mss_relay.core.directory import DirectoryAnswer
from mss_relay.core.message import MessageInfo
from mss_relay.core.verdict import Verdict

# A sending rate's place among the rules (front/session.py RatePlace): the
# policy calls it once the rules before it passed; the front then checks and
# counts the rate (throttles.Rates, async: shared by the relays on
# PostgreSQL), so that a message or recipient refused by a rule uses none of
# the user's allowance. At RCPT the conversation state's availability (a 451
# the client retries) is checked after it, as before issue 14: such a
# recipient has used its share, and a refusal of the rate comes first.
RateCheck = Callable[[], Verdict | None]


@dataclass(frozen=True, slots=True)
class SessionFacts:
    client_address: str
    helo: str
    tls: bool
    user: str | None
    role: str  # "submission" (outgoing) or "inbound"
    # The subject DN of the client's TLS certificate, verified against
    # tls.client_ca (RFC 4514, core.operator.subject_dn); None: none.
    peer_dn: str | None = None


@dataclass(frozen=True, slots=True)
class MailFacts:
    session: SessionFacts
    sender: str
    declared_size: int | None  # the MAIL FROM SIZE= parameter, if any
    # log.required: False while the audit log cannot be written.
    log_writable: bool = True
    # messages_per_minute of the user (None: no limit, or no user).
    rate: RateCheck | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RcptFacts:
    mail: MailFacts
    recipient: str
    accepted_so_far: int  # recipients already accepted in this transaction
    # recipients_per_hour of the user (None: no limit, or no user).
    rate: RateCheck | None = field(default=None, compare=False, repr=False)
    # Why the conversation state cannot record a message now (None: it can).
    state_unavailable: str | None = None
    # The Annuaire Santé's answer (None: not looked up, see DirectorySettings).
    directory: DirectoryAnswer | None = None


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
    # log.required, checked again at the end of DATA (it may fail since MAIL).
    log_writable: bool = True


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What the antivirus (clamd, mss_relay/inspect/antivirus.py) said of a
    message: the signature it found, or why it gave no answer (unreachable,
    too slow, an ERROR reply); neither: clean."""

    found: str | None = None
    error: str | None = None

    @property
    def clean(self) -> bool:
        return self.found is None and self.error is None
