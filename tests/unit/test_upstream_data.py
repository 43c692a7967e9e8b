"""DATA to the upstream as the relay sends it (instead of aiosmtplib's data()),
against a real SMTP server on loopback written for the purpose."""

from __future__ import annotations

import asyncio
import contextlib

import aiosmtplib
import pytest

from mss_relay.delivery.upstream import send_data, wire_data


def test_wire_data_stuffs_dots_and_ends_lines() -> None:
    assert wire_data(b".first\r\nx\r\n.\r\n..two") == b"..first\r\nx\r\n..\r\n...two\r\n"
    assert wire_data(b"") == b"\r\n"
    assert wire_data(b"a\r\n") == b"a\r\n"


async def _exchange(early_reply_after: int | None, message: bytes) -> tuple[object, bytes]:
    """Send `message` to a server that either takes it all (and returns what
    it got) or answers 552 and closes after `early_reply_after` octets."""
    received = bytearray()
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await converse(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test\r\n")
        while line := await reader.readline():
            if not line.startswith(b"DATA"):
                writer.write(b"250 ok\r\n")
                continue
            writer.write(b"354 go\r\n")
            while not received.endswith(b"\r\n.\r\n"):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received.extend(chunk)
                if early_reply_after is not None and len(received) >= early_reply_after:
                    writer.write(b"552 5.3.4 too big\r\n")
                    await writer.drain()
                    return
            writer.write(b"250 2.0.0 queued\r\n")

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    try:
        await smtp.connect()
        await smtp.mail("a@ch.mssante.fr")
        await smtp.rcpt("b@chu.mssante.fr")
        try:
            outcome: object = await send_data(smtp, message)
        except aiosmtplib.SMTPException as error:
            outcome = error
    finally:
        smtp.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()
    return outcome, bytes(received)


BIG = b"Subject: x\r\n\r\n" + b".ligne\r\n" * 600_000  # 4.8 MB: written by slices


@pytest.mark.parametrize("message", [b"Subject: x\r\n\r\n.petit\r\n", BIG])
def test_the_message_arrives_dot_stuffed_and_whole(message: bytes) -> None:
    outcome, received = asyncio.run(_exchange(None, message))
    assert isinstance(outcome, aiosmtplib.SMTPResponse) and outcome.code == 250
    assert received == wire_data(message) + b".\r\n"


def test_an_upstream_that_refuses_before_the_end_is_heard() -> None:
    """552 after 200 KB and the connection closed: the refusal is the outcome
    (permanent), not a lost connection (which the client would retry)."""
    outcome, _ = asyncio.run(_exchange(200_000, BIG))
    assert isinstance(outcome, aiosmtplib.SMTPDataError) and outcome.code == 552
