"""Issue 13, defects 1, 5 and 6: a deep message costs the inspection a bounded
amount of work; the first-bytes check sees the decoded bytes whatever the
layout of the encoding; a part without a name still counts as an attachment."""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading

import pytest

from mss_relay.core import message, mime
from mss_relay.core.facts import MailFacts, MessageFacts, SessionFacts
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.message import MAX_MIME_DEPTH, inspect_message
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.verdict import Verdict
from mss_relay.front import ending
from tests.support import files
from tests.support.mail import nested_mime

SENDER = "jean.dupont@ch.mssante.fr"
HEAD = f"From: {SENDER}\r\nTo: a@chu.mssante.fr\r\nSubject: x\r\nMIME-Version: 1.0\r\n".encode()


def _verdict(raw: bytes, max_attachment_size: int = 20 * 2**20) -> Verdict:
    policy = Policy(
        Limits(
            max_attachment_size=max_attachment_size,
            max_message_size=60 * 2**20,
            max_recipients=5,
        ),
        BalDirectory([Bal(SENDER, BalType.NOMINATIVE, frozenset({"jd"}))]),
    )
    mail = MailFacts(SessionFacts("127.0.0.1", "h", True, "jd", "submission"), SENDER, None)
    return policy.evaluate_message(
        MessageFacts(mail, ("a@chu.mssante.fr",), len(raw), inspect_message(raw))
    )


def _part(headers: bytes, body: bytes) -> bytes:
    return (
        HEAD + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain\r\n\r\ntexte\r\n--B\r\n"
        + headers
        + b"\r\n"
        + body
        + b"\r\n--B--\r\n"
    )


# --- defect 1: the depth limit stops the work early ------------------------------


def _deep(levels: int) -> bytes:
    return b"From: a@b.mssante.fr\r\n" + nested_mime(levels)


def test_a_1000_level_message_is_refused_without_the_stdlib_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_parse(raw: bytes) -> None:
        raise AssertionError("the stdlib parser ran on a message the scan found too deep")

    monkeypatch.setattr(message, "_parse", no_parse)
    info = inspect_message(_deep(1000), crlf=True)
    assert info.structure_error == f"MIME nesting deeper than {MAX_MIME_DEPTH}"
    verdict = _verdict(_deep(1000))
    assert verdict.rule == "mime_structure" and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.6.0")


def test_the_scan_examines_no_more_levels_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    levels: list[int] = []
    real = mime._parts

    def counted(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]] | None:
        levels.append(start)
        return real(raw, start, end, boundary)

    monkeypatch.setattr(mime, "_parts", counted)
    assert inspect_message(_deep(1000), crlf=True).structure_error is not None
    assert len(levels) <= MAX_MIME_DEPTH + 1


def test_the_stdlib_fallback_stops_reading_at_the_depth_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A message/rfc822 part at the top sends the message to the stdlib parser,
    # which must stop a little past the limit, not read all 1,000 levels.
    raw = (
        b"From: a@b.mssante.fr\r\nContent-Type: multipart/mixed; boundary=top\r\n\r\n"
        b"--top\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@d.mssante.fr\r\n\r\nx\r\n"
        b"--top\r\n" + nested_mime(1000) + b"\r\n--top--\r\n"
    )
    assert mime.scan(raw) is None
    fed: list[int] = []
    real = message.BytesFeedParser.feed

    def counted(self: message.BytesFeedParser, data: bytes) -> None:
        fed.append(len(data))
        real(self, data)

    monkeypatch.setattr(message.BytesFeedParser, "feed", counted)
    info = inspect_message(raw)
    assert info.structure_error == f"MIME nesting deeper than {MAX_MIME_DEPTH}"
    # nested_mime spends some 70 bytes a level: a few levels past the limit at most.
    assert sum(fed) < 3 * 70 * MAX_MIME_DEPTH, sum(fed)


def test_nesting_at_the_limit_still_passes_on_both_paths() -> None:
    raw = _deep(MAX_MIME_DEPTH)
    assert inspect_message(raw).structure_error is None
    assert inspect_message(raw, fast=False).structure_error is None
    assert inspect_message(_deep(MAX_MIME_DEPTH + 1), fast=False).structure_error is not None


