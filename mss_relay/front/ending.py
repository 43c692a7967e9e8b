"""The end of a message as both fronts share it: the CPU work on it (on the
loop when small, in a worker thread when large or unbounded), what the log
keeps of it, the message looked at (Examined), and the pipeline's answer
(Ending), which the SMTP listener and the milter only render.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from mss_relay.core.authentication import DkimCheck
from mss_relay.core.facts import MessageFacts
from mss_relay.core.message import MessageInfo, inspect_message, scanned
from mss_relay.core.reply import Reply
from mss_relay.core.verdict import Verdict

# Messages above this size are inspected and signed in a worker thread, off the
# event loop; those below, on the loop. Below it the work is short (inspection
# about 0.3 ms, an RSA-2048 signature about 1.2 ms at 2 KB, 1.8 ms at 256 KiB),
# and the hop to a thread cost more than it saved: with the signature in a
# thread for every 2 KB message, a 2-worker relay used 4.1 ms of CPU per message
# against 3.3 ms on the loop, as the loop and the thread contended for the GIL.
INLINE_LIMIT = 256 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def message_work(
    size: int, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """CPU work on a message of `size` bytes: done at once up to INLINE_LIMIT,
    in a worker thread above it."""
    if size > INLINE_LIMIT:
        return await asyncio.to_thread(work, *args, **kwargs)
    return work(*args, **kwargs)


def _inspect(content: bytes, wire: bytes) -> tuple[MessageInfo, Fingerprint]:
    """The CPU work on a received message, in one worker thread when it is large."""
    return inspect_message(wire, crlf=True), Fingerprint.of(content)


async def inspect(content: bytes, wire: bytes) -> tuple[MessageInfo, Fingerprint]:
    """_inspect(), with no unbounded work on the event loop: a small message
    core.mime's scan reads (a bounded cost, MAX_MIME_DEPTH levels at most) is
    inspected at once; one it cannot read, or one with an archive or a TNEF
    part, goes to a worker thread, whatever its size, since the parser's cost
    grows with nesting depth times lines (a 118 KiB message nested 1,000
    deep held the loop about 1 s, every other session waiting)."""
    if len(content) > INLINE_LIMIT:
        return await asyncio.to_thread(_inspect, content, wire)
    info = scanned(wire, crlf=True)
    if info is None:
        # The scan again (bounded, as above) where it reads the message but
        # met an archive; the standard library's parser where it cannot.
        info = await asyncio.to_thread(inspect_message, wire, crlf=True)
    return info, Fingerprint.of(content)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the log keeps of a message: its size and SHA-256, never its text."""

    size: int
    sha256: str

    @classmethod
    def of(cls, content: bytes) -> Fingerprint:
        return cls(len(content), hashlib.sha256(content).hexdigest())


@dataclass(frozen=True)
class Examined:
    """A received message, looked at: its facts and the policy's verdict."""

    facts: MessageFacts
    verdict: Verdict
    dkim: tuple[DkimCheck, ...] | None
    # The message with CRLF line ends only, as it is inspected, signed and sent.
    wire: bytes
    # Of the message as received (the log's size and sha256).
    fingerprint: Fingerprint

    @property
    def info(self) -> MessageInfo:
        return self.facts.info

    @property
    def dkim_log(self) -> list[str] | None:
        return [str(c) for c in self.dkim] if self.dkim is not None else None


@dataclass(frozen=True, slots=True)
class Ending:
    """The end of a message, decided (ClientSession.finish): the refusal to
    answer, or what the front applies to the message in its protocol."""

    examined: Examined  # its facts and fingerprint (no longer its wire form)
    verdict: Verdict  # a refusal (its reply set), or the acceptance
    # Header fields to add (Message-ID, Date: a submission server's, RFC 6409 §8).
    added: tuple[tuple[str, str], ...] = ()
    # Our Authentication-Results (incoming side), on top; those claiming to
    # be ours from before us are removed.
    results: bytes | None = None
    # The DKIM-Signature fields, on top of every other field (they cover them).
    signatures: bytes = b""
    message_id: str | None = None
    # The message to send as it is, signatures on top (SENDS_MESSAGE fronts).
    message: bytes = b""
    # The log's dkim= field: the checks (incoming), the keys, or "unsigned".
    dkim: list[str] | str | None = None

    @property
    def refusal(self) -> Reply | None:
        return self.verdict.reply
