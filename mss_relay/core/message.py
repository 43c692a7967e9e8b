"""MIME inspection: what the rules need to know of a message.

One look at the structure per message (core.mime's scan of the bytes, or the
standard library's parser with the compat32 policy where the message is not
plain), and no more decoding than the rules need: a base64 part's decoded size
follows from its encoded length, of any other part only its two ends are read
unless it is an archive.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from email import errors
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesFeedParser
from email.policy import compat32
from email.utils import getaddresses

from mss_relay.core.filetypes import HEAD_SIZE, ArchiveMember, archive_members, is_archive
from mss_relay.core.mime import MAX_MIME_DEPTH as MAX_MIME_DEPTH  # its users' old home
from mss_relay.core.mime import Payload, TooDeep, Tree, plain_crlf, scan
from mss_relay.core.tnef import is_tnef, tnef_files
from mss_relay.core.uuencode import uuencoded_files

# The standard library's parser is fed this much at a time, its depth looked
# at between two feeds: a hostile message nested a thousand deep is given up
# a few dozen levels past the limit (some 50 bytes make a level), before the
# parser's cost, which grows with the depth for every line, runs away. Smaller
# feeds cost nothing measurable (5 MB of base64: 0.15 s at 4 KiB as at 1 MiB),
# and copy the message no more than large ones.
_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class PartInfo:
    content_type: str
    filename: str | None
    decoded_size: int
    is_attachment: bool
    head: bytes = b""  # the first decoded bytes, for file type signatures
    # A zip archive's members (one level deep); None when not a readable zip.
    members: tuple[ArchiveMember, ...] | None = None
    names: tuple[str, ...] = ()  # every name it gives itself (filename first)
    archive: bool = False  # a zip archive, at its start or appended to other bytes
    # Files a client finds inside the part though the MIME structure does not
    # show them (uuencoded in a text, in a TNEF winmail.dat), as members.
    embedded: tuple[ArchiveMember, ...] = ()
    # Why this part's content cannot be checked (a mail client may read it
    # otherwise than we do), if it cannot.
    structure_error: str | None = None

    @property
    def display_name(self) -> str:
        """How a reply names it: its file name, else its type (« application/dicom »)."""
        return self.filename or self.content_type


@dataclass(frozen=True, slots=True)
class MessageInfo:
    parts: tuple[PartInfo, ...]
    message_id: str | None
    subject: str | None  # decoded (RFC 2047); health data: never logged
    from_headers: tuple[str, ...]
    in_reply_to: str | None
    references: str | None
    header_count: int
    reply_to: tuple[str, ...] = ()
    x_mss_mes: str | None = None
    has_date: bool = True
    # Every address of every From: / Sender: header, in order.
    from_addresses: tuple[str, ...] = ()
    sender_headers: tuple[str, ...] = ()
    sender_addresses: tuple[str, ...] = ()
    # Why the MIME structure could not be followed, if it could not.
    structure_error: str | None = None
    # A top-level multipart/report's report-type (RFC 6522 §3), lowercased:
    # "delivery-status" (RFC 3464), "disposition-notification" (RFC 8098).
    report_type: str | None = None
    auto_submitted: str | None = None  # RFC 3834 §5
    # The Original-Message-ID of a read receipt's disposition-notification part.
    original_message_id: str | None = None

    @property
    def total_decoded_size(self) -> int:
        return sum(p.decoded_size for p in self.parts)

    @property
    def attachments(self) -> tuple[PartInfo, ...]:
        return tuple(p for p in self.parts if p.is_attachment)


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words; garbage is returned as it came."""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, binascii.Error):
        return value


def base64_decoded_size(payload: bytes | str) -> int:
    """The size base64 text decodes to, without decoding it."""
    body = Payload(
        payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
    )
    return _base64_size(body)


