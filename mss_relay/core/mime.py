"""The MIME tree of a message found on its bytes, without the line-by-line
parse of the standard library's email package (about 40 ms per MB of base64).

Each part's header block is still read by the standard library (headers only,
so its rules for what a header line is hold), but the bodies are located with
bytes.find: boundaries are searched for, never lines iterated in Python, and
nothing is decoded here. This path only answers where the message is plain:
wherever the standard library's parser would do something particular (a
defect, a message/* part, a digest, a boundary that is a prefix of another,
boundary lines that follow each other, bare CR or LF), it answers None and
the caller parses with the standard library. A property test holds both paths
to the same result. Nesting beyond MAX_MIME_DEPTH is answered here, as soon as
the scan reaches it: each level costs a few bytes.find over its range, so a
message nested a thousand deep costs MAX_MIME_DEPTH levels of that, where the
standard library's parser would read every level (about 1 s of CPU for
1,000 levels: it tests each line against every enclosing boundary).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

# Like Postfix's mime_nesting_limit: no real message comes near it.
MAX_MIME_DEPTH = 100
_IDENTITY = ("7bit", "8bit", "binary")
_ONCE = ("Content-Type", "Content-Disposition", "Content-Transfer-Encoding")
# RFC 2046 §5.1.1 bchars, at most 70 of them.
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{1,70}")


@dataclass(frozen=True, slots=True)
class Payload:
    """A part's body: a range of the message's bytes, copied only on demand."""

    data: bytes
    start: int = 0
    end: int = -1
    crlf: bool = False  # known to hold no bare CR or LF

    def __post_init__(self) -> None:
        if self.end < 0:
            object.__setattr__(self, "end", len(self.data))

    def __len__(self) -> int:
        return self.end - self.start

    def count(self, sub: bytes) -> int:
        return self.data.count(sub, self.start, self.end)

    def __contains__(self, sub: bytes) -> bool:
        return self.data.find(sub, self.start, self.end) >= 0

    def head(self, size: int) -> bytes:
        return self.data[self.start : min(self.end, self.start + size)]

    def tail(self, size: int) -> bytes:
        return self.data[max(self.start, self.end - size) : self.end]

    def whole(self) -> bytes:
        if self.start == 0 and self.end == len(self.data):
            return self.data
        return self.data[self.start : self.end]


@dataclass(frozen=True, slots=True)
class TooDeep:
    """The scan went past MAX_MIME_DEPTH: the message cannot be checked."""

    depth: int


@dataclass(frozen=True, slots=True)
class Tree:
    """The root's header fields and the leaves (header fields, body), in order."""

    root: Message
    leaves: tuple[tuple[Message, Payload], ...]


def plain_crlf(raw: bytes) -> bool:
    return raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")


def scan(raw: bytes, *, crlf: bool = False) -> Tree | TooDeep | None:
    """The MIME tree, or None where the standard library's parser must decide,
    or TooDeep as soon as a part lies deeper than MAX_MIME_DEPTH (the levels
    above it are all the scan reads: depth first, the deep branch is reached
    before its siblings are looked at).
    crlf: the caller knows the message has no bare CR or LF (crlf_lines())."""
    if not (crlf or plain_crlf(raw)):
        return None
    top = _headers(raw, 0, len(raw))
    if top is None:
        return None
    leaves: list[tuple[Message, Payload]] = []
    # (headers, body start, body end, depth, boundaries of the enclosing multiparts)
    stack: list[tuple[Message, int, int, int, tuple[bytes, ...]]] = [(*top, len(raw), 0, ())]
    while stack:
        msg, start, end, depth, outer = stack.pop()
        if depth > MAX_MIME_DEPTH:
            return TooDeep(depth)
        maintype = msg.get_content_maintype()
        if maintype == "message":
            return None  # parsed as a message in the message: the standard library's way
        if maintype != "multipart":
            leaves.append((msg, Payload(raw, start, end, crlf=True)))
            continue
        cte = str(msg.get("Content-Transfer-Encoding", "8bit")).strip().lower()
        boundary = msg.get_boundary()
        if msg.get_content_subtype() == "digest" or cte not in _IDENTITY or not boundary:
            return None
        if not _BCHARS.fullmatch(boundary):
            # RFC 2046's characters only: a folded value keeps its CRLF, which
            # bytes.find would match across two lines and the stdlib never.
            return None
        mark = boundary.encode("ascii")
        if any(b.startswith(mark) or mark.startswith(b) for b in outer):
            return None
        ranges = _parts(raw, start, end, mark)
        if ranges is None:
            return None
        children = []
        for part_start, part_end in ranges:
            child = _headers(raw, part_start, part_end)
            if child is None:
                return None
            children.append((*child, part_end, depth + 1, (*outer, mark)))
        stack.extend(reversed(children))
    return Tree(top[0], tuple(leaves))


