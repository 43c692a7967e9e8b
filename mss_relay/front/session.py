"""What the SMTP listener and the milter share: the context of a listener and
one client session's transaction, from facts to verdicts to the audit trail.

A front end turns its protocol (SMTP commands, milter packets) into calls to
these methods; the rules live in the policy core, the message pipeline here,
so that both deployments enforce the same rules the same way.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import format_datetime
from typing import Any, ClassVar

from structlog.typing import FilteringBoundLogger

from mss_relay.config import TimeoutsConfig
from mss_relay.core.addresses import normalize_address
from mss_relay.core.changes import inbound_change, outgoing_changes
from mss_relay.core.conversation import (
    Change,
    ConversationFacts,
    message_ids,
    patient_sender,
    references,
)
from mss_relay.core.directory import DirectoryAnswer
from mss_relay.core.facts import MailFacts, MessageFacts, RcptFacts, SessionFacts
from mss_relay.core.findings import Mode as XdmMode
from mss_relay.core.message import MessageInfo, crlf_lines
from mss_relay.core.policy import INBOUND, Policy
from mss_relay.core.reply import Reply, internal_error, signature_name, with_id
from mss_relay.core.reports import is_null_sender_mdn, reported_ids
from mss_relay.core.rules.signing import signing_domain
from mss_relay.core.rules.syntax import path_syntax
from mss_relay.core.throttle import ThrottleSettings, ip_address
from mss_relay.core.verdict import Verdict
from mss_relay.core.xdm import check_message, wanted
from mss_relay.delivery.upstream import Upstream
from mss_relay.front.ending import (
    INLINE_LIMIT,
    Ending,
    Examined,
    Fingerprint,
    inspect,
    message_work,
)
from mss_relay.inspect.antivirus import Antivirus
from mss_relay.log import Clock
from mss_relay.signing import Signer
from mss_relay.state.activity import ActivityRecorder
from mss_relay.state.recorder import Recorder
from mss_relay.throttles import Guard, Rates
from mss_relay.verification import Verifier


def new_id() -> str:
    return secrets.token_hex(6).upper()


def logged_reply(reply: str | Reply | None) -> dict[str, str | None]:
    """A reply's fields in the log: its text with the file names it quotes
    masked, and the prefix of the first name's SHA-256 (issue 17: the client
    gets the names, the log never does)."""
    if not isinstance(reply, Reply):
        return {"reply": reply}
    digest = reply.name_digest()
    if digest is None:
        return {"reply": reply.logged()}
    return {"reply": reply.logged(), "attachment_sha256": digest}


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
    auth_guard: Guard | None = None
    rates: Rates | None = None
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
    # The BAL lifecycle's notes (AUTH, messages sent and received); None: not kept.
    activity: ActivityRecorder | None = None
    # The Annuaire Santé's answer for a normalized address (the state
    # database, within state.record_timeout); None: no store opened.
    directory: Callable[[str], Awaitable[DirectoryAnswer]] | None = None
    # clamd (config « antivirus »); None: messages are not scanned.
    antivirus: Antivirus | None = None

    @property
    def inbound(self) -> bool:
        return self.role == INBOUND


class RatePlace:
    """The sending rate's place among the policy's rules (facts.RateCheck):
    called by the policy once the rules before it passed, it says so and
    lets the rules after it run; the front then checks and counts the rate
    (async: on PostgreSQL, shared by the relays), and a refusal of the rate
    replaces the policy's verdict. A message or recipient refused by a rule
    before it uses none of the user's allowance."""

    def __init__(self) -> None:
        self.reached = False

    def __call__(self) -> Verdict | None:
        self.reached = True
        return None


@dataclass
class Transaction:
    txid: str
    started: float
    mail: MailFacts
    recipients: list[str] = field(default_factory=list)
    # What became of its DSN parameters (core/dsn.py), if it had any.
    dsn: str | None = None


