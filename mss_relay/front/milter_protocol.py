"""The milter protocol, version 6, filter side: framing, parsing, replies.

Sans I/O: bytes in, commands out; replies as bytes. The front end that turns
commands into policy facts lives elsewhere. Every packet is a 4-byte
big-endian length, then a one-byte command and its data (the length counts
both). Strings are NUL-terminated. References: Sendmail's libmilter
(include/libmilter/mfdef.h) and Postfix's MILTER_README.

Hostile or broken input raises MilterProtocolError (the session is then
ended); nothing else escapes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

VERSION = 6
# Postfix sends body chunks of at most 64 KiB and short strings otherwise; a
# frame claiming more is broken or hostile.
MAX_FRAME = 1 << 20

# Commands, MTA -> filter (mfdef.h SMFIC_*)
ABORT = "A"
BODY = "B"
CONNECT = "C"
MACRO = "D"
BODYEOB = "E"
HELO = "H"
QUIT_NC = "K"
HEADER = "L"
MAIL = "M"
EOH = "N"
OPTNEG = "O"
QUIT = "Q"
RCPT = "R"
DATA = "T"
UNKNOWN = "U"
COMMANDS = frozenset("ABCDEHKLMNOQRTU")

# Replies, filter -> MTA (SMFIR_*)
R_CONTINUE = b"c"
R_ACCEPT = b"a"
R_REJECT = b"r"
R_TEMPFAIL = b"t"
R_REPLYCODE = b"y"
R_ADDHEADER = b"h"
R_INSHEADER = b"i"
R_CHGHEADER = b"m"
R_OPTNEG = b"O"

# Actions the filter may take (SMFIF_*)
ACTION_ADDHDRS = 0x01
ACTION_CHGHDRS = 0x10
# Protocol steps (SMFIP_*)
SKIP_UNKNOWN = 0x100  # SMFIP_NOUNKNOWN: no UNKNOWN command, please
NO_REPLY_UNKNOWN = 0x20000
HEADER_LEADING_SPACE = 0x100000  # SMFIP_HDR_LEADSPC: header values as sent


class MilterProtocolError(Exception):
    """The peer broke the protocol; the session cannot go on."""


@dataclass(frozen=True, slots=True)
class Packet:
    command: str
    data: bytes


@dataclass(slots=True)
class Decoder:
    """Cuts a byte stream into packets; keeps what is incomplete for later."""

    max_frame: int = MAX_FRAME
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets = []
        while len(self._buffer) >= 4:
            (length,) = struct.unpack_from(">I", self._buffer)
            if length == 0 or length > self.max_frame:
                raise MilterProtocolError(f"frame length {length} out of bounds")
            if len(self._buffer) < 4 + length:
                break
            command = chr(self._buffer[4])
            if command not in COMMANDS:
                raise MilterProtocolError(f"unknown command {command!r}")
            packets.append(Packet(command, bytes(self._buffer[5 : 4 + length])))
            del self._buffer[: 4 + length]
        return packets

    @property
    def pending(self) -> int:
        return len(self._buffer)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def strings(data: bytes, count: int | None = None) -> list[str]:
    """NUL-terminated strings; exactly `count` of them when given."""
    if not data.endswith(b"\0"):
        raise MilterProtocolError("string not NUL-terminated")
    parts = [_text(p) for p in data[:-1].split(b"\0")]
    if count is not None and len(parts) != count:
        raise MilterProtocolError(f"expected {count} strings, got {len(parts)}")
    return parts


@dataclass(frozen=True, slots=True)
class Negotiation:
    version: int
    actions: int
    protocol: int


def parse_optneg(data: bytes) -> Negotiation:
    if len(data) != 12:
        raise MilterProtocolError(f"option negotiation of {len(data)} bytes")
    return Negotiation(*struct.unpack(">III", data))


def parse_macros(data: bytes) -> tuple[str, dict[str, str]]:
    """The command the macros are for, and their names (braces removed) and values."""
    if not data:
        raise MilterProtocolError("empty macro packet")
    command = chr(data[0])
    rest = data[1:]
    if not rest:
        return command, {}
    items = strings(rest)
    if len(items) % 2:
        raise MilterProtocolError("macro name without value")
    return command, {items[i].strip("{}"): items[i + 1] for i in range(0, len(items), 2)}


@dataclass(frozen=True, slots=True)
class Connection:
    hostname: str
    family: str  # "4", "6", "L" (unix), "U" (unknown)
    port: int
    address: str


def parse_connect(data: bytes) -> Connection:
    end = data.find(b"\0")
    if end < 0 or len(data) < end + 2:
        raise MilterProtocolError("malformed connect")
    hostname = _text(data[:end])
    family = chr(data[end + 1])
    if family == "U":
        return Connection(hostname, family, 0, "")
    rest = data[end + 2 :]
    if len(rest) < 3:
        raise MilterProtocolError("malformed connect address")
    (port,) = struct.unpack(">H", rest[:2])
    (address,) = strings(rest[2:], 1)
    return Connection(hostname, family, port, address)


def parse_header(data: bytes) -> tuple[str, str]:
    name, value = strings(data, 2)
    return name, value


def parse_address(data: bytes) -> tuple[str, list[str]]:
    """MAIL and RCPT: the address without its angle brackets, and ESMTP arguments."""
    items = strings(data)
    if not items:
        raise MilterProtocolError("no address")
    address = items[0].strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address, items[1:]


# Replies -------------------------------------------------------------------


def frame(code: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload) + 1) + code + payload


def optneg(version: int, actions: int, protocol: int) -> bytes:
    return frame(R_OPTNEG, struct.pack(">III", version, actions, protocol))


def replycode(reply: str) -> bytes:
    """A full SMTP reply (« 550 5.7.1 text ») for the MTA to send. A « % » in
    the text would be taken by the MTA for a format directive: doubled."""
    if reply[:1] not in ("4", "5"):
        raise ValueError("a milter reply code is 4xx or 5xx")
    return frame(R_REPLYCODE, reply.replace("%", "%%").encode("ascii", "replace") + b"\0")


def add_header(name: str, value: str) -> bytes:
    return frame(R_ADDHEADER, name.encode("ascii") + b"\0" + value.encode("utf-8") + b"\0")


def insert_header(index: int, name: str, value: str) -> bytes:
    payload = struct.pack(">I", index) + name.encode("ascii") + b"\0"
    return frame(R_INSHEADER, payload + value.encode("utf-8") + b"\0")


CONTINUE = frame(R_CONTINUE)
ACCEPT = frame(R_ACCEPT)
REJECT = frame(R_REJECT)
TEMPFAIL = frame(R_TEMPFAIL)


def change_header(index: int, name: str, value: str) -> bytes:
    """Replace the index-th (from 1) field of that name; an empty value deletes it."""
    payload = struct.pack(">I", index) + name.encode("ascii") + b"\0"
    return frame(R_CHGHEADER, payload + value.encode("utf-8") + b"\0")
