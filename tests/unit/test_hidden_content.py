"""Content the checks did not see (issue 13, defect 10): each case was
delivered before; each is now refused, or passes for a documented reason."""

from __future__ import annotations

import base64
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.core.facts import MailFacts, MessageFacts, SessionFacts
from mss_relay.core.filetypes import AttachmentRules, Found, archive_members, archive_refusal
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.message import inspect_message
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.tnef import SIGNATURE, tnef_files
from mss_relay.core.uuencode import uuencoded_files
from tests.support import files, hidden

SENDER = "jean.dupont@ch.mssante.fr"
POLICY = Policy(
    Limits(max_attachment_size=20 * 2**20, max_message_size=60 * 2**20, max_recipients=5),
    BalDirectory([Bal(SENDER, BalType.NOMINATIVE, frozenset({"jd"}))]),
)
HEAD = f"From: {SENDER}\r\nTo: a@chu.mssante.fr\r\nSubject: x\r\nMIME-Version: 1.0\r\n".encode()


def _outcome(raw: bytes) -> tuple[int, str, str | None]:
    """(code, enhanced code, rule) of the end-of-DATA verdict, the same on both paths."""
    assert inspect_message(raw) == inspect_message(raw, fast=False)
    mail = MailFacts(SessionFacts("127.0.0.1", "h", True, "jd", "submission"), SENDER, None)
    verdict = POLICY.evaluate_message(
        MessageFacts(mail, ("a@chu.mssante.fr",), len(raw), inspect_message(raw))
    )
    if verdict.reply is None:
        return 250, "2.0.0", None
    return verdict.reply.code, verdict.reply.enhanced, verdict.rule


def _message(*parts: bytes) -> bytes:
    return hidden.multipart(HEAD, *parts)


_b64, _attachment = hidden.b64, hidden.attachment


def _text(body: bytes, cte: str = "7bit") -> bytes:
    headers = f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n"
    return headers.encode() + b"\r\n" + body


REFUSED = (550, "5.7.1", "dangerous_attachment")
UNREADABLE = (550, "5.6.0", "mime_structure")


def _accepted(raw: bytes) -> None:
    assert _outcome(raw) == (250, "2.0.0", None)


# 1. Archives in archives.


