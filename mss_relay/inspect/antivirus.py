"""clamd's INSTREAM command (clamd(8), « COMMANDS »), in asyncio: the message
goes to the structure's own clamd, over its Unix socket or TCP, and comes
back as a ScanResult for the core's rule (core/rules/antivirus.py).

The few lines of the protocol rather than a client library: aioclamd 1.1.0
speaks TCP only (asyncio.open_connection), whereas Debian's clamd listens on
/run/clamav/clamd.ctl; and its timeout is per call, where the relay needs one
deadline over connecting, sending and waiting for the verdict. The relay then
has one dependency fewer to follow.

What is sent: the whole message, once, as the recipient will receive it
(CRLF line ends). clamd decodes it itself: with ScanMail (on by default) it
parses the MIME structure, nested multiparts, base64 and quoted-printable
parts, and with ScanArchive (on by default) it opens the zips and other
archives found in them, within its own limits (MaxRecursion, MaxFiles,
MaxScanSize). One stream per message costs one connection and one pass over
the bytes, where one per decoded attachment would cost one per part and
leave the message's own text (and any part the relay's parser reads
differently from a mail client) unscanned.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from mss_relay.config import AntivirusConfig
from mss_relay.core.facts import ScanResult

# Bytes per INSTREAM chunk: few enough writes for a large message, and far
# below any StreamMaxLength (clamd counts the data, not the chunks).
CHUNK = 256 * 1024
_LENGTH = struct.Struct("!L")  # each chunk's length: 4 bytes, network order
# clamd's longest replies are a path and a signature name: a reply longer
# than this is not one (StreamReader's own limit is 64 KiB).
_REPLY_LIMIT = 4096


class Antivirus:
    """A client of one clamd, as antivirus: configures it; stateless (a
    connection per message, which clamd serves in one of its threads)."""

    def __init__(self, settings: AntivirusConfig) -> None:
        self.settings = settings

    async def scan(self, message: bytes) -> ScanResult:
        """clamd's verdict on message; never raises: an unreachable clamd,
        one slower than antivirus.timeout, or an ERROR reply is an error."""
        settings = self.settings
        if len(message) > settings.max_size:
            # check-config makes max_size cover what the limits admit; the
            # CRLF form of a message of bare LFs may still exceed it.
            return ScanResult(error=f"{len(message)} bytes, over antivirus.max_size")
        try:
            async with asyncio.timeout(settings.timeout):
                reply = await self._exchange(message)
        except TimeoutError:
            return ScanResult(error=f"no verdict within {settings.timeout:g}s")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            return ScanResult(error=f"clamd at {settings.clamd}: {_describe(error)}")
        return parse_reply(reply)

    async def _exchange(self, message: bytes) -> bytes:
        address = self.settings.clamd
        if address.path is not None:
            reader, writer = await asyncio.open_unix_connection(address.path, limit=_REPLY_LIMIT)
        else:
            reader, writer = await asyncio.open_connection(
                address.host, address.port, limit=_REPLY_LIMIT
            )
        try:
            # clamd closes the connection past its StreamMaxLength, having
            # said why: its reply is read below, if it is there.
            with contextlib.suppress(ConnectionError):
                await _send(writer, message)
            return await reader.readuntil(b"\0")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _send(writer: asyncio.StreamWriter, message: bytes) -> None:
    """The command, the chunks (each drained: the socket's buffer, not the
    relay's memory, holds what clamd has not read yet) and the empty chunk."""
    writer.write(b"zINSTREAM\0")
    view = memoryview(message)
    for start in range(0, len(view), CHUNK):
        chunk = view[start : start + CHUNK]
        writer.write(_LENGTH.pack(len(chunk)))
        writer.write(chunk)
        await writer.drain()
    writer.write(_LENGTH.pack(0))
    await writer.drain()


def parse_reply(raw: bytes) -> ScanResult:
    """« stream: OK », « stream: NAME FOUND », or anything else, an error
    (« INSTREAM size limit exceeded. ERROR », « ... ERROR »)."""
    text = raw.rstrip(b"\0").decode("ascii", "replace").strip()
    body = text.removeprefix("stream: ")
    if body == "OK":
        return ScanResult()
    if body.endswith(" FOUND") and body != text:
        return ScanResult(found=body.removesuffix(" FOUND").strip() or "?")
    shown = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)[:200]
    return ScanResult(error=f"clamd: {shown or 'empty reply'}")


def _describe(error: BaseException) -> str:
    """An OSError's reason (never a message's byte): its strerror, or its type."""
    if isinstance(error, asyncio.IncompleteReadError):
        return "connection closed before its reply"
    if isinstance(error, asyncio.LimitOverrunError):
        return "reply too long"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
