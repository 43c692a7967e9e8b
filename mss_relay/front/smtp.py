"""The SMTP front end's handler: one per connection, aiosmtpd's hooks.

The handler turns each SMTP stage into facts, asks the policy core for a
verdict, mirrors the accepted steps to the upstream, and renders the outcome
as a reply. It holds no policy of its own. aiosmtpd's protocol, as the relay
adapts it, is in front/smtp_protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import ssl
from email.utils import format_datetime
from typing import Any, ClassVar, cast

from aiosmtpd.smtp import AuthResult, Envelope, Session, TLSSetupException

from mss_relay.core.dsn import fate
from mss_relay.core.operator import subject_dn
from mss_relay.core.reply import (
    GOODBYE,
    OK,
    RECIPIENT_OK,
    SENDER_OK,
    SHARED_STATE_UNAVAILABLE,
    SHUTTING_DOWN,
    message_accepted,
    with_id,
)
from mss_relay.core.throttle import connection_verdict
from mss_relay.core.verdict import Verdict
from mss_relay.delivery.upstream import UpstreamSession
from mss_relay.front.replies import EHLO_AUTH, EHLO_DSN, EHLO_ENHANCED_STATUS_CODES
from mss_relay.front.session import ClientSession, RelayContext, printable
from mss_relay.front.smtp_arguments import argument_syntax, null_path, plain_address
from mss_relay.front.smtp_protocol import RelaySMTP
from mss_relay.passwords import verify_password
from mss_relay.state.errors import SharedStateUnavailable
from mss_relay.throttles import Guard

# Other modules and tests import these from here.
__all__ = ["RelayHandler", "RelaySMTP", "argument_syntax", "null_path", "plain_address"]

# A hash to verify against when the user is unknown, so that timing does not
# tell which user names exist.
_DUMMY_HASH = "scrypt$15$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "="
# How long an AUTH over the limit only by attempts still being verified
# waits for them (scrypt: some 0.15 s each) before it is refused 454.
_AUTH_WAIT = 10.0


def _take_content(envelope: Envelope) -> bytes:
    """The message, which the envelope then no longer holds: the relay keeps
    one reference, dropped as soon as the message to send is built (memory:
    about twice the message at the peak, not five times)."""
    content = envelope.original_content or b""
    envelope.content = envelope.original_content = None
    return content


def peer_dn(tls: object) -> str | None:
    """The subject DN of the client's certificate, as the TLS layer verified
    it (against tls.client_ca); None when it presented none, or none was
    asked for. aiosmtpd's session.ssl is the connection's SSLObject after
    implicit TLS (RelaySMTP.connection_made), its transport's extra-info
    mapping after STARTTLS."""
    ssl_object = tls.get("ssl_object") if isinstance(tls, dict) else tls
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    # An empty dict: a certificate not verified (none was asked for).
    subject = (ssl_object.getpeercert() or {}).get("subject")
    if not isinstance(subject, tuple) or not subject:
        return None
    return subject_dn(cast(tuple[tuple[tuple[str, str], ...], ...], subject))


class RelayHandler(ClientSession):
    """One per connection: its upstream session and its current transaction."""

    SENDS_MESSAGE: ClassVar[bool] = True  # to the upstream

    def __init__(self, context: RelayContext) -> None:
        super().__init__(context)
        self.server: RelaySMTP | None = None
        self.upstream: UpstreamSession | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._delivering: asyncio.Task[str] | None = None
        # The AUTH failures of this connection, as (user, keyed digest of the
        # password): smtplib's login() tries PLAIN, then LOGIN, with the same
        # wrong password; that is one failure, not two (issue 15). A new
        # password is a new guess and counts. The key is the connection's own,
        # so that no digest outlives it usefully.
        self._failed: set[tuple[str, bytes]] = set()
        self._failed_key = secrets.token_bytes(16)
        # The DSN parameters (RFC 3461) of the MAIL or RCPT being run, as the
        # client wrote them: set by the protocol, which takes them out of what
        # aiosmtpd parses (it would upper-case the case-sensitive xtext).
        self.command_dsn: tuple[str, ...] = ()
        context.sessions.add(self)

    def disconnect(self) -> None:
        # RFC 5321 §3.8: a server shut down says 421 before it closes.
        if self.server is not None:
            self.server.close_with(SHUTTING_DOWN)

    def shut_down(self) -> None:
        if self.server is None:
            return
        if self.server.receiving_data:
            # Before its final dot the client still holds the message: it is
            # told now (it retries later), not waited for.
            # The reply quotes the transaction's id, then the transaction ends.
            self.server.close_with(SHUTTING_DOWN)
            if self.txn is not None:
                self.outcome("abandoned", "relay stopping during DATA")
                self.txn = None
            return
        self.server.refuse_commands(SHUTTING_DOWN)

    @property
    def finishing(self) -> bool:
        return self.delivering

    def _observe(self, server: RelaySMTP, session: Session) -> None:
        self.server = server
        if session.peer and not self.client:
            self.client = str(session.peer[0])
        self.helo = session.host_name or self.helo
        self.tls = session.ssl is not None
        if self.ctx.inbound:  # only inbound listeners ask for a client certificate
            self.peer_dn = peer_dn(session.ssl)

    def _received(self, txid: str) -> bytes:
        proto = "ESMTP" + ("S" if self.tls else "") + ("A" if self.user else "")
        helo = printable(self.helo) or "unknown"
        return (
            f"Received: from {helo} ([{self.client}])\r\n"
            f"\tby {self.ctx.hostname} (mss-relay) with {proto} id {txid};\r\n"
            f"\t{format_datetime(self.ctx.clock())}\r\n"
        ).encode("ascii", "replace")

    async def data_refused(self) -> None:
        if self.txn is None:
            return  # handle_DATA ran and closed the transaction
        self.outcome("rejected", "refused while receiving data (size or line length)")
        self.txn = None
        if self.upstream is not None:
            await self.upstream.reset()

    def connection_opened(self, peer: Any) -> str | None:
        """The connection caps; the refusal to send, if over them."""
        self.client = str(peer[0]) if peer else ""
        sessions = self.ctx.sessions
        same = sum(1 for s in sessions if s.client == self.client)
        verdict = connection_verdict(self.ctx.throttle, len(sessions), same)
        if verdict is None or verdict.reply is None:
            self.trust()
            return None
        self.log.warning(
            "connection_refused", client=self.client, rule=verdict.rule, reason=verdict.reason
        )
        return str(verdict.reply)

    def timed_out(self, why: str) -> None:
        self.log.warning(
            "timeout", client=self.client, phase=why, txid=self.txn.txid if self.txn else None
        )

    async def reset_transaction(self, why: str) -> None:
        if self.txn is not None:
            self.outcome("abandoned", why)
            self.txn = None
        if self.upstream is not None:
            await self.upstream.reset()

    async def authenticate(self, login: bytes, password: bytes) -> AuthResult:
        user = login.decode("utf-8", "replace")
        shown = printable(user, 64)
        guard = self.ctx.auth_guard
        if guard is not None:
            refused = await self._reserve_attempt(guard, user)
            if refused is not None and refused.reply is not None:
                # Not even verified: a locked-out guesser learns nothing more;
                # nor is a password whose failure could not be counted.
                result = "unavailable" if refused.reply == SHARED_STATE_UNAVAILABLE else "locked"
                self.log.warning(
                    "auth", client=self.client, user=shown, result=result, reason=refused.reason
                )
                return AuthResult(success=False, handled=False, message=str(refused.reply))
        tried = (user, hmac.new(self._failed_key, password, hashlib.sha256).digest())
        repeated = tried in self._failed
        ok = False
        try:
            encoded = self.ctx.users.get(user)
            valid = await asyncio.to_thread(verify_password, password, encoded or _DUMMY_HASH)
            ok = valid and encoded is not None
        finally:
            # Settled whatever happens: an attempt whose outcome is not known
            # (an error, the client gone meanwhile) counts as a failure.
            if not ok:
                self._failed.add(tried)
            try:
                # Counting may wait for the shared database: the reservation
                # is released first, and those waiting are told in any case.
                delay = await self._settle_attempt(user, ok, repeated)
            finally:
                if guard is not None:
                    self._notify_settled()
        result = "success" if ok else "failure"
        if repeated:  # logged, and not counted again (metrics read this field too)
            self.log.info("auth", client=self.client, user=shown, result=result, repeated=True)
        else:
            self.log.info("auth", client=self.client, user=shown, result=result)
        if ok:
            self.user = user
            if self.ctx.activity is not None:  # the BAL lifecycle: a connection
                try:
                    self.ctx.activity.auth(user)
                except Exception as error:  # a note, never a reason to refuse a login
                    self.log.warning("activity_note_failed", error=type(error).__name__)
            return AuthResult(success=True, auth_data=user)
        if delay:
            await asyncio.sleep(delay)  # slows a guesser down, costs a typo little
        return AuthResult(success=False, handled=False)

    async def _reserve_attempt(self, guard: Guard, user: str) -> Verdict | None:
        """Guard.begin(); where only attempts still being verified stand
        in the way (no lockout), wait for them to settle, up to
        _AUTH_WAIT seconds: the right password of a connector that opens
        several sessions at once is then verified, not refused 454."""
        deadline = self.ctx.monotonic() + _AUTH_WAIT
        while True:
            refused = await guard.begin(self.client, user)
            left = deadline - self.ctx.monotonic()
            if refused is None or refused.rule != "auth_in_flight" or left <= 0:
                return refused
            settled = self.ctx.auth_settled
            async with settled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(settled.wait(), left)

    def _notify_settled(self) -> None:
        settled = self.ctx.auth_settled

        async def notify() -> None:
            async with settled:
                settled.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _settle_attempt(self, user: str, ok: bool, repeated: bool = False) -> float:
        """The Guard's reservation of an attempt, settled (a lockout it
        caused logged): the delay before answering a failure. A failure this
        connection already had (the same user and password) is not counted
        again: its reservation is only released."""
        guard = self.ctx.auth_guard
        if guard is None:
            return 0.0
        if ok or repeated:
            guard.succeeded(self.client, user)  # releases the reservation, counts nothing
            return 0.0
        try:
            delay, locked_now = await guard.failed(self.client, user)
        except SharedStateUnavailable as why:
            # Released, not counted: said, and answered as a first failure.
            self.log.warning(
                "auth_failure_not_counted",
                client=self.client,
                user=printable(user, 64),
                reason=str(why),
            )
            return self.ctx.throttle.auth_failure_delay
        for what in locked_now:
            self.log.warning(
                "auth_lockout",
                client=self.client,
                user=printable(user, 64),
                locked=what,
                seconds=self.ctx.throttle.auth_lockout,
            )
        return delay

    def connection_lost(self) -> None:
        self.log.info("disconnect", client=self.client)
        if self.delivering and self._delivering is not None:
            # The message is on its way upstream: let it arrive, then clean up
            # (a graceful stop waits for it, as this session stays listed).
            self._delivering.add_done_callback(lambda _: self._release())
            return
        if self.txn is not None:
            self.outcome("abandoned", "connection lost")
            self.txn = None
        self._release()

    def _release(self) -> None:
        if self.txn is not None:  # a late delivery that failed on an internal error
            self.outcome("tempfailed", "internal error")
            self.txn = None
        self.ctx.sessions.discard(self)
        if self.upstream is not None:
            task = asyncio.get_running_loop().create_task(self.upstream.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            self.upstream = None

    # aiosmtpd hooks --------------------------------------------------------
    async def handle_EHLO(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self._observe(server, session)
        if self.ctx.inbound:  # the operator delivers here: no AUTH to offer
            responses = [r for r in responses if not r.startswith(EHLO_AUTH)]
        return [*responses[:-1], EHLO_ENHANCED_STATUS_CODES, EHLO_DSN, responses[-1]]

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self._observe(server, session)
        # aiosmtpd gives the null reverse-path as « <> »: the core knows it as "".
        address = null_path(address)
        verdict = await self.begin_transaction(address, options)
        if verdict.reply is not None:
            return str(verdict.reply)
        txn = self.txn
        assert txn is not None  # begun by an accepting verdict
        if self.upstream is None:
            assert self.ctx.upstream is not None  # every SMTP listener has one
            self.upstream = self.ctx.upstream.session()
        dsn = self.command_dsn
        result = await self.upstream.mail(address, options, dsn)
        if not result.accepted:
            self.log.warning(
                "upstream",
                stage="mail",
                txid=txn.txid,
                outcome=result.outcome.value,
                upstream=result.upstream,
            )
            self.txn = None
            return str(with_id(result.reply, txn.txid))
        if dsn:
            txn.dsn = fate(self.upstream.has_dsn)
        envelope.mail_from = address or "<>"  # aiosmtpd takes "" for « no MAIL yet »
        envelope.mail_options.extend(options)
        return str(SENDER_OK)

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        txn = self.txn
        assert txn is not None and self.upstream is not None  # aiosmtpd checks MAIL first
        try:
            verdict = await self.check_recipient(address)
        except Exception as error:  # reported, and answered 451
            # Nothing went upstream yet: this recipient fails, the transaction
            # goes on (an error once the upstream is asked ends it instead:
            # handle_exception, as its state there is unknown).
            return self._internal_error(error)
        if verdict.reply is not None:
            return str(verdict.reply)
        dsn = self.command_dsn
        result = await self.upstream.rcpt(address, dsn)
        if not result.accepted:
            self.log.warning(
                "upstream",
                stage="rcpt",
                txid=txn.txid,
                recipient=address,
                outcome=result.outcome.value,
                upstream=result.upstream,
            )
            return str(result.reply)
        if dsn:
            txn.dsn = fate(self.upstream.has_dsn)
        txn.recipients.append(address)
        envelope.rcpt_tos.append(address)
        return str(RECIPIENT_OK)

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        server.data_complete()
        # From the final dot on, the work runs to its end even if the client
        # goes away meanwhile: a message the operator took must be logged and
        # recorded as delivered, and the client answered if it still listens.
        work = asyncio.get_running_loop().create_task(self._finish(envelope))
        self._delivering = work
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(server.delivered_late)
            raise

    @property
    def delivering(self) -> bool:
        return self._delivering is not None and not self._delivering.done()

    async def _finish(self, envelope: Envelope) -> str:
        """The pipeline's ending, rendered in SMTP: the refusal, or the
        message sent upstream; the client's reply follows the upstream's."""
        txn = self.txn
        assert txn is not None and self.upstream is not None
        # No name here holds the message: the pipeline drops it as it goes.
        ending = await self.finish(_take_content(envelope))
        if ending.refusal is not None:
            await self.upstream.reset()
            await self.settle(ending, "rejected", ending.refusal)
            self.txn = None
            return str(ending.refusal)
        result = await self.upstream.data(ending.message, txn.txid)
        reply = message_accepted(txn.txid) if result.accepted else with_id(result.reply, txn.txid)
        await self.settle(
            ending,
            "delivered" if result.accepted else result.outcome.value,
            str(reply),
            delivered=result.accepted,
            upstream=result.upstream,
        )
        self.txn = None
        return str(reply)

    def layout(self, wire: bytes, results: bytes | None, added: list[tuple[str, str]]) -> bytes:
        """What the upstream receives (CRLF line ends already, so what the
        signatures cover): our Received:, our results (forged ones removed),
        the fields we add, the message."""
        assert self.txn is not None
        head = "".join(f"{name}: {value}\r\n" for name, value in added).encode("ascii")
        if results is not None:
            assert self.ctx.verifier is not None  # results are its header
            wire = self.ctx.verifier.without_forged_results(wire)
            head = results + head
        return self._received(self.txn.txid) + head + wire

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        await self.reset_transaction("rset")
        return str(OK)

    async def handle_QUIT(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        await self.reset_transaction("quit")
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            await upstream.close()
        return str(GOODBYE)

    def _internal_error(self, error: Exception) -> str:
        """Log an unexpected error; the 451 4.3.0 to answer, with an id."""
        return str(self.internal_error(error))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A STARTTLS handshake that failed (no client certificate where
            # tls.verify_client is required, one the CAs do not sign, a client
            # gone): the client's doing, not ours. aiosmtpd closes the
            # connection without a reply.
            cause = error.__cause__
            reason = getattr(cause, "reason", None) or type(cause).__name__
            self.log.warning("tls_failed", client=self.client, reason=str(reason))
            return ""
        reply = self._internal_error(error)
        if self.txn is not None:
            self.outcome("tempfailed", "internal error")
            self.txn = None
        if self.server is not None:
            # aiosmtpd's envelope must end with our transaction: left with its
            # MAIL, it would pass the next RCPT or DATA to a hook that has none.
            self.server._set_rset_state()  # type: ignore[no-untyped-call]
        if self.upstream is not None:
            await self.upstream.reset()
        return reply
