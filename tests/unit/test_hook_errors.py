"""An unexpected error in the MAIL or RCPT hook leaves the SMTP session in step
(issue 13, item 7): the relay's transaction and aiosmtpd's envelope agree
afterwards, so the session goes on without RSET. Driven in process, the
errors planted in a policy and an upstream of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from structlog.testing import CapturingLogger

from mss_relay.core.facts import RcptFacts
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.verdict import Verdict
from mss_relay.delivery.outcome import StepResult, accepted
from mss_relay.front.session import RelayContext
from mss_relay.front.smtp import RelayHandler, RelaySMTP

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


class BrittlePolicy(Policy):
    """A policy with a bug for one recipient."""

    def evaluate_rcpt(self, facts: RcptFacts) -> Verdict:
        if facts.recipient.startswith("policy-bug@"):
            raise RuntimeError("a bug in a rule")
        return super().evaluate_rcpt(facts)


class BrittleUpstream:
    """An upstream session that records, with a bug for one recipient."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def session(self) -> BrittleUpstream:
        return self

    has_dsn = False

    async def mail(
        self, sender: str, options: Sequence[str], dsn: Sequence[str] = ()
    ) -> StepResult:
        self.steps.append(f"MAIL {sender}")
        return accepted("250 2.1.0 OK")

    async def rcpt(self, recipient: str, dsn: Sequence[str] = ()) -> StepResult:
        if recipient.startswith("upstream-bug@"):
            raise RuntimeError("a bug on the way upstream")
        self.steps.append(f"RCPT {recipient}")
        return accepted("250 2.1.5 OK")

    async def data(self, content: bytes, txid: str) -> StepResult:
        self.steps.append("DATA")
        return accepted("250 2.0.0 queued")

    async def reset(self) -> None:
        self.steps.append("RSET")

    async def close(self) -> None:
        pass


async def _reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await reader.readline()).decode("ascii").rstrip("\r\n")
        if line[3:4] != "-":
            return line


async def _dialog(
    lines: list[bytes], activity: Any = None
) -> tuple[list[str], BrittleUpstream, CapturingLogger]:
    upstream, logger = BrittleUpstream(), CapturingLogger()
    bals = BalDirectory([Bal(SENDER, BalType.NOMINATIVE, frozenset({"jdupont"}))])
    context = RelayContext(
        policy=BrittlePolicy(Limits(1 << 20, 1 << 20, 5), bals),
        upstream=upstream,  # type: ignore[arg-type]
        users={},
        hostname="relay.test",
        role="submission",
        log=structlog.wrap_logger(
            logger, processors=[], wrapper_class=structlog.make_filtering_bound_logger(0)
        ),
        clock=lambda: datetime.now(UTC),
        trusted_clients={"127.0.0.1": "jdupont"},  # taken for jdupont, without AUTH
        activity=activity,
    )
    loop = asyncio.get_running_loop()

    def factory() -> RelaySMTP:
        handler = RelayHandler(context)
        return RelaySMTP(handler, implicit_tls=False, hostname="relay.test", loop=loop)

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = [await _reply(reader)]
        for line in lines:
            writer.write(line + b"\r\n")
            await writer.drain()
            replies.append(await _reply(reader))
        writer.close()
    finally:
        server.close()
    return replies[1:], upstream, logger


def _run(lines: list[bytes]) -> tuple[list[str], BrittleUpstream, list[Any]]:
    replies, upstream, logger = asyncio.run(asyncio.wait_for(_dialog(lines), 30))
    errors = [c for c in logger.calls if c.kwargs.get("event") == "internal_error"]
    return [r[:9] for r in replies], upstream, errors


MESSAGE = f"From: {SENDER}\r\nTo: {DEST}\r\nSubject: essai\r\n\r\ncorps\r\n.".encode()


def test_an_error_in_the_rcpt_policy_refuses_that_recipient_only() -> None:
    replies, upstream, errors = _run(
        [
            b"EHLO client.test",
            f"MAIL FROM:<{SENDER}>".encode(),
            b"RCPT TO:<policy-bug@chu-b.mssante.fr>",
            f"RCPT TO:<{DEST}>".encode(),
            b"DATA",
            MESSAGE,
        ]
    )
    assert replies[1:] == ["250 2.1.0", "451 4.3.0", "250 2.1.5", "354 End d", "250 2.0.0"]
    assert upstream.steps[:3] == [f"MAIL {SENDER}", f"RCPT {DEST}", "DATA"]
    assert len(errors) == 1


def test_an_error_on_the_way_upstream_ends_the_transaction_on_both_sides() -> None:
    # The upstream's state is unknown after it: the transaction ends, and
    # aiosmtpd says so too (503 at the next RCPT, not 451 until RSET).
    replies, upstream, errors = _run(
        [
            b"EHLO client.test",
            f"MAIL FROM:<{SENDER}>".encode(),
            b"RCPT TO:<upstream-bug@chu-b.mssante.fr>",
            f"RCPT TO:<{DEST}>".encode(),
            f"MAIL FROM:<{SENDER}>".encode(),
            f"RCPT TO:<{DEST}>".encode(),
            b"DATA",
            MESSAGE,
        ]
    )
    assert replies[1:] == [
        "250 2.1.0",
        "451 4.3.0",
        "503 5.5.1",
        "250 2.1.0",
        "250 2.1.5",
        "354 End d",
        "250 2.0.0",
    ]
    assert upstream.steps[-3:] == [f"MAIL {SENDER}", f"RCPT {DEST}", "DATA"]
    assert len(errors) == 1
