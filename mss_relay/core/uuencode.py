"""Files uuencoded in a text part: mail clients (Thunderbird, Outlook
Express and their heirs) show a « begin 644 name » block of a text body as an
attachment, which the MIME structure does not show. Each is checked like an
attachment: its name, its first bytes, and what it holds if it is a zip.

Only a line that starts with « begin », a mode in octal and a name counts
(« begin the treatment » is prose); « begin-base64 » (uuencode -m) too.
Pure: bytes in, files out.
"""

from __future__ import annotations

import binascii
import re

from mss_relay.core.filetypes import ArchiveMember, contents

# Mode: 1 to 4 octal digits, as uuencode writes them and clients look for.
_BEGIN = re.compile(rb"^begin(-base64)?[ \t]+[0-7]{1,4}[ \t]+([^\r\n]*[^\s])[ \t]*\r?$", re.M)
_END = re.compile(rb"^(?:end|====)[ \t]*\r?$", re.M)


def _uu_line(line: bytes) -> bytes | None:
    """One line, decoded as lenient decoders do: what its length character
    announces, trailing garbage ignored. None at a line that is not uuencode."""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        pass
    size = (line[0] - 32) & 63 if line else 0
    try:
        return binascii.a2b_uu(line[: 1 + (size + 2) // 3 * 4])
    except binascii.Error:
        return None


def _decode(block: bytes, base64: bool) -> bytes:
    if base64:
        try:
            return binascii.a2b_base64(block)  # skips what is not of the alphabet
        except binascii.Error:
            return b""
    out = []
    for line in block.split(b"\n"):
        decoded = _uu_line(line.rstrip(b"\r"))
        if decoded is None:
            break
        out.append(decoded)
    return b"".join(out)


def uuencoded_files(text: bytes) -> tuple[ArchiveMember, ...]:
    """The files a client would find uuencoded in this decoded text."""
    if b"begin" not in text:  # the common case: one search, no regex
        return ()
    found: list[ArchiveMember] = []
    for begin in _BEGIN.finditer(text):
        start = begin.end() + 1
        end = _END.search(text, start)
        block = text[start : end.start() if end else len(text)]
        name = begin.group(2).decode("utf-8", "replace")
        found.extend(contents(name, _decode(block, begin.group(1) is not None)))
    return tuple(found)