def _encrypted(data: bytes) -> bytes:
    """A zip whose members say « encrypted » (bit 0 of the general purpose
    flags, in the local and the central headers): zipfile writes none."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(signature)
        while at >= 0:
            out[at + offset] |= 1
            at = out.find(signature, at + 4)
    return bytes(out)


@pytest.mark.parametrize(
    "archive",
    [
        files.zip_of({"inner.zip": files.zip_of({"setup.exe": files.exe()})}),
        files.zip_of({"inner.zip": files.zip_of({"notes.txt": files.exe()}, zipfile.ZIP_STORED)}),
        files.zip_of({"a/b.zip": files.zip_of({"c.zip": files.zip_of({"x.js": b"alert(1)"})})}),
        files.zip_of({"lettre.docx": files.docm()}),  # a macro document in a zip
        files.zip_of({"inner.zip": _encrypted(files.zip_of({"x.exe": files.exe()}))}),
        _encrypted(files.zip_of({"inner.zip": files.zip_of({"cr.pdf": files.pdf()})})),
        files.zip_of({"inner.zip": b"PK\x03\x04 not really a zip"}),
    ],
    ids=["exe", "renamed_exe", "three_deep", "docm", "inner_encrypted", "outer_encrypted", "bad"],
)
def test_an_archive_in_an_archive_is_looked_into(archive: bytes) -> None:
    assert _outcome(_message(_text(b"texte"), _attachment("dossier.zip", archive))) == REFUSED


def test_archives_nested_deeper_than_the_bound_are_refused() -> None:
    data = files.zip_of({"cr.pdf": files.pdf()})
    for level in range(4):
        data = files.zip_of({f"level{level}.zip": data})
    assert _outcome(_message(_attachment("dossier.zip", data))) == REFUSED


def test_health_packages_in_archives_pass() -> None:
    nested = files.zip_of({"IHE_XDM.zip": files.ihe_xdm(), "lettre.docx": files.docx()})
    _accepted(_message(_text(b"texte"), _attachment("envoi.zip", nested)))
    _accepted(_message(_attachment("IHE_XDM.zip", files.ihe_xdm(), "application/zip")))


# 2. Uuencoded files in a text part.


@pytest.mark.parametrize(
    ("body", "cte"),
    [
        (b"Bonjour,\r\n\r\n" + hidden.uuencode("setup.exe", files.exe()), "7bit"),
        (hidden.uuencode("notes.txt", files.exe()), "7bit"),  # renamed: its first bytes
        (b"voir\r\n" + hidden.uuencode("a.vbs", b"MsgBox 1"), "quoted-printable"),
        (_b64(b"voir\r\n" + hidden.uuencode("cr.pdf", files.elf())), "base64"),
        (b"x\r\n" + hidden.uuencode("x.zip", files.zip_of({"y.exe": files.exe()})), "7bit"),
        (b"begin-base64 644 setup.exe\r\n" + _b64(files.exe()) + b"====\r\n", "7bit"),
    ],
    ids=["exe", "renamed", "qp", "base64_text", "zip", "begin_base64"],
)
def test_uuencoded_files_in_text_are_checked(body: bytes, cte: str) -> None:
    assert _outcome(_message(_text(body, cte))) == REFUSED
    if cte == "7bit":  # the message's only part, not an attachment: the same
        assert _outcome(HEAD + b"Content-Type: text/plain\r\n\r\n" + body) == REFUSED


def test_text_that_only_says_begin_passes() -> None:
    _accepted(_message(_text(b"begin the treatment at 9\r\nbegin 644\r\nbegin 1 x\r\n")))
    _accepted(_message(_text(hidden.uuencode("cr.pdf", files.pdf()))))


# 3. TNEF (winmail.dat).


def _winmail(data: bytes) -> bytes:
    return _message(_text(b"texte"), _attachment("winmail.dat", data, "application/ms-tnef"))


@pytest.mark.parametrize(
    "data",
    [
        hidden.tnef({"SETUP~1.EXE": files.exe()}),
        hidden.tnef({"CR.PDF": files.exe()}),  # an executable named as a PDF
        hidden.tnef({"CR.PDF": files.pdf()}, long_names={"CR.PDF": "compte rendu.pdf.exe"}),
        hidden.tnef({"DOSSIER.ZIP": files.zip_of({"x.exe": files.exe()})}),
        hidden.tnef({"CR.PDF": files.pdf()}, embedded=True),  # an attached message: unchecked
        hidden.tnef({"CR.PDF": files.pdf()})[:-5],  # truncated
    ],
    ids=["exe", "renamed", "long_name", "zip", "embedded_message", "truncated"],
)
def test_tnef_attachments_are_checked(data: bytes) -> None:
    assert _outcome(_winmail(data)) == REFUSED
    # Whatever the name and type it is sent under: its first bytes say TNEF.
    assert _outcome(_message(_attachment("cr.dat", data))) == REFUSED


def test_tnef_of_health_documents_passes() -> None:
    data = hidden.tnef(
        {"CR.PDF": files.pdf(), "IHE_XDM.ZIP": files.ihe_xdm()},
        long_names={"CR.PDF": "compte rendu.pdf"},
    )
    _accepted(_winmail(data))


# 4. Two Content-Type, Content-Disposition or Content-Transfer-Encoding fields in one part.


@pytest.mark.parametrize(
    "raw",
    [
        _message(
            b"Content-Type: application/pdf; name=cr.pdf\r\n"
            b"Content-Type: application/x-msdownload; name=setup.exe\r\n\r\nx"
        ),
        _message(
            b"Content-Type: application/pdf\r\n"
            b'Content-Disposition: attachment; filename="cr.pdf"\r\n'
            b'Content-Disposition: attachment; filename="setup.exe"\r\n\r\nx'
        ),
        _message(
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: 7bit\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA"
        ),
        HEAD + b"Content-Type: text/plain\r\nContent-Type: application/x-msdownload\r\n\r\nx",
        HEAD.replace(b"MIME-Version", b"content-type: text/plain\r\nMIME-Version")
        + b"CONTENT-TYPE: text/html\r\n\r\nx",
    ],
    ids=["type", "disposition", "encoding", "top_level", "case"],
)
def test_two_fields_that_say_what_a_part_is_are_a_structure_error(raw: bytes) -> None:
    assert _outcome(raw) == UNREADABLE


# 5. NUL and other control characters in a file name.


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment;"
        b" filename*=utf-8''a.exe%00.pdf\r\n",
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment;"
        b' filename="=?utf-8?q?a.exe=00.pdf?="\r\n',
        b"Content-Type: application/pdf; name*=utf-8''setup.scr%0A.pdf\r\n",
    ],
    ids=["rfc2231", "rfc2047", "newline"],
)
def test_a_name_cut_by_a_control_character_is_checked_in_each_piece(headers: bytes) -> None:
    raw = _message(headers + b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(files.pdf()))
    assert _outcome(raw) == REFUSED


def test_a_folded_name_gives_a_clean_refusal() -> None:
    raw = _message(
        b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a\r\n b.exe"'
        b"\r\n\r\nx"
    )
    assert _outcome(raw) == REFUSED  # not a ValueError on a reply text of two lines


# 6. Data after the base64 padding.


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(b"%PDF-1.7\n%") + b"\r\n" + _b64(files.exe()),  # « == » then more
        base64.b64encode(b"%PDF-1.7") + _b64(files.exe()),  # « = » then more, same line
        _b64(files.pdf()).rstrip() + b"=QUJD\r\n",
    ],
    ids=["after_one_pad", "after_two_pads", "after_the_last_line"],
)
def test_data_after_base64_padding_is_a_structure_error(encoded: bytes) -> None:
    raw = _message(
        b'Content-Type: application/pdf; name="cr.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + encoded
    )
    assert _outcome(raw) == UNREADABLE


def test_padding_at_the_end_passes() -> None:
    for size in range(6):
        _accepted(_message(_attachment("cr.pdf", files.pdf()[: 40 + size], "application/pdf")))


# The readers, on hostile bytes: bounded, and never an exception.


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_tnef_reading_never_raises(data: bytes) -> None:
    good = hidden.tnef({"CR.PDF": files.pdf()}, long_names={"CR.PDF": "cr.pdf"})
    for candidate in (SIGNATURE + data, good[: len(data) % len(good)] + data):
        assert isinstance(tnef_files(candidate), tuple)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.sampled_from(["begin 644 a.b\r\n", "begin-base64 7 x\n"]))
def test_uudecoding_never_raises(data: bytes, begin: str) -> None:
    assert isinstance(uuencoded_files(begin.encode() + data), tuple)


def test_inner_archives_are_read_within_the_byte_bound() -> None:
    inner = files.zip_of({"a.bin": b"\0" * 2_000_000}, zipfile.ZIP_STORED)
    members = archive_members(files.zip_of({"in.zip": inner}), max_inner_bytes=1_000_000)
    assert members is not None and members[0].problem == "inner archives too large to check"
    assert archive_refusal(members, AttachmentRules()) == Found(
        "in.zip", "inner archives too large to check", checked=False
    )