# A header line as the standard library's parser takes one (feedparser's
# headerRE and compat32's header_source_parse), for a name of one character
# or more; lines of any other form go to the parser itself.
_FIELD = re.compile(r"[\041-\071\073-\176]+:")


def _headers(raw: bytes, start: int, end: int) -> tuple[Message, int] | None:
    """A part's header fields (a defect of any kind: None) and where its body starts."""
    if raw.startswith(b"\r\n", start, end):
        block, body = b"", start + 2
    else:
        blank = raw.find(b"\r\n\r\n", start, end)
        block, body = (raw[start:end], end) if blank < 0 else (raw[start : blank + 2], blank + 4)
    msg = _plain_headers(block)
    if msg is None:
        msg = BytesHeaderParser(policy=compat32).parsebytes(block)
    if msg.defects or msg.get_payload():
        # A line the parser would not take for a header: its body starts there
        # (a last "From " line is given back to the body, without a defect).
        return None
    if any(len(msg.get_all(name, ())) > 1 for name in _ONCE):
        return None  # two of what says what the part is: the standard library's path refuses it
    return msg, body


def _plain_headers(block: bytes) -> Message | None:
    """The header fields of a block of plain "Name: value" lines and their
    continuations (CRLF only), as BytesHeaderParser with compat32 gives them:
    the value after the colon and its leading blanks, continuation lines
    joined with their CRLF. None for anything else (the parser decides).
    The FeedParser takes some 45-50 µs for a block of 3 to 7 lines, this
    7-18 µs."""
    msg = Message(policy=compat32)
    lines = block.decode("ascii", "surrogateescape").split("\r\n")
    if lines[-1] == "":
        lines.pop()
    name = ""
    value: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not name:
                return None  # a first line that continues nothing: a defect
            value.append(line)
            continue
        field = _FIELD.match(line)
        if field is None:
            return None
        if name:
            msg.set_raw(name, "\r\n".join(value).rstrip("\r\n"))
        name = line[: field.end() - 1]
        value = [line[field.end() :].lstrip(" \t")]
    if name:
        msg.set_raw(name, "\r\n".join(value).rstrip("\r\n"))
    msg.set_payload("")
    return msg


def _parts(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]] | None:
    """The ranges of a multipart's parts: from after a delimiter line to the
    CRLF before the next (RFC 2046 §5.1.1: that CRLF belongs to the
    delimiter). None unless there is a first delimiter, a close delimiter,
    and no two delimiter lines in a row (the standard library skips those)."""
    mark = b"--" + boundary
    lines: list[tuple[int, int]] = []  # (start of the delimiter line, start of the next line)
    at = start
    while True:
        found = raw.find(mark, at, end)
        if found < 0:
            return None  # no close delimiter
        at = found + len(mark)
        if found != start and not raw.startswith(b"\r\n", found - 2, found):
            continue  # not at the start of a line
        eol = raw.find(b"\r\n", at, end)
        line_end = end if eol < 0 else eol
        rest = raw[at:line_end]
        close = rest.startswith(b"--")
        if (rest[2:] if close else rest).strip(b" \t"):
            continue  # a longer line that only starts like a delimiter
        if close and not lines:
            return None  # a close delimiter before any part
        if lines and lines[-1][1] == found:
            return None  # two delimiter lines in a row
        if close:
            break
        lines.append((found, line_end + 2 if eol >= 0 else end))
        if eol < 0:
            return None  # a delimiter ends the range: no close delimiter
    bounds = [line[0] for line in lines[1:]] + [found]
    return [
        (after, max(after, next_line - 2))
        for (_, after), next_line in zip(lines, bounds, strict=True)
    ]
