"""Files hidden where the MIME structure does not show them: uuencoded in a
text part, in a TNEF winmail.dat, after base64 padding (issue 13, defect 10)."""

from __future__ import annotations

import base64
import binascii
import struct

# MS-OXTNEF §2.1.3: attribute ids, (type << 16) | id, little-endian on the wire.
ATT_TNEF_VERSION = 0x00089006
ATT_MESSAGE_CLASS = 0x00078008
ATT_OEM_CODEPAGE = 0x00069007
ATT_ATTACH_REND_DATA = 0x00069002
ATT_ATTACH_TITLE = 0x00018010
ATT_ATTACH_DATA = 0x0006800F
ATT_ATTACHMENT = 0x00069005
PR_ATTACH_LONG_FILENAME = 0x3707
PR_ATTACH_DATA_OBJ = 0x3701


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def multipart(head: bytes, *parts: bytes) -> bytes:
    """A multipart/mixed message of these parts (each its headers and body)."""
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts)
    return head + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + body + b"--B--\r\n"


def attachment(name: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    """A part: this file, in base64, named in both places."""
    return (
        f'Content-Type: {ctype}; name="{name}"\r\n'
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + b64(data)


def uuencode(name: str, data: bytes, *, mode: str = "644") -> bytes:
    """What `uuencode` prints: a begin line, lines of 45 bytes, a backquote, end."""
    lines = [f"begin {mode} {name}".encode()]
    lines += [binascii.b2a_uu(data[i : i + 45]).rstrip(b"\n") for i in range(0, len(data), 45)]
    return b"\r\n".join([*lines, b"`", b"end"]) + b"\r\n"


# attAttachRendData: a file attachment, no position, no picture.
_REND = struct.pack("<HIIHHH", 1, 0xFFFFFFFF, 0, 0, 0, 1)


def _attribute(level: int, attribute: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BII", level, attribute, len(data)) + data + struct.pack("<H", checksum)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _long_filename(name: str) -> bytes:
    """An attAttachment property list holding PR_ATTACH_LONG_FILENAME (PT_UNICODE)."""
    value = (name + "\0").encode("utf-16-le")
    prop = struct.pack("<HHII", 0x001F, PR_ATTACH_LONG_FILENAME, 1, len(value)) + _padded(value)
    return struct.pack("<I", 1) + prop


def _embedded_object() -> bytes:
    """PR_ATTACH_DATA_OBJ (PT_OBJECT): an attached message, itself TNEF-encoded."""
    value = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46" + tnef({})
    prop = struct.pack("<HHII", 0x000D, PR_ATTACH_DATA_OBJ, 1, len(value)) + _padded(value)
    return struct.pack("<I", 1) + prop


def tnef(
    attachments: dict[str, bytes],
    *,
    long_names: dict[str, str] | None = None,
    embedded: bool = False,
) -> bytes:
    """A winmail.dat as Outlook writes one: a message, then per attachment its
    rendering, title (8.3 name), data and (optionally) its long file name."""
    out = struct.pack("<IH", 0x223E9F78, 0x0001)
    out += _attribute(1, ATT_TNEF_VERSION, struct.pack("<I", 0x00010000))
    out += _attribute(1, ATT_OEM_CODEPAGE, struct.pack("<II", 1252, 0))
    out += _attribute(1, ATT_MESSAGE_CLASS, b"IPM.Microsoft Mail.Note\0")
    for title, data in attachments.items():
        out += _attribute(2, ATT_ATTACH_REND_DATA, _REND)
        out += _attribute(2, ATT_ATTACH_TITLE, title.encode("cp1252") + b"\0")
        out += _attribute(2, ATT_ATTACH_DATA, data)
        long_name = (long_names or {}).get(title)
        if long_name is not None:
            out += _attribute(2, ATT_ATTACHMENT, _long_filename(long_name))
    if embedded:
        out += _attribute(2, ATT_ATTACH_REND_DATA, _REND)
        out += _attribute(2, ATT_ATTACHMENT, _embedded_object())
    return out