class ClientSession:
    """One client session (an SMTP connection, or a connection Postfix
    filters through the milter) and its current transaction."""

    # The front sends the message itself (SMTP: upstream), rather than
    # editing one its MTA holds (the milter): finish() returns it built.
    SENDS_MESSAGE: ClassVar[bool] = False

    def __init__(self, context: RelayContext) -> None:
        self.ctx = context
        self.session_id = new_id()
        self.log = context.log.bind(session=self.session_id)
        self.client = ""
        self.helo = ""
        self.tls = False
        # The client certificate's subject DN (inbound listeners asking for
        # one, tls.verify_client); None: none presented.
        self.peer_dn: str | None = None
        self.user: str | None = None
        self.trusted = False  # taken for self.user by trusted_clients, without AUTH
        self.txn: Transaction | None = None

    @property
    def busy(self) -> bool:
        """In the middle of a transaction: stopping now could lose or duplicate it."""
        return self.txn is not None

    def disconnect(self) -> None:
        """End the session now (a graceful stop whose time ran out)."""

    def shut_down(self) -> None:
        """The relay is stopping (SIGTERM): what the session does about it at
        once (the SMTP listener: 421 4.3.2 to a client still sending DATA, and
        to the next command of every other)."""

    @property
    def finishing(self) -> bool:
        """What a graceful stop waits for: a message past its final dot being
        finished (the milter: any transaction, Postfix holds the client)."""
        return self.busy

    @property
    def ref(self) -> str:
        """The id a refusal quotes, `(id REF)` (issue 15): the transaction's
        txid within one (its decision and transaction lines carry it), the
        session's id before one (connection, EHLO, AUTH: every line of the
        session carries it as `session`)."""
        return self.txn.txid if self.txn else self.session_id

    def quoted(self, verdict: Verdict) -> Verdict:
        """A refusal's reply, quoting ref: the reply logged is the one sent."""
        if verdict.reply is None:
            return verdict
        return replace(verdict, reply=with_id(verdict.reply, self.ref))

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
            peer_dn=self.peer_dn,
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
    async def begin_transaction(self, sender: str, options: list[str], **fields: Any) -> Verdict:
        """MAIL: a new transaction, the policy's and the sending rate's verdict,
        logged; the transaction is dropped again when refused."""
        refused = path_syntax(sender, options)
        if refused is not None:
            refused = self.quoted(refused)  # before the policy: a control character is no fact
            self.decision("mail", refused, sender=printable(sender), **fields)
            return refused
        size = next((o[5:] for o in options if o.upper().startswith("SIZE=")), None)
        rates, user = self.ctx.rates, self.user
        place = RatePlace() if rates is not None else None
        mail = MailFacts(
            session=self.session_facts(),
            sender=sender,
            declared_size=int(size) if size and size.isdigit() else None,
            log_writable=self._log_writable(),
            rate=place,
        )
        self.txn = Transaction(txid=new_id(), started=time.monotonic(), mail=mail)
        if self.inbound and (self.peer_dn or self.ctx.policy.require_operator_certificate):
            # The certificate the operator_certificate rule judged (None: none
            # presented): an operator's server, no health data.
            fields["peer_dn"] = self.peer_dn
        verdict = self.ctx.policy.evaluate_mail(mail)
        if rates is not None and place is not None and place.reached:
            verdict = await rates.message(user) or verdict
        verdict = self.quoted(verdict)
        self.decision("mail", verdict, sender=sender, **fields)
        if verdict.reply is not None:
            self.txn = None
        return verdict

    async def check_recipient(self, recipient: str) -> Verdict:
        """RCPT: the policy's and the recipient rate's verdict, logged."""
        txn = self.txn
        assert txn is not None
        refused = path_syntax(recipient)
        if refused is not None:
            refused = self.quoted(refused)
            self.decision("rcpt", refused, recipient=printable(recipient))
            return refused
        rates, user, state = self.ctx.rates, self.user, self.ctx.state
        place = RatePlace() if rates is not None else None
        facts = RcptFacts(
            mail=txn.mail,
            recipient=recipient,
            accepted_so_far=len(txn.recipients),
            rate=place,
            state_unavailable=state.unavailable() if state is not None else None,
            directory=await self._directory(recipient),
        )
        verdict = self.ctx.policy.evaluate_rcpt(facts)
        if rates is not None and place is not None and place.reached:
            # Before the rules after it (the conversation state's 451), as ever.
            verdict = await rates.recipient(user) or verdict
        verdict = self.quoted(verdict)
        fields = {"directory": facts.directory.label} if facts.directory else {}
        self.decision("rcpt", verdict, recipient=recipient, **fields)
        return verdict

    async def _directory(self, recipient: str) -> DirectoryAnswer | None:
        """The Annuaire Santé's answer, for an outgoing recipient the settings
        say to look up (None: not looked up). No store to ask is an answer
        too: unavailable, never an unchecked accept."""
        if self.inbound or not self.ctx.policy.directory.looks_up(recipient):
            return None
        lookup = self.ctx.directory
        if lookup is None:
            return DirectoryAnswer(None, unavailable="no directory store")
        return await lookup(normalize_address(recipient))

    # Audit trail -------------------------------------------------------------
    def _log_writable(self) -> bool:
        """log.required: whether the audit log is being written (True when
        mail may go on without it)."""
        healthy = self.ctx.log_healthy
        return healthy is None or healthy()

    def internal_error(self, error: Exception) -> Reply:
        """An unexpected error, logged (its type and where, never its text):
        the 451 4.3.0 to answer, with the id of the log line."""
        ref = self.txn.txid if self.txn else self.session_id
        frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        where = f"{frame[0].filename}:{frame[0].lineno}" if frame else "?"
        self.log.error("internal_error", txid=ref, error=type(error).__name__, where=where)
        return internal_error(ref)

    def decision(self, stage: str, verdict: Verdict, **fields: Any) -> None:
        self.log.info(
            "decision",
            stage=stage,
            txid=self.txn.txid if self.txn else None,
            verdict=verdict.action.value,
            rule=verdict.rule,
            reason=verdict.reason,
            **logged_reply(verdict.reply),
            **fields,
        )

    def outcome(
        self,
        outcome: str,
        reply: str | Reply,
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
            **logged_reply(reply),
            upstream=upstream,
            duration_ms=round((time.monotonic() - txn.started) * 1000, 1),
            **({"dsn": txn.dsn} if txn.dsn else {}),
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
            log_writable=self._log_writable(),
        )
        verdict = self.quoted(self.ctx.policy.evaluate_message(facts))
        examined = Examined(facts, verdict, checks, wire, fingerprint)
        self.decision("data", verdict, message_id=info.message_id, dkim=examined.dkim_log)
        self._patient_event(facts, verdict)
        return examined

    async def finish(self, content: bytes) -> Ending:
        """The end of a message, from its final dot to what to do with it: the
        one sequence both fronts run. Examined and decided (examine()); when
        accepted, the fields to add, our Authentication-Results (incoming
        side), and the DKIM signatures (outgoing side) of the message as the
        front lays it out (layout()); one dkimpy cannot sign is refused
        (dkim_signable). The front renders the ending, then calls settle().
        Memory: content is dropped once examined, the CRLF form once laid
        out; a sending front's message is built once, and again signed (about
        twice the message at the peak, not five times)."""
        txn = self.txn
        assert txn is not None
        examined = await self.examine(content)
        del content  # from here on only the CRLF form (often the same object)
        wire, examined = examined.wire, replace(examined, wire=b"")
        if examined.verdict.reply is not None:
            return Ending(examined, examined.verdict)
        refused = await self.scan(wire)
        if refused is None:
            refused = await self.check_xdm(wire, examined.info)
        if refused is not None:
            return Ending(examined, refused)
        fields, message_id = self.added_headers(txn.txid, examined.info)
        verifier = self.ctx.verifier if self.inbound else None
        checks = examined.dkim
        results = verifier.header(checks) if verifier is not None and checks is not None else None
        signer = self.ctx.signer
        domain = signing_domain(examined.facts, self.inbound) if signer else None
        keys = signer.keys_for(domain) if domain else ()
        message = self.layout(wire, results, fields) if keys or self.SENDS_MESSAGE else b""
        del wire
        signatures = b""
        if keys:
            whole = self.SENDS_MESSAGE
            signed = await message_work(
                len(message), signer.attempt, message, keys, crlf=True, whole=whole
            )
            message, signatures = signed.message, signed.signatures
            refused = self.ctx.policy.evaluate_signature(signed.failure)
            if refused is not None:
                refused = self.quoted(refused)
                self.log.warning("dkim_sign_error", txid=txn.txid, error=signed.failure)
                self.decision("sign", refused)
                return Ending(examined, refused)
            if signed.failure is not None:  # fail closed: never an empty or unsigned message
                raise RuntimeError("a message that could not be signed was not refused")
        return Ending(
            examined,
            examined.verdict,
            added=tuple(fields),
            results=results,
            signatures=signatures,
            message_id=message_id,
            message=message,
            dkim=examined.dkim_log if verifier else [k.label for k in keys] if keys else "unsigned",
        )

    async def scan(self, wire: bytes) -> Verdict | None:
        """The antivirus, on a message the policy accepted, as the recipient
        will read it (before our fields and signatures, which it need not
        see): the refusal (malware found, or no verdict: 451 unless
        antivirus.on_error: accept), or None to go on. Logged: the decision
        line, and virus_found (the signature, never the subject nor a file's
        name) or antivirus_unavailable (every message accepted unscanned)."""
        antivirus, txn = self.ctx.antivirus, self.txn
        if antivirus is None or txn is None:
            return None
        started = time.monotonic()
        result = await antivirus.scan(wire)
        elapsed = round((time.monotonic() - started) * 1000, 1)
        verdict = self.quoted(self.ctx.policy.evaluate_scan(result))
        if result.found is not None:
            self.log.warning("virus_found", txid=txn.txid, signature=signature_name(result.found))
        elif result.error is not None and verdict.accepted:
            self.log.warning(
                "antivirus_unavailable", txid=txn.txid, error=result.error, on_error="accept"
            )
        self.decision("antivirus", verdict, scan_ms=elapsed)
        return verdict if verdict.reply is not None else None

    async def check_xdm(self, wire: bytes, info: MessageInfo) -> Verdict | None:
        """The IHE-XDM packages and the X-MSS fields (core.xdm), on a message
        the policy and the antivirus accepted: the refusal (xdm.mode:
        refuse), or None to go on. Logged on a decision line when there are
        findings, their codes only (never an INS, a file name, a value).
        A message that may hold a package is read in a worker thread (each
        zip decoded, its METADATA.XML inflated, a few MiB at most); one that
        may not is read at once (its top header block only), unless large."""
        settings, txn = self.ctx.policy.xdm, self.txn
        if settings.mode is XdmMode.OFF or txn is None:
            return None
        recipients = tuple(txn.recipients)
        if wanted(info) or len(wire) > INLINE_LIMIT:
            report = await asyncio.to_thread(check_message, wire, info, recipients, settings)
        else:
            report = check_message(wire, info, recipients, settings)
        if not report.findings:
            return None
        verdict = self.quoted(self.ctx.policy.evaluate_xdm(report))
        self.decision("xdm", verdict, xdm=list(report.codes))
        return verdict if verdict.reply is not None else None

    def layout(self, wire: bytes, results: bytes | None, added: list[tuple[str, str]]) -> bytes:
        """The message as the front delivers it, before its signatures (what
        they cover): the CRLF message with our results and added fields."""
        raise NotImplementedError

    async def settle(
        self,
        ending: Ending,
        outcome: str,
        reply: str | Reply,
        *,
        delivered: bool = False,
        **extra: Any,
    ) -> None:
        """Once the front rendered the ending: the conversation state follows
        a message delivered (or accepted by the milter), never precedes it;
        then the transaction's line in the audit log."""
        if delivered:
            assert ending.refusal is None
            await self.record(ending.examined.facts, ending.message_id)
            try:
                self._note_activity(ending.examined.facts)
            except Exception as error:
                # The upstream said 250 already: a failure here answering
                # 451 would have the client send the message again.
                self.log.warning("activity_note_failed", error=type(error).__name__)
        if ending.dkim is not None:
            extra["dkim"] = ending.dkim
        examined = ending.examined
        self.outcome(
            outcome,
            reply,
            content=examined.fingerprint,
            info=examined.info,
            verdict=ending.verdict,
            message_id=ending.message_id,
            **extra,
        )

    def _note_activity(self, facts: MessageFacts) -> None:
        """The BAL lifecycle: a BAL whose user sends is connected; one that
        receives is only noted as such (a note, never a wait). Behind the
        milter, Postfix did the AUTH: a message of an authenticated user is
        the relay's only sign of it."""
        activity, bals = self.ctx.activity, self.ctx.policy.bals
        if activity is None:
            return
        if self.inbound:
            for recipient in facts.recipients:
                if bals.get(recipient) is not None:
                    activity.received(recipient)
            return
        if self.user is not None and not self.trusted:
            activity.auth(self.user)
        if bals.get(facts.mail.sender) is not None:
            activity.sent(facts.mail.sender)

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
