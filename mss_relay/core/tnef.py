"""TNEF (winmail.dat, application/ms-tnef; MS-OXTNEF): Outlook's wrapping of
a message's attachments into one file, which Outlook (and Thunderbird's and
webmails' TNEF readers) unwrap and show as attachments. Each is checked like
one: every name it gives (the 8.3 title and the MAPI long file name, display
name, file name, extension), its first bytes, and what it holds if it is a zip.

Read within bounds, never trusting a length: a TNEF that cannot be read to its
end, or that holds an attached message or OLE object (whose contents would
need a reader of their own), cannot be checked and gives a member with a
problem (refused: fail closed). Pure: bytes in, files out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from mss_relay.core.filetypes import HEAD_SIZE, ArchiveMember, contents

SIGNATURE = b"\x78\x9f\x3e\x22"  # 0x223E9F78, little-endian
_MESSAGE, _ATTACHMENT = 1, 2  # attribute levels
# Attribute ids (the low 16 bits; the high ones give the type).
_REND_DATA = 0x9002  # attAttachRendData: a new attachment starts
_TITLE = 0x8010  # attAttachTitle
_DATA = 0x800F  # attAttachData
_PROPERTIES = 0x9005  # attAttachment: the attachment's MAPI properties
_MAX_ATTRIBUTES = 10_000
# MAPI properties naming an attachment: PR_DISPLAY_NAME, PR_ATTACH_EXTENSION,
# PR_ATTACH_FILENAME, PR_ATTACH_LONG_FILENAME, PR_ATTACH_LONG_PATHNAME.
_NAMES = frozenset({0x3001, 0x3703, 0x3704, 0x3707, 0x370D})
_ATTACH_DATA = 0x3701  # PR_ATTACH_DATA_BIN (PT_BINARY) or _OBJ (PT_OBJECT)
_STRING8, _UNICODE, _BINARY, _OBJECT = 0x001E, 0x001F, 0x0102, 0x000D
# Fixed-size property types and their size on the wire (padded to 4).
_FIXED = {
    0x0001: 4, 0x0002: 4, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
    0x000A: 4, 0x000B: 4, 0x0014: 8, 0x0040: 8, 0x0048: 16,
}  # fmt: skip
_VARIABLE = frozenset({_STRING8, _UNICODE, _BINARY, _OBJECT})


class _Unreadable(Exception):
    """Why the TNEF cannot be read (internal: becomes a member's problem)."""


@dataclass
class _Attachment:
    names: list[str] = field(default_factory=list)
    data: bytes = b""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise _Unreadable("truncated")
        self.at += size
        return self.data[self.at - size : self.at]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def padded(self, size: int) -> bytes:
        value = self.take(size)
        self.take(-size % 4)
        return value


def is_tnef(head: bytes) -> bool:
    return head.startswith(SIGNATURE)


def _string(value: bytes, unicode: bool) -> str:
    text = value.decode("utf-16-le", "replace") if unicode else value.decode("cp1252", "replace")
    return text.split("\0", 1)[0].strip()


def _properties(block: bytes, attachment: _Attachment) -> None:
    """An attAttachment's MAPI property list (MS-OXTNEF §2.1.3.4)."""
    reader = _Reader(block)
    count = reader.u32()
    if count > len(block) // 4:
        raise _Unreadable("property count beyond the data")
    for _ in range(count):
        kind = reader.u16()
        ident = reader.u16()
        if ident >= 0x8000:  # a named property: its GUID, then an id or a name
            reader.take(16)
            if reader.u32() == 0:
                reader.take(4)
            else:
                reader.padded(reader.u32())
        base, multiple = kind & 0x0FFF, kind & 0x1000
        values = reader.u32() if multiple or base in _VARIABLE else 1
        if values > len(block):
            raise _Unreadable("value count beyond the data")
        if base in _FIXED:
            reader.take(values * _FIXED[base])
            continue
        if base not in _VARIABLE:
            raise _Unreadable("unknown property type")
        for _ in range(values):
            value = reader.padded(reader.u32())
            if ident == _ATTACH_DATA and base == _OBJECT:
                raise _Unreadable("an attached message or OLE object")
            if ident == _ATTACH_DATA and base == _BINARY and not attachment.data:
                attachment.data = value
            elif ident in _NAMES and base in (_STRING8, _UNICODE):
                name = _string(value, base == _UNICODE)
                if name and name not in attachment.names:
                    attachment.names.append(name)


def _attachments(data: bytes) -> list[_Attachment]:
    reader = _Reader(data)
    if reader.take(4) != SIGNATURE:
        raise _Unreadable("no TNEF signature")
    reader.take(2)  # the legacy key
    found: list[_Attachment] = []
    for _ in range(_MAX_ATTRIBUTES):
        if reader.at == len(data):
            return found
        level = reader.take(1)[0]
        ident = reader.u32() & 0xFFFF
        value = reader.take(reader.u32())
        reader.take(2)  # checksum: not ours to enforce
        if level == _MESSAGE:
            continue
        if level != _ATTACHMENT:
            raise _Unreadable("unknown attribute level")
        if ident == _REND_DATA or not found:
            found.append(_Attachment())
        attachment = found[-1]
        if ident == _TITLE:
            title = _string(value, False)
            if title and title not in attachment.names:
                attachment.names.append(title)
        elif ident == _DATA:
            attachment.data = value
        elif ident == _PROPERTIES:
            _properties(value, attachment)
    raise _Unreadable(f"more than {_MAX_ATTRIBUTES} attributes")


def tnef_files(data: bytes) -> tuple[ArchiveMember, ...]:
    """The files a TNEF reader would show, as members: each name an
    attachment gives, with its first bytes (and a zip's members); or one
    member with the problem when it cannot be read."""
    try:
        attachments = _attachments(data)
    except _Unreadable as why:
        return (ArchiveMember("", b"", problem=f"TNEF that cannot be read: {why}"),)
    files: list[ArchiveMember] = []
    for attachment in attachments:
        first, *others = attachment.names or [""]
        files.extend(contents(first, attachment.data))
        files.extend(ArchiveMember(name, attachment.data[:HEAD_SIZE]) for name in others)
    return tuple(files)
