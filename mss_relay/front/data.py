"""The DATA phase, received by chunks rather than line by line.

aiosmtpd reads DATA one line at a time in Python (some 30 MB/s). This reads
whatever the socket has, finds the end of data and undoes dot-stuffing on
whole buffers (bytes.find and bytes.replace run in C), with aiosmtpd's rules
unchanged (RFC 5321 §4.5.2):

- the end of data is only CRLF.CRLF (a bare LF or CR never ends a message:
  SMTP smuggling), a first line of "." included;
- a line starting with "." loses that dot;
- more than the size limit, or a line longer than the line limit, is refused
  once the end of data is in (RFC 5321 §4.2.5), its bytes dropped as they come.

Sans I/O: feed() bytes, read the outcome.
"""

from __future__ import annotations

import re
from enum import Enum

END = b"\r\n.\r\n"
# aiosmtpd's line_length_limit: 1001 octets with the CRLF (RFC 5321 §4.5.3.1.6
# says 1000; aiosmtpd has always let one more through).
LINE_LIMIT = 1001


class DataState(Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the limit
    TOO_MUCH = "too_much"  # more bytes than the size limit


class DataReceiver:
    """One DATA phase. feed() returns None until the end of data, then the
    bytes that came after it (the next commands, pipelined)."""

    def __init__(self, size_limit: int | None, line_limit: int = LINE_LIMIT) -> None:
        self.size_limit = size_limit
        self.state = DataState.NOMINAL
        self.received = 0  # octets of data so far (at the end: exactly aiosmtpd's count)
        # A CRLF in front: the first line is then like every other, "\r\n."
        # finds its dot and "\r\n.\r\n" an empty message.
        self._buffer = bytearray(b"\r\n")
        self._base = -2  # octets of data before _buffer[0] (the CRLF is not data)
        self._searched = 0  # where the next look for the end of data starts
        self._line_start = 1  # the LF before the line being received
        # A line over the limit: that many octets after an LF without the next
        # one (the CR of CRLF counts in aiosmtpd's 1001). Anchored on the LF,
        # the search looks at each octet about twice.
        self._long_line = re.compile(rb"\n[^\n]{%d}" % line_limit)
        self._content: bytes | None = None

    def feed(self, chunk: bytes) -> bytes | None:
        buffer = self._buffer
        buffer += chunk
        end = buffer.find(END, self._searched)
        stop = len(buffer) if end < 0 else end + 2
        if self.state is DataState.NOMINAL:
            self._check_lines(stop)
        # Before the end, up to 3 octets may be the end of data itself.
        self.received = self._base + (stop if end >= 0 else max(stop - 3, 2))
        if self.state is DataState.NOMINAL and self.size_limit and self.received > self.size_limit:
            self.state = DataState.TOO_MUCH
        if end < 0:
            self._searched = max(0, len(buffer) - len(END) + 1)
            if self.state is not DataState.NOMINAL:
                self._drop()
            return None
        rest = bytes(buffer[end + len(END) :])
        if self.state is DataState.NOMINAL:
            del buffer[end + 2 :]
            self._content = _unstuffed(buffer)
        self._buffer = bytearray()
        return rest

    @property
    def content(self) -> bytes:
        """The message, dot-stuffing undone (only after a NOMINAL end)."""
        if self._content is None:
            raise RuntimeError("no complete message")
        return self._content

    def _check_lines(self, stop: int) -> None:
        if self._long_line.search(self._buffer, self._line_start, stop):
            self.state = DataState.TOO_LONG
            return
        last = self._buffer.rfind(b"\n", self._line_start, stop)
        if last >= 0:
            self._line_start = last

    def _drop(self) -> None:
        """Refused already: keep only what the end of data could be made of."""
        buffer = self._buffer
        extra = len(buffer) - (len(END) - 1)
        if extra > 0:
            del buffer[:extra]
            self._base += extra
            self._searched = 0


def _unstuffed(buffer: bytearray) -> bytes:
    """The message after the leading CRLF, each line's leading dot removed
    (RFC 5321 §4.5.2). One copy when no line starts with a dot."""
    if buffer.find(b"\r\n.") < 0:
        return bytes(memoryview(buffer)[2:])
    return bytes(memoryview(buffer.replace(b"\r\n.", b"\r\n"))[2:])
