"""What the SMTP listener and the milter share: the context of a listener and
one client session's transaction, from facts to verdicts to the audit trail.

A front end turns its protocol (SMTP commands, milter packets) into calls to
these methods; the rules live in the policy core, the message pipeline here,
so that both deployments enforce the same rules the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any, ParamSpec, TypeVar

from structlog.typing import FilteringBoundLogger

from mss_relay.config import TimeoutsConfig
from mss_relay.core.addresses import domain_of, is_patient_address
from mss_relay.core.authentication import DkimCheck
from mss_relay.core.changes import inbound_change, outgoing_changes
from mss_relay.core.conversation import (
    Change,
    ConversationFacts,
    message_ids,
    patient_sender,
    references,
)
from mss_relay.core.facts import MailFacts, MessageFacts, RcptFacts, SessionFacts
from mss_relay.core.message import MessageInfo, crlf_lines, inspect_message, scanned
from mss_relay.core.policy import INBOUND, Policy
from mss_relay.core.reply import LOG_UNAVAILABLE, STATE_UNAVAILABLE
from mss_relay.core.reports import is_null_sender_mdn, reported_ids
from mss_relay.core.rules.syntax import path_syntax
from mss_relay.core.throttle import AuthGuard, SendingRates, ThrottleSettings, ip_address
from mss_relay.core.verdict import Verdict
from mss_relay.delivery.upstream import Upstream
from mss_relay.log import Clock
from mss_relay.signing import DkimKey, Signer
from mss_relay.state.recorder import Recorder
from mss_relay.verification import Verifier

# Messages above this size are inspected and signed in a worker thread, off the
# event loop; those below, on the loop. Below it the work is short (inspection
# about 0.3 ms, an RSA-2048 signature about 1.2 ms at 2 KB, 1.8 ms at 256 KiB),
# and the hop to a thread cost more than it saved: with the signature in a
# thread for every 2 KB message, a 2-worker relay used 4.1 ms of CPU per message
# against 3.3 ms on the loop, as the loop and the thread contended for the GIL.
INLINE_LIMIT = 256 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def message_work(
    size: int, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """CPU work on a message of `size` bytes: done at once up to INLINE_LIMIT,
    in a worker thread above it."""
    if size > INLINE_LIMIT:
        return await asyncio.to_thread(work, *args, **kwargs)
    return work(*args, **kwargs)


def _inspect(content: bytes, wire: bytes) -> tuple[MessageInfo, Fingerprint]:
    """The CPU work on a received message, in one worker thread when it is large."""
    return inspect_message(wire, crlf=True), Fingerprint.of(content)


async def inspect(content: bytes, wire: bytes) -> tuple[MessageInfo, Fingerprint]:
    """_inspect(), with no unbounded work on the event loop: a small message
    core.mime's scan reads (a bounded cost, MAX_MIME_DEPTH levels at most) is
    inspected at once; one it cannot read, or one with an archive or a TNEF
    part, goes to a worker thread, whatever its size, since the parser's cost
    grows with nesting depth times lines (a 118 KiB message nested 1,000
    deep held the loop about 1 s, every other session waiting)."""
    if len(content) > INLINE_LIMIT:
        return await asyncio.to_thread(_inspect, content, wire)
    info = scanned(wire, crlf=True)
    if info is None:
        # The scan again (bounded, as above) where it reads the message but
        # met an archive; the standard library's parser where it cannot.
        info = await asyncio.to_thread(inspect_message, wire, crlf=True)
    return info, Fingerprint.of(content)


def new_id() -> str:
    return secrets.token_hex(6).upper()


def printable(text: str, limit: int = 255) -> str:
    return "".join(c if 32 < ord(c) < 127 and c not in "()\\" else "_" for c in text)[:limit]


@dataclass(frozen=True)
class RelayContext:
    """What every session of a listener shares: policy, upstream, users, log, clock."""

    policy: Policy
    upstream: Upstream | None  # None for the milter: Postfix delivers
    users: Mapping[str, str]
    hostname: str
    role: str
    log: FilteringBoundLogger
    clock: Clock
    state: Recorder | None = None  # the conversation state
    signer: Signer = field(default_factory=lambda: Signer(()))
    verifier: Verifier | None = None  # the incoming side's DKIM verification
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    auth_guard: AuthGuard | None = None
    rates: SendingRates | None = None
    # Messages being received at once, all listeners together (memory).
    data_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    # Notified whenever an AUTH attempt is settled: an attempt over the limit
    # only because others are still being verified waits for them.
    auth_settled: asyncio.Condition = field(default_factory=asyncio.Condition)
    monotonic: Callable[[], float] = time.monotonic
    trusted_clients: Mapping[str, str] = field(default_factory=dict)
    # The open sessions of the whole process, for a graceful stop.
    sessions: set[ClientSession] = field(default_factory=set)
    # log.required: whether the audit log is being written (read at MAIL and
    # at the end of DATA); None when mail may go on without it.
    log_healthy: Callable[[], bool] | None = None

    @property
    def inbound(self) -> bool:
        return self.role == INBOUND


@dataclass
class Transaction:
    txid: str
    started: float
    mail: MailFacts
    recipients: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the log keeps of a message: its size and SHA-256, never its text."""

    size: int
    sha256: str

    @classmethod
    def of(cls, content: bytes) -> Fingerprint:
        return cls(len(content), hashlib.sha256(content).hexdigest())


