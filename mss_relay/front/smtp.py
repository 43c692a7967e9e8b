"""The SMTP front end: an aiosmtpd protocol and a per-connection handler.

The handler turns each SMTP stage into facts, asks the policy core for a
verdict, mirrors the accepted steps to the upstream, and renders the outcome
as a reply. It holds no policy of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import warnings
from collections.abc import Awaitable, Callable
from email.utils import format_datetime
from typing import Any, AnyStr, ClassVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mss_relay.core.addresses import PLAIN_MAILBOX, has_control_character
from mss_relay.core.reply import (
    BUSY,
    RECIPIENT_OK,
    SENDER_OK,
    TIMEOUT,
    Reply,
    ascii_text,
    message_accepted,
)
from mss_relay.core.rules.syntax import path_syntax
from mss_relay.core.throttle import AuthGuard, connection_verdict
from mss_relay.core.verdict import Verdict
from mss_relay.delivery.upstream import UpstreamSession
from mss_relay.front.data import DataReceiver, DataState
from mss_relay.front.replies import localize
from mss_relay.front.session import ClientSession, RelayContext, printable
from mss_relay.passwords import verify_password

# DSN parameters (RFC 3461) that clients send although we do not offer DSN:
# tolerated and dropped rather than refused.
_DSN_RCPT_PARAMS = ("NOTIFY=", "ORCPT=")
# DATA is read by chunks of up to this many octets.
_DATA_CHUNK = 1 << 18
_DSN_MAIL_PARAMS = ("RET=", "ENVID=")
# A hash to verify against when the user is unknown, so that timing does not
# tell which user names exist.
# How long an AUTH over the limit only by attempts still being verified
# waits for them (scrypt: some 0.15 s each) before it is refused 454.
_AUTH_WAIT = 10.0
_DUMMY_HASH = "scrypt$15$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "="


def _strip_params(arg: str | None, prefixes: tuple[str, ...]) -> str | None:
    """Drop trailing ESMTP parameters we tolerate but do not implement."""
    if not arg:
        return arg
    words = arg.split(" ")
    while len(words) > 1 and words[-1].upper().startswith(prefixes):
        words.pop()
    return " ".join(words)


_TRAILING_DOT = re.compile(r"^((?:TO|FROM):\s*<[^<>]*@[^<>]*?)\.+>", re.IGNORECASE)


def _without_trailing_dot(arg: str | None) -> str | None:
    """« x@ch.mssante.fr. » (the FQDN form) is « x@ch.mssante.fr »: aiosmtpd's
    parser refuses the dot, and the upstream should not see it either."""
    if not arg or ".>" not in arg:  # nearly always: no regex substitution to run
        return arg
    return _TRAILING_DOT.sub(r"\1>", arg)


# What nearly every MAIL and RCPT carries: <dot-atom@host.name>.
_PLAIN_ADDRESS = re.compile(rf"[ \t]*<({PLAIN_MAILBOX})>")


def argument_syntax(arg: str) -> Verdict | None:
    """path_syntax() on a MAIL or RCPT argument as sent (« FROM:<path> params »).
    A tab is white space before the path and between parameters, as aiosmtpd
    and plain_address() take it; inside the path it is refused like the rest."""
    if not has_control_character(arg):
        return None  # nearly always
    keyword, colon, rest = arg.partition(":")
    path, bracket, parameters = rest.lstrip(" \t").partition(">")
    return path_syntax(keyword + colon + path + bracket, (parameters.replace("\t", " "),))


def plain_address(arg: str, local_part_limit: int) -> tuple[str | None, str | None] | None:
    """aiosmtpd's _getaddr() for a plain address in angle brackets, without
    the email package's RFC 5322 tokenizer (a tenth of the relay's CPU per
    small message); None for anything else, which aiosmtpd parses."""
    match = _PLAIN_ADDRESS.match(arg)
    if match is None:
        return None
    rest = arg[match.end() :].lstrip(" \t")  # as the tokenizer drops folding white space
    if rest.startswith("("):
        return None  # a comment, which the tokenizer drops too
    address = match[1]
    if local_part_limit and len(address.rpartition("@")[0]) > local_part_limit:
        return None, None
    return address, rest


def null_path(address: str) -> str:
    """RFC 5321 §4.1.1.2 « MAIL FROM:<> », which aiosmtpd's parser hands on
    as the address « <> » (a sender the rules would quote as « <<>> »)."""
    return "" if address.strip() == "<>" else address


def _take_content(envelope: Envelope) -> bytes:
    """The message, which the envelope then no longer holds: the relay keeps
    one reference, dropped as soon as the message to send is built (memory:
    about twice the message at the peak, not five times)."""
    content = envelope.original_content or b""
    envelope.content = envelope.original_content = None
    return content


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with our replies, our AUTH and our error handling."""

    def __init__(self, handler: RelayHandler, *, implicit_tls: bool, **kwargs: Any) -> None:
        self._raw = False
        self._data_started = False
        self._implicit_tls = implicit_tls
        self._refusal: str | None = None  # a connection over the caps: 421, then close
        self._in_data = False
        self._data_deadline: asyncio.TimerHandle | None = None
        self._rate_check: asyncio.TimerHandle | None = None
        self._data_started_at = 0.0
        self._data_bytes = 0
        self._idle_deadline = 0.0
        with warnings.catch_warnings():
            # With implicit TLS the whole connection is encrypted, so aiosmtpd's
            # « AUTH without TLS » warning does not apply.
            warnings.simplefilter("ignore")
            super().__init__(handler, **kwargs)
        self.relay = handler

    # Replies ---------------------------------------------------------------
    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self._raw:
            localized = ascii_text(localize(status))
            if localized.startswith("354"):
                self._data_started = True
            await super().push(localized)
            if localized.startswith("421") and self.transport is not None:
                # RFC 5321 §3.8: a 421 (ours, or the upstream's passed on)
                # closes the connection once it is sent.
                self.transport.close()
            return
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        self._data_started = False
        ctx = self.relay.ctx
        ready = bool(self.envelope and self.envelope.rcpt_tos) and not arg
        if not ready:  # aiosmtpd answers 503/501/530 itself
            await super().smtp_DATA(arg)
            return
        # A message is held in memory while it is received and forwarded: cap
        # how many at once, so that many large transfers cannot exhaust memory.
        try:
            async with asyncio.timeout(ctx.timeouts.busy_wait):
                await ctx.data_slots.acquire()
        except TimeoutError:
            await self.relay.reset_transaction("busy")
            self._set_rset_state()  # type: ignore[no-untyped-call]  # a new MAIL may come
            await self.push(str(BUSY))
            return
        self._in_data = True
        self._data_started_at = self.loop.time()
        self._data_bytes = 0
        self._data_deadline = self.loop.call_later(ctx.timeouts.data, self._data_overdue)
        self._rate_check = self.loop.call_later(ctx.timeouts.data_rate_grace, self._check_rate)
        try:
            await self._receive_data()
        finally:
            self.data_complete()
            ctx.data_slots.release()
        if self.transport is not None:
            self._reset_timeout()
        if self._data_started:
            # aiosmtpd refuses an over-long line or too much data itself, without
            # calling handle_DATA: close our side of the transaction too.
            await self.relay.data_refused()

    async def _receive_data(self) -> None:
        """aiosmtpd's DATA (its checks were made by smtp_DATA), received by
        chunks rather than line by line (mss_relay/front/data.py)."""
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        receiver = DataReceiver(self.data_size_limit, self.line_length_limit)
        rest = None
        while rest is None:
            try:
                chunk = await self._reader.read(_DATA_CHUNK)
            except asyncio.CancelledError:
                self._writer.close()  # the connection went away during DATA
                raise
            if not chunk:  # end of stream: eof_received ends the session
                self._writer.close()
                return
            rest = receiver.feed(chunk)
        if rest:
            # Pipelined commands after the final dot: back in front of the
            # reader, for the command loop.
            self._reader._buffer[:0] = rest  # type: ignore[attr-defined]
        if receiver.state is DataState.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        if receiver.state is DataState.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        assert self.envelope is not None
        self.envelope.content = self.envelope.original_content = receiver.content
        del receiver  # the handler takes the message from the envelope, and keeps it alone
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    def data_complete(self) -> None:
        """The final dot is in: from now on only the relay's own work remains,
        which no client timer may interrupt (it could duplicate the message)."""
        self._in_data = False
        for handle in (self._data_deadline, self._rate_check):
            if handle is not None:
                handle.cancel()
        self._data_deadline = self._rate_check = None
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()  # re-armed once the reply is sent

    def data_received(self, data: bytes) -> None:
        if self._in_data:
            self._data_bytes += len(data)
            # aiosmtpd restarts its timer on each command only; during DATA,
            # the idle timeout counts from the last byte instead.
            self._reset_timeout()
        super().data_received(data)

    def _check_rate(self) -> None:
        self._rate_check = None
        if not self._in_data:
            return
        timeouts = self.relay.ctx.timeouts
        elapsed = self.loop.time() - self._data_started_at
        if self._data_bytes < timeouts.min_data_rate * elapsed:
            self._close_with(TIMEOUT.with_text("Transmission du message trop lente"), "data_rate")
            return
        self._rate_check = self.loop.call_later(max(1.0, elapsed / 4), self._check_rate)

    def _data_overdue(self) -> None:
        self._data_deadline = None
        self._close_with(TIMEOUT.with_text("Délai de transmission du message dépassé"), "data")

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this for every command, and data_received() for every
        # chunk of DATA: a new timer each time was some 4 % of the event loop
        # per small message. The deadline moves instead, and the one timer,
        # when it fires before it, sets itself again for it.
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled() and handle.when() <= deadline:
            return
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        self._close_with(TIMEOUT, "idle")

    def _close_with(self, reply: Reply, why: str) -> None:
        """RFC 5321 §4.5.3.2: a server that gives up says so (421) first."""
        if self.transport is None or self.transport.is_closing():
            return
        self.relay.timed_out(why)
        self._writer.write(ascii_text(str(reply)).encode("ascii") + b"\r\n")
        self.transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting(super().smtp_EHLO, hostname, "ehlo")

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting(super().smtp_HELO, hostname, "helo")

    async def _greeting(
        self, command: Callable[[str], Awaitable[None]], hostname: str, why: str
    ) -> None:
        # RFC 2034 §3: no enhanced codes in the EHLO/HELO answer (keywords);
        # and a new greeting ends any transaction (RFC 5321 §4.1.4).
        self._raw = True
        try:
            await command(hostname)
        finally:
            self._raw = False
        await self.relay.reset_transaction(why)

    # Parameters ------------------------------------------------------------
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        found = plain_address(arg, self.local_part_limit) if arg else None
        if found is not None:
            return found
        try:
            return super()._getaddr(arg)
        except Exception:  # the email package's tokenizer on hostile input
            # « MAIL FROM:< » made it raise IndexError (a 451 4.3.0, retried
            # forever): an address it cannot read is malformed, 553 5.1.3.
            return None, None

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.relay.trusted and self.session is not None:
            # A trusted client needs no AUTH (it may still AUTH, as another user).
            self.session.authenticated = True
        if await self._control_characters(arg, "MAIL"):
            return
        await super().smtp_MAIL(_without_trailing_dot(_strip_params(arg, _DSN_MAIL_PARAMS)))

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._control_characters(arg, "RCPT"):
            return
        await super().smtp_RCPT(_without_trailing_dot(_strip_params(arg, _DSN_RCPT_PARAMS)))

    async def _control_characters(self, arg: str | None, command: str) -> bool:
        """A MAIL or RCPT argument with a control character, refused (True)
        before aiosmtpd parses it: its parser passes some on in the address and
        takes others for white space between parameters. Its own checks of the
        session's state come first, as they would."""
        verdict = argument_syntax(arg) if arg else None
        if verdict is None or verdict.reply is None or arg is None:
            return False
        if await self.check_helo_needed() or await self.check_auth_needed(command):
            return True
        if command == "RCPT" and not (self.envelope and self.envelope.mail_from):
            return False  # aiosmtpd's 503: no MAIL yet
        what = "sender" if command == "MAIL" else "recipient"
        path = printable(arg.partition(":")[2].strip())
        self.relay.decision(command.lower(), verdict, **{what: path})
        await self.push(str(verdict.reply))
        return True

    # AUTH, verified off the event loop --------------------------------------
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously; scrypt must not block the loop, so
        # hand the credentials back and verify them in _settle().
        return AuthResult(success=False, handled=False, auth_data=("pending", auth_data))

    async def _discard_line(self) -> None:
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as overrun:
                await self._reader.read(overrun.consumed)
            except asyncio.IncompleteReadError:
                return

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._settle(lambda: super(RelaySMTP, self).auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._settle(lambda: super(RelaySMTP, self).auth_LOGIN(_, args))

    async def _settle(self, exchange: Callable[[], Awaitable[AuthResult]]) -> AuthResult:
        try:
            result = await exchange()
        except ValueError as error:
            # aiosmtpd reads the client's answer to a 334 challenge with
            # readline(): an over-long one raises instead of being refused.
            # asyncio has dropped what it held of the line; unless it saw the
            # line's end, the rest is still to come and must not pass for commands.
            if "not found" in str(error):
                await self._discard_line()
            return AuthResult(
                success=False,
                handled=False,
                message="501 5.5.2 Réponse d'authentification trop longue",
            )
        data = result.auth_data
        if not (isinstance(data, tuple) and data[:1] == ("pending",)):
            return result
        credentials: LoginPassword = data[1]
        return await self.relay.authenticate(credentials.login, credentials.password)

    # Connection ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # not the STARTTLS switch of a connection
        super().connection_made(transport)
        if self._implicit_tls and self.session is not None:
            self.session.ssl = transport.get_extra_info("ssl_object")
        if first and self.session is not None:
            self._refusal = self.relay.connection_opened(self.session.peer)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            await self.push(self._refusal)
            if self.transport is not None:
                self.transport.close()
            return
        # The client may go away while it is answered (the 221 to a QUIT sent
        # just before a close or a reset): nobody is left to tell. aiosmtpd
        # re-raises that, which a task nobody awaits prints as a traceback;
        # the disconnect is logged by connection_lost().
        with contextlib.suppress(ConnectionError):
            await super()._handle_client()

    def eof_received(self) -> bool | None:
        super().eof_received()  # cancels the session's coroutine
        # Close now: aiosmtpd would keep a half-closed socket until the idle
        # timeout, counted against the connection caps meanwhile.
        return False

    def delivered_late(self, work: asyncio.Task[str]) -> None:
        """A DATA whose client went away while it was forwarded: nobody is
        left to answer; an error of that work is still logged."""
        if not work.cancelled() and work.exception() is not None:
            self.relay.log.error("internal_error", error=type(work.exception()).__name__)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.relay.connection_lost()


class RelayHandler(ClientSession):
    """One per connection: its upstream session and its current transaction."""

    SENDS_MESSAGE: ClassVar[bool] = True  # to the upstream

    def __init__(self, context: RelayContext) -> None:
        super().__init__(context)
        self.server: RelaySMTP | None = None
        self.upstream: UpstreamSession | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._delivering: asyncio.Task[str] | None = None
        context.sessions.add(self)

    def disconnect(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()

    def _observe(self, server: RelaySMTP, session: Session) -> None:
        self.server = server
        if session.peer and not self.client:
            self.client = str(session.peer[0])
        self.helo = session.host_name or self.helo
        self.tls = session.ssl is not None

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
                # Not even verified: a locked-out guesser learns nothing more.
                self.log.warning(
                    "auth", client=self.client, user=shown, result="locked", reason=refused.reason
                )
                return AuthResult(success=False, handled=False, message=str(refused.reply))
        ok = False
        try:
            encoded = self.ctx.users.get(user)
            valid = await asyncio.to_thread(verify_password, password, encoded or _DUMMY_HASH)
            ok = valid and encoded is not None
        finally:
            # Settled whatever happens: an attempt whose outcome is not known
            # (an error, the client gone meanwhile) counts as a failure.
            delay = self._settle_attempt(user, ok)
            if guard is not None:
                self._notify_settled()
        self.log.info("auth", client=self.client, user=shown, result="success" if ok else "failure")
        if ok:
            self.user = user
            return AuthResult(success=True, auth_data=user)
        if delay:
            await asyncio.sleep(delay)  # slows a guesser down, costs a typo little
        return AuthResult(success=False, handled=False)

    async def _reserve_attempt(self, guard: AuthGuard, user: str) -> Verdict | None:
        """AuthGuard.begin(); where only attempts still being verified stand
        in the way (no lockout), wait for them to settle, up to
        _AUTH_WAIT seconds: the right password of a connector that opens
        several sessions at once is then verified, not refused 454."""
        deadline = self.ctx.monotonic() + _AUTH_WAIT
        while True:
            refused = guard.begin(self.client, user, self.ctx.monotonic())
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

    def _settle_attempt(self, user: str, ok: bool) -> float:
        """The AuthGuard's reservation of an attempt, settled (a lockout it
        caused logged): the delay before answering a failure."""
        guard = self.ctx.auth_guard
        if guard is None:
            return 0.0
        if ok:
            guard.succeeded(self.client, user)
            return 0.0
        delay, locked_now = guard.failed(self.client, user, self.ctx.monotonic())
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
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", responses[-1]]

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
        verdict = self.begin_transaction(address, options)
        if verdict.reply is not None:
            return str(verdict.reply)
        txn = self.txn
        assert txn is not None  # begun by an accepting verdict
        if self.upstream is None:
            assert self.ctx.upstream is not None  # every SMTP listener has one
            self.upstream = self.ctx.upstream.session()
        result = await self.upstream.mail(address, options)
        if not result.accepted:
            self.log.warning(
                "upstream",
                stage="mail",
                txid=txn.txid,
                outcome=result.outcome.value,
                upstream=result.upstream,
            )
            self.txn = None
            return str(result.reply)
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
            verdict = self.check_recipient(address)
        except Exception as error:  # reported, and answered 451
            # Nothing went upstream yet: this recipient fails, the transaction
            # goes on (an error once the upstream is asked ends it instead:
            # handle_exception, as its state there is unknown).
            return self._internal_error(error)
        if verdict.reply is not None:
            return str(verdict.reply)
        result = await self.upstream.rcpt(address)
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
            await self.settle(ending, "rejected", str(ending.refusal))
            self.txn = None
            return str(ending.refusal)
        result = await self.upstream.data(ending.message, txn.txid)
        reply = message_accepted(txn.txid) if result.accepted else result.reply
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
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        await self.reset_transaction("quit")
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            await upstream.close()
        return "221 2.0.0 Au revoir"

    def _internal_error(self, error: Exception) -> str:
        """Log an unexpected error; the 451 4.3.0 to answer, with an id."""
        return str(self.internal_error(error))

    async def handle_exception(self, error: Exception) -> str:
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
