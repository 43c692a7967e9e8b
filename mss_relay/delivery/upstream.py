"""The upstream transaction, mirrored step by step (a before-queue proxy).

The SMTP front end opens the upstream session when it accepts the client's
MAIL, passes each recipient the policy accepts at RCPT time, and answers 250 to
the client's DATA only after the upstream's own 250. Nothing is queued here, so
nothing accepted can be lost here: until the upstream has the message, the
client has it.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Protocol

import aiosmtplib

from mss_relay.config import UpstreamConfig
from mss_relay.core.reply import UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE
from mss_relay.delivery.outcome import StepResult, accepted, from_upstream_reply, unreachable

# MAIL parameters worth passing on when the upstream supports the extension.
_PASSED_MAIL_PARAMS = {"BODY": "8BITMIME", "SIZE": "SIZE"}


class UpstreamSession(Protocol):
    async def mail(self, sender: str, options: Sequence[str]) -> StepResult: ...
    async def rcpt(self, recipient: str) -> StepResult: ...
    async def data(self, content: bytes, txid: str) -> StepResult: ...
    async def reset(self) -> None: ...
    async def close(self) -> None: ...


class Upstream(Protocol):
    def session(self) -> UpstreamSession: ...


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


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
        if config.tls != "none":
            from mss_relay.tls import upstream_context

            self.tls_context = upstream_context(config)

    def session(self) -> SmtpUpstreamSession:
        return SmtpUpstreamSession(self)


class SmtpUpstreamSession:
    """One upstream connection per client connection, reused across its messages."""

    def __init__(self, upstream: SmtpUpstream) -> None:
        self._up = upstream
        self._smtp: aiosmtplib.SMTP | None = None
        self._in_transaction = False

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        config = self._up.config
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            local_hostname=self._up.local_hostname,
            timeout=config.timeout,
            use_tls=config.tls == "implicit",
            start_tls=config.tls == "starttls",
            tls_context=self._up.tls_context,
            username=config.username,
            password=self._up.password,
        )
        try:
            await smtp.connect()
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

    async def mail(self, sender: str, options: Sequence[str]) -> StepResult:
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
        try:
            if self._in_transaction:
                await smtp.rset()
            response = await smtp.mail(sender, options=passed)
        except (aiosmtplib.SMTPException, OSError) as error:
            return self._after_error(error)
        self._in_transaction = True
        return accepted(f"{response.code} {response.message}")

    async def rcpt(self, recipient: str) -> StepResult:
        if self._smtp is None:
            return unreachable(UPSTREAM_UNAVAILABLE, "no upstream session")
        try:
            response = await self._smtp.rcpt(recipient)
        except (aiosmtplib.SMTPException, OSError) as error:
            return self._after_error(error)
        return accepted(f"{response.code} {response.message}")

    async def data(self, content: bytes, txid: str) -> StepResult:
        if self._smtp is None:
            return unreachable(UPSTREAM_UNAVAILABLE, "no upstream session")
        try:
            response = await self._smtp.data(content)
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
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
