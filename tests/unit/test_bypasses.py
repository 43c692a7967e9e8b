"""Ways to slip something past the content checks, each closed (found in review)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.core.facts import MailFacts, MessageFacts, SessionFacts
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.message import inspect_message
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.verdict import Verdict
from tests.support import files

SENDER = "jean.dupont@ch.mssante.fr"
POLICY = Policy(
    Limits(max_attachment_size=20 * 2**20, max_message_size=60 * 2**20, max_recipients=5),
    BalDirectory([Bal(SENDER, BalType.NOMINATIVE, frozenset({"jd"}))]),
)
HEAD = f"From: {SENDER}\r\nTo: a@chu.mssante.fr\r\nSubject: x\r\nMIME-Version: 1.0\r\n".encode()


def _verdict(raw: bytes) -> Verdict:
    mail = MailFacts(SessionFacts("127.0.0.1", "h", True, "jd", "submission"), SENDER, None)
    return POLICY.evaluate_message(
        MessageFacts(mail, ("a@chu.mssante.fr",), len(raw), inspect_message(raw))
    )


def _attached(data: bytes, headers: str, encoded: bytes | None = None) -> bytes:
    body = encoded if encoded is not None else base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        HEAD + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain\r\n\r\ntexte\r\n--B\r\n"
        + headers.encode()
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + body
        + b"\r\n--B--\r\n"
    )


@pytest.mark.parametrize(
    "raw",
    [
        # A header line Python stops at (white space before the colon): what follows
        # would be « body » to us, headers to the recipient.
        HEAD.replace(b"Subject: x", b"X-A : b\r\nSubject: x")
        + b"Content-Type: application/x-msdownload; name=evil.exe\r\n\r\nMZ",
        _attached(b"", 'Content-Type: application/pdf; name="cr.pdf"\r\nX-A : b\r\n'),
        # A message/rfc822 or multipart part in base64 (RFC 2046 forbids it) hides its parts.
        HEAD + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(b"From: a@b\r\nContent-Type: application/x-msdownload\r\n\r\nMZ")
        + b"\r\n--B--\r\n",
        # The first line folded onto nothing.
        b" continued\r\n" + HEAD + b"\r\nbody\r\n",
    ],
    ids=["space-before-colon", "same-in-a-part", "base64-message-rfc822", "first-line-folded"],
)
def test_unreadable_structure_is_refused(raw: bytes) -> None:
    verdict = _verdict(raw)
    assert verdict.rule == "mime_structure" and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.6.0")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # One junk character breaks strict base64 decoding, not the mail client's.
        (
            _attached(b"", 'Content-Type: application/pdf; name="cr.pdf"\r\n', b"TVq!QAAAAAAA"),
            "Windows executable (MZ)",
        ),
        (
            _attached(
                b"",
                'Content-Type: application/zip; name="d.zip"\r\n',
                b"!" + base64.b64encode(files.zip_of({"setup.exe": files.exe()})),
            ),
            "archive member: extension .exe",
        ),
        # A zip appended to a PDF opens in any archiver.
        (
            _attached(
                files.pdf() + files.zip_of({"setup.exe": files.exe()}),
                'Content-Type: application/pdf; name="cr.pdf"\r\n',
            ),
            "archive member: extension .exe",
        ),
        # Two names: the client may show either.
        (
            _attached(
                files.pdf(),
                'Content-Type: application/pdf; name="evil.exe"\r\n'
                'Content-Disposition: attachment; filename="cr.pdf"\r\n',
            ),
            "extension .exe",
        ),
    ],
    ids=["junk-in-base64", "junk-before-zip", "zip-behind-pdf", "second-name"],
)
def test_hidden_dangerous_attachments_are_found(raw: bytes, reason: str) -> None:
    verdict = _verdict(raw)
    assert (verdict.rule, verdict.reason) == ("dangerous_attachment", reason)


def test_a_plain_pdf_with_two_equal_names_passes() -> None:
    raw = _attached(
        files.pdf(),
        'Content-Type: application/pdf; name="cr.pdf"\r\n'
        'Content-Disposition: attachment; filename="cr.pdf"\r\n',
    )
    assert _verdict(raw).accepted


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 40))
def test_a_zip_behind_any_bytes_is_found_however_base64_is_cut(prefix: bytes, width: int) -> None:
    data = b"%PDF-1.7\n" + prefix + files.zip_of({"setup.exe": files.exe()})
    encoded = base64.b64encode(data)
    lines = b"\r\n".join(encoded[i : i + 4 * width] for i in range(0, len(encoded), 4 * width))
    raw = _attached(b"", 'Content-Type: application/pdf; name="cr.pdf"\r\n', lines)
    verdict = _verdict(raw)
    assert (verdict.rule, verdict.reason) == (
        "dangerous_attachment",
        "archive member: extension .exe",
    )
