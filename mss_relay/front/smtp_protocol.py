"""aiosmtpd's SMTP protocol, adapted: our replies, DATA by chunks, timers
that move instead of being re-created, AUTH verified off the event loop, the
connection caps, and a connection's set-up done in part once per listener.

Everything here leans on aiosmtpd 1.4's private members, which
pyproject.toml pins and tests/unit/test_private_members.py checks are there;
the handler hooks (what the relay does at each stage) are in front/smtp.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, AnyStr

from aiosmtpd.smtp import DATA_SIZE_DEFAULT, SMTP, AuthResult, LoginPassword

from mss_relay.core.dsn import MAIL_KEYWORDS, RCPT_KEYWORDS
from mss_relay.core.reply import (
    AUTH_RESPONSE_TOO_LONG,
    BUSY,
    DATA_TIMEOUT,
    DATA_TOO_SLOW,
    LINE_TOO_LONG,
    MESSAGE_TOO_BIG,
    TIMEOUT,
    Reply,
    ascii_text,
    with_id,
    with_id_line,
)
from mss_relay.core.verdict import Verdict
from mss_relay.front.data import DataReceiver, DataState
from mss_relay.front.replies import CLOSING_CODE, DATA_GO_AHEAD, DATA_GO_AHEAD_CODE, localize
from mss_relay.front.session import printable
from mss_relay.front.smtp_arguments import (
    argument_syntax,
    dsn_apart,
    plain_address,
    without_trailing_dot,
)
from mss_relay.front.smtp_setup import Introspection, aiosmtpd_init

if TYPE_CHECKING:
    from mss_relay.front.smtp import RelayHandler


def _path_of(arg: str) -> str:
    """The path of a MAIL or RCPT argument, without its parameters (the log's
    sender or recipient field)."""
    path = arg.partition(":")[2].strip()
    if path.startswith("<") and ">" in path:
        return path[: path.index(">") + 1]
    return path.split(" ", 1)[0]


# DATA is read by chunks of up to this many octets.
_DATA_CHUNK = 1 << 18

# aiosmtpd 1.4's private members that this module, front/smtp_setup.py and
# front/smtp.py read, set or override: tests/unit/test_private_members.py
# checks that each is in the installed aiosmtpd, and that this list names
# every one the code uses.
AIOSMTPD_PRIVATE = (
    "_auth_callback",
    "_auth_methods",
    "_auth_require_tls",
    "_auth_required",
    "_authenticate",
    "_authenticator",
    "_call_handler_hook",
    "_cb_client_connected",
    "_decode_data",
    "_ehlo_hook_ver",
    "_enforce_call_limit",
    "_getaddr",
    "_handle_client",
    "_handle_hooks",
    "_handler_coroutine",
    "_original_transport",
    "_proxy_timeout",
    "_reader",
    "_reset_timeout",
    "_set_post_data_state",
    "_set_rset_state",
    "_smtp_methods",
    "_timeout_cb",
    "_timeout_duration",
    "_timeout_handle",
    "_tls_handshake_okay",
    "_tls_protocol",
    "_writer",
)
# and of asyncio's StreamReader: the commands pipelined after the final dot
# are put back in front of its buffer.
STREAM_READER_PRIVATE = ("_buffer",)


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with our replies, our AUTH and our error handling."""

    def __init__(
        self,
        handler: RelayHandler,
        *,
        implicit_tls: bool,
        hostname: str,
        loop: asyncio.AbstractEventLoop,
        data_size_limit: int | None = DATA_SIZE_DEFAULT,
        ident: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        timeout: float = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        introspection: Introspection | None = None,
    ) -> None:
        # The lines of an EHLO or HELO answer being written: None otherwise.
        self._held: list[bytes] | None = None
        self._data_started = False
        self._implicit_tls = implicit_tls
        self._refusal: str | None = None  # a connection over the caps: 421, then close
        self._in_data = False
        self._data_deadline: asyncio.TimerHandle | None = None
        self._rate_check: asyncio.TimerHandle | None = None
        self._data_started_at = 0.0
        self._data_bytes = 0
        self._idle_deadline = 0.0
        aiosmtpd_init(
            self,
            handler,
            introspection or Introspection.of(type(self), type(handler)),
            loop=loop,
            data_size_limit=data_size_limit,
            hostname=hostname,
            ident=ident,
            tls_context=tls_context,
            require_starttls=require_starttls,
            timeout=timeout,
            auth_required=auth_required,
            auth_require_tls=auth_require_tls,
        )
        self.relay = handler
        handler.server = self  # so that a graceful stop reaches sessions not yet greeted

    # Replies ---------------------------------------------------------------
    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and self._held is not None:
            # A line of the EHLO/HELO answer, as aiosmtpd writes it.
            self._held.append(status.encode("ascii") + b"\r\n")
            return
        if isinstance(status, str):
            # Every refusal quotes an id (issue 15): those the relay built
            # quote theirs already; aiosmtpd's own (503, 535...) get the
            # transaction's or the session's here.
            localized = with_id_line(ascii_text(localize(status)), self.relay.ref)
            if localized.startswith(DATA_GO_AHEAD_CODE):
                self._data_started = True
            await super().push(localized)
            if localized.startswith(CLOSING_CODE) and self.transport is not None:
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
            busy = with_id(BUSY, self.relay.ref)  # the transaction's id, before it ends
            await self.relay.reset_transaction("busy")
            self._set_rset_state()  # type: ignore[no-untyped-call]  # a new MAIL may come
            await self.push(str(busy))
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
        await self.push(DATA_GO_AHEAD)
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
            await self.push(str(LINE_TOO_LONG))
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        if receiver.state is DataState.TOO_MUCH:
            await self.push(str(MESSAGE_TOO_BIG))
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
            self._close_with(DATA_TOO_SLOW, "data_rate")
            return
        self._rate_check = self.loop.call_later(max(1.0, elapsed / 4), self._check_rate)

    def _data_overdue(self) -> None:
        self._data_deadline = None
        self._close_with(DATA_TIMEOUT, "data")

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
        self.close_with(reply)

    def close_with(self, reply: Reply) -> None:
        """The reply (a 421), unasked, then the connection closed."""
        if self.transport is None or self.transport.is_closing():
            return
        line = ascii_text(str(with_id(reply, self.relay.ref)))
        self._writer.write(line.encode("ascii") + b"\r\n")
        self.transport.close()

    @property
    def receiving_data(self) -> bool:
        """Between DATA's 354 and the final dot."""
        return self._in_data

    def refuse_commands(self, reply: Reply) -> None:
        """From now on every command but QUIT is answered `reply` (a 421),
        and the connection closed (a graceful stop: the command being run
        finishes first)."""

        async def refuse(_: str | None) -> None:
            await self.push(str(reply))  # a 421: push() closes the connection

        methods = self._smtp_methods
        self._smtp_methods = {
            name: method if name == "QUIT" else refuse for name, method in methods.items()
        }

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting(super().smtp_EHLO, hostname, "ehlo")

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting(super().smtp_HELO, hostname, "helo")

    async def _greeting(
        self, command: Callable[[str], Awaitable[None]], hostname: str, why: str
    ) -> None:
        # RFC 2034 §3: no enhanced codes in the EHLO/HELO answer (keywords);
        # and a new greeting ends any transaction (RFC 5321 §4.1.4). Its lines
        # go out in one write, not one each (a system call and a segment per
        # line: a third of them for a client that connects for each message).
        self._held = []
        try:
            await command(hostname)
        finally:
            held, self._held = self._held, None
            if held:
                self._writer.write(b"".join(held))
        await self._writer.drain()
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
        refused, arg = await self._dsn_apart(arg, "MAIL")
        if not refused:
            await super().smtp_MAIL(without_trailing_dot(arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._control_characters(arg, "RCPT"):
            return
        refused, arg = await self._dsn_apart(arg, "RCPT")
        if not refused:
            await super().smtp_RCPT(without_trailing_dot(arg))

    async def _control_characters(self, arg: str | None, command: str) -> bool:
        """A MAIL or RCPT argument with a control character, refused (True)
        before aiosmtpd parses it: its parser passes some on in the address and
        takes others for white space between parameters."""
        verdict = argument_syntax(arg) if arg else None
        if verdict is None or arg is None:
            return False
        return await self._refuse(arg, command, verdict)

    async def _dsn_apart(self, arg: str | None, command: str) -> tuple[bool, str | None]:
        """The DSN parameters (RFC 3461) taken out of the argument for the
        handler (relay.command_dsn), which passes them on to the upstream;
        whether a bad one was refused, and the argument left for aiosmtpd."""
        self.relay.command_dsn = ()
        if not arg:
            return False, arg
        found = (
            dsn_apart(arg, "FROM:", MAIL_KEYWORDS, self._getaddr)
            if command == "MAIL"
            else dsn_apart(arg, "TO:", RCPT_KEYWORDS, self._getaddr)
        )
        if isinstance(found, Verdict):
            return await self._refuse(arg, command, found), arg
        arg, self.relay.command_dsn = found
        return False, arg

    async def _refuse(self, arg: str, command: str, verdict: Verdict) -> bool:
        """A MAIL or RCPT argument refused (True) before aiosmtpd takes it.
        aiosmtpd's own checks of the session's state come first, as they
        would (False: a RCPT before MAIL is left to its 503)."""
        if verdict.reply is None:
            return False
        if await self.check_helo_needed() or await self.check_auth_needed(command):
            return True
        if command == "RCPT" and not (self.envelope and self.envelope.mail_from):
            return False  # aiosmtpd's 503: no MAIL yet
        what = "sender" if command == "MAIL" else "recipient"
        self.relay.decision(command.lower(), verdict, **{what: printable(_path_of(arg))})
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
                message=str(AUTH_RESPONSE_TOO_LONG),
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
