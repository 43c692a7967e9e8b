"""The upstream transaction, mirrored step by step (a before-queue proxy).

The SMTP front end opens the upstream session when it accepts the client's
MAIL, passes each recipient the policy accepts at RCPT time, and answers 250 to
the client's DATA only after the upstream's own 250. Nothing is queued here, so
nothing accepted can be lost here: until the upstream has the message, the
client has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from typing import Protocol

import aiosmtplib

from mss_relay.config import UpstreamConfig, UpstreamTls
from mss_relay.core.addresses import PLAIN_MAILBOX
from mss_relay.core.reply import UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE
from mss_relay.delivery.outcome import StepResult, accepted, from_upstream_reply, unreachable

# MAIL parameters worth passing on when the upstream supports the extension.
_PASSED_MAIL_PARAMS = {"BODY": "8BITMIME", "SIZE": "SIZE"}

# What aiosmtplib's quote_address() gives back as <address> unchanged: sent
# without its email.utils.parseaddr() (some 3 % of the event loop per message);
# any other path goes through aiosmtplib.
_PLAIN_PATH = re.compile(f"(?:{PLAIN_MAILBOX})?")  # or the null sender


def plain_path(address: str) -> bytes | None:
    """<address> as aiosmtplib would send it, where that needs no parsing."""
    if _PLAIN_PATH.fullmatch(address) is None:
        return None
    return b"<" + address.encode("ascii") + b">"


async def _mail(smtp: aiosmtplib.SMTP, sender: str, options: list[str]) -> aiosmtplib.SMTPResponse:
    """smtp.mail(), through execute_command() when the path needs no parsing."""
    path = plain_path(sender)
    if path is None or smtp.is_ehlo_or_helo_needed:
        return await smtp.mail(sender, options=options)
    params = [option.encode("ascii") for option in options]
    response = await smtp.execute_command(b"MAIL", b"FROM:" + path, *params)
    if response.code != 250:  # as smtp.mail() raises
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
    return response


async def _rcpt(
    smtp: aiosmtplib.SMTP, recipient: str, options: list[str]
) -> aiosmtplib.SMTPResponse:
    """smtp.rcpt(), through execute_command() when the path needs no parsing."""
    path = plain_path(recipient)
    if path is None or smtp.is_ehlo_or_helo_needed:
        return await smtp.rcpt(recipient, options=options)
    params = [option.encode("ascii") for option in options]
    response = await smtp.execute_command(b"RCPT", b"TO:" + path, *params)
    if response.code not in (250, 251):  # as smtp.rcpt() raises
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
    return response


class UpstreamSession(Protocol):
    async def mail(
        self, sender: str, options: Sequence[str], dsn: Sequence[str] = ()
    ) -> StepResult:
        """options: aiosmtpd's (upper-cased) MAIL parameters, of which BODY
        and SIZE are passed on; dsn: the DSN ones as the client wrote them,
        passed on when the upstream advertises DSN (RFC 3461), else dropped."""
        ...

    async def rcpt(self, recipient: str, dsn: Sequence[str] = ()) -> StepResult: ...

    @property
    def has_dsn(self) -> bool:
        """The upstream connection advertises DSN: the DSN parameters go on."""
        ...

    async def data(self, content: bytes, txid: str) -> StepResult:
        """content: the message with CRLF line ends only (crlf_lines()): it
        is sent as it is, and a bare LF must never reach the upstream."""
        ...

    async def reset(self) -> None: ...
    async def close(self) -> None: ...


class Upstream(Protocol):
    def session(self) -> UpstreamSession: ...
    async def close_idle(self) -> None: ...


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _stale(error: Exception) -> bool:
    """The failure of a connection that was closed while it waited unused:
    found closed (or closing: 421). A timeout is not one: it is the
    upstream's answer (451 4.4.2), and trying the next pooled connection
    would wait once more for each (8 pooled: 8 timeouts for one MAIL)."""
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return error.code == 421
    if isinstance(error, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        return False
    return isinstance(error, ConnectionError)  # SMTPServerDisconnected is one


def abort(smtp: aiosmtplib.SMTP) -> None:
    """Close the connection with a reset (RST), not close()'s orderly FIN:
    an upstream that wakes up after we gave up then fails to answer, rather
    than completing a message whose client was told 451 (and will send it
    again). SO_LINGER 0 makes the kernel reset; abort() drops what is unsent."""
    transport = smtp.transport
    if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
        sock = transport.get_extra_info("socket")  # passed through by a TLS transport
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    smtp.close()


# aiosmtplib 5's private members of SMTPProtocol that send_data() and
# _write_message() use (pyproject.toml pins aiosmtplib below 6):
# tests/unit/test_private_members.py checks that each is there.
AIOSMTPLIB_PRIVATE = ("_command_lock", "_drain_helper", "_response_pending")

# Below this size, the final dot is joined to the message (one write, one copy).
_JOIN_LIMIT = 1 << 16
_WRITE_SLICE = 1 << 20


def wire_data(message: bytes) -> bytes:
    """The message as DATA sends it (RFC 5321 §4.5.2): dot-stuffed, ending in
    CRLF; the final dot is not included. The message comes with CRLF line ends
    already (Upstream.data's contract). What aiosmtplib does with two regexes
    over the whole message (135 ms for 5 MB), done with bytes.replace."""
    if b"\r\n." in message:
        message = message.replace(b"\r\n.", b"\r\n..")
    if message.startswith(b"."):
        message = b"." + message
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


async def send_data(smtp: aiosmtplib.SMTP, message: bytes) -> aiosmtplib.SMTPResponse:
    """DATA, as aiosmtplib.SMTP.data() sends it (under its command lock, a
    reply expected from the first byte written), with the message prepared by
    wire_data() and large messages written by slices."""
    protocol = smtp.protocol
    lock = protocol._command_lock if protocol is not None else None
    if protocol is None or lock is None or not smtp.is_connected:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    data = wire_data(message)
    try:
        async with lock:
            protocol._response_pending = True
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=smtp.timeout)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            # An upstream may answer before the end (552 once over its size
            # limit) and close: its reply is kept, and is the outcome.
            protocol._response_pending = True
            # The reply read next says why the writing failed, or that the
            # connection is lost.
            with contextlib.suppress(aiosmtplib.SMTPServerDisconnected, ConnectionError):
                await _write_message(smtp, protocol, data)
            response = await protocol.read_response(timeout=smtp.timeout)
    except TimeoutError:  # aiosmtplib's, or the drain's
        # Given up on a silent upstream, perhaps after the final dot: reset.
        abort(smtp)
        raise
    except aiosmtplib.SMTPServerDisconnected:
        smtp.close()
        raise
    if response.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def _write_message(
    smtp: aiosmtplib.SMTP, protocol: aiosmtplib.protocol.SMTPProtocol, data: bytes
) -> None:
    if len(data) < _JOIN_LIMIT:
        protocol.write(data + b".\r\n")  # one segment for a small message
        return
    # By slices, each written once the transport has sent the last: asyncio
    # would otherwise copy all it cannot send at once into its buffer, a
    # second copy of the message.
    view = memoryview(data)
    for offset in range(0, len(data), _WRITE_SLICE):
        protocol.write(view[offset : offset + _WRITE_SLICE])  # type: ignore[arg-type]
        # An upstream that stops reading: TimeoutError, as for a reply.
        await asyncio.wait_for(protocol._drain_helper(), smtp.timeout)
    protocol.write(b".\r\n")


def _failure(error: Exception) -> StepResult:
    if isinstance(error, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return unreachable(UPSTREAM_TIMEOUT, _describe(error))
    if isinstance(error, aiosmtplib.SMTPResponseException) and not isinstance(
        error, aiosmtplib.SMTPConnectResponseError
    ):
        return from_upstream_reply(error.code, error.message)
    return unreachable(UPSTREAM_UNAVAILABLE, _describe(error))


class SmtpUpstream:
    def __init__(self, config: UpstreamConfig, local_hostname: str, password: str | None) -> None:
        self.config = config
        self.local_hostname = local_hostname
        self.password = password
        self.tls_context: ssl.SSLContext | None = None
        if config.tls != UpstreamTls.NONE:
            from mss_relay.tls import upstream_context

            self.tls_context = upstream_context(config)

        # Connections between two transactions, newest last, with the time
        # they were put back (a pool of this upstream, not of the process).
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    def session(self) -> SmtpUpstreamSession:
        return SmtpUpstreamSession(self)

    def take(self) -> aiosmtplib.SMTP | None:
        """An idle connection still open and not too old, if any."""
        now = time.monotonic()
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and now - since < self.config.pool_idle:
                return smtp
            smtp.close()
        return None

    def give_back(self, smtp: aiosmtplib.SMTP) -> bool:
        """Keep a connection between two transactions; False when full."""
        now = time.monotonic()
        fresh = []
        for kept, since in self._idle:
            if kept.is_connected and now - since < self.config.pool_idle:
                fresh.append((kept, since))
            else:
                kept.close()
        self._idle = fresh
        if not smtp.is_connected or len(self._idle) >= self.config.pool_size:
            return False
        self._idle.append((smtp, now))
        return True

    async def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            try:
                await asyncio.wait_for(smtp.quit(), timeout=5)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()


class SmtpUpstreamSession:
    """An upstream connection for a client connection, reused across its
    messages, taken from and given back to the upstream's pool of idle ones."""

    def __init__(self, upstream: SmtpUpstream) -> None:
        self._up = upstream
        self._smtp: aiosmtplib.SMTP | None = None
        self._in_transaction = False
        self._reused = False  # the connection came from the pool

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        pooled = self._up.take()
        if pooled is not None:
            self._smtp, self._reused = pooled, True
            return pooled
        self._reused = False
        config = self._up.config
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            local_hostname=self._up.local_hostname,
            timeout=config.timeout,
            use_tls=config.tls == UpstreamTls.IMPLICIT,
            start_tls=config.tls == UpstreamTls.STARTTLS,
            tls_context=self._up.tls_context,
            username=config.username,
            password=self._up.password,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                # aiosmtplib greets at the first command; what MAIL carries
                # (SIZE, BODY, the DSN parameters) depends on the extensions
                # the upstream advertises, so greet before MAIL is built.
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None
        self._in_transaction = False

    @property
    def has_dsn(self) -> bool:
        # aiosmtplib's mail() and rcpt() send the options given without
        # looking at the extensions: the check is ours.
        return self._smtp is not None and self._smtp.supports_extension("DSN")

    async def mail(
        self, sender: str, options: Sequence[str], dsn: Sequence[str] = ()
    ) -> StepResult:
        try:
            smtp = await self._connect()
        except (aiosmtplib.SMTPException, OSError) as error:
            self._drop()
            # Failing to connect, greet, start TLS or log in to our own upstream is
            # never the client's fault: always temporary.
            return unreachable(UPSTREAM_UNAVAILABLE, _describe(error))
        passed = [
            option
            for option in options
            if option.partition("=")[0] in _PASSED_MAIL_PARAMS
            and smtp.supports_extension(_PASSED_MAIL_PARAMS[option.partition("=")[0]])
        ]
        if dsn and smtp.supports_extension("DSN"):
            passed.extend(dsn)
        try:
            if self._in_transaction:
                await smtp.rset()
            response = await _mail(smtp, sender, passed)
        except (aiosmtplib.SMTPException, OSError) as error:
            if self._reused and _stale(error):
                # An idle connection the upstream closed meanwhile: once more
                # on a new one (nothing was sent on it but this MAIL).
                self._drop()
                return await self.mail(sender, options, dsn)
            return self._after_error(error)
        self._reused = False
        self._in_transaction = True
        return accepted(f"{response.code} {response.message}")

    async def rcpt(self, recipient: str, dsn: Sequence[str] = ()) -> StepResult:
        if self._smtp is None:
            return unreachable(UPSTREAM_UNAVAILABLE, "no upstream session")
        options = list(dsn) if dsn and self.has_dsn else []
        try:
            response = await _rcpt(self._smtp, recipient, options)
        except (aiosmtplib.SMTPException, OSError) as error:
            return self._after_error(error)
        return accepted(f"{response.code} {response.message}")

    async def data(self, content: bytes, txid: str) -> StepResult:
        if self._smtp is None:
            return unreachable(UPSTREAM_UNAVAILABLE, "no upstream session")
        try:
            response = await send_data(self._smtp, content)
        except (aiosmtplib.SMTPException, OSError) as error:
            return self._after_error(error)
        finally:
            self._in_transaction = False
        return accepted(f"{response.code} {response.message}")

    def _after_error(self, error: Exception) -> StepResult:
        result = _failure(error)
        if not isinstance(error, aiosmtplib.SMTPResponseException) or error.code == 421:
            # Timed out or disconnected: the session state is unknown, start afresh.
            self._drop()
        return result

    async def reset(self) -> None:
        if self._smtp is None or not self._in_transaction:
            return
        try:
            await self._smtp.rset()
            self._in_transaction = False
        except (aiosmtplib.SMTPException, OSError):
            self._drop()

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        if not self._in_transaction and self._up.give_back(smtp):
            return
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