@dataclass(frozen=True)
class Examined:
    """A received message, looked at: its facts and the policy's verdict."""

    facts: MessageFacts
    verdict: Verdict
    dkim: tuple[DkimCheck, ...] | None
    # The message with CRLF line ends only, as it is inspected, signed and sent.
    wire: bytes
    # Of the message as received (the log's size and sha256).
    fingerprint: Fingerprint

    @property
    def info(self) -> MessageInfo:
        return self.facts.info

    @property
    def dkim_log(self) -> list[str] | None:
        return [str(c) for c in self.dkim] if self.dkim is not None else None


class ClientSession:
    """One client session (an SMTP connection, or a connection Postfix
    filters through the milter) and its current transaction."""

    def __init__(self, context: RelayContext) -> None:
        self.ctx = context
        self.session_id = new_id()
        self.log = context.log.bind(session=self.session_id)
        self.client = ""
        self.helo = ""
        self.tls = False
        self.user: str | None = None
        self.trusted = False  # taken for self.user by trusted_clients, without AUTH
        self.txn: Transaction | None = None

    @property
    def busy(self) -> bool:
        """In the middle of a transaction: stopping now could lose or duplicate it."""
        return self.txn is not None

    def disconnect(self) -> None:
        """End the session now (a graceful stop whose time ran out)."""

    @property
    def inbound(self) -> bool:
        """The incoming side's rules apply (a patient or an operator writing in)."""
        return self.ctx.inbound

    @property
    def role(self) -> str:
        return INBOUND if self.inbound else "submission"

    def session_facts(self) -> SessionFacts:
        return SessionFacts(
            client_address=self.client,
            helo=self.helo,
            tls=self.tls,
            user=self.user,
            role=self.role,
        )

    def trust(self) -> None:
        """trusted_clients: an application server on a fixed address (a DPI
        connector) is taken for its user on the outgoing side, without AUTH.
        Everything else (sender ownership, rates, content) applies as to any user."""
        if self.ctx.inbound:
            return
        user = self.ctx.trusted_clients.get(ip_address(self.client))
        if user is not None:
            self.user = user
            self.trusted = True
            self.log.info("auth", client=self.client, user=user, result="trusted_client")

    # MAIL and RCPT ----------------------------------------------------------------
    def begin_transaction(self, sender: str, options: list[str], **fields: Any) -> Verdict:
        """MAIL: a new transaction, the policy's and the sending rate's verdict,
        logged; the transaction is dropped again when refused."""
        refused = path_syntax(sender, options)
        if refused is not None:  # before the policy: a control character is no fact
            self.decision("mail", refused, sender=printable(sender), **fields)
            return refused
        size = next((o[5:] for o in options if o.upper().startswith("SIZE=")), None)
        mail = MailFacts(
            session=self.session_facts(),
            sender=sender,
            declared_size=int(size) if size and size.isdigit() else None,
        )
        self.txn = Transaction(txid=new_id(), started=time.monotonic(), mail=mail)
        verdict = self.log_refusal() or self.ctx.policy.evaluate_mail(mail)
        if verdict.accepted and self.ctx.rates is not None:
            verdict = self.ctx.rates.message(self.user, self.ctx.monotonic()) or verdict
        self.decision("mail", verdict, sender=sender, **fields)
        if verdict.reply is not None:
            self.txn = None
        return verdict

    def check_recipient(self, recipient: str) -> Verdict:
        """RCPT: the policy's and the recipient rate's verdict, logged."""
        txn = self.txn
        assert txn is not None
        refused = path_syntax(recipient)
        if refused is not None:
            self.decision("rcpt", refused, recipient=printable(recipient))
            return refused
        facts = RcptFacts(mail=txn.mail, recipient=recipient, accepted_so_far=len(txn.recipients))
        verdict = self.ctx.policy.evaluate_rcpt(facts)
        if verdict.accepted and self.ctx.rates is not None:
            verdict = self.ctx.rates.recipient(self.user, self.ctx.monotonic()) or verdict
        if verdict.accepted:
            verdict = self._state_refusal(recipient) or verdict
        self.decision("rcpt", verdict, recipient=recipient)
        return verdict

    def _state_refusal(self, recipient: str) -> Verdict | None:
        """A professional's message to a patient opens or continues a
        conversation: not while the state cannot record it (deleted under
        the relay, writes piling up), rather than deliver it unrecorded."""
        state = self.ctx.state
        if self.inbound or state is None or not is_patient_address(recipient):
            return None
        why = state.unavailable()
        if why is None:
            return None
        return Verdict.tempfail(
            STATE_UNAVAILABLE, rule="conversation_state", reason=f"state unavailable ({why})"
        )

    # Audit trail -------------------------------------------------------------
    def log_refusal(self) -> Verdict | None:
        """log.required: no new transaction, and no message sent on, while
        the audit log cannot be written (the relay resumes by itself)."""
        healthy = self.ctx.log_healthy
        if healthy is None or healthy():
            return None
        return Verdict.tempfail(
            LOG_UNAVAILABLE, rule="log_required", reason="the log cannot be written"
        )

    def decision(self, stage: str, verdict: Verdict, **fields: Any) -> None:
        self.log.info(
            "decision",
            stage=stage,
            txid=self.txn.txid if self.txn else None,
            verdict=verdict.action.value,
            rule=verdict.rule,
            reason=verdict.reason,
            reply=str(verdict.reply) if verdict.reply else None,
            **fields,
        )

    def outcome(
        self,
        outcome: str,
        reply: str,
        *,
        content: Fingerprint | None = None,
        info: MessageInfo | None = None,
        verdict: Verdict | None = None,
        upstream: str | None = None,
        message_id: str | None = None,
        **extra: Any,
    ) -> None:
        txn = self.txn
        if txn is None:
            return
        self.log.info(
            "transaction",
            txid=txn.txid,
            client=self.client,
            user=self.user,
            sender=txn.mail.sender,
            recipients=list(txn.recipients),
            message_id=message_id or (info.message_id if info else None),
            size=content.size if content is not None else None,
            sha256=content.sha256 if content is not None else None,
            outcome=outcome,
            rule=verdict.rule if verdict else None,
            reason=verdict.reason if verdict else None,
            reply=reply,
            upstream=upstream,
            duration_ms=round((time.monotonic() - txn.started) * 1000, 1),
            **extra,
        )

    # The message pipeline -----------------------------------------------------
    async def examine(self, content: bytes) -> Examined:
        """Parse, verify (incoming side), look up the conversation, and ask the
        policy; the decision is logged."""
        txn = self.txn
        assert txn is not None
        # What the recipient's software will read: bare CR and LF are sent as
        # CRLF. The one check of the line ends a message gets (2 ms per MB).
        wire = crlf_lines(content)
        info, fingerprint = await inspect(content, wire)
        verifier = self.ctx.verifier if self.inbound else None
        checks = await asyncio.to_thread(verifier.verify, content) if verifier else None
        facts = MessageFacts(
            mail=txn.mail,
            recipients=tuple(txn.recipients),
            size=len(content),
            info=info,
            conversation=await self._conversation(txn.mail.sender, info),
            dkim=checks,
        )
        verdict = self.ctx.policy.evaluate_message(facts)
        if verdict.accepted:
            # The log failed since MAIL: nothing is sent on without its trace.
            verdict = self.log_refusal() or verdict
        examined = Examined(facts, verdict, checks, wire, fingerprint)
        self.decision("data", verdict, message_id=info.message_id, dkim=examined.dkim_log)
        self._patient_event(facts, verdict)
        return examined

    def signing_keys(self, sender: str, info: MessageInfo) -> tuple[DkimKey, ...]:
        """Outgoing mail is signed for the domain of its (aligned) From: BAL."""
        if self.inbound or not self.ctx.signer:
            return ()
        author = info.from_addresses[0] if info.from_addresses else sender
        return self.ctx.signer.keys_for(domain_of(author or sender))

    async def _conversation(self, sender: str, info: MessageInfo) -> ConversationFacts | None:
        """For a patient's message coming in: the conversation it replies to."""
        if not self.inbound or self.ctx.state is None:
            return None
        patient = patient_sender(sender, info)
        if patient is None:
            return None
        if is_null_sender_mdn(sender, info):
            # A read receipt: the message it reports on, sent to this patient.
            return await self.ctx.state.lookup(patient, reported_ids(info), sent_only=True)
        return await self.ctx.state.lookup(patient, references(info))

    def _patient_event(self, facts: MessageFacts, verdict: Verdict) -> None:
        if facts.conversation is None:
            return
        self.log.info(
            "patient_message",
            txid=self.txn.txid if self.txn else None,
            patient=patient_sender(facts.mail.sender, facts.info),
            conversation=facts.conversation.status.value,
            result="accepted" if verdict.accepted else "refused",
            reason=verdict.reason,
        )

    def added_headers(
        self, txid: str, info: MessageInfo
    ) -> tuple[list[tuple[str, str]], str | None]:
        """RFC 6409 §8.3-8.4: a submission server adds Message-ID and Date when
        the client sent none (patient conversations are followed by Message-ID).
        Returns (name, value) pairs and the message's Message-ID."""
        if self.inbound:
            return [], info.message_id
        fields, message_id = [], info.message_id
        if not message_ids(message_id):
            message_id = f"<{txid}.{secrets.token_hex(8)}@{self.ctx.hostname}>"
            fields.append(("Message-ID", message_id))
        if not info.has_date:
            fields.append(("Date", format_datetime(self.ctx.clock())))
        return fields, message_id

    async def record(self, facts: MessageFacts, message_id: str | None) -> None:
        """Conversation state follows acceptance, never precedes it. A failure
        here must not turn an accepted message into a retried (duplicated) one:
        the reply waits state.record_timeout at most (Recorder)."""
        state = self.ctx.state
        if state is None:
            return
        changes: list[Change] = []
        if self.inbound:
            change = inbound_change(facts, facts.conversation, self.ctx.policy.bals)
            changes = [change] if change else []
            actor = "patient"
        else:
            bal = self.ctx.policy.bals.get(facts.mail.sender)
            if bal is not None and message_id:
                changes = outgoing_changes(bal, facts, message_ids(message_id)[0])
            actor = self.user or "?"
        if changes:
            await state.record(changes, actor, self.txn.txid if self.txn else None, self.log)
