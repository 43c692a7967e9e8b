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
import socket
import struct
from typing import Any

from mss_relay.config import AntivirusConfig
from mss_relay.core.facts import ScanResult

# Bytes per INSTREAM chunk: few enough writes for a large message, and far
# below any StreamMaxLength (clamd counts the data, not the chunks).
CHUNK = 256 * 1024
_LENGTH = struct.Struct("!L")  # each chunk's length: 4 bytes, network order
# clamd's longest replies are a path and a signature name: a reply longer
# than this is not one.
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
        except OSError as error:
            return ScanResult(error=f"clamd at {settings.clamd}: {_describe(error)}")
        return parse_reply(reply)

    async def _exchange(self, message: bytes) -> bytes:
        """The command, the chunks and the empty chunk, then the reply up to
        its NUL. Plain non-blocking sockets (the loop's sock_* calls) rather
        than streams: past its StreamMaxLength clamd answers, then closes
        while we are still sending; our send fails (EPIPE), and a stream
        would then drop the reply already received, where a socket still
        reads it."""
        loop = asyncio.get_running_loop()
        sock = await self._connect(loop)
        with sock:
            # Each chunk is sent once the socket took the one before: the
            # socket's buffer, not the relay's memory, holds what clamd has
            # not read yet (a view of the message, never a copy).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await loop.sock_sendall(sock, b"zINSTREAM\0")
                view = memoryview(message)
                for start in range(0, len(view), CHUNK):
                    chunk = view[start : start + CHUNK]
                    await loop.sock_sendall(sock, _LENGTH.pack(len(chunk)))
                    await loop.sock_sendall(sock, chunk)
                await loop.sock_sendall(sock, _LENGTH.pack(0))
            reply = b""
            while b"\0" not in reply:
                if len(reply) > _REPLY_LIMIT:
                    raise ClamdError("reply too long")
                data = await loop.sock_recv(sock, _REPLY_LIMIT)
                if not data:
                    raise ClamdError("connection closed before its reply")
                reply += data
            return reply.partition(b"\0")[0]

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """A connected non-blocking socket: the Unix one, or the first TCP
        address of the host (resolved by the loop, off its thread) that answers."""
        address = self.settings.clamd
        targets: list[tuple[int, str | tuple[Any, ...]]]
        if address.path is not None:
            targets = [(socket.AF_UNIX, str(address.path))]
        else:
            found = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            targets = [(family, sockaddr) for family, _, _, _, sockaddr in found]
        failure: OSError = ClamdError("no address")
        for family, target in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, target)
            except OSError as error:
                sock.close()
                failure = error
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise failure


class ClamdError(OSError):
    """clamd's side of the exchange went wrong (no reply, not a reply)."""


def parse_reply(raw: bytes) -> ScanResult:
    """« stream: OK », « stream: NAME FOUND », or anything else, an error
    (« INSTREAM size limit exceeded. ERROR », « ... ERROR »)."""
    text = raw.rstrip(b"\0").decode("ascii", "replace").strip()
    if text.startswith("stream: "):  # the name INSTREAM gives what it scans
        body = text.removeprefix("stream: ")
        if body == "OK":
            return ScanResult()
        if body.endswith(" FOUND"):
            return ScanResult(found=body.removesuffix(" FOUND").strip() or "?")
    shown = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)[:200]
    return ScanResult(error=f"clamd: {shown or 'empty reply'}")


def _describe(error: OSError) -> str:
    """Why (an OSError's strerror, our own text, or its type), never a byte
    of the message."""
    if isinstance(error, ClamdError):
        return str(error)
    return error.strerror or type(error).__name__