def _base64_size(payload: Payload) -> int:
    # Where CR and LF come in pairs, one count gives both; spaces and tabs are
    # looked for before being counted (base64 has none, and a search is cheaper).
    if payload.crlf:
        whitespace = 2 * payload.count(b"\r")
    else:
        whitespace = payload.count(b"\r") + payload.count(b"\n")
    whitespace += sum(payload.count(c) for c in (b" ", b"\t") if c in payload)
    chars = len(payload) - whitespace
    # The padding, behind whatever white space: long runs of it, line ends
    # between the two « = ». The window grows until it holds two characters.
    window = 256
    while True:
        end = payload.tail(window).translate(None, b" \t\r\n")
        if len(end) >= 2 or window >= len(payload):
            return max(0, chars * 3 // 4 - end[-2:].count(b"="))
        window *= 4


def _decoded_size(cte: str, payload: Payload) -> int:
    if cte == "base64":
        return _base64_size(payload)
    if cte == "quoted-printable":
        return len(binascii.a2b_qp(payload.whole()))
    return len(payload)


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# For bytes.translate(None, ...): what to delete. A regex substitution visits
# each byte in the regex engine (1.2 ms for a 128 KiB window, against 0.05).
_NOT_BASE64 = bytes(set(range(256)) - set(_BASE64_ALPHABET))
_NOT_BASE64_OR_PAD = bytes(set(_NOT_BASE64) - set(b"="))
# The end-of-archive record of a zip is within its last 64 KiB + 22 bytes.
_ZIP_END = b"PK\x05\x06"
_ZIP_END_WINDOW = 65_557
_ZIP_END_CHARS = -(-_ZIP_END_WINDOW // 3) * 4  # the base64 characters of that many bytes


def _base64(raw: bytes) -> bytes:
    """Base64 decoded as mail clients do: whatever is not of the alphabet is
    skipped, a missing padding is no reason to give up (« TVq!QAAA » must
    still show the MZ it hides)."""
    try:
        return binascii.a2b_base64(raw)
    except binascii.Error:
        clean = raw.translate(None, _NOT_BASE64)
        clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


def _decode(payload: bytes, cte: str) -> bytes:
    """A payload's bytes, decoded as leniently as mail clients do."""
    try:
        if cte == "base64":
            return _base64(payload)
        return binascii.a2b_qp(payload) if cte == "quoted-printable" else payload
    except (binascii.Error, ValueError):
        return b""


# The base64 characters of HEAD_SIZE bytes, in whole groups of four.
_HEAD_CHARS = -(-HEAD_SIZE // 3) * 4


def _base64_head(payload: Payload) -> bytes:
    """The first base64 characters of a part, enough for HEAD_SIZE bytes,
    whatever comes before them: blank lines, lines of spaces, junk the
    decoder skips (150 blank lines hid an executable from a look at the
    first 256 bytes). The window grows fourfold until it holds enough or
    covers the part: at most some 1.3 times the part's length is read."""
    window = 256
    while True:
        chars = payload.head(window).translate(None, _NOT_BASE64)
        if len(chars) >= _HEAD_CHARS or window >= len(payload):
            return chars[:_HEAD_CHARS]
        window *= 4


class _Unbounded(Exception):
    """A part whose reading has no small bound (an archive, whose inner
    archives are inflated to list them; a TNEF): not for the event loop."""


def _content(
    cte: str, payload: Payload, *, bounded: bool = False
) -> tuple[bytes, tuple[ArchiveMember, ...] | None, bool]:
    """The first bytes of a part; whether it is a zip archive, and its members.
    A zip may hide behind other bytes (a PDF with an archive appended, which
    archivers open all the same): its end record, near the end, says so. Only
    an archive is decoded whole; of anything else, its two ends."""
    if cte == "base64":
        head = _decode(_base64_head(payload), cte)[:HEAD_SIZE]
        # Groups of four, counted from the end (padding « = » included), as
        # many as decode to the window (binascii decodes some 400 MB/s only).
        tail_chars = payload.tail(_ZIP_END_WINDOW * 2).translate(None, _NOT_BASE64_OR_PAD)
        keep = min(len(tail_chars) - len(tail_chars) % 4, _ZIP_END_CHARS)
        tail = _decode(tail_chars[len(tail_chars) - keep :], cte)
    elif cte == "quoted-printable":
        data = _decode(payload.whole(), cte)
        head, tail = data[:HEAD_SIZE], data[-_ZIP_END_WINDOW:]
    else:
        head, tail = payload.head(HEAD_SIZE), payload.tail(_ZIP_END_WINDOW)
    if not (is_archive(head) or _ZIP_END in tail):
        return head, None, False
    if bounded:
        raise _Unbounded
    return head, archive_members(_decode(payload.whole(), cte)), True


_ENCODED = ("base64", "quoted-printable")


def _after_padding(payload: Payload) -> bool:
    """Base64 data after a padding « = »: our decoder stops there, others go
    on (a second file can hide there). Only a part with an « = » is read."""
    at = payload.data.find(b"=", payload.start, payload.end)  # mostly in the last line
    return at >= 0 and bool(payload.data[at : payload.end].translate(None, _NOT_BASE64))


def _hidden(
    part: Message, cte: str, payload: Payload, head: bytes, *, bounded: bool = False
) -> tuple[tuple[ArchiveMember, ...], str | None]:
    """What a client finds in the part that its MIME structure does not show,
    and why its content cannot be checked, if it cannot. Decodes the part
    only where a search says there may be something: a TNEF's signature,
    « begin » in a text part."""
    if cte == "base64" and _after_padding(payload):
        return (), "base64 data after its padding"
    if is_tnef(head):
        if bounded:
            raise _Unbounded
        return tnef_files(_decode(payload.whole(), cte)), None
    if part.get_content_maintype() == "text" and (cte in _ENCODED or b"begin" in payload):
        # Text parts are small; an encoded one hides its « begin » until decoded.
        return uuencoded_files(_decode(payload.whole(), cte)), None
    return (), None


def _names(part: Message) -> tuple[str, ...]:
    """Every name the part gives itself: Content-Disposition's filename and
    Content-Type's name may differ, and a mail client may show either."""
    names: list[str] = []
    for which in ("filename", "name"):
        try:
            name = part.get_filename() if which == "filename" else part.get_param("name")
        except (ValueError, LookupError, UnicodeError, TypeError, IndexError):
            continue  # the stdlib's RFC 2231 decoding raises all of these on garbage
        if isinstance(name, tuple):  # an RFC 2231 value compat32 could not collapse
            name = name[2]
        if isinstance(name, str) and name.strip():
            decoded = decode_words(name.strip())
            if decoded not in names:
                names.append(decoded)
    return tuple(names)


def _part_info(part: Message, payload: Payload, *, bounded: bool = False) -> PartInfo:
    names = _names(part)
    filename = names[0] if names else None
    disposition = (part.get_content_disposition() or "").lower()
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    head, members, archive = _content(cte, payload, bounded=bounded)
    embedded, unreadable = _hidden(part, cte, payload, head, bounded=bounded)
    return PartInfo(
        content_type=part.get_content_type(),
        filename=filename,
        decoded_size=_decoded_size(cte, payload),
        # A file, named or not: whatever is not text (an unnamed 25 MB
        # application/dicom part escaped the per-attachment limit). A text
        # part shown inline stays the message's text.
        is_attachment=disposition == "attachment"
        or filename is not None
        or part.get_content_maintype() != "text",
        head=head,
        members=members,
        names=names,
        archive=archive,
        embedded=embedded,
        structure_error=unreadable,
    )


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    if value is None:
        return None
    return str(value).strip()


_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf_lines(raw: bytes) -> bytes:
    """Bare CR and bare LF as CRLF, as they leave on the wire (RFC 5321 §2.3.8).
    Some 2 ms per MB even when there is nothing to change: done once per message."""
    if plain_crlf(raw):
        return raw  # the common case, without copying megabytes
    return _LINE_END.sub(b"\r\n", raw)


def _addresses(values: list[str]) -> tuple[str, ...]:
    """The addresses of address headers; an unparsable one gives ""."""
    try:
        pairs = getaddresses(values)
    except (ValueError, LookupError, UnicodeError):  # hostile input: treat as unreadable
        return ("",)
    return tuple(address for _name, address in pairs)


# Header lines the parser could not read end its reading of the headers: every
# later one (From:, Content-Type: ...) would be taken for body text, where the
# recipient's software may still read it as a header. Such a part cannot be
# checked.
_UNREADABLE_HEADERS = (
    errors.MissingHeaderBodySeparatorDefect,
    errors.FirstHeaderLineIsContinuationDefect,
    errors.MisplacedEnvelopeHeaderDefect,
)
_IDENTITY = ("", "7bit", "8bit", "binary")
# What a part is: two of one, and the recipient's software may read the other.
_ONCE = ("Content-Type", "Content-Disposition", "Content-Transfer-Encoding")


def _structure_error(part: Message) -> str | None:
    for name in _ONCE:
        if len(part.get_all(name, ())) > 1:
            return f"two {name} header fields in one part"
    if any(isinstance(d, _UNREADABLE_HEADERS) for d in part.defects):
        return "a header line that cannot be read (" + type(part.defects[0]).__name__ + ")"
    if any(isinstance(d, errors.StartBoundaryNotFoundDefect) for d in part.defects):
        # Its parts cannot be found, and it would pass for one opaque part,
        # whatever a mail client that reads the boundary otherwise finds in it.
        return "a multipart whose boundary never appears (StartBoundaryNotFoundDefect)"
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if part.get_content_maintype() in ("message", "multipart") and cte not in _IDENTITY:
        return f"{part.get_content_type()} encoded as {cte} (RFC 2046 §5.2.1, §5.1)"
    return None


def _leaves(msg: Message) -> tuple[list[Message], int, str | None]:
    """The parts that are not containers, in order, without recursion (a
    hostile message may nest thousands deep); the deepest level seen; and why
    the structure cannot be checked, if it cannot."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    leaves: list[Message] = []
    deepest = 0
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_MIME_DEPTH:
            break
        error = _structure_error(part)
        if error is not None:
            return leaves, deepest, error
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
        else:
            leaves.append(part)
    return leaves, deepest, None


def _parse(raw: bytes) -> Message | None:
    """The message, or None once the parser is deeper than MAX_MIME_DEPTH.
    Fed by pieces: parsebytes() would first copy the whole message into a
    str, then into a StringIO at four bytes per character (a 40 MB message
    peaked at 309 MB that way, 110 MB this way)."""
    parser = BytesFeedParser(policy=compat32)
    view = memoryview(raw)
    for start in range(0, len(raw), _CHUNK):
        parser.feed(view[start : start + _CHUNK].tobytes())
        # Its stack of open parts (not typed; there since 3.2): the root and
        # one more per level, as _leaves counts them.
        if len(getattr(parser, "_msgstack", ())) > MAX_MIME_DEPTH + 1:
            return None
    return parser.close()


def _unreadable(why: str) -> MessageInfo:
    return MessageInfo((), None, None, (), None, None, 0, structure_error=why)


_TOO_DEEP = _unreadable(f"MIME nesting deeper than {MAX_MIME_DEPTH}")


def _stdlib_tree(raw: bytes) -> Tree | MessageInfo:
    """The tree as the standard library's parser finds it, or why it cannot be checked."""
    try:
        msg = _parse(raw)
    except RecursionError:  # the stdlib's parser recurses once per nesting level
        return _unreadable("MIME nesting too deep to parse")
    if msg is None:
        return _TOO_DEEP
    leaves, depth, error = _leaves(msg)
    if depth > MAX_MIME_DEPTH:
        return _TOO_DEEP
    if error is not None:
        return _unreadable(error)
    return Tree(msg, tuple((leaf, _payload(leaf)) for leaf in leaves))


def _payload(part: Message) -> Payload:
    """The part's body as it came. Not get_payload(): for 8-bit text it
    decodes by the declared charset, U+FFFD for what does not fit, and the
    sizes and file signatures would be those of that text, not of the octets."""
    payload = getattr(part, "_payload", None)  # the raw body (not typed; there since 3.2)
    if not isinstance(payload, str):
        return Payload(b"")
    # BytesParser maps every byte to one character (surrogateescape).
    return Payload(payload.encode("utf-8", "surrogateescape"))


def _report(msg: Message) -> tuple[str | None, str | None]:
    """A report's type and, for a read receipt, the Message-ID it reports on.
    RFC 6522 §3: a report is the top-level multipart/report; RFC 8098 §3: an
    MDN's machine-readable part is a message/disposition-notification child of
    it, whose fields the standard library parses as the headers of one message
    (the fast scan never gets there: it leaves message/* parts to the stdlib)."""
    if msg.get_content_type() != "multipart/report":
        return None, None
    kind = msg.get_param("report-type")
    report_type = kind.strip().lower() if isinstance(kind, str) and kind.strip() else None
    payload = msg.get_payload()
    for part in payload if isinstance(payload, list) else ():
        if isinstance(part, Message) and part.get_content_type() == (
            "message/disposition-notification"
        ):
            fields = part.get_payload()
            if isinstance(fields, list) and fields and isinstance(fields[0], Message):
                return report_type, _header(fields[0], "Original-Message-ID")
    return report_type, None


def inspect_message(raw: bytes, *, fast: bool = True, crlf: bool = False) -> MessageInfo:
    """What the rules need of a message. The tree comes from core.mime's scan
    of the bytes where the message is plain, else from the standard library
    (fast=False: always, as the property test's reference). crlf: the caller
    knows the message has no bare CR or LF (it went through crlf_lines())."""
    info = scanned(raw, crlf=crlf) if fast else None
    if info is not None:
        return info
    found = _stdlib_tree(raw)
    return found if isinstance(found, MessageInfo) else _info(found)


def scanned(raw: bytes, *, crlf: bool = False) -> MessageInfo | None:
    """The inspection where core.mime's scan answers, None where the standard
    library's parser must: the scan's work is bounded (a few passes of
    bytes.find per level, MAX_MIME_DEPTH levels at most), the parser's is not
    (it grows with depth times lines), so a caller on an event loop may run
    this at once and the rest of inspect_message() in a worker thread. None
    too for a message with an archive or a TNEF part: listing a zip inflates
    the archives inside it (up to 32 MiB), which is no work for the loop."""
    tree = scan(raw, crlf=crlf)
    if isinstance(tree, TooDeep):
        return _TOO_DEEP
    if tree is None:
        return None
    try:
        return _info(tree, bounded=True)
    except _Unbounded:
        return None


def _info(tree: Tree, *, bounded: bool = False) -> MessageInfo:
    msg = tree.root
    parts = tuple(_part_info(p, payload, bounded=bounded) for p, payload in tree.leaves)
    subject = _header(msg, "Subject")
    from_headers = [str(v) for v in msg.get_all("From", [])]
    sender_headers = [str(v) for v in msg.get_all("Sender", [])]
    report_type, original_message_id = _report(msg)
    return MessageInfo(
        parts=parts,
        message_id=_header(msg, "Message-ID"),
        subject=decode_words(subject) if subject is not None else None,
        from_headers=tuple(from_headers),
        in_reply_to=_header(msg, "In-Reply-To"),
        references=_header(msg, "References"),
        header_count=len(msg.keys()),
        reply_to=tuple(str(v) for v in msg.get_all("Reply-To", [])),
        x_mss_mes=_header(msg, "X-MSS-MES"),
        has_date=msg.get("Date") is not None,
        from_addresses=_addresses(from_headers),
        sender_headers=tuple(sender_headers),
        sender_addresses=_addresses(sender_headers),
        report_type=report_type,
        auto_submitted=_header(msg, "Auto-Submitted"),
        original_message_id=original_message_id,
    )


def archive_parts(raw: bytes, *, crlf: bool = False) -> tuple[tuple[tuple[str, ...], bytes], ...]:
    """The names and decoded bytes of each part a zip archive may be (one
    that is, at its start or appended to other bytes, or that is named
    « .zip »), in order: for the IHE-XDM check (core.xdm), which reads a file
    inside them. Each such part is decoded whole, and the standard library's
    parser may run: not for the event loop. A message whose structure cannot
    be followed gives none (the MIME rules refuse it)."""
    tree = scan(raw, crlf=crlf)
    if isinstance(tree, TooDeep):
        return ()
    if tree is None:
        found = _stdlib_tree(raw)
        if isinstance(found, MessageInfo):
            return ()
        tree = found
    parts = []
    for part, payload in tree.leaves:
        names = _names(part)
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        data = _decode(payload.whole(), cte)
        named = any(name.lower().rstrip(". ").endswith(".zip") for name in names)
        if named or is_archive(data[:HEAD_SIZE]) or _ZIP_END in data[-_ZIP_END_WINDOW:]:
            parts.append((names, data))
    return tuple(parts)