def test_only_the_stdlib_parse_leaves_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain small message is inspected on the loop (no thread hop in the
    common case); one the scan cannot read is parsed in a worker thread."""
    parsed_in: list[int] = []

    def recorded(raw: bytes, **options: bool) -> message.MessageInfo:
        parsed_in.append(threading.get_ident())
        return inspect_message(raw, **options)

    monkeypatch.setattr(ending, "inspect_message", recorded)
    odd = _part(b"Content-Type: message/rfc822\r\n", b"From: c@d.mssante.fr\r\n\r\nx")

    async def run(raw: bytes) -> tuple[message.MessageInfo, int]:
        info, _ = await ending.inspect(raw, raw)
        return info, threading.get_ident()

    # A zip's listing inflates the archives inside it: in the thread too.
    nested = files.zip_of({"in.zip": files.zip_of({"cr.pdf": files.pdf()})})
    zipped = _part(
        b'Content-Type: application/zip; name="d.zip"\r\nContent-Transfer-Encoding: base64\r\n',
        base64.encodebytes(nested).replace(b"\n", b"\r\n"),
    )
    cases = ((_deep(1000), False), (_part(b"", b"texte"), False), (odd, True), (zipped, True))
    for raw, parses in cases:
        parsed_in.clear()
        info, loop = asyncio.run(run(raw))
        assert bool(parsed_in) is parses
        assert loop not in parsed_in
    assert info.structure_error is None and len(info.parts) == 2
    assert info.parts[1].members is not None  # the zip, listed (in the thread)


# --- defect 5: the first decoded bytes, whatever the layout -----------------------

_EXE_HEADERS = (
    b'Content-Type: application/pdf; name="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
)
_EXE_B64 = base64.encodebytes(files.exe()).replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    "body",
    [
        b"\r\n" * 150 + _EXE_B64,
        b" " * 300 + b"\r\n" + _EXE_B64,
        b"\t \r\n" * 80 + b"T" + b"\r\n" + _EXE_B64[1:],
        # One character a line.
        b"\r\n".join(bytes([c]) for c in _EXE_B64.replace(b"\r\n", b"")),
    ],
    ids=["150-blank-lines", "300-space-line", "blanks-then-one-char", "one-char-lines"],
)
def test_an_executable_is_found_behind_any_base64_layout(body: bytes) -> None:
    verdict = _verdict(_part(_EXE_HEADERS, body))
    assert (verdict.rule, verdict.reason) == ("dangerous_attachment", "Windows executable (MZ)")


def test_an_executable_is_found_behind_quoted_printable_soft_breaks() -> None:
    qp = b"=\r\n" * 150 + binascii.b2a_qp(files.exe()).replace(b"\n", b"\r\n")
    headers = _EXE_HEADERS.replace(b"base64", b"quoted-printable")
    verdict = _verdict(_part(headers, qp))
    assert (verdict.rule, verdict.reason) == ("dangerous_attachment", "Windows executable (MZ)")


# --- defect 6: a part without a name is an attachment -----------------------------

_DICOM = base64.encodebytes(b"\x00" * 128 + b"DICM" + b"\x01" * 150_000).replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("headers", "shown"),
    [
        (b'Content-Type: application/dicom; name="irm.dcm"\r\n', "irm.dcm"),
        (b"Content-Type: application/dicom\r\n", "application/dicom"),
        (
            b"Content-Type: application/dicom\r\nContent-Disposition: inline\r\n",
            "application/dicom",
        ),
        # A text part over the limit counts too, named by its type.
        (b"Content-Type: text/plain\r\n", "text/plain"),
    ],
    ids=["named", "unnamed", "unnamed-inline", "text-over-the-limit"],
)
def test_every_part_over_the_limit_is_refused_naming_it(headers: bytes, shown: str) -> None:
    raw = _part(headers + b"Content-Transfer-Encoding: base64\r\n", _DICOM)
    verdict = _verdict(raw, max_attachment_size=100 * 1024)
    assert verdict.rule == "attachment_size" and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (552, "5.3.4")
    assert f"« {shown} »" in verdict.reply.text


def test_a_line_break_in_the_name_of_a_part_over_the_limit_is_still_a_552() -> None:
    """RFC 2231 lets a name carry %0A: the reply shows it as « ? » (a reply
    text with a line break raised, and the client got 451 4.3.0 forever)."""
    headers = b"Content-Type: application/dicom\r\nContent-Disposition: attachment;"
    raw = _part(
        headers + b" filename*=''irm%0D%0A.dcm\r\nContent-Transfer-Encoding: base64\r\n",
        _DICOM,
    )
    verdict = _verdict(raw, max_attachment_size=100 * 1024)
    assert verdict.reply is not None and verdict.rule == "attachment_size"
    assert (verdict.reply.code, verdict.reply.enhanced) == (552, "5.3.4")
    assert "« irm??.dcm »" in verdict.reply.text


def test_every_non_text_part_is_an_attachment_and_text_stays_body() -> None:
    raw = _part(b"Content-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n", _DICOM)
    info = inspect_message(raw)
    assert [(p.content_type, p.is_attachment) for p in info.parts] == [
        ("text/plain", False),
        ("application/dicom", True),
    ]
    assert info.attachments[0].display_name == "application/dicom"
