from __future__ import annotations

import base64
from email.message import EmailMessage
from email.policy import SMTP

from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.core.message import base64_decoded_size, inspect_message


def _message(**attachments: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@x.mssante.fr"
    msg["Subject"] = "=?UTF-8?Q?=5BFIN=5D?="
    msg["Message-ID"] = "<m1@x>"
    msg["In-Reply-To"] = "<m0@x>"
    msg.set_content("corps")
    for name, data in attachments.items():
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes(policy=SMTP)


def test_attachment_sizes_are_decoded_sizes() -> None:
    info = inspect_message(_message(**{"a.pdf": b"x" * 1000, "b.pdf": bytes(range(256)) * 3}))
    sizes = {p.filename: p.decoded_size for p in info.attachments}
    assert sizes == {"a.pdf": 1000, "b.pdf": 768}
    assert info.total_decoded_size == 1000 + 768 + len("corps\r\n")
    assert info.message_id == "<m1@x>" and info.in_reply_to == "<m0@x>"


def test_subject_is_decoded() -> None:
    assert inspect_message(_message()).subject == "[FIN]"


def test_non_ascii_filename_and_quoted_printable() -> None:
    raw = (
        b"From: a@x.mssante.fr\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=C3=A9 =\r\nsuite\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''compte%20rendu%20%C3%A9t%C3%A9.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"y" * 100) + b"--b--\r\n"
    )
    info = inspect_message(raw)
    assert info.parts[0].decoded_size == len(
        "café suite".encode()
    )  # the CRLF before a boundary belongs to it
    assert info.attachments[0].filename == "compte rendu été.pdf"
    assert info.attachments[0].decoded_size == 100


@settings(max_examples=200)
@given(st.binary(max_size=3000))
def test_base64_size_estimate_is_exact_for_encoder_output(data: bytes) -> None:
    assert base64_decoded_size(base64.encodebytes(data).decode()) == len(data)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_inspector_never_raises_on_garbage(raw: bytes) -> None:
    info = inspect_message(raw)
    assert info.total_decoded_size >= 0


@settings(max_examples=400)
@given(
    st.binary(max_size=300),
    st.binary(max_size=40),
    st.integers(0, 2),
    st.booleans(),
)
def test_zip_end_record_found_in_base64_at_any_alignment(
    before: bytes, after: bytes, shift: int, record: bool
) -> None:
    """Only the end of a base64 part is decoded: a zip's end record is found
    there whatever its position in a group of three bytes."""
    data = b"%PDF" + b"x" * shift + before + (b"PK\x05\x06" + bytes(18) if record else b"") + after
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    raw = (
        b"From: a@ch.mssante.fr\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: application/pdf; name="cr.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    )
    (part,) = inspect_message(raw).parts
    assert part.archive == (b"PK\x05\x06" in data)
