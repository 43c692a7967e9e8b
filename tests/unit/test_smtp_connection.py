"""What a connection costs the SMTP listener, without a change on the wire.

RelaySMTP's set-up of a connection (front/smtp_setup.py: aiosmtpd's
SMTP.__init__ with the introspection done once per listener) leaves the
protocol as aiosmtpd's own __init__ would: the same attributes, with the same
values, for every combination of arguments the listeners pass. The EHLO
answer goes out in one write."""

from __future__ import annotations

import asyncio
import ssl
import types
import warnings
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from aiosmtpd.smtp import SMTP
from structlog.testing import CapturingLogger

from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.policy import Limits, Policy
from mss_relay.front.session import RelayContext
from mss_relay.front.smtp import RelayHandler, RelaySMTP
from mss_relay.front.smtp_setup import Introspection

# Set by RelaySMTP.__init__ for itself, not by aiosmtpd.
OWN = {
    "_held",
    "_data_started",
    "_implicit_tls",
    "_refusal",
    "_in_data",
    "_data_deadline",
    "_rate_check",
    "_data_started_at",
    "_data_bytes",
    "_idle_deadline",
    "relay",
}

LISTENERS = [  # implicit_tls, starttls, auth_required, as app._listen passes them
    (False, False, True),  # submission without TLS (a DPI on loopback)
    (False, True, True),  # submission with STARTTLS
    (True, False, True),  # submission with implicit TLS
    (False, True, False),  # inbound with STARTTLS
]


def _context() -> RelayContext:
    return RelayContext(
        policy=Policy(Limits(1 << 20, 1 << 20, 5), BalDirectory([])),
        upstream=None,
        users={},
        hostname="relay.test",
        role="submission",
        log=structlog.wrap_logger(CapturingLogger(), processors=[]),
        clock=lambda: datetime.now(UTC),
    )


def _same(ours: Any, theirs: Any, mine: object, reference: object) -> bool:
    """Equal, a bound method of each protocol (or handler) taken as the same."""
    if isinstance(ours, types.MethodType) and isinstance(theirs, types.MethodType):
        return ours.__func__ is theirs.__func__ and (
            ours.__self__ is theirs.__self__
            or (ours.__self__, theirs.__self__) == (mine, reference)
        )
    if isinstance(ours, Mapping) and isinstance(theirs, dict):  # smtp_setup.Bound, too
        return list(ours) == list(theirs) and all(
            _same(ours[k], theirs[k], mine, reference) for k in ours
        )
    if isinstance(ours, tuple) and isinstance(theirs, tuple):  # _AuthMechAttr
        return len(ours) == len(theirs) and all(
            _same(a, b, mine, reference) for a, b in zip(ours, theirs, strict=True)
        )
    if isinstance(ours, weakref.ref) and isinstance(theirs, weakref.ref):
        return _same(ours(), theirs(), mine, reference)
    if isinstance(ours, asyncio.StreamReader) and isinstance(theirs, asyncio.StreamReader):
        return vars(ours).keys() == vars(theirs).keys() and ours._limit == theirs._limit  # type: ignore[attr-defined]
    if isinstance(ours, asyncio.Future) and isinstance(theirs, asyncio.Future):
        return ours.done() == theirs.done()
    return bool(ours == theirs)


@pytest.mark.parametrize(("implicit", "starttls", "auth_required"), LISTENERS)
def test_set_up_as_aiosmtpd_does(implicit: bool, starttls: bool, auth_required: bool) -> None:
    async def both() -> tuple[RelaySMTP, RelaySMTP]:
        loop = asyncio.get_running_loop()
        handler = RelayHandler(_context())
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if starttls else None
        arguments: dict[str, Any] = {
            "data_size_limit": 1 << 20,
            "hostname": "relay.test",
            "ident": "ESMTP mss-relay",
            "tls_context": tls,
            "require_starttls": starttls,
            "auth_required": auth_required,
            "auth_require_tls": not implicit,
            "timeout": 300,
            "loop": loop,
        }
        ours = RelaySMTP(
            handler,
            implicit_tls=implicit,
            introspection=Introspection.of(RelaySMTP, RelayHandler),
            **arguments,
        )
        reference = RelaySMTP.__new__(RelaySMTP)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # aiosmtpd's « AUTH without TLS »
            SMTP.__init__(reference, handler, **arguments)
        return ours, reference

    ours, reference = asyncio.run(both())
    mine, theirs = vars(ours), vars(reference)
    assert set(theirs) - set(mine) == set(), "aiosmtpd sets these, RelaySMTP does not"
    assert set(mine) - set(theirs) == OWN
    differ = [n for n in theirs if not _same(mine[n], theirs[n], ours, reference)]
    assert differ == []


def test_introspection_as_aiosmtpd_finds_it() -> None:
    """The names looked up once are those aiosmtpd finds on the instances."""
    found = Introspection.of(RelaySMTP, RelayHandler)
    assert ("MAIL", "smtp_MAIL") in found.commands
    assert {m for m, _, _ in found.mechanisms} == {"LOGIN", "PLAIN"}
    assert {hook for hook, _ in found.hooks} >= {"EHLO", "MAIL", "RCPT", "DATA", "QUIT"}
    assert found.ehlo_hook == "new"


def test_ehlo_answer_in_one_write() -> None:
    """The same lines as aiosmtpd sends, one write (a system call, a segment)
    for all of them rather than one each."""
    writes: list[bytes] = []

    class Counted(RelaySMTP):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            write = transport.write  # type: ignore[attr-defined]

            def counted(data: bytes) -> None:
                writes.append(bytes(data))
                write(data)

            transport.write = counted  # type: ignore[attr-defined]
            super().connection_made(transport)

    async def dialog() -> list[bytes]:
        loop = asyncio.get_running_loop()
        context = _context()

        def factory() -> RelaySMTP:
            handler = RelayHandler(context)
            return Counted(handler, implicit_tls=False, hostname="relay.test", loop=loop)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()  # 220
            del writes[:]
            writer.write(b"EHLO client.test\r\n")
            lines = [await reader.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(await reader.readline())
            writer.close()
            return lines
        finally:
            server.close()

    lines = asyncio.run(dialog())
    assert lines == [
        b"250-relay.test\r\n",
        b"250-SIZE 33554432\r\n",
        b"250-8BITMIME\r\n",
        b"250-ENHANCEDSTATUSCODES\r\n",
        b"250-DSN\r\n",  # issue 16
        b"250 HELP\r\n",
    ]
    assert writes == [b"".join(lines)]
